"""Tests for simtorch_semantic.data: batch unpacking, batch sizes, paired loaders."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from simtorch_semantic.data import batch_input, batch_size, expected_batches, paired_batches


class DictDataset(Dataset):
    def __init__(self, n):
        self.x = torch.arange(n * 3, dtype=torch.float32).reshape(n, 3)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"pixels": self.x[i], "label": i}


class Stream(IterableDataset):
    def __init__(self, n):
        self.n = n

    def __iter__(self):
        return iter(torch.randn(self.n, 2))


def loader(n, bs=4, **kw):
    return DataLoader(TensorDataset(torch.randn(n, 3), torch.arange(n)), batch_size=bs, **kw)


# ---------------------------------------------------------------- batch_input
def test_batch_input_kinds():
    t = torch.randn(4, 3)
    assert batch_input(t) is t
    assert batch_input((t, torch.zeros(4))) is t
    assert batch_input([t, "labels"]) is t
    assert batch_input({"img": t, "y": 1}, input_key="img") is t
    assert batch_input([{"img": t}, torch.zeros(4)], input_key="img") is t
    a = np.ones((2, 3), dtype=np.float32)
    assert torch.equal(batch_input(a), torch.ones(2, 3))
    # input_fn wins over every rule
    assert batch_input((t, 5), input_fn=lambda b: b[1]) == 5
    assert batch_input({"a": 1}, input_key="zzz", input_fn=lambda b: "fn") == "fn"


def test_dict_batch_without_key_is_passed_whole_and_key_lists_pick_a_sub_dict():
    ids, mask = torch.zeros(2, 5, dtype=torch.long), torch.ones(2, 5)
    batch = {"input_ids": ids, "attention_mask": mask, "label": torch.zeros(2)}
    assert batch_input(batch) is batch                      # the model gets model(**batch)
    sub = batch_input(batch, input_key=["input_ids", "attention_mask"])
    assert list(sub) == ["input_ids", "attention_mask"] and sub["input_ids"] is ids
    assert batch_input((batch, 0), input_key=("input_ids",)) == {"input_ids": ids}
    with pytest.raises(ValueError, match=r"keys that are not in the batch: \['mask'\].*"
                                         r"\['input_ids', 'attention_mask', 'label'\]"):
        batch_input(batch, input_key=["input_ids", "mask"])
    with pytest.raises(ValueError, match="input_key is an empty list"):
        batch_input(batch, input_key=[])


def test_batch_input_errors():
    with pytest.raises(ValueError, match=r"input_key 'pix' is not in the batch.*\['img', 'y'\]"):
        batch_input({"img": torch.zeros(2), "y": 1}, input_key="pix")
    with pytest.raises(ValueError, match="empty dict"):
        batch_input({})
    with pytest.raises(ValueError, match="empty tuple"):
        batch_input(())
    with pytest.raises(ValueError, match="input_key='img' was given but the batch is a tensor"):
        batch_input(torch.zeros(2), input_key="img")
    with pytest.raises(ValueError, match="input_key='img' was given but the batch is a tuple"):
        batch_input((torch.zeros(2), 1), input_key="img")
    with pytest.raises(TypeError, match="batch of type str.*input_fn="):
        batch_input("images.png")
    with pytest.raises(TypeError, match="batch of type int"):
        batch_input(3)
    with pytest.raises(TypeError, match="input_fn must be a callable"):
        batch_input(torch.zeros(2), input_fn="x")


# ---------------------------------------------------------------- batch_size
def test_batch_size():
    assert batch_size(torch.zeros(5, 3)) == 5
    assert batch_size(np.zeros((7, 2))) == 7
    assert batch_size((torch.zeros(3, 1), torch.zeros(9))) == 3
    assert batch_size({"mask": [torch.zeros(6, 2)], "ids": torch.zeros(8)}) == 6
    assert batch_size([["no tensor"], (torch.zeros(2, 2),)]) == 2
    with pytest.raises(TypeError, match="cannot find a tensor.*str"):
        batch_size("abc")
    with pytest.raises(TypeError, match="cannot find a tensor"):
        batch_size({"a": 1})
    with pytest.raises(ValueError, match="0-dimensional"):
        batch_size(torch.tensor(3.0))


# ---------------------------------------------------------------- paired_batches
def test_single_loader_yields_same_object_twice():
    dl = loader(10, bs=4)
    pairs = list(paired_batches(dl))
    assert [batch_size(a) for a, _ in pairs] == [4, 4, 2]
    assert all(a is b for a, b in pairs)
    torch.testing.assert_close(torch.cat([a for a, _ in pairs]), dl.dataset.tensors[0])


def test_dict_batches_and_raw():
    dl = DataLoader(DictDataset(6), batch_size=3)
    pairs = list(paired_batches(dl, input_key="pixels"))
    torch.testing.assert_close(torch.cat([a for a, _ in pairs]), dl.dataset.x)
    raw = list(paired_batches(dl, dl, input_key="pixels", raw=True))
    assert isinstance(raw[0][0], dict) and set(raw[0][0]) == {"pixels", "label"}
    whole = next(paired_batches(dl))[0]      # no input_key: the whole dict is the input
    assert isinstance(whole, dict) and set(whole) == {"pixels", "label"}


def test_two_loaders_in_lockstep():
    x = torch.randn(10, 3)
    dl1 = DataLoader(TensorDataset(x), batch_size=4)
    dl2 = DataLoader(TensorDataset(x * 2), batch_size=4)
    pairs = list(paired_batches(dl1, dl2))
    assert len(pairs) == 3
    for a, b in pairs:
        torch.testing.assert_close(b, 2 * a)


def test_sample_count_mismatch_raised_up_front():
    with pytest.raises(ValueError, match="loader1 has 10 and loader2 has 12"):
        paired_batches(loader(10), loader(12))  # raised on the call, before iteration
    # drop_last counts: 10 with batch 4 and drop_last -> 8 samples
    with pytest.raises(ValueError, match="loader1 has 8 and loader2 has 10"):
        paired_batches(loader(10, drop_last=True), loader(10))


def test_batch_size_mismatch_names_batch_index():
    # same sample count (12), different batch sizes
    it = paired_batches(loader(12, bs=4), loader(12, bs=6))
    with pytest.raises(ValueError, match="batch 0 has 4 samples from loader1 but 6 from loader2"):
        next(it)
    # plain lists (no .dataset): only the per-batch check applies
    l1 = [torch.zeros(4, 2), torch.zeros(4, 2), torch.zeros(3, 2)]
    l2 = [torch.zeros(4, 2), torch.zeros(4, 2), torch.zeros(2, 2)]
    it = paired_batches(l1, l2)
    next(it), next(it)
    with pytest.raises(ValueError, match="batch 2 has 3 samples from loader1 but 2"):
        next(it)


def test_one_loader_ends_first():
    l1 = [torch.zeros(2, 2)] * 3
    with pytest.raises(ValueError, match="loader2 ended after 2 batches but loader1 has more"):
        list(paired_batches(l1, l1[:2]))
    with pytest.raises(ValueError, match="loader1 ended after 1 batches but loader2 has more"):
        list(paired_batches(l1[:1], l1))
    # iterable datasets have no length: the end-of-iteration check catches them
    s1 = DataLoader(Stream(6), batch_size=2)
    s2 = DataLoader(Stream(8), batch_size=2)
    with pytest.raises(ValueError, match="loader1 ended after 3 batches"):
        list(paired_batches(s1, s2))


def test_empty_loader():
    with pytest.raises(ValueError, match="yielded no batches"):
        list(paired_batches([]))
    with pytest.raises(ValueError, match="yielded no batches"):
        list(paired_batches([], []))
    empty = DataLoader(TensorDataset(torch.zeros(3, 2)), batch_size=4, drop_last=True)
    with pytest.raises(ValueError, match="yielded no batches.*drop_last"):
        list(paired_batches(empty))


def test_max_batches():
    dl = loader(20, bs=4)
    assert len(list(paired_batches(dl, max_batches=2))) == 2
    assert len(list(paired_batches(dl, dl, max_batches=2))) == 2
    assert len(list(paired_batches(dl, max_batches=100))) == 5
    # stops early without touching the mismatching tail
    l1 = [torch.zeros(2, 2), torch.zeros(2, 2)]
    l2 = [torch.zeros(2, 2), torch.zeros(3, 2)]
    assert len(list(paired_batches(l1, l2, max_batches=1))) == 1
    for bad, err in [(0, ValueError), (-3, ValueError), (1.5, TypeError), (True, TypeError),
                     ("2", TypeError)]:
        with pytest.raises(err, match="max_batches must be a positive int"):
            paired_batches(dl, max_batches=bad)


def test_bad_loaders():
    with pytest.raises(TypeError, match="loader1 is a Tensor.*DataLoader"):
        paired_batches(torch.zeros(4, 3))
    with pytest.raises(TypeError, match="loader2 must be an iterable of batches"):
        paired_batches([torch.zeros(2)], 5)
    with pytest.raises(TypeError, match="input_fn must be a callable"):
        paired_batches([torch.zeros(2)], input_fn=1)


def test_input_fn_applies_to_both_loaders():
    dl = loader(8, bs=4)
    pairs = list(paired_batches(dl, dl, input_fn=lambda b: b[0] + 1))
    torch.testing.assert_close(pairs[0][0], dl.dataset.tensors[0][:4] + 1)


def test_expected_batches():
    dl = loader(10, bs=4)
    assert expected_batches(dl) == 3
    assert expected_batches(dl, 2) == 2
    assert expected_batches(dl, 50) == 3
    assert expected_batches(DataLoader(Stream(4), batch_size=2)) is None
    assert expected_batches(iter([1, 2]), 7) == 7
    with pytest.raises(ValueError, match="max_batches"):
        expected_batches(dl, 0)
