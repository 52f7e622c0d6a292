"""The offline validity benchmark (benchmarks/validity): scores against plain references, the
models' conditions, and a smoke run of the whole pipeline on a tiny setting (reruns agree)."""
import importlib.util
import itertools
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

HERE = Path(__file__).resolve().parents[1] / "benchmarks" / "validity"
sys.path.insert(0, str(HERE))

import validity_models as vm  # noqa: E402
import validity_scoring as vs  # noqa: E402

from simtorch_semantic.functional.registry import MeasureSpec  # noqa: E402

_spec = importlib.util.spec_from_file_location("validity_run", HERE / "run.py")
vrun = importlib.util.module_from_spec(_spec)
sys.modules["validity_run"] = vrun
_spec.loader.exec_module(vrun)


# ----------------------------------------------------------------------------- scoring
def test_oriented_flips_distances():
    assert vs.oriented([1.0, 2.0], True).tolist() == [1.0, 2.0]
    assert vs.oriented([1.0, 2.0], False).tolist() == [-1.0, -2.0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spearman_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=15)
    y = x + rng.normal(size=15)
    y[3] = y[4]                                             # a tie
    rho, _ = vs.spearman_permutation(x, y, n_resamples=9, seed=0)
    assert rho == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert vs.spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)


def test_spearman_permutation_pvalue_matches_exact_enumeration():
    x = np.array([0.1, 0.5, 0.2, 0.9, 0.7, 0.4])
    y = np.array([1.0, 2.5, 1.5, 2.0, 3.0, 0.5])
    rho = stats.spearmanr(x, y).statistic
    null = [stats.spearmanr(np.array(p), y).statistic for p in itertools.permutations(x)]
    exact = np.mean(np.array(null) >= rho - 1e-12)
    got_rho, p = vs.spearman_permutation(x, y, n_resamples=20000, seed=3)
    assert got_rho == pytest.approx(rho)
    assert p == pytest.approx(exact, abs=0.015)


def test_spearman_permutation_degenerate_and_bad_input():
    assert all(math.isnan(v) for v in vs.spearman_permutation([1, 1, 1, 1], [1, 2, 3, 4]))
    assert all(math.isnan(v) for v in vs.spearman_permutation([1, 2], [1, 2]))
    with pytest.raises(ValueError, match="same length"):
        vs.spearman_permutation([1, 2, 3], [1, 2])


def _ap_reference(pos, neg):
    """Average precision by hand: sum over positives of precision at its rank (no ties)."""
    scores = np.concatenate([pos, neg])
    labels = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    order = np.argsort(-scores)
    labels = labels[order]
    hits = np.cumsum(labels)
    return float(np.sum((hits / np.arange(1, len(labels) + 1))[labels == 1]) / len(pos))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_average_precision_matches_hand_reference(seed):
    rng = np.random.default_rng(seed)
    pos, neg = rng.normal(1.0, 1.0, size=7), rng.normal(0.0, 1.0, size=11)
    assert vs.average_precision(pos, neg) == pytest.approx(_ap_reference(pos, neg), abs=1e-12)
    assert vs.average_precision([2.0, 3.0], [0.0, 1.0]) == 1.0


def _groups_reference(S, groups):
    aps, vrs = [], []
    for g in dict.fromkeys(groups):
        pos, neg = [], []
        for i in range(len(groups)):
            for j in range(len(groups)):
                if i == j:
                    continue
                if groups[i] == g and groups[j] == g:
                    pos.append(S[i, j])
                elif groups[i] == g or groups[j] == g:
                    neg.append(S[i, j])
        aps.append(_ap_reference(np.array(pos), np.array(neg)))
        vrs.append(np.mean([p <= n for p in pos for n in neg]))
    return np.mean(aps), np.mean(vrs)


def test_group_separation_matches_loops():
    rng = np.random.default_rng(5)
    groups = ["a", "a", "b", "b", "b", "c", "c"]
    S = rng.normal(size=(7, 7))
    got = vs.group_separation(S, groups)
    ap, vr = _groups_reference(S, groups)
    assert got["auprc"] == pytest.approx(ap, abs=1e-12)
    assert got["violation_rate"] == pytest.approx(vr, abs=1e-12)
    assert got["n_comparisons"] == 42
    # perfect separation: within-group similarity 1, across 0
    g = np.array(groups)
    perfect = (g[:, None] == g[None, :]).astype(float)
    res = vs.group_separation(perfect, groups)
    assert res["auprc"] == 1.0 and res["violation_rate"] == 0.0


def test_chance_auprc_is_the_mean_share_of_positives():
    groups = ["a", "a", "b", "b", "b"]
    shares = [2 / (2 + 2 * 2 * 3), 6 / (6 + 2 * 3 * 2)]
    assert vs.chance_auprc(groups) == pytest.approx(np.mean(shares))


def test_group_separation_all_nan_group_is_nan():
    S = np.full((4, 4), np.nan)
    assert math.isnan(vs.group_separation(S, [0, 0, 1, 1])["auprc"])


def _monotonicity_reference(S):
    L = len(S)
    v = t = 0
    for i in range(L):
        for j in range(L):
            for k in range(L):
                if j == i or k == i or (j - i) * (k - i) <= 0 or abs(j - i) >= abs(k - i):
                    continue
                t += 1
                v += S[i, j] <= S[i, k]
    return v / t


def test_layer_monotonicity_matches_triple_loop():
    idx = np.arange(5)
    ideal = -np.abs(idx[:, None] - idx[None, :]).astype(float)
    res = vs.layer_monotonicity(ideal)
    assert res["violation_rate"] == 0.0 and res["spearman"] == pytest.approx(1.0)
    assert vs.layer_monotonicity(-ideal)["violation_rate"] == 1.0
    rng = np.random.default_rng(1)
    S = rng.normal(size=(6, 6))
    assert vs.layer_monotonicity(S)["violation_rate"] == pytest.approx(_monotonicity_reference(S))


def test_ordered_violations_counts_ties_as_violations():
    assert vs.ordered_violations([1.0, 0.8, 0.5, 0.1])["violation_rate"] == 0.0
    assert vs.ordered_violations([1.0, 1.0, 1.0])["violation_rate"] == 1.0
    res = vs.ordered_violations([1.0, 0.5, 0.7])            # one of three pairs violated
    assert res["violation_rate"] == pytest.approx(1 / 3) and res["n_comparisons"] == 3


# ----------------------------------------------------------------------------- models
def test_patches_code_each_class_differently():
    x = torch.zeros(10, 1, 8, 8)
    patched = vm.add_patch(x, torch.arange(10))
    flat = patched.reshape(10, -1)
    assert (flat.sum(1) == 2).all()                          # every patch is two pixels
    assert len({tuple(r.nonzero().flatten().tolist()) for r in flat}) == 10


def test_shift_images_moves_right_and_fills_zeros():
    x = torch.arange(64, dtype=torch.float32).reshape(1, 1, 8, 8)
    s = vm.shift_images(x, 2)
    assert torch.equal(s[..., 2:], x[..., :-2]) and (s[..., :2] == 0).all()
    assert torch.equal(vm.shift_images(x, 0), x)


def test_per_image_shifts_match_padded_crops():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((6, 1, 8, 8)).astype(np.float32))
    dx = torch.tensor([0, 1, -1, 2, -2, 1])
    dy = torch.tensor([0, -1, 1, 2, 0, 1])
    got = vm.shift_images(x, dx, dy)
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (2, 2), (2, 2)))
    for i in range(6):                  # the 8 x 8 crop of the padded image at offset -d
        ref = padded[i, :, 2 - dy[i]:10 - dy[i], 2 - dx[i]:10 - dx[i]]
        assert np.array_equal(got[i].numpy(), ref)
    ox, oy = vm.random_shifts(50, 2, seed=1)
    assert ox.abs().max() <= 2 and oy.abs().max() <= 2 and len(set(ox.tolist())) > 1
    assert torch.equal(ox, vm.random_shifts(50, 2, seed=1)[0])


@pytest.fixture
def one_thread():
    """Tiny models train many times faster on one thread on a loaded machine (as run.py does)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_training_is_deterministic_and_label_noise_hurts(one_thread):
    data = vm.load_data()
    spec = vm.TrainSpec(epochs=6, seed=3)
    a, b = vm.train(spec, data), vm.train(spec, data)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    acc = (a(data.x_test).argmax(1) == data.y_test).double().mean()
    noisy = vm.train(vm.TrainSpec(epochs=6, seed=3, random_labels=1.0), data)
    acc_noisy = (noisy(data.x_test).argmax(1) == data.y_test).double().mean()
    assert acc > 0.5 and acc_noisy < 0.3


def test_bad_architecture_is_named():
    with pytest.raises(ValueError, match="arch must be 'mlp' or 'cnn'"):
        vm.build(vm.TrainSpec(arch="rnn"))


def test_unknown_measure_on_the_command_line_raises(tmp_path):
    with pytest.raises((KeyError, ValueError), match="no_such_measure"):
        vrun.main(["--tiny", "--out", str(tmp_path), "--measures", "no_such_measure",
                   "--no-report", "--no-progress"])


# ----------------------------------------------------------------------------- pipeline
TINY_MEASURES = ["cka", "procrustes", "jensen_shannon", "semantic_cka"]


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("validity")
    outs = []
    for k in range(2):
        out = base / f"run{k}"
        summary = vrun.run_benchmark(vrun.SETTINGS["tiny"], out, TINY_MEASURES, progress=False,
                                     results_md=base / "RESULTS.md", docs=base / f"which{k}.md",
                                     command="test")
        outs.append((out, summary))
    return base, outs


def test_tiny_pipeline_writes_the_long_table(tiny_runs):
    import csv

    _, outs = tiny_runs
    out, _ = outs[0]
    with open(out / "validity.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0].keys()) == vrun.COLUMNS
    assert {r["measure"] for r in rows} == set(TINY_MEASURES)
    assert len(rows) == len(TINY_MEASURES) * len(vrun.TESTS)
    scored = [r for r in rows if not r["note"].startswith(("not applicable", "not run"))]
    assert scored and all(math.isfinite(float(r["score"])) for r in scored), scored
    assert all(r["error"] == "" for r in rows)
    # every test got at least one finite score, and semantic CKA is scored on the CNN maps
    assert {r["test"] for r in scored} == set(vrun.TESTS)
    assert any(r["measure"] == "semantic_cka" and r["test"] == "translation" for r in scored)
    assert (out / "heatmap.png").stat().st_size > 1000
    assert (out / "models.csv").read_text().count("\n") > 10


def test_tiny_pipeline_reruns_agree(tiny_runs):
    base, outs = tiny_runs
    assert (outs[0][0] / "validity.csv").read_bytes() == (outs[1][0] / "validity.csv").read_bytes()
    assert (base / "which0.md").read_text() == (base / "which1.md").read_text()


def test_results_section_is_rewritten_not_appended(tiny_runs):
    base, _ = tiny_runs
    text = (base / "RESULTS.md").read_text()
    assert text.count("validity:begin") == 1 and text.count("validity:end") == 1
    assert "Machine:" in text and "Load average" in text


def test_docs_page_is_generated_from_the_table(tiny_runs):
    base, _ = tiny_runs
    page = (base / "which0.md").read_text()
    assert page.startswith("# Which measure for which question")
    assert "generated by benchmarks/validity/run.py" in page
    for test in vrun.TESTS:
        assert f"`{test}`" in page


def test_a_failing_measure_gives_nan_and_its_error(tiny_runs):
    _, outs = tiny_runs
    trained = outs[0][1]["trained"]

    def broken(X, Y):
        raise RuntimeError("deliberate failure")

    spec = MeasureSpec(name="broken", fn=broken, family="test", paper="", higher_is_similar=True,
                       value_range=(0.0, 1.0), identical_value=1.0)
    labels = torch.zeros(vrun.SETTINGS["tiny"].n_eval, dtype=torch.int64)
    rows = vrun.score_measure(spec, trained, vrun.SETTINGS["tiny"], labels)
    ran = [r for r in rows if not r["note"]]
    assert ran and all(math.isnan(r["score"]) for r in ran)
    assert all("deliberate failure" in r["error"] for r in ran)
