"""Tests for simtorch_semantic.model: layer selection, capture, hooks, modes, errors."""
import re
import warnings

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from simtorch_semantic.model import SimilarityModel, default_layers

R18_DEFAULT = ["conv1", "bn1", "relu", "maxpool", "layer1.0", "layer1.1", "layer2.0", "layer2.1",
               "layer3.0", "layer3.1", "layer4.0", "layer4.1", "avgpool", "fc"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def r18():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None)


@pytest.fixture(scope="module")
def x():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def all_hooks_empty(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# ---------------------------------------------------------------- selection
def test_default_layers_resnet18_and_34(r18):
    assert default_layers(r18) == R18_DEFAULT
    assert SimilarityModel(r18).layers == R18_DEFAULT
    r34 = torchvision.models.resnet34(weights=None)
    layers = default_layers(r34)
    assert len(layers) == 22
    assert layers[:4] == ["conv1", "bn1", "relu", "maxpool"] and layers[-2:] == ["avgpool", "fc"]
    assert [n for n in layers if n.startswith("layer3.")] == [f"layer3.{i}" for i in range(6)]


def test_default_layers_descends_into_modulelist_and_errors_on_leaf():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Linear(4, 4)
            self.blocks = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            x = self.stem(x)
            for b in self.blocks:
                x = b(x)
            return self.head(x)

    net = Net()
    assert default_layers(net) == ["stem", "blocks.0", "blocks.1", "head"]
    assert list(SimilarityModel(net).capture(torch.randn(3, 4))) == default_layers(net)
    with pytest.raises(ValueError, match="no submodules"):
        SimilarityModel(nn.Linear(3, 3))


def test_available_layers(r18):
    sm = SimilarityModel(r18)
    names = sm.available_layers()
    assert names == [n for n, _ in r18.named_modules() if n]
    assert "" not in names and "layer1.0.conv1" in names and names[0] == "conv1"


def test_exact_glob_class_selection_in_model_order(r18):
    sm = SimilarityModel(r18, layers_to_include=["fc", "layer1.0"])
    assert sm.layers == ["layer1.0", "fc"]  # model order, not selection order
    sm = SimilarityModel(r18, layers_to_include=["layer*.?.conv2"])
    assert sm.layers == [f"layer{k}.{i}.conv2" for k in range(1, 5) for i in range(2)]
    sm = SimilarityModel(r18, layers_to_include=[nn.Linear])
    assert sm.layers == ["fc"]
    convs = SimilarityModel(r18, layers_to_include=[nn.Conv2d]).layers
    assert len(convs) == 20 and convs[0] == "conv1"  # 17 3x3/7x7 convs + 3 downsample convs
    assert "layer2.0.downsample.0" in convs


def test_single_string_deduplication_and_module_object(r18):
    assert SimilarityModel(r18, layers_to_include="fc").layers == ["fc"]
    sm = SimilarityModel(r18, layers_to_include=["fc", nn.Linear, "f?", r18.fc, "layer4.1",
                                                 "layer4.*"])
    assert sm.layers.count("fc") == 1
    assert sm.layers[0] == "layer4.0" and sm.layers[-1] == "fc"
    assert len(sm.layers) == len(set(sm.layers))


def test_unknown_layer_error_names_item_model_and_close_names(r18):
    with pytest.raises(ValueError) as err:
        SimilarityModel(r18, model_name="myresnet", layers_to_include=["conv1", "layer5"])
    msg = str(err.value)
    assert "'layer5'" in msg and "myresnet" in msg and "'layer4'" in msg
    assert "available_layers()" in msg
    with pytest.raises(ValueError, match=r"'layer1\.0\.conv1'"):
        SimilarityModel(r18, layers_to_include=["layer1.0.cnv1"])
    with pytest.raises(ValueError, match="layer9"):
        SimilarityModel(r18, layers_to_include=["layer9.*"])
    with pytest.raises(ValueError, match="no module of class Conv3d.*Conv2d"):
        SimilarityModel(r18, layers_to_include=[nn.Conv3d])
    with pytest.raises(ValueError, match="not a submodule"):
        SimilarityModel(r18, layers_to_include=[nn.Linear(2, 2)])
    with pytest.raises(TypeError, match="layers_to_include items"):
        SimilarityModel(r18, layers_to_include=[3])


def test_empty_selection_is_an_error(r18):
    with pytest.raises(ValueError, match="layers_to_include is empty"):
        SimilarityModel(r18, layers_to_include=[])


def test_bad_constructor_arguments(r18):
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        SimilarityModel("resnet18")
    with pytest.raises(TypeError, match="output_selector"):
        SimilarityModel(r18, output_selector=3)
    with pytest.raises(ValueError, match="device"):
        SimilarityModel(r18, device="gpu7")
    with pytest.raises(TypeError, match="model_name"):
        SimilarityModel(r18, model_name=5)


def test_attributes_and_repr(r18, x):
    sm = SimilarityModel(r18, device="cpu")
    assert sm.model is r18 and sm.model_name == "ResNet" and sm.device == torch.device("cpu")
    text = repr(sm)
    assert "ResNet" in text and "14 layers" in text
    # passthrough
    out = sm(x)
    r18.eval()
    with torch.no_grad():
        torch.testing.assert_close(sm.forward(x), r18(x))
    assert out.shape == (2, 1000)


# ---------------------------------------------------------------- capture
def test_capture_matches_manual_forward(r18, x):
    r18.eval()
    sm = SimilarityModel(r18, layers_to_include=["conv1", "layer2.1", "fc"])
    feats = sm.capture(x)
    assert list(feats) == ["conv1", "layer2.1", "fc"]
    with torch.no_grad():
        torch.testing.assert_close(feats["conv1"], r18.conv1(x))
        h = r18.maxpool(r18.relu(r18.bn1(r18.conv1(x))))
        h = r18.layer2(r18.layer1(h))
        torch.testing.assert_close(feats["layer2.1"], h)
        torch.testing.assert_close(feats["fc"], r18(x))
    assert all(not v.requires_grad and v.grad_fn is None for v in feats.values())


def test_captured_values_survive_inplace_relu(r18, x):
    # torchvision ResNet: bn1 is followed by ReLU(inplace=True), which overwrites bn1's output
    assert r18.relu.inplace
    feats = SimilarityModel(r18, layers_to_include=["bn1", "relu"]).capture(x)
    assert (feats["bn1"] < 0).any()  # would be all >= 0 had the in-place ReLU changed it
    torch.testing.assert_close(feats["relu"], feats["bn1"].clamp_min(0))
    # the same with a reduce that returns the tensor itself: it must be copied too
    feats = SimilarityModel(r18, layers_to_include=["bn1"]).capture(x, reduce=lambda n, t: t)
    assert (feats["bn1"] < 0).any()


def test_reduce_callback_gets_name_and_detached_tensor(r18, x):
    seen = []

    def reduce(name, t):
        seen.append((name, t.requires_grad))
        flat = t.reshape(t.shape[0], -1).double()
        return flat @ flat.T

    sm = SimilarityModel(r18, layers_to_include=["layer1.0", "fc"])
    grams = sm.capture(x, reduce=reduce)
    assert seen == [("layer1.0", False), ("fc", False)]
    plain = sm.capture(x)
    for name, gram in grams.items():
        f = plain[name].reshape(2, -1).double()
        torch.testing.assert_close(gram, f @ f.T)
    with pytest.raises(TypeError, match="reduce must be a callable"):
        sm.capture(x, reduce="gram")


def test_hooks_removed_after_capture_and_after_exception(r18, x):
    sm = SimilarityModel(r18)
    sm.capture(x)
    assert all_hooks_empty(r18)
    with pytest.raises(RuntimeError):
        sm.capture(torch.randn(2, 5, 32, 32))  # wrong channel count: conv1 raises
    assert all_hooks_empty(r18)

    def bad_reduce(name, t):
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        sm.capture(x, reduce=bad_reduce)
    assert all_hooks_empty(r18)


def test_user_hooks_are_kept(r18, x):
    calls = []
    handle = r18.fc.register_forward_hook(lambda m, i, o: calls.append(1))
    try:
        SimilarityModel(r18, layers_to_include=["fc"]).capture(x)
        assert calls == [1] and len(r18.fc._forward_hooks) == 1
    finally:
        handle.remove()


def test_train_mode_restored_per_module(x):
    model = torchvision.models.resnet18(weights=None)
    model.train()
    model.layer2.eval()  # mixed flags must come back exactly
    before = {n: m.training for n, m in model.named_modules()}
    running = model.bn1.running_mean.clone()
    seen_training = []
    sm = SimilarityModel(model, layers_to_include=["bn1"])
    sm.capture(x, reduce=lambda n, t: seen_training.append(model.bn1.training))
    assert seen_training == [False]  # ran in eval mode
    assert {n: m.training for n, m in model.named_modules()} == before
    torch.testing.assert_close(model.bn1.running_mean, running)  # eval: stats untouched
    with pytest.raises(RuntimeError):
        sm.capture(torch.randn(2, 5, 32, 32))
    assert {n: m.training for n, m in model.named_modules()} == before


def test_capture_runs_without_grad():
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh())
    grad_enabled = []
    model[1].register_forward_hook(lambda m, i, o: grad_enabled.append(torch.is_grad_enabled()))
    feats = SimilarityModel(model).capture(torch.randn(4, 3, requires_grad=True))
    assert grad_enabled == [False]
    assert feats["0"].grad_fn is None


class TupleNet(nn.Module):
    """Module outputs of different kinds."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(3, 5)

    def forward(self, x):
        return self.a(x), self.b(x)


class DictOut(nn.Module):
    def forward(self, x):
        return {"out": x * 2, "aux": x * 3}


class Wrapper(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.post = nn.Identity()

    def forward(self, x):
        out = self.inner(x)
        first = out["out"] if isinstance(out, dict) else out[0]
        return self.post(first)


def test_tuple_output_first_tensor_or_selector():
    torch.manual_seed(0)
    model = Wrapper(TupleNet())
    xin = torch.randn(6, 3)
    feats = SimilarityModel(model, layers_to_include=["inner"]).capture(xin)
    with torch.no_grad():
        torch.testing.assert_close(feats["inner"], model.inner.a(xin))
    feats = SimilarityModel(model, layers_to_include=["inner"],
                            output_selector=lambda o: o[1]).capture(xin)
    with torch.no_grad():
        torch.testing.assert_close(feats["inner"], model.inner.b(xin))
    # the selector is not applied to plain tensor outputs
    feats = SimilarityModel(model, layers_to_include=["inner", "inner.a"],
                            output_selector=lambda o: o[1]).capture(xin)
    assert feats["inner.a"].shape == (6, 4) and feats["inner"].shape == (6, 5)
    with pytest.raises(TypeError, match="output_selector returned int.*'inner'"):
        SimilarityModel(model, layers_to_include=["inner"],
                        output_selector=lambda o: 3).capture(xin)


def test_dict_output_needs_selector():
    model = Wrapper(DictOut())
    xin = torch.randn(4, 3)
    sm = SimilarityModel(model, layers_to_include=["inner"])
    with pytest.raises(TypeError, match=r"'inner'.*dict.*output_selector"):
        sm.capture(xin)
    assert all_hooks_empty(model)
    feats = SimilarityModel(model, layers_to_include=["inner"],
                            output_selector=lambda o: o["aux"]).capture(xin)
    torch.testing.assert_close(feats["inner"], xin * 3)


def test_module_called_twice_is_an_error(r18, x):
    # torchvision BasicBlock applies its single self.relu twice
    sm = SimilarityModel(r18, model_name="r18", layers_to_include=["layer1.0.relu"])
    with pytest.raises(RuntimeError, match=r"'layer1\.0\.relu' of r18 ran more than once.*"
                                           r"ambiguous.*runs once"):
        sm.capture(x)
    assert all_hooks_empty(r18)


class Transposer(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 6)
        self.t = TransposeLayer()
        self.after = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.after(self.t(self.lin(x)))


class TransposeLayer(nn.Module):
    def forward(self, x):
        return x.transpose(1, 2)


def test_non_contiguous_output_captured_correctly():
    model = Transposer()
    xin = torch.randn(2, 3, 4)
    sm = SimilarityModel(model, layers_to_include=["t"])
    feats = sm.capture(xin)
    with torch.no_grad():
        expected = model.lin(xin).transpose(1, 2).clone()
    assert feats["t"].shape == (2, 6, 3) and feats["t"].is_contiguous()
    torch.testing.assert_close(feats["t"], expected)  # not clobbered by the in-place ReLU
    assert (feats["t"] < 0).any()
    flat = sm.capture(xin, reduce=lambda n, t: t.reshape(t.shape[0], -1).clone())
    torch.testing.assert_close(flat["t"], expected.reshape(2, -1))


def test_same_model_wrapped_twice(r18, x):
    sm1 = SimilarityModel(r18, "a")
    sm2 = SimilarityModel(r18, "b", layers_to_include=["layer1.0", "fc"])
    f1 = sm1.capture(x)
    f2 = sm2.capture(x)
    assert all_hooks_empty(r18)
    assert list(f1) == R18_DEFAULT and list(f2) == ["layer1.0", "fc"]
    for name in f2:
        torch.testing.assert_close(f1[name], f2[name])
    assert all_hooks_empty(r18)


class Reversed(nn.Module):
    """Registers b before a but runs a before b."""

    def __init__(self):
        super().__init__()
        self.b = nn.Linear(4, 4)
        self.a = nn.Linear(3, 4)

    def forward(self, x):
        return self.b(self.a(x))


def test_layers_reordered_by_forward_order_after_first_capture():
    sm = SimilarityModel(Reversed(), layers_to_include=["a", "b"])
    assert sm.layers == ["b", "a"]  # registration order before any capture
    feats = sm.capture(torch.randn(2, 3))
    assert list(feats) == ["a", "b"] and sm.layers == ["a", "b"]
    assert list(sm.capture(torch.randn(2, 3))) == ["a", "b"]


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.main = nn.Linear(3, 3)
        self.aux = nn.Linear(3, 3)  # only used in training mode

    def forward(self, x):
        y = self.main(x)
        return y + self.aux(x) if self.training else y


def test_layer_that_does_not_run():
    with pytest.raises(RuntimeError, match=r"\['aux'\].*did not run"):
        SimilarityModel(Branchy(), layers_to_include=["main", "aux"]).capture(torch.randn(2, 3))
    sm = SimilarityModel(Branchy())
    with pytest.warns(UserWarning, match=r"default layers dropped.*\['aux'\]: did not run"):
        feats = sm.capture(torch.randn(2, 3))
    assert list(feats) == ["main"] and sm.layers == ["main"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sm.capture(torch.randn(2, 3))


def test_inputs_tuple_dict_and_device_move():
    class TwoIn(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x, scale=1.0):
            return self.lin(x) * scale

    model = TwoIn()
    xin = torch.randn(5, 3)
    sm = SimilarityModel(model, layers_to_include="lin", device=torch.device("cpu"))
    with torch.no_grad():
        ref = model.lin(xin)
    torch.testing.assert_close(sm.capture((xin, 2.0))["lin"], ref)
    torch.testing.assert_close(sm.capture({"x": xin, "scale": 3.0})["lin"], ref)
    assert sm.capture([xin][0])["lin"].dtype == torch.float32


def test_error_message_points_to_available_layers(r18):
    with pytest.raises(ValueError, match=re.escape("SimilarityModel.available_layers()")):
        SimilarityModel(r18, layers_to_include=["nonexistent"])


def test_module_removed_after_wrapping():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    sm = SimilarityModel(model)
    del model[1]
    with pytest.raises(RuntimeError, match="'1' is no longer a submodule"):
        sm.capture(torch.randn(2, 3))
    assert all_hooks_empty(model)


def test_namedtuple_and_list_inputs_passed_as_one_argument():
    from collections import namedtuple

    Pair = namedtuple("Pair", "a b")

    class Takes(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, inp):
            return self.lin(inp[0] + inp[1])

    model = Takes()
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    sm = SimilarityModel(model, layers_to_include="lin")
    with torch.no_grad():
        ref = model.lin(a + b)
    torch.testing.assert_close(sm.capture(Pair(a, b))["lin"], ref)
    torch.testing.assert_close(sm.capture([a, b])["lin"], ref)


# ---------------------------------------------------------------- issue 8: broad selections
def dropped_warnings(record):
    return [w for w in record if "dropped from the selection" in str(w.message)]


@pytest.mark.parametrize("selection", [["layer3.*"], [nn.ReLU], ["layer*.?.conv1", nn.ReLU]])
def test_glob_or_class_selection_skips_reused_relus_with_one_warning(r18, x, selection):
    """The report: "layer3.*" and torch.nn.ReLU raised "ran more than once" on every ResNet
    (BasicBlock applies its single ReLU twice)."""
    sm = SimilarityModel(r18, "r18", layers_to_include=selection)
    reused = [n for n in sm.layers if n.endswith(".relu") and n.count(".") == 2]
    assert reused                                          # selected before the first capture
    with pytest.warns(UserWarning) as record:
        feats = sm.capture(x)
    warned = dropped_warnings(record)
    assert len(warned) == 1                                # ONE warning naming them all
    message = str(warned[0].message)
    assert all(repr(n) in message for n in reused) and "more than once" in message
    assert not set(reused) & set(feats) and list(feats) == sm.layers
    if selection == [nn.ReLU]:
        assert sm.layers == ["relu"]                       # the stem ReLU runs once
    with warnings.catch_warnings():                        # the selection is fixed now
        warnings.simplefilter("error")
        assert list(sm.capture(x)) == sm.layers


def test_reused_module_selected_only_by_glob_leaves_nothing_clear_error(r18, x):
    # the README's old example "layer*.?.relu" matches only block ReLUs, each applied twice
    sm = SimilarityModel(r18, "r18", layers_to_include=["layer*.?.relu"])
    with pytest.raises(ValueError, match=r"no selected layer of r18 gives a usable output.*"
                                         r"layer1\.0\.relu.*more than once"):
        sm.capture(x)
    assert all_hooks_empty(r18)


def test_exact_name_of_reused_module_stays_an_error_beside_a_glob(r18, x):
    sm = SimilarityModel(r18, layers_to_include=["layer1.0.relu", "layer2.*"])
    with pytest.raises(RuntimeError, match=r"'layer1\.0\.relu' .*ran more than once"):
        sm.capture(x)


def test_cka_over_a_glob_with_reused_modules_runs(r18, x):
    from simtorch_semantic import CKA

    sm = SimilarityModel(r18, "r18", layers_to_include=["layer3.*"])
    loader = [torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(i))
              for i in range(2)]
    with pytest.warns(UserWarning, match="dropped from the selection"):
        res = CKA(sm, sm).compute(loader, progress=False)
    assert res.row_layers == sm.layers and "layer3.0.relu" not in res.row_layers
    assert res.matrix.shape == (len(sm.layers), len(sm.layers))
    np.testing.assert_allclose(np.diag(res.matrix), 1.0, atol=1e-6)


# ---------------------------------------------------------------- issue 8: nested defaults
def _capture_quietly(sm, inp):
    with warnings.catch_warnings():
        warnings.simplefilter("error")       # the default layers all run once: no warning
        return sm.capture(inp)


def test_default_layers_reach_vit_encoder_blocks():
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=3,
                                               num_heads=2, hidden_dim=32, mlp_dim=64)
    blocks = [f"encoder.layers.encoder_layer_{i}" for i in range(3)]
    assert default_layers(vit) == ["conv_proj", "encoder.dropout", *blocks, "encoder.ln",
                                   "heads.head"]
    feats = _capture_quietly(SimilarityModel(vit), torch.randn(4, 3, 32, 32))
    assert [n for n in feats if n in blocks] == blocks
    assert all(feats[b].shape == (4, 5, 32) for b in blocks)        # 2 x 2 patches + CLS


def test_default_layers_swin_t_one_row_per_block():
    swin = torchvision.models.swin_t(weights=None)
    layers = default_layers(swin)
    depths = [2, 2, 6, 2]
    blocks = [f"features.{2 * s + 1}.{b}" for s, d in enumerate(depths) for b in range(d)]
    assert [n for n in layers if n.count(".") == 2] == blocks
    assert [n for n in layers if n.count(".") < 2] == [
        "features.0", "features.2", "features.4", "features.6",
        "norm", "permute", "avgpool", "flatten", "head"]
    feats = _capture_quietly(SimilarityModel(swin), torch.randn(2, 3, 32, 32))
    assert len(feats) == len(layers) == 21
    assert feats["features.5.5"].shape == (2, 2, 2, 384)            # [n, H, W, C]: left as is


def test_default_layers_convnext_tiny_one_row_per_block():
    convnext = torchvision.models.convnext_tiny(weights=None)
    layers = default_layers(convnext)
    depths = [3, 3, 9, 3]
    blocks = [f"features.{2 * s + 1}.{b}" for s, d in enumerate(depths) for b in range(d)]
    assert [n for n in layers if n.count(".") == 2] == blocks
    assert layers[:1] == ["features.0"] and layers[-4:] == [
        "avgpool", "classifier.0", "classifier.1", "classifier.2"]
    feats = _capture_quietly(SimilarityModel(convnext), torch.randn(2, 3, 32, 32))
    assert list(feats) == layers and feats["features.7.2"].shape == (2, 768, 1, 1)


def test_default_layers_stage_of_stacks_and_single_block():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return x + self.lin(x)

    class Stage(nn.Module):                  # a stage holding its own block stack
        def __init__(self, depth):
            super().__init__()
            self.down = nn.Linear(4, 4)
            self.blocks = nn.Sequential(*[Block() for _ in range(depth)])

        def forward(self, x):
            return self.blocks(self.down(x))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Linear(3, 4)
            self.stages = nn.ModuleList([Stage(2), Stage(1)])
            self.head = nn.Sequential(nn.ReLU(), nn.Linear(4, 2))

        def forward(self, x):
            x = self.stem(x)
            for stage in self.stages:
                x = stage(x)
            return self.head(x)

    net = Net()
    assert default_layers(net) == ["stem", "stages.0.down", "stages.0.blocks.0",
                                   "stages.0.blocks.1", "stages.1.down", "stages.1.blocks.0",
                                   "head.0", "head.1"]
    assert list(_capture_quietly(SimilarityModel(net), torch.randn(5, 3))) == default_layers(net)


def test_glob_layer_that_does_not_run_is_dropped_with_a_warning():
    sm = SimilarityModel(Branchy(), layers_to_include=["ma?n", "a*"])
    with pytest.warns(UserWarning, match=r"selected \(by glob or class\) layers dropped.*"
                                         r"\['aux'\]: did not run"):
        assert list(sm.capture(torch.randn(2, 3))) == ["main"]
