"""Transformers and token sequences (issue #13): token reductions with attention masks, Hugging
Face / timm / torchvision transformers from tiny random configs, dict batches from a tokenizer
built here, padding invariance of every measure, half precision, device=None, cross-modal pairs.

Every model is randomly initialised from a small config (nothing is downloaded).
"""
import warnings

import numpy as np
import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, Dataset

from reference import ref_cka_grams, ref_linear_gram
from simtorch_semantic import CKA, RSA, Procrustes, SimilarityModel
from simtorch_semantic.functional.kernels import linear_gram, streaming_linear_gram
from simtorch_semantic.model import default_layers, reduce_tokens

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")
tokenizers = pytest.importorskip("tokenizers")

transformers.utils.logging.set_verbosity_error()
VOCAB = 40
PAD = 0


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# ---------------------------------------------------------------- tiny models
@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64,
                                  max_position_embeddings=64, pad_token_id=PAD)
    return transformers.BertModel(cfg).eval()


@pytest.fixture(scope="module")
def gpt2():
    torch.manual_seed(1)
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_embd=24, n_layer=2, n_head=2,
                                  n_positions=64, bos_token_id=1, eos_token_id=1,
                                  pad_token_id=PAD)
    return transformers.GPT2Model(cfg).eval()


def quiet(fn, *args, **kwargs):
    """Run ``fn`` with the expected 'dropped from the selection' warnings silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*dropped from the selection")
        return fn(*args, **kwargs)


def token_batches(lengths, extra_pad=0, batch_size=6, left=False, seed=3):
    """Dict batches of ``input_ids``/``attention_mask``: sequence i has ``lengths[i]`` tokens,
    padded with PAD to ``max(lengths) + extra_pad`` (on the right, or on the left)."""
    gen = torch.Generator().manual_seed(seed)
    n, T = len(lengths), max(lengths) + extra_pad
    tokens = torch.randint(2, VOCAB, (n, max(lengths)), generator=gen)
    ids = torch.full((n, T), PAD, dtype=torch.long)
    mask = torch.zeros(n, T, dtype=torch.long)
    for i, L in enumerate(lengths):
        sl = slice(T - L, T) if left else slice(0, L)
        ids[i, sl] = tokens[i, :L]
        mask[i, sl] = 1
    return [{"input_ids": ids[i:i + batch_size], "attention_mask": mask[i:i + batch_size]}
            for i in range(0, n, batch_size)]


LENGTHS = [5, 9, 3, 7, 8, 4, 6, 9, 2, 5, 7, 3]


# ---------------------------------------------------------------- reduce_tokens vs NumPy
def np_reduce(x, how, mask):
    """Plain NumPy reference: loop over sequences, keep only valid positions."""
    out = []
    for seq, m in zip(x, mask):
        valid = seq[m.astype(bool)]
        if how == "mean":
            out.append(valid.mean(axis=0))
        elif how == "first":
            out.append(valid[0])
        elif how == "last":
            out.append(valid[-1])
        elif how == "tokens":
            out.extend(valid)
        elif how == "flatten":
            out.append(np.where(m[:, None].astype(bool), seq, 0.0))
    return np.stack(out)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 5), T=st.integers(1, 7), D=st.integers(1, 4), seed=st.integers(0, 999),
       how=st.sampled_from(["mean", "first", "last", "tokens", "flatten"]))
def test_reduce_tokens_matches_numpy_reference(n, T, D, seed, how):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, T, D))
    mask = rng.random((n, T)) < 0.6
    mask[np.arange(n), rng.integers(0, T, n)] = True        # every sequence has a token
    x[~mask] = np.inf                                        # padding must never leak, even inf
    got = reduce_tokens(torch.from_numpy(x), how, torch.from_numpy(mask)).numpy()
    np.testing.assert_allclose(got, np_reduce(x, how, mask), rtol=1e-12, atol=1e-12)
    ones = np.ones((n, T), dtype=bool)                       # no mask: every token valid
    x_finite = rng.standard_normal((n, T, D))
    np.testing.assert_allclose(reduce_tokens(torch.from_numpy(x_finite), how).numpy(),
                               np_reduce(x_finite, how, ones), rtol=1e-12, atol=1e-12)


def test_reduce_tokens_half_precision_mean_in_float32_and_bad_name():
    x = torch.randn(3, 5, 4).to(torch.bfloat16)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 1, 1, 0]], dtype=torch.bool)
    mean = reduce_tokens(x, "mean", mask)
    assert mean.dtype == torch.float32
    torch.testing.assert_close(mean[2], x[2, 2:4].float().mean(0))
    assert reduce_tokens(x, "first", mask).dtype == torch.bfloat16     # gathers keep the dtype
    with pytest.raises(ValueError, match="token reduction must be one of"):
        reduce_tokens(x, "max", mask)


# ---------------------------------------------------------------- default layers per family
def test_default_layers_of_hf_timm_and_torchvision_transformers(bert, gpt2):
    assert default_layers(bert) == ["embeddings", "encoder.layer.0", "encoder.layer.1", "pooler"]
    assert default_layers(gpt2) == ["wte", "wpe", "drop", "h.0", "h.1", "ln_f"]
    vit_hf = transformers.ViTModel(transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32))
    blocks = [n for n in default_layers(vit_hf) if n.split(".")[-1].isdigit()]
    assert len(blocks) == 2 and all(n.rsplit(".", 1)[0] in ("layers", "encoder.layer")
                                    for n in blocks)
    tv = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=3)
    assert [n for n in default_layers(tv) if n.startswith("blocks")] == \
        ["blocks.0", "blocks.1", "blocks.2"]
    head = transformers.BertForSequenceClassification(bert.config)
    assert default_layers(head) == ["bert.embeddings", "bert.encoder.layer.0",
                                    "bert.encoder.layer.1", "bert.pooler", "dropout",
                                    "classifier"]


def test_gpt2_position_embedding_dropped_with_one_warning(gpt2):
    sm = SimilarityModel(gpt2)
    batch = token_batches(LENGTHS[:4])[0]
    with pytest.warns(UserWarning, match=r"default layers dropped.*\['wpe'\]: .*\[1, 9, 24\]") as rec:
        feats = sm.capture(batch)
    assert len([w for w in rec if "dropped" in str(w.message)]) == 1
    assert list(feats) == ["wte", "drop", "h.0", "h.1", "ln_f"]
    assert sm.token_reductions == dict.fromkeys(feats, "mean")          # text: mean by default
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sm.capture(batch)
    with pytest.raises(ValueError, match=r"'wpe' of GPT2Model: its output \[1, 9, 24\]"):
        SimilarityModel(gpt2, layers_to_include=["wpe"]).capture(batch)


# ---------------------------------------------------------------- values against manual forwards
def test_bert_reductions_against_last_hidden_state(bert):
    batch = token_batches([4, 6, 2], seed=5)[0]
    with torch.no_grad():
        hidden = bert(**batch).last_hidden_state                        # [3, 6, 32]
    mask = batch["attention_mask"].bool()
    for how in ("mean", "first", "last", "tokens", "flatten"):
        # the encoder returns a BaseModelOutput: its first tensor is last_hidden_state
        sm = SimilarityModel(bert, layers_to_include=["encoder", "encoder.layer.1"],
                             token_reduction=how)
        feats = sm.capture(batch)
        expected = torch.from_numpy(np_reduce(hidden.double().numpy(), how, mask.numpy()))
        for name in feats:
            torch.testing.assert_close(feats[name].double(), expected, rtol=1e-5, atol=1e-6)
        assert sm.n_rows == (12 if how == "tokens" else 3)


def test_batch_encoding_from_a_tokenizer_built_here_passes_through(bert):
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["[PAD]", "[UNK]"] + "the cat dog sat on a mat ran far away big small red".split()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]",
                                                unk_token="[UNK]")
    sentences = ["the cat sat", "a big red dog ran far away", "the mat", "small cat on a mat",
                 "the dog", "a cat ran"]
    enc = fast(sentences, padding=True, return_tensors="pt")
    assert not isinstance(enc, dict)                                     # a BatchEncoding
    sm = SimilarityModel(bert, layers_to_include=["encoder.layer.1"], token_reduction="last")
    got = sm.capture(enc)["encoder.layer.1"]
    with torch.no_grad():
        hidden = bert(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])[0]
    last = enc["attention_mask"].sum(1) - 1
    torch.testing.assert_close(got, hidden[torch.arange(6), last])
    # a loader of tokenizer outputs goes through a measure without input_key
    loader = [fast(sentences[i:i + 3] + sentences[:1], padding=True, return_tensors="pt")
              for i in (0, 3)]
    res = quiet(CKA(SimilarityModel(bert), SimilarityModel(bert), estimator="full").compute,
                loader, progress=False)
    assert res.matrix.shape == (4, 4) and res.n_samples == 8
    np.testing.assert_allclose(np.diag(res.matrix), 1.0, atol=1e-6)


def test_timm_and_torchvision_vit_blocks_match_their_forward():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    tv = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2).eval()
    sm = SimilarityModel(tv)
    feats = sm.capture(x)
    with torch.no_grad():
        torch.testing.assert_close(feats["norm"], tv.forward_features(x))
        torch.testing.assert_close(feats["head"], tv(x))
    assert feats["blocks.1"].shape == (4, 5, 192)                        # 4 patches + CLS
    assert sm.token_reductions["blocks.1"] == "flatten"                  # images: flatten
    first = SimilarityModel(tv, layers_to_include="norm", token_reduction="first").capture(x)
    torch.testing.assert_close(first["norm"], feats["norm"][:, 0])

    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=2,
                                               num_heads=2, hidden_dim=32, mlp_dim=64).eval()
    feats = SimilarityModel(vit, token_reduction={"encoder.ln": "first"}).capture(x)
    with torch.no_grad():
        tokens = vit._process_input(x)
        tokens = torch.cat([vit.class_token.expand(4, -1, -1), tokens], dim=1)
        torch.testing.assert_close(feats["encoder.ln"], vit.encoder(tokens)[:, 0])
    assert feats["encoder.layers.encoder_layer_0"].shape == (4, 5, 32)


def test_hf_vit_first_token_is_cls(bert):
    torch.manual_seed(0)
    vit = transformers.ViTModel(transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32)).eval()
    x = torch.randn(3, 3, 32, 32)
    sm = SimilarityModel(vit, token_reduction="first")
    feats = sm.capture({"pixel_values": x})
    with torch.no_grad():
        out = vit(pixel_values=x)
    last_norm = [n for n in feats if n.endswith("layernorm")][0]
    torch.testing.assert_close(feats[last_norm], out.last_hidden_state[:, 0])
    torch.testing.assert_close(feats["pooler"], out.pooler_output)      # 2-D: left as it is


def test_pretrained_loading_path(bert, tmp_path):
    """Users pass any Hugging Face model, e.g. from ``from_pretrained``: here a tiny one saved
    and reloaded offline."""
    bert.save_pretrained(tmp_path)
    loaded = transformers.AutoModel.from_pretrained(tmp_path).eval()
    batch = token_batches([3, 5, 4])[0]
    a = SimilarityModel(bert).capture(batch)
    b = SimilarityModel(loaded).capture(batch)
    for name in a:
        torch.testing.assert_close(a[name], b[name])


# ---------------------------------------------------------------- padding never changes a value
@pytest.mark.parametrize("how", ["mean", "first", "last", "tokens"])
def test_adding_pad_tokens_leaves_every_measure_unchanged(bert, gpt2, how):
    base, padded = token_batches(LENGTHS), token_batches(LENGTHS, extra_pad=6)
    assert padded[0]["input_ids"].shape[1] == base[0]["input_ids"].shape[1] + 6

    def run(measure, batches, **kw):
        m = measure(SimilarityModel(bert, token_reduction=how),
                    SimilarityModel(gpt2, token_reduction=how), **kw)
        return quiet(m.compute, batches, progress=False).matrix

    for measure, kw in ((CKA, {}), (CKA, {"estimator": "full"}), (RSA, {}), (Procrustes, {})):
        a, b = run(measure, base, **kw), run(measure, padded, **kw)
        assert np.isfinite(a).all()
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0, err_msg=f"{measure.__name__} {kw}")


def test_left_padding_first_last_and_mean_skip_the_pads(bert):
    # BERT is bidirectional with absolute positions: left padding shifts positions, so compare
    # reductions with the padded model output itself (the reduction must pick real tokens)
    batch = token_batches([3, 6, 2, 5], left=True)[0]
    with torch.no_grad():
        hidden = bert(**batch).last_hidden_state.double().numpy()
    mask = batch["attention_mask"].numpy()
    for how in ("first", "last", "mean", "tokens"):
        got = SimilarityModel(bert, layers_to_include="encoder.layer.1",
                              token_reduction=how).capture(batch)["encoder.layer.1"]
        np.testing.assert_allclose(got.double().numpy(), np_reduce(hidden, how, mask),
                                   rtol=1e-5, atol=1e-6)


def test_tokens_needs_the_same_tokens_in_both_models(bert, gpt2):
    batches = token_batches(LENGTHS)
    m = CKA(SimilarityModel(bert, token_reduction="tokens"),
            SimilarityModel(gpt2, token_reduction="tokens"))
    res = quiet(m.compute, batches, progress=False)
    assert res.n_samples == sum(LENGTHS)                              # every valid token a row
    assert res.row_layers == ["embeddings", "encoder.layer.0", "encoder.layer.1"]   # no pooler
    other = CKA(SimilarityModel(bert, token_reduction="tokens"),
                SimilarityModel(gpt2, token_reduction="tokens", attention_mask=None))
    with pytest.raises(ValueError, match=r"BertModel gives \d+ rows.*GPT2Model gives \d+.*"
                                         r"same tokens"):
        quiet(other.compute, batches, progress=False)


# ---------------------------------------------------------------- sequence-first modules
class SeqFirst(nn.Module):
    """A ``batch_first=False`` transformer encoder fed ``[n, T]`` ids: inner outputs are
    ``[T, n, D]``; the padding mask comes from the batch dict."""

    def __init__(self, batch_first=False):
        super().__init__()
        self.batch_first = batch_first
        self.emb = nn.Embedding(VOCAB, 16)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=batch_first)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.out = nn.Identity()

    def forward(self, input_ids, attention_mask):
        h = self.emb(input_ids)
        if not self.batch_first:
            h = h.transpose(0, 1)
        h = self.enc(h, src_key_padding_mask=attention_mask == 0)
        return self.out(h)


def test_sequence_first_outputs_are_transposed_and_masked():
    torch.manual_seed(0)
    model = SeqFirst().eval()
    batch = token_batches([3, 5, 5, 2, 4], batch_size=5)[0]              # n = T = 5: a tie
    with torch.no_grad():
        seq_first = model(**batch)                                        # [T, n, D]
    assert seq_first.shape == (5, 5, 16)
    mask = batch["attention_mask"].numpy()
    expected = np_reduce(seq_first.transpose(0, 1).double().numpy(), "mean", mask)
    sm = SimilarityModel(model, layers_to_include=["enc", "enc.layers.1"])
    feats = sm.capture(batch)
    for name in ("enc", "enc.layers.1"):   # batch_first=False read from the attention module
        np.testing.assert_allclose(feats[name].double().numpy(), expected, rtol=1e-5, atol=1e-6)
    # without a batch_first attribute the shape decides: out is [T=7, n=5, D]
    batch7 = token_batches([7, 5, 3, 6, 2], batch_size=5)[0]
    feats = SimilarityModel(model, layers_to_include="out", token_reduction="last").capture(batch7)
    with torch.no_grad():
        out = model(**batch7).transpose(0, 1).double().numpy()
    np.testing.assert_allclose(feats["out"].double().numpy(),
                               np_reduce(out, "last", batch7["attention_mask"].numpy()),
                               rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- half precision
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_grams_accurate_to_1e4_of_float32(dtype):
    torch.manual_seed(0)
    X = (torch.randn(48, 300) * 3 + 5).to(dtype)          # a large mean: cancellation risk
    ref = ref_linear_gram(X.double().numpy() - X.double().numpy().mean(0))
    for gram in (streaming_linear_gram(X), linear_gram(X)):
        assert gram.dtype in (torch.float32, torch.float64)
        K = gram.double().numpy()
        H = np.eye(48) - 1 / 48
        err = np.abs(H @ K @ H - ref).max() / np.abs(ref).max()
        assert err < 1e-4, err
    # the same Gram computed in half precision would be far off: the promotion matters
    naive = (X @ X.T).double().numpy()
    H = np.eye(48) - 1 / 48
    assert np.abs(H @ naive @ H - ref).max() / np.abs(ref).max() > 1e-4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cka_of_a_half_precision_model_matches_float64_reference(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.GELU(), nn.Linear(64, 32)).to(dtype)
    other = nn.Sequential(nn.Linear(20, 16), nn.Tanh()).to(dtype)
    x = torch.randn(40, 20).to(dtype)
    s1, s2 = SimilarityModel(model), SimilarityModel(other)
    f1, f2 = s1.capture(x), s2.capture(x)
    assert f1["0"].dtype == dtype
    for estimator in ("minibatch", "full"):
        res = CKA(s1, s2, estimator=estimator).compute([x[:20], x[20:]], progress=False)
        if estimator == "full":
            ref = [[ref_cka_grams(ref_linear_gram(f1[a].double().numpy()),
                                  ref_linear_gram(f2[b].double().numpy())) for b in f2]
                   for a in f1]
            np.testing.assert_allclose(res.matrix, ref, atol=1e-4, rtol=0)
        assert np.isfinite(res.matrix).all()


# ---------------------------------------------------------------- devices
def test_device_none_keeps_the_model_where_it_is(monkeypatch):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU())

    def refuse(*args, **kwargs):
        raise AssertionError("model.to() must not be called with device=None")

    monkeypatch.setattr(model, "to", refuse)
    sm = SimilarityModel(model, device=None)
    assert sm.device == torch.device("cpu") and "device=cpu" in repr(sm)
    assert sm.capture(torch.randn(5, 3))["1"].shape == (5, 4)


def test_a_dispatched_model_is_not_moved():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    model.hf_device_map = {"0": 0, "1": "cpu"}             # as accelerate's dispatch leaves it
    with pytest.raises(ValueError, match=r"spread over the devices.*device=None"):
        SimilarityModel(model, device="cpu")
    sm = SimilarityModel(model, device=None)
    assert sm.capture(torch.randn(5, 3))["0"].shape == (5, 4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_model_split_over_cpu_and_cuda_with_device_none():
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 4))

    class Split(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = model[0].cuda(), model[2]

        def forward(self, x):
            return self.b(self.a(x).relu().cpu())

    sm = SimilarityModel(Split(), device=None)
    x = torch.randn(16, 3)
    res = CKA(sm, sm, device="cpu").compute([x[:8], x[8:]], progress=False)
    np.testing.assert_allclose(np.diag(res.matrix), 1.0, atol=1e-5)


# ---------------------------------------------------------------- cross-modal pairs
class Pairs(Dataset):
    """Aligned (sentence, image) pairs: item i of both views is the same concept."""

    def __init__(self, n=16, view="text"):
        gen = torch.Generator().manual_seed(0)
        self.ids = torch.randint(2, VOCAB, (n, 6), generator=gen)
        self.images = torch.randn(n, 3, 16, 16, generator=gen)
        self.view = view

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        if self.view == "text":
            return {"input_ids": self.ids[i], "attention_mask": torch.ones(6, dtype=torch.long)}
        return self.images[i]


def test_cross_modal_text_vs_image_through_two_loaders(bert):
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                        nn.Flatten(), nn.Linear(32, 10))
    text = DataLoader(Pairs(view="text"), batch_size=8)
    images = DataLoader(Pairs(view="image"), batch_size=8)
    s_text, s_img = SimilarityModel(bert, "bert"), SimilarityModel(cnn, "cnn")
    res = CKA(s_text, s_img, estimator="full").compute(text, images, progress=False)
    assert res.matrix.shape == (4, 5) and np.isfinite(res.matrix).all() and res.n_samples == 16
    # reference: the same features captured by hand, CKA in plain NumPy
    ds_t, ds_i = Pairs(view="text"), Pairs(view="image")
    ft = s_text.capture({"input_ids": ds_t.ids, "attention_mask": torch.ones(16, 6, dtype=int)})
    fi = s_img.capture(ds_i.images)
    ref = [[ref_cka_grams(ref_linear_gram(ft[a].double().numpy() - ft[a].double().numpy().mean(0)),
                          ref_linear_gram(fi[b].double().numpy() - fi[b].double().numpy().mean(0)))
            for b in fi] for a in ft]
    np.testing.assert_allclose(res.matrix, ref, atol=1e-6)
    try:
        from simtorch_semantic.functional.registry import get_measure
        knn = get_measure("mutual_knn")
    except (ImportError, ValueError, KeyError):
        return                                   # the measure catalogue does not have it yet
    options = {key: 4 for key in ("k", "n_neighbors") if key in knn.options}   # 16 samples
    value = knn.fn(ft["encoder.layer.1"], fi["4"], **options)
    assert 0.0 <= value <= 1.0


# ---------------------------------------------------------------- errors
def test_token_and_mask_arguments_are_validated(bert):
    with pytest.raises(ValueError, match=r"token_reduction must be one of .*'tokens'.*got 'max'"):
        SimilarityModel(bert, token_reduction="max")
    with pytest.raises(ValueError, match=r"token_reduction\['pooler'\] must be one of"):
        SimilarityModel(bert, token_reduction={"pooler": "cls"})
    with pytest.raises(ValueError, match=r"token_reduction key 'encoder.layr.*' matches none"):
        SimilarityModel(bert, token_reduction={"encoder.layr.*": "first"})
    with pytest.raises(TypeError, match="token_reduction dict keys"):
        SimilarityModel(bert, token_reduction={3: "first"})
    with pytest.raises(TypeError, match="attention_mask must be the key"):
        SimilarityModel(bert, attention_mask=3)


def test_bad_masks_are_clear_errors(bert):
    batch = token_batches([3, 4, 2])[0]
    sm = SimilarityModel(bert, layers_to_include="encoder.layer.0")
    bad = dict(batch, attention_mask=batch["attention_mask"][:, None, :])
    with pytest.raises(ValueError, match=r"attention mask inputs\['attention_mask'\] must be a "
                                         r"tensor \[n, T\].*\[3, 1, 4\].*attention_mask=None"):
        sm.capture(bad)
    empty = {k: v.clone() for k, v in batch.items()}
    empty["attention_mask"][1] = 0
    with pytest.raises(ValueError, match=r"sequences \[1\] of the batch have no valid token"):
        sm.capture(empty)
    odd = SimilarityModel(bert, layers_to_include="encoder.layer.0",
                          attention_mask=lambda inputs: torch.ones(3, 9))
    with pytest.raises(ValueError, match=r"'encoder.layer.0'.*\[3, 4, 32\] has 4 tokens but "
                                         r"the attention mask is \[3, 9\]"):
        odd.capture(batch)
    with pytest.raises(ValueError, match="returned by the attention_mask callable"):
        SimilarityModel(bert, attention_mask=lambda inputs: "mask").capture(batch)


def test_tokens_on_a_non_sequence_layer_and_mixed_rows_are_errors(bert):
    batch = token_batches([3, 4, 2, 5])[0]
    with pytest.raises(ValueError, match=r"'pooler'.*\[4, 32\] is not a token sequence"):
        SimilarityModel(bert, layers_to_include=["pooler"], token_reduction="tokens").capture(batch)
    mixed = SimilarityModel(bert, layers_to_include=["encoder.layer.0", "encoder.layer.1"],
                            token_reduction={"encoder.layer.0": "tokens"})
    with pytest.raises(ValueError, match=r"different numbers of rows.*'encoder.layer.0': 14.*"
                                         r"'encoder.layer.1': 4"):
        mixed.capture(batch)


def test_dict_keys_the_model_does_not_take_are_named():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, pixels):
            return self.lin(pixels)

    sm = SimilarityModel(Net(), "net")
    with pytest.raises(TypeError, match=r"\['label'\] are not arguments of net.forward\(pixels\)"
                                        r".*input_key="):
        sm.capture({"pixels": torch.randn(4, 3), "label": torch.zeros(4)})
    # the measure's input_key list picks the model's keys
    loader = [{"pixels": torch.randn(6, 3), "label": torch.zeros(6)}]
    res = CKA(sm, sm, estimator="full", input_key=["pixels"]).compute(loader, progress=False)
    assert res.matrix.shape == (1, 1)
