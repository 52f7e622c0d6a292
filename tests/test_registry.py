"""The measure protocol: registry entry points, functional.similarity against plain references,
the spatial policy, LayerSimilarity, the CLI's registered measures, and the consistency rules."""
import ast
import math
import pathlib
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy.linalg import orth
from scipy.optimize import linear_sum_assignment
from scipy.spatial import procrustes as scipy_procrustes
from scipy.stats import pearsonr, spearmanr
from torch.utils.data import DataLoader, TensorDataset

import simtorch_semantic as sts
from simtorch_semantic import CCA, CKA, RSA, LayerSimilarity, Procrustes, SemanticCKA, SimilarityModel
from simtorch_semantic.cli import list_measures_text, main
from simtorch_semantic.functional import similarity
from simtorch_semantic.functional.cka import cka_prepare, cka_score_all_pairs
from simtorch_semantic.functional.hsic import hsic_all_pairs, hsic_biased
from simtorch_semantic.functional.kernels import median_bandwidth, sq_distances
from simtorch_semantic.functional.registry import MeasureSpec, get_measure, register
from simtorch_semantic.functional.rsa import compare_rdms, rdm
from simtorch_semantic.functional.semantic import median_sigma
from simtorch_semantic.functional.spatial import apply_spatial, to_vectors

EXISTING = ["cka", "rbf_cka", "rsa", "procrustes", "procrustes_angular", "cca", "svcca", "pwcca",
            "semantic_cka"]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pair(n=30, d=4, e=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    Y = X @ rng.standard_normal((d, e)) + 0.7 * rng.standard_normal((n, e))
    return X, Y


# ------------------------------------------------------------------ plain references
def ref_linear_cka(X, Y):
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    return np.linalg.norm(Xc.T @ Yc) ** 2 / (np.linalg.norm(Xc.T @ Xc) * np.linalg.norm(Yc.T @ Yc))


def ref_rbf_cka(X, Y, frac=0.8):
    def gram(A):
        D = ((A[:, None, :] - A[None, :, :]) ** 2).sum(-1)
        d = np.sqrt(D[np.triu_indices(len(A), 1)])
        s = frac * np.median(d[d > 0])
        return np.exp(-D / (2 * s * s))
    n = len(X)
    H = np.eye(n) - 1.0 / n
    K, L = H @ gram(X) @ H, H @ gram(Y) @ H
    return (K * L).sum() / np.sqrt((K * K).sum() * (L * L).sum())


def ref_rsa(X, Y, rank=False):
    def rdm_(A):
        return 1 - np.corrcoef(A)
    iu = np.triu_indices(len(X), 1)
    a, b = rdm_(X)[iu], rdm_(Y)[iu]
    return (spearmanr(a, b).statistic if rank else pearsonr(a, b).statistic)


def ref_mean_cca(X, Y):
    Qx, Qy = orth(X - X.mean(0)), orth(Y - Y.mean(0))
    rho = np.linalg.svd(Qx.T @ Qy, compute_uv=False)
    return rho[: min(Qx.shape[1], Qy.shape[1])].mean()


def ref_semantic_cka_linear(X, Y):
    """X, Y [n, C, S]: brute-force semantic RSM (linear kernel) and biased CKA."""
    def rsm(A):
        V = np.transpose(A, (0, 2, 1))
        n = len(V)
        K = np.empty((n, n))
        for i in range(n):
            for j in range(n):
                c = V[i] @ V[j].T
                r, col = linear_sum_assignment(c, maximize=True)
                K[i, j] = c[r, col].sum()
        return K
    n = len(X)
    H = np.eye(n) - 1.0 / n
    K, L = H @ rsm(X) @ H, H @ rsm(Y) @ H
    return (K * L).sum() / np.sqrt((K * K).sum() * (L * L).sum())


# ------------------------------------------------------------------ entry points
def test_entry_points_are_exported_and_list_the_existing_families():
    names = sts.list_measures()
    assert isinstance(names, list) and names == sorted(names)
    assert set(EXISTING) <= set(names)
    assert sts.functional.similarity is similarity
    assert sts.LayerSimilarity is LayerSimilarity
    info = sts.describe_measure("procrustes_angular")
    assert info["higher_is_similar"] is False and info["value_range"] == (0.0, math.pi / 2)
    for key in ("name", "aliases", "paper", "invariances", "symmetric", "equal_widths", "streaming",
                "options", "identical_value", "inputs", "description"):
        assert key in info
    assert sts.describe_measure("cka")["streaming"] is True
    assert "invertible_linear" in sts.describe_measure("cca")["invariances"]
    assert sts.describe_measure("rsa")["options"] == {"metric": "pearson", "method": "pearson",
                                                        "center": False}


@pytest.mark.parametrize("alias,name", [("cka-kernel=linear-hsic=gretton", "cka"),
                                        ("LINEAR-CKA", "cka"), ("cka-kernel=rbf-hsic=gretton", "rbf_cka"),
                                        ("angular_procrustes", "procrustes_angular"),
                                        ("mean_cca", "cca"), ("perm_inv_cka", "semantic_cka")])
def test_aliases_resolve(alias, name):
    assert get_measure(alias).name == name


def test_unknown_measure_and_option_errors_name_the_fix():
    X, Y = pair()
    with pytest.raises(ValueError, match=r"unknown measure 'ckaa'; close names: 'cka'.*list_measures"):
        similarity(X, Y, "ckaa")
    with pytest.raises(ValueError, match=r"'rsa' has no option\(s\) 'metrc'.*metric='pearson'"):
        similarity(X, Y, "rsa", metrc="L2")
    with pytest.raises(ValueError, match=r"unknown spatial policy 'avg'"):
        similarity(X, Y, "cka", spatial="avg")
    with pytest.raises(TypeError, match="measure must be a name"):
        similarity(X, Y, 3)
    with pytest.raises(ValueError, match="already registered"):
        register(MeasureSpec(name="cka", fn=lambda X, Y: 0.0, family="x", paper="", higher_is_similar=True,
                             value_range=(0, 1), identical_value=1.0))
    with pytest.raises(ValueError, match="unknown invariances"):
        MeasureSpec(name="zz", fn=lambda X, Y: 0.0, family="x", paper="", higher_is_similar=True,
                    value_range=(0, 1), identical_value=1.0, invariances=frozenset({"rotation"}))


# ------------------------------------------------------------------ against plain references
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_similarity_matches_plain_references(dtype):
    X, Y = pair(seed=1)
    Xd, Yd = X.astype(dtype), Y.astype(dtype)
    tol = 1e-5 if dtype == np.float32 else 1e-10
    assert similarity(Xd, Yd, "cka") == pytest.approx(ref_linear_cka(X, Y), abs=tol)
    assert similarity(torch.tensor(Xd), torch.tensor(Yd), "rbf_cka") == pytest.approx(ref_rbf_cka(X, Y), abs=tol)
    assert similarity(Xd, Yd, "rbf_cka", sigma_frac=0.5) == pytest.approx(ref_rbf_cka(X, Y, 0.5), abs=tol)
    assert similarity(Xd, Yd, "rsa") == pytest.approx(ref_rsa(X, Y), abs=tol)
    assert similarity(Xd, Yd, "rsa", method="spearman") == pytest.approx(ref_rsa(X, Y, rank=True), abs=tol)
    Yp = np.pad(Y, ((0, 0), (0, 0)))  # scipy needs equal widths: compare on the 6-wide pair
    Xp = np.pad(X, ((0, 0), (0, 2)))
    disparity = scipy_procrustes(Xp, Yp)[2]
    assert similarity(Xd, Yd, "procrustes") == pytest.approx(disparity, abs=tol)
    assert similarity(Xd, Yd, "procrustes_angular") == pytest.approx(
        math.acos(math.sqrt(1 - disparity)), abs=10 * tol)
    assert similarity(Xd, Yd, "cca") == pytest.approx(ref_mean_cca(X, Y), abs=tol)


def test_semantic_cka_matches_brute_force_reference():
    rng = np.random.default_rng(2)
    X = np.maximum(rng.standard_normal((7, 3, 2, 2)), 0)
    Y = np.maximum(rng.standard_normal((7, 4, 2, 2)), 0)
    want = ref_semantic_cka_linear(X.reshape(7, 3, 4), Y.reshape(7, 4, 4))
    assert similarity(X, Y, "semantic_cka", kernel="linear") == pytest.approx(want, abs=1e-10)


def test_all_pairs_forms_equal_pair_by_pair():
    reps = [pair(seed=s)[k] for s in range(3) for k in (0, 1)]
    for name, opts in [("cka", {}), ("rbf_cka", {}), ("rsa", {}), ("rsa", {"method": "kendall"}),
                       ("procrustes", {}), ("procrustes_angular", {}), ("cca", {}), ("svcca", {}),
                       ("pwcca", {})]:
        spec = get_measure(name)
        o = {**spec.options, **opts}
        from simtorch_semantic.functional.registry import call_with_options
        P = [call_with_options(spec.prepare, R, options=o) for R in reps]
        M = call_with_options(spec.score_all_pairs, P[:3], P, options=o)
        want = [[similarity(a, b, name, **opts) for b in reps] for a in reps[:3]]
        np.testing.assert_allclose(M, want, atol=1e-10, err_msg=name)


def test_cka_all_pairs_in_blocks(monkeypatch):
    import simtorch_semantic.functional.cka as cka_mod
    reps = [pair(seed=s)[0] for s in range(4)]
    P = [cka_prepare(R) for R in reps]
    whole = cka_score_all_pairs(P, P)
    monkeypatch.setattr(cka_mod, "_BLOCK_BYTES", 1)  # one Gram per block
    np.testing.assert_allclose(cka_score_all_pairs(P, P), whole, atol=1e-14)


# ------------------------------------------------------------------ spatial policy
def test_spatial_policy_shapes_and_values():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((5, 3, 2, 4))          # [n, C, H, W]
    T = rng.standard_normal((5, 6, 3))             # [n, T, D] tokens
    np.testing.assert_array_equal(to_vectors(X, "flatten").numpy(), X.reshape(5, -1))
    np.testing.assert_allclose(to_vectors(X, "mean").numpy(), X.mean(axis=(2, 3)))
    np.testing.assert_array_equal(to_vectors(X, "positions").numpy(),
                                  X.reshape(5, 3, 8).transpose(0, 2, 1).reshape(40, 3))
    np.testing.assert_allclose(to_vectors(T, "mean").numpy(), T.mean(axis=1))
    np.testing.assert_array_equal(to_vectors(T, "positions").numpy(), T.reshape(30, 3))
    flat = rng.standard_normal((5, 7))
    for policy in ("flatten", "mean", "positions"):
        np.testing.assert_array_equal(to_vectors(flat, policy).numpy(), flat)
    with pytest.raises(ValueError, match=r"X has 8 positions .* Y has 6 .*spatial='mean'"):
        apply_spatial(X, T, "positions")
    Y = rng.standard_normal((5, 4, 2, 4))
    assert similarity(X, Y, "cka", spatial="mean") == pytest.approx(
        ref_linear_cka(X.mean(axis=(2, 3)), Y.mean(axis=(2, 3))), abs=1e-12)
    assert similarity(X, Y, "cka", spatial="positions") == pytest.approx(
        ref_linear_cka(X.reshape(5, 3, 8).transpose(0, 2, 1).reshape(40, 3),
                       Y.reshape(5, 4, 8).transpose(0, 2, 1).reshape(40, 4)), abs=1e-12)
    assert similarity(X, Y, "cka") == pytest.approx(ref_linear_cka(X.reshape(5, -1), Y.reshape(5, -1)))


# ------------------------------------------------------------------ LayerSimilarity
def _net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(20, 6))


@pytest.fixture(scope="module")
def models():
    m1 = SimilarityModel(_net(0), model_name="a", layers_to_include=["1", "3", "6"])
    m2 = SimilarityModel(_net(1), model_name="b", layers_to_include=["1", "3", "6"])
    g = torch.Generator().manual_seed(0)
    loader = DataLoader(TensorDataset(torch.randn(40, 3, 4, 4, generator=g)), batch_size=10)
    return m1, m2, loader


def test_layer_similarity_equals_the_named_classes(models):
    m1, m2, loader = models
    run = dict(progress=False)
    pairs = [
        (LayerSimilarity(m1, m2, "cka"), CKA(m1, m2, estimator="full")),
        (LayerSimilarity(m1, m2, "rbf_cka"), CKA(m1, m2, kernel="rbf", estimator="full")),
        (LayerSimilarity(m1, m2, "rsa", method="spearman"), RSA(m1, m2, method="spearman")),
        (LayerSimilarity(m1, m2, "procrustes_angular"), Procrustes(m1, m2, angular=True)),
        (LayerSimilarity(m1, m2, "cca", spatial="mean"), None),
        (LayerSimilarity(m1, m2, "semantic_cka", kernel="linear", matching="greedy"),
         SemanticCKA(m1, m2, kernel="linear", matching="greedy")),
    ]
    for ours, theirs in pairs:
        got = ours.compute(loader, **run)
        assert got.matrix.shape == (3, 3) and got.measure == ours.spec.name
        assert got.higher_is_similar == ours.spec.higher_is_similar
        if theirs is not None:
            np.testing.assert_allclose(got.matrix, theirs.compute(loader, **run).matrix, atol=1e-9,
                                       err_msg=ours.spec.name)
    res = LayerSimilarity(m1, m2, "procrustes").compute(loader, **run)
    assert res.higher_is_similar is False and res.params == {"spatial": "flatten"}
    res = LayerSimilarity(m1, m2, "cca", spatial="mean").compute(loader, **run)
    acts1 = m1.capture(next(iter(DataLoader(loader.dataset, batch_size=40)))[0])
    acts2 = m2.capture(next(iter(DataLoader(loader.dataset, batch_size=40)))[0])
    want = [[similarity(a, b, "cca", spatial="mean") for b in acts2.values()] for a in acts1.values()]
    np.testing.assert_allclose(res.matrix, want, atol=1e-10)


def test_layer_similarity_constant_layer_and_errors(models):
    m1, _, loader = models
    const = SimilarityModel(nn.Sequential(nn.Flatten(), nn.Linear(48, 3), nn.ReLU()), model_name="c")
    with torch.no_grad():
        const.model[1].weight.zero_()
        const.model[1].bias.fill_(1.0)
    with pytest.warns(RuntimeWarning, match="all samples identical"):
        res = LayerSimilarity(m1, const, "procrustes").compute(loader, progress=False)
    assert np.isnan(res.matrix[:, -1]).all() and any("c.2" in note for note in res.notes)
    with pytest.raises(ValueError, match="has no option"):
        LayerSimilarity(m1, m1, "cka", kernel="rbf")
    with pytest.raises(ValueError, match="unknown measure"):
        LayerSimilarity(m1, m1, "nope")
    with pytest.raises(ValueError, match="unknown spatial policy"):
        LayerSimilarity(m1, m1, "cka", spatial="max")
    with pytest.raises(ValueError, match="same number of positions"):
        LayerSimilarity(m1, m1, "cka", spatial="positions").compute(loader, progress=False)
    with pytest.raises(TypeError):
        LayerSimilarity(m1, m1)  # the measure is required


# ------------------------------------------------------------------ CLI
def test_cli_lists_measures_and_runs_a_registered_measure(tmp_path, capsys):
    assert main(["--list-measures"]) == 0
    out = capsys.readouterr().out
    for name in sts.list_measures():
        assert any(line.startswith(name + " ") for line in out.splitlines())
    assert "dcka" in out and "aliases:" in out
    assert list_measures_text() == out.strip("\n")
    args = ["compare", "resnet18", "resnet18", "--layers-a", "layer4.?", "--layers-b", "layer4.?",
            "--n", "8", "--image-size", "32", "--batch-size", "8", "--no-progress"]
    assert main([*args, "--measure", "angular_procrustes", "--option", "spatial=mean",
                 "--out", str(tmp_path)]) == 0
    result = sts.SimilarityResult.load(tmp_path / "resnet18_vs_resnet18_procrustes_angular.json")
    assert result.measure == "procrustes_angular" and result.higher_is_similar is False
    assert result.params["spatial"] == "mean"
    assert result.matrix.shape == (2, 2) and np.isfinite(result.matrix).all()
    assert (result.matrix >= 0).all() and (result.matrix <= math.pi / 2).all()
    # an alias of a measure with its own class keeps the class (and its --estimator)
    assert main([*args, "--measure", "linear_cka", "--out", str(tmp_path)]) == 0
    assert sts.SimilarityResult.load(tmp_path / "resnet18_vs_resnet18_cka.json").params["estimator"] == "minibatch"
    assert main([*args, "--measure", "procrustes_angulr", "--out", str(tmp_path)]) == 2
    assert "did you mean procrustes_angular" in capsys.readouterr().err


# ------------------------------------------------------------------ consistency
def test_options_are_keyword_only(models):
    m1, m2, _ = models
    for cls, arg in ((CKA, "rbf"), (RSA, "L2"), (Procrustes, True), (CCA, "svcca"), (SemanticCKA, "rbf")):
        with pytest.raises(TypeError):
            cls(m1, m2, arg)


def test_unbiased_is_never_silently_overridden(models):
    m1, m2, _ = models
    with pytest.raises(ValueError, match="minibatch.*unbiased"):
        CKA(m1, m2, unbiased=False)
    assert CKA(m1, m2).unbiased is True                         # the minibatch estimator's own
    assert CKA(m1, m2, estimator="full").unbiased is False      # the package-wide default
    K = torch.randn(6, 6, dtype=torch.float64)
    K = K @ K.T
    assert float(hsic_all_pairs(K[None], K[None])[0][0, 0]) == pytest.approx(float(hsic_biased(K, K)))


def test_old_kernel_name_ip_warns_and_means_linear(models):
    m1, m2, _ = models
    with pytest.warns(DeprecationWarning, match="old name"):
        assert CKA(m1, m2, kernel="ip").kernel == "linear"
    with pytest.warns(DeprecationWarning, match="old name"):
        assert SemanticCKA(m1, m2, kernel="ip").kernel == "linear"


def test_one_default_rsa_method_and_one_bandwidth_rule():
    X, Y = pair(n=12, seed=4)
    A, B = rdm(X), rdm(Y)
    assert compare_rdms(A, B) == compare_rdms(A, B, "pearson")
    assert RSA.__init__.__kwdefaults__["method"] == "pearson"
    d2 = np.random.default_rng(0).uniform(0.5, 3.0, 10)       # an even count of distances
    D = np.zeros((5, 5))
    D[np.triu_indices(5, 1)] = d2
    D = D + D.T
    want = np.median(np.sqrt(d2))
    assert float(median_bandwidth(torch.tensor(D))) == pytest.approx(want, rel=1e-12)
    assert median_sigma(d2) == pytest.approx(want, rel=1e-12)
    assert float(median_bandwidth(sq_distances(torch.tensor(X)))) > 0


def test_no_private_name_crosses_a_module_boundary():
    """``from .x import _y`` between modules of functional/, measures/ and cli.py is not allowed."""
    root = pathlib.Path(sts.__file__).parent
    files = list((root / "functional").glob("*.py")) + list((root / "measures").glob("*.py"))
    files += [root / "cli.py", root / "__init__.py"]
    bad = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        bad.append(f"{path.name}: from {node.module} import {alias.name}")
    assert not bad, bad
