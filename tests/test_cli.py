"""Tests of the ``simtorch-semantic compare`` command (cli.py, __main__.py).

Models are randomly initialised torchvision networks at tiny image sizes, so every run is offline
and takes about a second.
"""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from simtorch_semantic import cli
from simtorch_semantic.cli import MEASURES, main
from simtorch_semantic.results import SimilarityResult

REPO = Path(__file__).resolve().parents[1]
FAST = ["--n", "16", "--image-size", "32", "--batch-size", "8", "--no-progress"]
RESNET18_BLOCKS = ["conv1", "bn1", "relu", "maxpool", "layer1.0", "layer1.1", "layer2.0",
                   "layer2.1", "layer3.0", "layer3.1", "layer4.0", "layer4.1", "avgpool", "fc"]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One intra-op thread for these tiny models: on a busy 2-core machine two OpenMP threads
    make each forward pass many times slower (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got: {err!r}"
    assert lines[0].startswith("simtorch-semantic: error: ")
    assert "Traceback" not in err
    return lines[0]


# ------------------------------------------------------------------------ the main job
def test_compare_end_to_end_writes_png_csv_json(tmp_path, capsys):
    out = tmp_path / "results"
    code = main(["compare", "resnet18", "resnet18", "--n", "16", "--image-size", "32",
                 "--batch-size", "8", "--out", str(out)])
    assert code == 0
    stem = out / "resnet18_vs_resnet18_cka"
    png, csv_path, json_path = (stem.with_suffix(s) for s in (".png", ".csv", ".json"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    captured = capsys.readouterr()
    for path in (png, csv_path, json_path):
        assert f"wrote {path}" in captured.out
    assert "%" in captured.err or "batch" in captured.err      # the progress bar was shown

    result = SimilarityResult.load(json_path)
    matrix = np.asarray(result)
    assert matrix.shape == (14, 14)
    assert result.row_layers == RESNET18_BLOCKS and result.col_layers == RESNET18_BLOCKS
    assert result.n_samples == 16 and result.measure == "cka"
    assert np.isfinite(matrix).all()
    assert (matrix > -0.05).all() and (matrix < 1.0 + 1e-6).all()
    meta = json.loads(json_path.read_text())
    assert meta["model1_name"] == "resnet18" and meta["params"]["estimator"] == "minibatch"
    assert meta["params"]["compare"] == {"weights": None, "images": "shipped photographs",
                                         "image_size": 32, "seed": 0, "batch_size": 8,
                                         "distinct_images": 7}
    assert "over 16 samples of 7 distinct images" in captured.out

    with open(csv_path, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0][1:] == RESNET18_BLOCKS and [r[0] for r in rows[1:]] == RESNET18_BLOCKS
    np.testing.assert_allclose(np.array([r[1:] for r in rows[1:]], dtype=float), matrix,
                               rtol=0, atol=1e-12)


def test_compare_layers_seed_and_determinism(tmp_path, capsys):
    args = ["compare", "resnet18", "mobilenet_v3_small", "--layers-a", "layer1.0, layer4.?,fc",
            "--layers-b", "nn.Linear", "--n", "8", "--image-size", "32", "--batch-size", "8",
            "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    assert main([*args, "--seed", "1", "--out", str(tmp_path / "c")]) == 0
    name = "resnet18_vs_mobilenet_v3_small_cka.json"
    a, b, c = (SimilarityResult.load(tmp_path / d / name) for d in "abc")
    assert a.row_layers == ["layer1.0", "layer4.0", "layer4.1", "fc"]
    assert a.col_layers == ["classifier.0", "classifier.3"]
    np.testing.assert_array_equal(a.matrix, b.matrix)       # same seed -> same numbers
    assert not np.allclose(a.matrix, c.matrix)              # another seed -> other weights/crops
    assert "%" not in capsys.readouterr().err               # --no-progress


def test_compare_full_estimator_and_own_images(tmp_path):
    from PIL import Image
    images = tmp_path / "imgs"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(images / f"{i}.png")
    out = tmp_path / "out"
    assert main(["compare", "resnet18", "resnet18", "--layers-a", "layer1.?", "--layers-b",
                 "layer2.?", "--images", str(images), "--estimator", "full", "--out", str(out),
                 *FAST]) == 0
    result = SimilarityResult.load(out / "resnet18_vs_resnet18_cka.json")
    assert result.shape == (2, 2) and result.params["estimator"] == "full"


def test_weights_default_goes_through_get_model(tmp_path, monkeypatch):
    """--weights DEFAULT asks torchvision.models.get_model(name, weights="DEFAULT").

    The download itself is replaced by a randomly initialised model (no network in tests). The
    same run checks that the caller's global torch RNG is left as it was.
    """
    calls = []
    real_get_model = torchvision.models.get_model

    def fake_get_model(name, **config):
        calls.append((name, dict(config)))
        return real_get_model(name, weights=None)

    monkeypatch.setattr(torchvision.models, "get_model", fake_get_model)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    assert main(["compare", "resnet18", "resnet18", "--weights", "DEFAULT", "--layers-a", "fc",
                 "--layers-b", "fc", "--out", str(tmp_path), "--n", "8", "--image-size", "32",
                 "--batch-size", "8", "--no-progress"]) == 0
    assert torch.equal(torch.rand(3), expected)
    assert [c[0] for c in calls] == ["resnet18", "resnet18"]
    assert all(c[1]["weights"] == "DEFAULT" for c in calls)
    meta = json.loads((tmp_path / "resnet18_vs_resnet18_cka.json").read_text())
    assert meta["params"]["compare"]["weights"] == "DEFAULT"


def test_measure_options_reach_the_measure(tmp_path):
    assert main(["compare", "resnet18", "resnet18", "--measure", "rbf_cka", "--option",
                 "sigma_frac=0.5", "--layers-a", "fc", "--layers-b", "avgpool,fc",
                 "--out", str(tmp_path), "--n", "8", "--batch-size", "8", "--image-size", "32",
                 "--no-progress"]) == 0
    result = SimilarityResult.load(tmp_path / "resnet18_vs_resnet18_rbf_cka.json")
    assert result.params["kernel"] == "rbf" and result.params["sigma_frac"] == 0.5
    assert result.shape == (1, 2)


def test_parse_options_values():
    assert cli._parse_options(["a=1", "b=0.5", "c=True", "d=none", "e= greedy ", "f=1e-3"]) == [
        ("a", 1), ("b", 0.5), ("c", True), ("d", None), ("e", "greedy"), ("f", 1e-3)]


def test_cca_reduces_dimensions_by_default():
    assert MEASURES["cca"][2] == {"dims": "n/10"}


def test_weights_default_from_the_hub_cache(tmp_path, monkeypatch):
    """With the weights file in the torch hub cache, --weights DEFAULT really loads it: two copies
    of the same pretrained model give CKA exactly 1 on the diagonal (random inits do not)."""
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(),
               cache / os.path.basename(weights.url))     # stands in for the real download
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    common = ["compare", "resnet18", "resnet18", "--layers-a", "layer3.1,avgpool,fc",
              "--layers-b", "layer3.1,avgpool,fc", "--n", "16", "--batch-size", "8",
              "--image-size", "32", "--no-progress"]
    assert main([*common, "--weights", "DEFAULT", "--out", str(tmp_path / "pre")]) == 0
    assert main([*common, "--out", str(tmp_path / "rand")]) == 0
    pre = SimilarityResult.load(tmp_path / "pre" / "resnet18_vs_resnet18_cka.json")
    rand = SimilarityResult.load(tmp_path / "rand" / "resnet18_vs_resnet18_cka.json")
    np.testing.assert_allclose(np.diag(pre.matrix), 1.0, atol=1e-6)
    assert np.diag(rand.matrix).min() < 0.999


# ------------------------------------------------------------------------ bad arguments
BAD_ARGUMENTS = [
    (["compare", "resnet18", "resnt34"], "close names: resnet34"),
    (["compare", "resnet18", "fasterrcnn_resnet50_fpn"], "image-classification models"),
    (["compare", "resnet18", "resnet18", "--layers-a", "layer9"], "--layers-a: .*layer9"),
    (["compare", "resnet18", "resnet18", "--layers-b", "layer1.9"], "--layers-b: .*layer1.9"),
    (["compare", "resnet18", "resnet18", "--layers-a", " , "], "--layers-a is empty"),
    (["compare", "resnet18", "resnet18", "--layers-a", "layer4.0.relu"],
     "--layers-a: .*layer4.0.relu.* more than once"),
    (["compare", "resnet18", "resnet18", "--layers-a", "nn.NoSuchLayer"],
     "not a torch.nn module class"),
    (["compare", "resnet18", "resnet18", "--n", "0"], "argument --n: must be >= 1"),
    (["compare", "resnet18", "resnet18", "--n", "3"],
     "--n 3: --measure cka --estimator minibatch needs at least 4 samples .*use --n 4 or more"),
    (["compare", "resnet18", "resnet18", "--n", "2", "--estimator", "full"],
     "--n 2: --measure cka --estimator full needs at least 3 samples .*every similarity is 1.*"
     "use --n 3 or more"),
    (["compare", "resnet18", "resnet18", "--n", "3", "--estimator", "full", "--option",
      "unbiased=true"], "--n 3: .*needs at least 4 samples .*unbiased HSIC"),
    (["compare", "resnet18", "resnet18", "--n", "2", "--measure", "procrustes"],
     "--n 2: --measure procrustes needs at least 3 samples"),
    (["compare", "resnet18", "resnet18", "--n", "11", "--measure", "cca", "--option", "dims=10"],
     "--n 11: --measure cca needs at least 12 samples .*dims=10"),
    (["compare", "resnet18", "resnet18", "--n", "many"], "argument --n: expected an integer"),
    (["compare", "resnet18", "resnet18", "--n", "18", "--batch-size", "8"],
     "last batch of 2 samples"),
    (["compare", "resnet18", "resnet18", "--batch-size", "2"], "at least 4 samples per batch"),
    (["compare", "resnet18", "resnet18", "--batch-size", "0"], "argument --batch-size"),
    (["compare", "resnet18", "resnet18", "--image-size", "4"], "argument --image-size"),
    (["compare", "resnet18", "resnet18", "--measure", "ckaa"],
     "unknown measure 'ckaa' .*did you mean cka.*available: cka"),
    (["compare", "resnet18", "resnet18", "--estimator", "exact"], "argument --estimator"),
    (["compare", "resnet18", "resnet18", "--weights", "IMAGENET9K"],
     "not a weights name of resnet18; choose one of none, IMAGENET1K_V1, DEFAULT"),
    (["compare", "resnet18", "resnet18", "--device", "gpu0"], "is not a torch device"),
    (["compare", "squeezenet1_1", "resnet18", "--image-size", "8"],
     "MODEL_A squeezenet1_1 cannot run on inputs .*--image-size"),
    (["compare", "resnet18", "resnet18", "--option", "sigma_frac"], "expected KEY=VALUE"),
    (["compare", "resnet18", "resnet18", "--option", "no_such_option=3"],
     "--option no_such_option=...: --measure cka has no option 'no_such_option'; valid keys: "
     "unbiased, sigma_frac, sigma, store_device, max_memory, n_bootstrap, n_permutations, "
     "confidence, seed, interval$"),
    (["compare", "resnet18", "resnet18", "--measure", "rbf_cka", "--option", "sigma_fra=1"],
     "has no option 'sigma_fra' \\(did you mean sigma_frac or sigma\\?\\); valid keys: "),
    (["compare", "resnet18", "resnet18", "--measure", "cca", "--option", "variant=svcca",
      "--option", "keeps=0.9"], "--measure cca has no option 'keeps' .*valid keys: variant, "
     "epsilon, dims, keep"),
    (["compare", "resnet18", "resnet18", "--option", "kernel=rbf"],
     "--measure cka sets kernel='linear' itself; choose another --measure"),
    (["compare", "resnet18", "resnet18", "--option", "estimator=full"],
     "use --estimator minibatch\\|full instead"),
    (["compare", "resnet18", "resnet18", "--bogus"], "unrecognized arguments: --bogus"),
    (["compare", "resnet18"], "required: MODEL_B"),
    ([], "required: COMMAND"),
]


@pytest.mark.parametrize("argv, match", BAD_ARGUMENTS,
                         ids=[" ".join(a[1:]) or "no-command" for a, _ in BAD_ARGUMENTS])
def test_bad_arguments_exit_2_with_one_line(argv, match, tmp_path, capsys):
    if argv and argv[0] == "compare" and len(argv) > 2:
        argv = [*argv, "--out", str(tmp_path / "out"), "--no-progress"]
        if "--n" not in argv:
            argv += ["--n", "8"]
        if "--image-size" not in argv:
            argv += ["--image-size", "32"]
        if "--batch-size" not in argv:
            argv += ["--batch-size", "8"]
    assert main(argv) == 2
    import re
    assert re.search(match, _one_line_error(capsys))
    assert not (tmp_path / "out").exists()                   # nothing written on bad input


def test_glob_over_reused_relus_runs_with_one_warning(tmp_path, capsys):
    # issue 8: "layer4.*" reaches BasicBlock's ReLU, applied twice; it is skipped, not fatal
    argv = ["compare", "resnet18", "resnet18", "--layers-a", "layer4.*", "--out",
            str(tmp_path / "out"), "--no-progress", "--n", "8", "--image-size", "32",
            "--batch-size", "8"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert err.count("dropped from the selection") == 1
    assert "'layer4.0.relu', 'layer4.1.relu'" in err


def test_images_folder_errors(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    base = ["compare", "resnet18", "resnet18", "--out", str(tmp_path / "o"), *FAST]
    assert main([*base, "--images", str(empty)]) == 2
    line = _one_line_error(capsys)
    assert "--images DIR: no image files in" in line and "leave --images out" in line
    assert main([*base, "--images", str(tmp_path / "missing")]) == 2
    line = _one_line_error(capsys)
    assert "--images DIR: " in line and "does not exist" in line
    a_file = tmp_path / "a.png"
    a_file.write_bytes(b"x")
    assert main([*base, "--images", str(a_file)]) == 2
    line = _one_line_error(capsys)
    assert "--images DIR: " in line and "is a file" in line
    (empty / "broken.jpg").write_bytes(b"not a jpeg")
    assert main([*base, "--images", str(empty)]) == 2
    assert "--images DIR: cannot read" in _one_line_error(capsys)
    # the command line's words, not the Python API's
    for argv in ([*base, "--images", str(tmp_path / "missing")], [*base, "--images", str(empty)]):
        main(argv)
        line = _one_line_error(capsys)
        assert "None" not in line and "directory=" not in line


def test_out_is_a_file(tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("x")
    assert main(["compare", "resnet18", "resnet18", "--out", str(target), *FAST]) == 2
    assert "is a file" in _one_line_error(capsys)


def test_estimator_only_for_cka_family(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(MEASURES, "toy", ("simtorch_semantic.measures.cka", "CKA", {}, False,
                                          "a measure without estimators"))
    assert main(["compare", "resnet18", "resnet18", "--measure", "toy", "--estimator", "full",
                 "--out", str(tmp_path), *FAST]) == 2
    assert "--estimator applies to" in _one_line_error(capsys)


def test_unavailable_measure_module(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(MEASURES, "ghost", ("simtorch_semantic.measures.no_such_module", "Ghost",
                                            {}, False, "not installed"))
    assert "ghost" not in cli.available_measures()
    assert main(["compare", "resnet18", "resnet18", "--measure", "ghost",
                 "--out", str(tmp_path), *FAST]) == 2
    assert "cannot be imported" in _one_line_error(capsys)


def test_cuda_device_unavailable(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert main(["compare", "resnet18", "resnet18", "--device", "cuda", "--out", str(tmp_path),
                 *FAST]) == 2
    assert "CUDA is not available" in _one_line_error(capsys)


def test_failure_during_comparison_exits_1(tmp_path, capsys, monkeypatch):
    from simtorch_semantic.measures.cka import CKA

    def broken(self, *args, **kwargs):
        raise RuntimeError("activation of layer 'fc' has NaN\nin batch 0")

    monkeypatch.setattr(CKA, "compute", broken)
    assert main(["compare", "resnet18", "resnet18", "--out", str(tmp_path), *FAST]) == 1
    line = _one_line_error(capsys)
    assert "comparing resnet18 with resnet18 failed: activation of layer 'fc' has NaN in batch 0" \
        in line


def test_warnings_are_one_line_each(tmp_path, capsys, monkeypatch):
    import warnings

    from simtorch_semantic.measures.cka import CKA
    original = CKA.compute

    def noisy(self, *args, **kwargs):
        warnings.warn("layer 'fc' of resnet18 is constant over the samples;\nits CKA is NaN")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(CKA, "compute", noisy)
    assert main(["compare", "resnet18", "resnet18", "--layers-a", "fc", "--layers-b", "fc",
                 "--out", str(tmp_path), "--n", "8", "--batch-size", "8", "--image-size", "32",
                 "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert err.splitlines() == ["simtorch-semantic: warning: layer 'fc' of resnet18 is constant "
                                "over the samples; its CKA is NaN"]


def test_help_and_version(capsys):
    assert main(["--help"]) == 0
    assert "compare" in capsys.readouterr().out
    assert main(["compare", "--help"]) == 0
    text = capsys.readouterr().out
    for name in ("--measure", "--layers-a", "--weights", "--images", "rbf_cka", "dcka"):
        assert name in text
    flat = " ".join(text.split())
    # no stale sentences: every listed measure ships with the package and can be chosen
    assert "when their modules are installed" not in flat
    assert set(cli.available_measures()) == set(MEASURES)
    assert "seeded random order" in flat and "distinct images" in flat
    assert "unknown KEY is refused with the valid ones" in flat
    assert main(["--version"]) == 0


# ------------------------------------------------------------------------ as a program
def test_python_dash_m_offline_weights_exit_code(tmp_path):
    """``python -m simtorch_semantic`` with pretrained weights that are not cached and cannot be
    downloaded: exit status 2, one line on stderr, no traceback."""
    env = dict(os.environ)
    env.update({"TORCH_HOME": str(tmp_path / "torch_home"),       # empty hub cache
                "OMP_NUM_THREADS": "1",
                "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
                "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9",
                "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", "")})
    env.pop("NO_PROXY", None)
    env.pop("no_proxy", None)
    env.pop("SIMTORCH_SEMANTIC_TRACEBACK", None)
    proc = subprocess.run(
        [sys.executable, "-m", "simtorch_semantic", "compare", "resnet18", "resnet18",
         "--weights", "DEFAULT", "--out", str(tmp_path / "out"), *FAST],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("simtorch-semantic: error: --weights DEFAULT: cannot load the "
                               "pretrained weights of resnet18")
    assert "--weights none" in lines[0]
    assert "wrote" not in proc.stdout          # (torch.hub may print "Downloading: ...")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------ inference (issue 11)
def test_bootstrap_and_permutations_reach_the_result(tmp_path, capsys):
    out = tmp_path / "inf"
    assert main(["compare", "resnet18", "resnet18", "--layers-a", "layer3.?,fc", "--layers-b",
                 "layer4.?", "--n", "16", "--image-size", "32", "--batch-size", "4",
                 "--bootstrap", "20", "--permutations", "19", "--no-progress",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "cells significant at family-wise p < 0.05 (19 permutations)" in printed
    result = SimilarityResult.load(out / "resnet18_vs_resnet18_cka.json")
    assert result.ci_low.shape == result.p_value_adjusted.shape == (3, 2)
    assert result.params["inference"]["n_bootstrap"] == 20
    assert result.params["inference"]["seed"] == 0               # --seed also seeds the resampling
    assert (out / "resnet18_vs_resnet18_cka_cells.csv").exists()


def test_dcka_takes_bootstrap_and_permutations(tmp_path, capsys):
    out = tmp_path / "dcka"
    assert main(["compare", "resnet18", "resnet18", "--measure", "dcka", "--layers-a",
                 "layer3.?", "--layers-b", "layer3.?", "--n", "16", "--image-size", "32",
                 "--batch-size", "8", "--bootstrap", "20", "--permutations", "19",
                 "--no-progress", "--out", str(out)]) == 0
    assert "cells significant at family-wise p < 0.05 (19 permutations)" in capsys.readouterr().out
    result = SimilarityResult.load(out / "resnet18_vs_resnet18_dcka.json")
    assert result.measure == "dcka"
    for name in ("ci_low", "ci_high", "p_value", "p_value_adjusted", "null_mean", "calibrated"):
        assert getattr(result, name).shape == (2, 2), name
    # corresponding layers of the two networks (dCKA ~0.9): no permutation reaches them,
    # p = 1 / (1 + 19), the smallest possible (batches of 4 would permute too few samples)
    assert np.all(np.diag(result.matrix) > 0.5)
    np.testing.assert_allclose(np.diag(result.p_value), 0.05)
    assert result.params["inference"]["seed"] == 0
    assert "confounder is resampled" in result.params["inference"]["resampled"]


@pytest.mark.parametrize("argv, match", [
    (["--bootstrap", "-1"], "argument --bootstrap: must be >= 0"),
    (["--bootstrap", "1"], "--bootstrap 1: an interval needs at least 2 resamples"),
    (["--permutations", "x"], "argument --permutations: expected an integer"),
])
def test_bad_inference_arguments(argv, match, tmp_path, capsys):
    assert main(["compare", "resnet18", "resnet18", "--n", "8", "--image-size", "32",
                 "--batch-size", "8", "--no-progress", "--out", str(tmp_path / "o"), *argv]) == 2
    import re
    assert re.search(match, _one_line_error(capsys))


def test_list_layers_prints_every_module_and_the_default_selection(capsys):
    assert main(["compare", "resnet18", "resnet34", "--list-layers"]) == 0  # no --out needed
    out = capsys.readouterr().out
    net = torchvision.models.resnet18(weights=None)
    names = [n for n, _ in net.named_modules() if n]
    block = out.split("resnet34:")[0]
    listed = [line.split()[-2] for line in block.splitlines()[1:]]
    assert listed == names  # every module, in registration order, with its type after it
    marked = [line.split()[1] for line in block.splitlines()[1:] if line.lstrip().startswith("*")]
    from simtorch_semantic.model import default_layers
    assert marked == default_layers(net) and "layer4.1" in marked
    assert "resnet34: " in out and "layer3.5" in out


def test_missing_out_and_unknown_layer_point_to_cli_options(capsys):
    assert main(["compare", "resnet18", "resnet18"]) == 2
    assert "required: --out DIR" in capsys.readouterr().err
    assert main(["compare", "resnet18", "resnet18", "--layers-a", "nonexistent", "--n", "8",
                 "--out", "unused"]) == 2
    err = capsys.readouterr().err
    assert "--layers-a: layer 'nonexistent' not found" in err
    assert "see --list-layers" in err and "SimilarityModel" not in err
