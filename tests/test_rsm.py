"""Tests of rsm.py: multi-layer semantic / baseline RSMs and their on-disk cache."""
import os

import numpy as np
import pytest
import torch

import simtorch_semantic.rsm as rsm_mod
from simtorch_semantic.functional.semantic import semantic_sim_parallel, similarity_calculation
from simtorch_semantic.rsm import get_or_calculate_baseline_RSM, get_or_calculate_RSM


def reps(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "conv": np.maximum(rng.standard_normal((7, 4, 3, 3)), 0),          # (n, c, h, w)
        "tokens": torch.from_numpy(rng.standard_normal((7, 5, 6))).float(),  # (n, t, d)
    }


def test_full_rsm_equals_semantic_sim_parallel(tmp_path):
    r = reps()
    got = get_or_calculate_RSM(tmp_path, r, kernel=["ip", "cosine", "rbf"], progress=False)
    assert list(got) == ["conv", "tokens"]
    exp_conv = semantic_sim_parallel(r["conv"], kernel=["ip", "cosine", "rbf"], progress=False)
    exp_tok = semantic_sim_parallel(r["tokens"], kernel=["ip", "cosine", "rbf"], layout="nsc",
                                    progress=False)
    for k in ("ip", "cosine", "rbf"):
        np.testing.assert_allclose(got["conv"][k], exp_conv[k], rtol=1e-12)
        np.testing.assert_allclose(got["tokens"][k], exp_tok[k], rtol=1e-12)
    single = get_or_calculate_RSM(tmp_path, r, kernel="ip", progress=False)
    np.testing.assert_allclose(single["conv"], exp_conv["ip"], rtol=1e-12)
    # (n, c, s) maps need layout="ncs"
    x = np.maximum(np.random.default_rng(1).standard_normal((5, 4, 6)), 0)
    got_ncs = get_or_calculate_RSM(tmp_path, {"m": x}, layout="ncs", progress=False)
    np.testing.assert_allclose(got_ncs["m"], semantic_sim_parallel(x, progress=False), rtol=1e-12)


def test_baseline_equals_similarity_calculation(tmp_path):
    r = reps(2)
    got = get_or_calculate_baseline_RSM(tmp_path, r, kernel=["ip", "rbf"], progress=False)
    exp = similarity_calculation(r["conv"], kernel=["ip", "rbf"])
    for k in ("ip", "rbf"):
        np.testing.assert_allclose(got["conv"][k], exp[k], rtol=1e-12, atol=1e-15)


def test_blocks_are_diagonal_blocks_with_one_bandwidth(tmp_path):
    r = {"conv": reps(3)["conv"]}
    full = get_or_calculate_RSM(tmp_path, r, kernel=["ip", "cosine"], progress=False)["conv"]
    blocks = get_or_calculate_RSM(tmp_path, r, batch_size=3, kernel=["ip", "cosine", "rbf"],
                                  progress=False)["conv"]
    assert [b.shape for b in blocks["ip"]] == [(3, 3), (3, 3), (1, 1)]
    for bi, s in enumerate(range(0, 7, 3)):
        e = min(7, s + 3)
        for k in ("ip", "cosine"):
            np.testing.assert_allclose(blocks[k][bi], full[k][s:e, s:e], rtol=1e-12)
    # RBF: one sigma from the distinct pairs of all blocks (plain reference)
    d2_all, d2_blocks = [], []
    for s in range(0, 7, 3):
        e = min(7, s + 3)
        ip = full["ip"][s:e, s:e]
        n2 = np.diag(ip)
        d2 = np.maximum(n2[:, None] + n2[None, :] - 2 * ip, 0)
        np.fill_diagonal(d2, 0)
        d2_blocks.append(d2)
        d2_all += [d2[i, j] for i in range(e - s) for j in range(i + 1, e - s)]
    sigma2 = np.median(np.sqrt([v for v in d2_all if v > 0])) ** 2  # median non-zero distance
    for bi, d2 in enumerate(d2_blocks):
        np.testing.assert_allclose(blocks["rbf"][bi], np.exp(-d2 / (2 * sigma2)), rtol=1e-10)
    base = get_or_calculate_baseline_RSM(tmp_path, r, batch_size=3, progress=False)["conv"]
    np.testing.assert_allclose(base[0], similarity_calculation(r["conv"][:3]), rtol=1e-12)


def test_cache_hit_does_not_recompute_and_key_covers_content_and_params(tmp_path, monkeypatch):
    r = reps(4)
    first = get_or_calculate_RSM(tmp_path, r, kernel=["ip", "cosine"], progress=False)
    files = sorted(os.listdir(tmp_path))
    assert len(files) == 1 and files[0].startswith("semantic_rsm_") and files[0].endswith(".npz")

    def boom(*a, **k):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(rsm_mod, "_layer_rsms", boom)
    again = get_or_calculate_RSM(tmp_path, r, kernel=["ip", "cosine"], n_workers=1,
                                 progress=False)
    for layer in first:
        for k in first[layer]:
            np.testing.assert_array_equal(again[layer][k], first[layer][k])
    monkeypatch.undo()
    # any change in content, dtype, shape or parameters gives a new cache entry
    r2 = dict(r)
    r2["conv"] = r["conv"].copy()
    r2["conv"][0, 0, 0, 0] += 1.0
    get_or_calculate_RSM(tmp_path, r2, kernel=["ip", "cosine"], progress=False)
    get_or_calculate_RSM(tmp_path, r, kernel=["ip"], progress=False)
    get_or_calculate_RSM(tmp_path, r, kernel=["ip", "cosine"], matching="greedy", progress=False)
    get_or_calculate_RSM(tmp_path, r, kernel=["ip", "cosine"], batch_size=4, progress=False)
    r3 = {"conv": r["conv"].astype(np.float32), "tokens": r["tokens"]}
    get_or_calculate_RSM(tmp_path, r3, kernel=["ip", "cosine"], progress=False)
    get_or_calculate_baseline_RSM(tmp_path, r, kernel=["ip", "cosine"], progress=False)
    names = [f for f in os.listdir(tmp_path)]
    assert len(names) == 7 and not any(f.endswith(".tmp") for f in names)


def test_paths_pt_and_npy(tmp_path):
    r = reps(5)
    p_pt = tmp_path / "layer_a.pt"
    p_npy = tmp_path / "layer_b.npy"
    torch.save(torch.from_numpy(r["conv"]), p_pt)
    np.save(p_npy, r["tokens"].numpy())
    p_dict = tmp_path / "layer_c.pt"
    torch.save({"act": r["tokens"]}, p_dict)
    got = get_or_calculate_RSM(tmp_path / "cache", [p_pt, str(p_npy), p_dict], progress=False)
    assert list(got) == ["0", "1", "2"]
    np.testing.assert_allclose(got["0"], semantic_sim_parallel(r["conv"], progress=False),
                               rtol=1e-12)
    exp_tok = semantic_sim_parallel(r["tokens"], layout="nsc", progress=False)
    np.testing.assert_allclose(got["1"], exp_tok, rtol=1e-12)
    np.testing.assert_allclose(got["2"], exp_tok, rtol=1e-12)
    by_dict = get_or_calculate_RSM(tmp_path / "cache", {"a": p_pt}, progress=False)
    np.testing.assert_allclose(by_dict["a"], got["0"])


def _only_cache_file(d):
    files = [f for f in os.listdir(d) if f.endswith(".npz")]
    assert len(files) == 1
    return d / files[0]


def test_corrupt_cache_file_is_recomputed_with_warning(tmp_path):
    r = reps(6)
    first = get_or_calculate_RSM(tmp_path, r, progress=False)
    path = _only_cache_file(tmp_path)
    path.write_bytes(b"this is not an npz file")
    with pytest.warns(RuntimeWarning, match="cannot be used.*recomputing"):
        again = get_or_calculate_RSM(tmp_path, r, progress=False)
    np.testing.assert_array_equal(again["conv"], first["conv"])
    with np.load(path, allow_pickle=False) as z:  # overwritten with a valid file
        assert "__key__" in z.files


def test_foreign_cache_file_is_recomputed_with_warning(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    ra, rb = reps(7), reps(8)
    get_or_calculate_RSM(a, ra, progress=False)
    exp_b = get_or_calculate_RSM(b, rb, progress=False)
    # put a's file under b's name: a foreign file with the wrong key inside
    os.replace(_only_cache_file(a), _only_cache_file(b))
    with pytest.warns(RuntimeWarning, match="holds the key"):
        got = get_or_calculate_RSM(b, rb, progress=False)
    np.testing.assert_array_equal(got["conv"], exp_b["conv"])
    got2 = get_or_calculate_RSM(b, rb, progress=False)  # now a clean hit
    np.testing.assert_array_equal(got2["conv"], exp_b["conv"])


def test_out_dir_created_if_missing(tmp_path):
    out = tmp_path / "deep" / "er"
    get_or_calculate_baseline_RSM(out, reps(), progress=False)
    assert out.is_dir()


def test_not_writable_out_dir_fails_before_computing(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("computed although the cache directory is not writable")

    monkeypatch.setattr(rsm_mod, "_layer_rsms", boom)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(NotADirectoryError, match="a_file', which is a file.*pass a directory"):
        get_or_calculate_RSM(blocker / "sub", reps(), progress=False)
    # the write probe failing (what a read-only directory does to a non-root user)
    real_mkstemp = rsm_mod.tempfile.mkstemp

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(rsm_mod.tempfile, "mkstemp", denied)
    with pytest.raises(PermissionError, match="is not writable.*writable directory"):
        get_or_calculate_baseline_RSM(tmp_path, reps(), progress=False)
    monkeypatch.setattr(rsm_mod.tempfile, "mkstemp", real_mkstemp)


def test_out_dir_that_is_a_file_says_so(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("computed although the cache path is a file")

    monkeypatch.setattr(rsm_mod, "_layer_rsms", boom)
    blocker = tmp_path / "cache.pt"
    blocker.write_bytes(b"not a directory")
    for fn in (get_or_calculate_RSM, get_or_calculate_baseline_RSM):
        with pytest.raises(NotADirectoryError, match=r"cache\.pt' is a file, not a directory; "
                           "pass a directory"):
            fn(blocker, reps(), progress=False)
        with pytest.raises(NotADirectoryError, match=r"cache\.pt', which is a file"):
            fn(blocker / "a" / "b", reps(), progress=False)
    assert blocker.read_bytes() == b"not a directory"


def test_read_only_out_dir_with_chmod(tmp_path):
    ro = tmp_path / "readonly"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user (root) for whom chmod does not remove write access")
        with pytest.raises(PermissionError, match="is not writable"):
            get_or_calculate_RSM(ro, reps(), progress=False)
    finally:
        ro.chmod(0o700)


def test_bad_inputs(tmp_path):
    r = reps()
    with pytest.raises(ValueError, match="representations is empty"):
        get_or_calculate_RSM(tmp_path, {}, progress=False)
    with pytest.raises(TypeError, match="dict layer"):
        get_or_calculate_RSM(tmp_path, np.ones((3, 4, 5)), progress=False)
    with pytest.raises(ValueError, match="flat \\(n, d\\) features have no positions"):
        get_or_calculate_RSM(tmp_path, {"fc": np.ones((4, 10))}, progress=False)
    with pytest.raises(ValueError, match="batch_size must be None"):
        get_or_calculate_RSM(tmp_path, r, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="unknown kernel"):
        get_or_calculate_RSM(tmp_path, r, kernel="poly", progress=False)
    with pytest.raises(ValueError, match="unknown matching"):
        get_or_calculate_RSM(tmp_path, r, matching="auction9", progress=False)
    with pytest.raises(ValueError, match="unknown layout"):
        get_or_calculate_RSM(tmp_path, r, layout="nchw", progress=False)
    bad = tmp_path / "x.pkl"
    bad.write_bytes(b"")
    with pytest.raises(ValueError, match="unsupported file type"):
        get_or_calculate_RSM(tmp_path, [bad], progress=False)
    with pytest.raises(FileNotFoundError, match="not found"):
        get_or_calculate_RSM(tmp_path, [tmp_path / "missing.npy"], progress=False)
    two = tmp_path / "two.pt"
    torch.save({"a": torch.ones(2, 2, 2), "b": torch.ones(2, 2, 2)}, two)
    with pytest.raises(ValueError, match="exactly one tensor"):
        get_or_calculate_RSM(tmp_path, [two], progress=False)
    nan = r["conv"].copy()
    nan[3, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf.*sample 3"):
        get_or_calculate_RSM(tmp_path, {"conv": nan}, progress=False)


def test_infeasible_exact_refused_before_any_layer(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("computed a layer before refusing")

    monkeypatch.setattr(rsm_mod, "_layer_rsms", boom)
    big = {"small": np.zeros((4, 2, 2, 2)), "huge": torch.zeros(64, 1, 56, 56)}
    with pytest.raises(ValueError, match="would take about"):
        get_or_calculate_RSM(tmp_path, big, matching="exact", progress=False)


def test_unusual_dtypes_and_memory_layouts(tmp_path):
    x = np.maximum(np.random.default_rng(9).standard_normal((5, 3, 2, 4)), 0)
    reps = {"bf16": torch.from_numpy(x).bfloat16(), "big_endian": x.astype(">f8"),
            "strided": torch.from_numpy(x)[:, :, :, ::2]}
    got = get_or_calculate_RSM(tmp_path, reps, progress=False)
    np.testing.assert_allclose(got["big_endian"], semantic_sim_parallel(x, progress=False),
                               rtol=1e-12)
    np.testing.assert_allclose(
        got["strided"], semantic_sim_parallel(np.ascontiguousarray(x[:, :, :, ::2]),
                                              progress=False), rtol=1e-12)
    bf = torch.from_numpy(x).bfloat16().float().numpy()
    np.testing.assert_allclose(got["bf16"], semantic_sim_parallel(bf, progress=False), rtol=1e-6)
    again = get_or_calculate_RSM(tmp_path, reps, progress=False)  # hashes are stable
    assert len([f for f in os.listdir(tmp_path) if f.endswith(".npz")]) == 1
    np.testing.assert_array_equal(again["bf16"], got["bf16"])
