"""Offline validity benchmark: which similarity measure to trust for which question (issue 14).

    python3 benchmarks/validity/run.py --quick --out DIR     # minutes on a 2-core CPU
    python3 benchmarks/validity/run.py --full --out DIR      # more models and seeds, all measures

Trains tiny MLPs and CNNs on scikit-learn's digits (``models.py``), captures their layers on
held-out digits through the package's ``SimilarityModel``, applies every registered measure
(``simtorch_semantic.list_measures()``) at the layers each test needs, and scores each measure as
ReSi does (Klabunde et al., ICLR 2025; ``scoring.py``):

1. ``accuracy_difference`` - Spearman rho (permutation p-value) between the measure's
   dissimilarity of two models' last hidden layers and their absolute accuracy difference;
2. ``output_jsd`` / ``output_disagreement`` - the same against the mean Jensen-Shannon divergence
   and the disagreement rate of their predictions;
3. ``label_randomisation`` - AUPRC of separating groups trained with 0/25/50/75/100 % random labels;
4. ``shortcut_affinity`` - AUPRC of groups trained with a class-coded patch that codes the label
   in 0/50/100 % of the images (representations of clean digits);
5. ``augmentation`` - AUPRC of groups trained with Gaussian input noise of different strengths;
6. ``layer_monotonicity`` - violation rate: similarity must fall with layer distance in a model;
7. ``pca_deletion`` - violation rate: similarity of a layer to itself with its top k principal
   components removed must fall as k grows (Ding et al., NeurIPS 2021);
8. ``translation`` - the share of similarity kept when every input digit moves by its own random
   offset of up to 1 (2) pixels in x and y, between the identical (1) and the sample-shuffled (0)
   baselines, at a CNN's conv maps (semantic CKA matches positions between samples, so it should
   keep it; flattened measures compare position by position, so they should not).

Writes ``DIR/validity.csv`` (long form), ``DIR/heatmap.png`` (measures x tests, ranks),
``DIR/models.csv`` (every trained model and its held-out accuracy), ``DIR/timings.csv``, rewrites
its section of ``benchmarks/RESULTS.md`` and regenerates ``docs/which-measure.md``.
Seeds are fixed: a rerun on the same machine gives the same ``validity.csv``.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

import validity_models as M  # noqa: E402
import validity_report as report  # noqa: E402
import validity_scoring as scoring  # noqa: E402

TESTS = ("accuracy_difference", "output_jsd", "output_disagreement", "label_randomisation",
         "shortcut_affinity", "augmentation", "layer_monotonicity", "pca_deletion", "translation")

#: score kind and direction of every test (the direction of the *score*, not of the measure)
SCORE_KIND = {
    "accuracy_difference": ("spearman", "higher"),
    "output_jsd": ("spearman", "higher"),
    "output_disagreement": ("spearman", "higher"),
    "label_randomisation": ("auprc", "higher"),
    "shortcut_affinity": ("auprc", "higher"),
    "augmentation": ("auprc", "higher"),
    "layer_monotonicity": ("violation_rate", "lower"),
    "pca_deletion": ("violation_rate", "lower"),
    "translation": ("retained_similarity", "higher"),
}
OUTPUT_TESTS = ("accuracy_difference", "output_jsd", "output_disagreement")
COLUMNS = ("measure", "test", "score", "score_kind", "better", "pvalue", "spearman", "auprc",
           "violation_rate", "n_comparisons", "note", "error")


@dataclass(frozen=True)
class Setting:
    """Sizes of one run (``--tiny``, ``--quick``, ``--full``)."""

    name: str
    n_eval: int              # held-out digits the representations are computed on
    n_translation: int       # digits of the translation test (semantic CKA is O(n^2) matchings)
    per_group: int           # models per group (tests 3-5) and standard models
    epochs: int
    pool_extra: int          # extra models (widths, epochs) in the pool of tests 1-2
    label_fracs: tuple = (0.0, 0.25, 0.5, 0.75, 1.0)
    shortcut_rates: tuple = (0.0, 0.5, 1.0)
    noise_levels: tuple = (0.0, 0.25, 0.5)
    pca_k: int = 8           # principal components removed: 0..pca_k
    pca_models: int = 2
    mono_models: int = 2     # MLPs in the monotonicity test
    cnn_models: int = 1      # CNNs (translation; monotonicity in the full run)
    cnn_monotonicity: bool = False
    shifts: tuple = (1, 2)
    n_resamples: int = 999
    exclude: tuple = ("rtd",)    # measures left out (RTD: seconds per pair, ~150 pairs)
    translation_measures: tuple | None = None     # None: every representation measure


SETTINGS = {
    "tiny": Setting("tiny", n_eval=60, n_translation=24, per_group=2, epochs=2, pool_extra=2,
                    label_fracs=(0.0, 0.5, 1.0), shortcut_rates=(0.0, 1.0),
                    noise_levels=(0.0, 0.5), pca_k=3, pca_models=1, mono_models=1,
                    n_resamples=99,
                    translation_measures=("semantic_cka", "cka", "rbf_cka", "rsa", "procrustes")),
    "quick": Setting("quick", n_eval=400, n_translation=100, per_group=4, epochs=15,
                     pool_extra=8, pca_models=3, mono_models=3),
    "full": Setting("full", n_eval=500, n_translation=150, per_group=5, epochs=30,
                    pool_extra=15, noise_levels=(0.0, 0.1, 0.25, 0.5, 1.0), pca_k=16,
                    pca_models=5, mono_models=5, cnn_models=2, cnn_monotonicity=True,
                    n_resamples=9999, exclude=()),
}

_POOL_VARIANTS = ((64, 1.0), (128, 1.0), (32, 0.2), (64, 0.2), (128, 1 / 3), (32, 1 / 3),
                  (64, 0.5), (128, 0.5), (32, 0.1), (64, 0.1), (128, 0.2), (32, 0.5),
                  (64, 1 / 3), (128, 0.1), (32, 2 / 3))


# ----------------------------------------------------------------------------------- models
@dataclass
class Trained:
    """Models and what the tests need from them (float64 activations on held-out digits)."""

    specs: dict = field(default_factory=dict)        # name -> TrainSpec
    reps: dict = field(default_factory=dict)         # (name, layer) -> tensor [n, ...]
    accuracy: dict = field(default_factory=dict)     # name -> accuracy on all held-out digits
    probs: dict = field(default_factory=dict)        # name -> [m, 10] probabilities, all held-out
    groups: dict = field(default_factory=dict)       # test -> list of (model name, group label)
    pool: list = field(default_factory=list)         # models of tests 1-2
    mono: list = field(default_factory=list)         # models of the monotonicity test
    pca: list = field(default_factory=list)          # models of the PCA-deletion test
    cnns: list = field(default_factory=list)
    seconds: float = 0.0


def _mlp(setting: Setting, seed: int, **kw) -> M.TrainSpec:
    return M.TrainSpec(arch="mlp", h1=32, depth=6, epochs=setting.epochs, seed=seed, **kw)


def train_all(setting: Setting, data: M.Digits, progress: bool = True) -> Trained:
    """Train every model of ``setting`` once; tests share models where the design allows (the
    standard MLPs are the 0 % group of label randomisation, the noise-0 group of augmentation,
    part of the pool of tests 1-2, and the models of tests 6-7; the shortcut groups all carry
    the patch, so they are trained apart)."""
    g = setting.per_group
    T = Trained()
    std = [_mlp(setting, seed=k) for k in range(g)]
    pool = list(std)
    for i in range(setting.pool_extra):
        h1, frac = _POOL_VARIANTS[i % len(_POOL_VARIANTS)]
        pool.append(replace(std[0], h1=h1, epochs=max(1, round(setting.epochs * frac)),
                            seed=100 + i))
    groups: dict[str, list] = {"label_randomisation": [], "shortcut_affinity": [],
                               "augmentation": []}
    for gi, frac in enumerate(setting.label_fracs):
        for k in range(g):
            s = std[k] if frac == 0 else _mlp(setting, 1000 + 10 * gi + k, random_labels=frac)
            groups["label_randomisation"].append((s, f"{int(round(frac * 100))}% random labels"))
    for gi, rate in enumerate(setting.shortcut_rates):
        for k in range(g):
            s = _mlp(setting, 2000 + 10 * gi + k, shortcut=rate)
            groups["shortcut_affinity"].append((s, f"patch codes label {int(round(rate * 100))}%"))
    for gi, sd in enumerate(setting.noise_levels):
        for k in range(g):
            s = std[k] if sd == 0 else _mlp(setting, 3000 + 10 * gi + k, noise=sd)
            groups["augmentation"].append((s, f"noise sd {sd:g}"))
    cnns = [M.TrainSpec(arch="cnn", epochs=2 * setting.epochs, seed=4000 + k)
            for k in range(setting.cnn_models)]

    todo = list(dict.fromkeys(pool + [s for v in groups.values() for s, _ in v] + cnns))
    x_eval = data.x_test[:setting.n_eval]
    t0 = time.perf_counter()
    for spec in tqdm(todo, desc="training", unit="model", disable=not progress):
        model = M.train(spec, data)
        layers = model.hidden + ["out"]
        acts = M.capture(model, x_eval, layers, spec.name)
        for layer, a in acts.items():
            T.reps[(spec.name, layer)] = a
        with torch.no_grad():
            logits = model(data.x_test).to(torch.float64)
        T.accuracy[spec.name] = float((logits.argmax(1) == data.y_test).double().mean())
        T.probs[spec.name] = torch.softmax(logits, 1).numpy()
        T.specs[spec.name] = spec
        if spec.arch == "cnn":
            xt = data.x_test[:setting.n_translation]
            T.reps[(spec.name, "translation:0")] = M.capture(model, xt, ["r2"], spec.name)["r2"]
            for s in setting.shifts:
                shifted = M.shift_images(xt, *M.random_shifts(len(xt), s, seed=500 + s))
                T.reps[(spec.name, f"translation:{s}")] = M.capture(
                    model, shifted, ["r2"], spec.name)["r2"]
    T.seconds = time.perf_counter() - t0
    T.pool = [s.name for s in pool]
    T.groups = {k: [(s.name, lab) for s, lab in v] for k, v in groups.items()}
    T.mono = [s.name for s in std[:setting.mono_models]]
    T.pca = [s.name for s in std[:setting.pca_models]]
    T.cnns = [s.name for s in cnns]
    # PCA deletion: the last hidden layer with its top k principal components removed
    for name in T.pca:
        X = T.reps[(name, "r6")]
        Xc = X - X.mean(0, keepdim=True)
        _, _, Vh = torch.linalg.svd(Xc, full_matrices=False)
        for k in range(setting.pca_k + 1):
            V = Vh[:k].T                                        # [d, k]
            T.reps[(name, f"pca:{k}")] = X - (Xc @ V) @ V.T
    # the translation baseline: the unshifted maps with the samples shuffled (unrelated pairs)
    perm = torch.from_numpy(np.random.default_rng(7).permutation(setting.n_translation))
    for name in T.cnns:
        T.reps[(name, "translation:perm")] = T.reps[(name, "translation:0")][perm]
    return T


# ----------------------------------------------------------------------------------- scoring
class NotApplicable(Exception):
    """The test does not apply to the measure (the message says why)."""


class MeasureRunner:
    """One measure over the tests: prepares each representation once and caches pair scores."""

    def __init__(self, spec, trained: Trained, setting: Setting, labels):
        from simtorch_semantic.functional.registry import resolve_options

        self.spec = spec
        self.T = trained
        self.setting = setting
        opts = {"labels": labels} if "labels" in spec.options else {}
        self.options = resolve_options(spec, opts)
        self._prepared: dict = {}
        self._pairs: dict = {}

    def _prepare(self, key):
        from simtorch_semantic.functional.protocol import prepare_all

        if key not in self._prepared:
            try:
                p, problems = prepare_all(self.spec, [self.T.reps[key]], self.options,
                                          spatial="flatten", names=[f"{key[0]}:{key[1]}"])
                self._prepared[key] = (p[0], problems[0])
            except Exception as exc:          # noqa: BLE001 - re-raised for every pair needing it
                self._prepared[key] = exc
        value = self._prepared[key]
        if isinstance(value, Exception):
            raise value
        return value[0]

    def _check_shape(self, key):
        a = self.T.reps[key]
        if self.spec.spatial_input and a.dim() < 4:
            raise NotApplicable(f"needs spatial maps [n, C, H, W]; layer {key[1]} is "
                                f"[n, {a.shape[1]}] (MLP); scored on CNN maps only")

    def pairs(self, pairs) -> np.ndarray:
        """Oriented similarities (higher = more similar) of ``pairs`` [(key_x, key_y), ...]."""
        from simtorch_semantic.functional.protocol import score_matrix

        spec = self.spec
        keys = list(dict.fromkeys(k for pair in pairs for k in pair))
        for k in keys:
            self._check_shape(k)
        need = [p for p in pairs if self._canon(p) not in self._pairs]
        if need:
            if spec.score_all_pairs is not None:
                P = [self._prepare(k) for k in keys]
                mat, _ = score_matrix(spec, P, P, self.options)
                for i, a in enumerate(keys):
                    for j, b in enumerate(keys):
                        self._pairs.setdefault(self._canon((a, b)), float(mat[i, j]))
            else:
                f = spec.score if spec.score is not None else spec.fn
                from simtorch_semantic.functional.registry import call_with_options
                for a, b in need:
                    c = self._canon((a, b))
                    if c in self._pairs:
                        continue
                    px, py = self._prepare(a), self._prepare(b)
                    if px is None or py is None:
                        self._pairs[c] = math.nan
                    else:
                        self._pairs[c] = float(call_with_options(f, px, py, options=self.options))
        vals = [self._pairs[self._canon(p)] for p in pairs]
        return scoring.oriented(vals, spec.higher_is_similar)

    def _canon(self, pair):
        if self.spec.symmetric:
            return tuple(sorted(pair))
        return tuple(pair)

    def matrix(self, keys) -> np.ndarray:
        """``[m, m]`` oriented similarities of ``keys`` (diagonal NaN)."""
        m = len(keys)
        pairs = [(keys[i], keys[j]) for i in range(m) for j in range(m) if i != j]
        vals = self.pairs(pairs)
        S = np.full((m, m), math.nan)
        it = iter(vals)
        for i in range(m):
            for j in range(m):
                if i != j:
                    S[i, j] = next(it)
        return S


def _layer_of(spec, rep_layer: str = "r6") -> str:
    return "out" if spec.inputs == "outputs" else rep_layer


def _pair_list(names, symmetric: bool):
    m = len(names)
    if symmetric:
        return [(names[i], names[j]) for i in range(m) for j in range(i + 1, m)]
    return [(names[i], names[j]) for i in range(m) for j in range(m) if i != j]


def _jsd(p: np.ndarray, q: np.ndarray) -> float:
    from scipy.spatial.distance import jensenshannon

    return float(np.mean(jensenshannon(p, q, base=2, axis=1) ** 2))


def run_output(run: MeasureRunner, test: str) -> dict:
    """Tests 1-2: rank correlation of the measure's dissimilarity with a behaviour difference."""
    T, spec = run.T, run.spec
    layer = _layer_of(spec)
    pairs = _pair_list(T.pool, spec.symmetric)
    s = run.pairs([((a, layer), (b, layer)) for a, b in pairs])
    if test == "accuracy_difference":
        diff = [abs(T.accuracy[a] - T.accuracy[b]) for a, b in pairs]
    elif test == "output_jsd":
        diff = [_jsd(T.probs[a], T.probs[b]) for a, b in pairs]
    else:
        diff = [float(np.mean(T.probs[a].argmax(1) != T.probs[b].argmax(1))) for a, b in pairs]
    ok = np.isfinite(s)
    rho, p = scoring.spearman_permutation(-s[ok], np.asarray(diff)[ok],
                                          n_resamples=run.setting.n_resamples, seed=0)
    note = f"{int((~ok).sum())} NaN comparisons dropped" if (~ok).any() else ""
    if spec.inputs == "outputs":
        note = "; ".join(filter(None, [note, "applied to the logits (ground truth from the same "
                                       "outputs, so a high rho is partly by construction)"]))
    return {"score": rho, "pvalue": p, "spearman": rho, "n_comparisons": int(ok.sum()),
            "note": note}


def run_groups(run: MeasureRunner, test: str) -> dict:
    """Tests 3-5: AUPRC of separating same-group from cross-group pairs (last hidden layer)."""
    members = run.T.groups[test]
    S = run.matrix([(name, "r6") for name, _ in members])
    labels = [label for _, label in members]
    res = scoring.group_separation(S, labels)
    return {"score": res["auprc"], "auprc": res["auprc"], "violation_rate": res["violation_rate"],
            "n_comparisons": res["n_comparisons"],
            "note": f"chance AUPRC {scoring.chance_auprc(labels):.3f}"}


def run_monotonicity(run: MeasureRunner, test: str) -> dict:
    """Test 6: violation rate of 'similarity falls with layer distance' within each model."""
    T = run.T
    models = [(n, [f"r{i}" for i in range(1, 7)]) for n in T.mono]
    if run.setting.cnn_monotonicity:
        models += [(n, ["r1", "r2", "r3", "r4"]) for n in T.cnns]
    rates, rhos, total, skipped = [], [], 0, []
    for name, layers in models:
        try:
            S = run.matrix([(name, layer) for layer in layers])
        except NotApplicable as exc:
            skipped.append(str(exc))
            continue
        r = scoring.layer_monotonicity(S)
        rates.append(r["violation_rate"])
        rhos.append(r["spearman"])
        total += r["n_comparisons"]
    if not rates:
        raise NotApplicable(skipped[0] if skipped else "no model")
    note = f"MLP models skipped: {skipped[0]}" if skipped else ""
    return {"score": float(np.mean(rates)), "violation_rate": float(np.mean(rates)),
            "spearman": float(np.nanmean(rhos)) if np.isfinite(rhos).any() else math.nan,
            "n_comparisons": total, "note": note}


def run_pca(run: MeasureRunner, test: str) -> dict:
    """Test 7: violation rate of 'similarity falls as more top principal components go'."""
    rates, rhos, total = [], [], 0
    for name in run.T.pca:
        keys = [(name, f"pca:{k}") for k in range(run.setting.pca_k + 1)]
        s = run.pairs([((name, "pca:0"), k) for k in keys])
        r = scoring.ordered_violations(s)
        rates.append(r["violation_rate"])
        rhos.append(r["spearman"])
        total += r["n_comparisons"]
    return {"score": float(np.mean(rates)), "violation_rate": float(np.mean(rates)),
            "spearman": float(np.nanmean(rhos)) if np.isfinite(rhos).any() else math.nan,
            "n_comparisons": total}


def run_translation(run: MeasureRunner, test: str) -> dict:
    """Test 8: share of similarity kept when every digit moves by its own random offset (up to
    1, 2 pixels), between the identical (1) and the sample-shuffled (0) baselines, at the CNN's
    conv2 maps ``[n, 8, 8, 8]``."""
    kept = []
    for name in run.T.cnns:
        ref = (name, "translation:0")
        keys = [ref, (name, "translation:perm")] + [(name, f"translation:{s}")
                                                    for s in run.setting.shifts]
        s = run.pairs([(ref, k) for k in keys])
        same, unrelated, shifted = s[0], s[1], s[2:]
        span = same - unrelated
        scale = max(1.0, abs(same), abs(unrelated))
        if not (np.isfinite(span) and abs(span) > 1e-6 * scale):
            continue
        kept.append((shifted - unrelated) / span)
    if not kept:
        return {"score": math.nan,
                "note": "undefined: the measure gives the same value for the identical and the "
                        "sample-shuffled maps (it ignores which sample is which, or the 512 "
                        "features of n digits saturate it)"}
    kept = np.asarray(kept)
    return {"score": float(np.mean(kept)), "n_comparisons": int(kept.size),
            "note": "kept per maximal shift " + ", ".join(
                f"{sh}px {v:.3f}" for sh, v in zip(run.setting.shifts, kept.mean(0)))}


TEST_FUNCS = {"accuracy_difference": run_output, "output_jsd": run_output,
              "output_disagreement": run_output, "label_randomisation": run_groups,
              "shortcut_affinity": run_groups, "augmentation": run_groups,
              "layer_monotonicity": run_monotonicity, "pca_deletion": run_pca,
              "translation": run_translation}


def _fmt_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text[:300]


def score_measure(spec, trained: Trained, setting: Setting, labels) -> list[dict]:
    """All test rows of one measure (``spec``: a registry ``MeasureSpec``). A failing test gives
    a NaN score and the error message; nothing propagates."""
    rows = []
    try:
        run = MeasureRunner(spec, trained, setting, labels)
    except Exception as exc:                       # noqa: BLE001
        run, init_error = None, _fmt_error(exc)
    for test in TESTS:
        kind, better = SCORE_KIND[test]
        row = {"measure": spec.name, "test": test, "score": math.nan, "score_kind": kind,
               "better": better, "note": "", "error": "", "inputs": spec.inputs}
        if run is None:
            row["error"] = init_error
        elif spec.inputs == "outputs" and test not in OUTPUT_TESTS:
            row["note"] = "not applicable: compares model outputs [n, classes]; output tests only"
        elif test == "translation" and spec.inputs == "outputs":
            row["note"] = "not applicable"
        elif (test == "translation" and setting.translation_measures is not None
              and spec.name not in setting.translation_measures):
            row["note"] = (f"not run in --{setting.name} (run with --full); --{setting.name} "
                           f"runs it for {', '.join(setting.translation_measures)}")
        else:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    row.update(TEST_FUNCS[test](run, test))
            except NotApplicable as exc:
                row["note"] = f"not applicable: {exc}"
            except Exception as exc:               # noqa: BLE001 - one measure never stops the run
                row["score"] = math.nan
                row["error"] = _fmt_error(exc)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------- main
def run_benchmark(setting: Setting, out: Path, measures=None, progress: bool = True,
                  results_md: Path | None = None, docs: Path | None = None,
                  command: str = "") -> dict:
    """Run the benchmark for ``setting`` and write the outputs (see the module docstring).

    ``measures``: registry names (default: every registered measure, minus the families the
    setting excludes). ``results_md`` / ``docs``: where the RESULTS section and the docs page
    go (None: not written). Returns a summary dict (rows, timings, excluded measures).
    """
    from simtorch_semantic import list_measures
    from simtorch_semantic.functional.registry import get_measure

    wall0, cpu0 = time.perf_counter(), time.process_time()
    load0 = os.getloadavg()
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)      # tiny ops: one thread is faster, and fixes the reduction order
    try:
        return _run(setting, out, measures, progress, results_md, docs, command, wall0, cpu0,
                    load0)
    finally:
        torch.set_num_threads(threads)


def _run(setting, out, measures, progress, results_md, docs, command, wall0, cpu0, load0):
    from simtorch_semantic import list_measures
    from simtorch_semantic.functional.registry import get_measure

    torch.manual_seed(0)
    data = M.load_data()
    names = list(measures) if measures else list_measures()
    specs = [get_measure(n) for n in names]
    excluded = [s.name for s in specs if s.name in setting.exclude] if not measures else []
    trained = train_all(setting, data, progress)
    labels = data.y_test[:setting.n_eval]
    rows, timings = [], []
    for spec in tqdm(specs, desc="measures", unit="measure", disable=not progress):
        if spec.name in excluded:
            for test in TESTS:
                kind, better = SCORE_KIND[test]
                rows.append({"measure": spec.name, "test": test, "score": math.nan,
                             "score_kind": kind, "better": better, "error": "",
                             "inputs": spec.inputs,
                             "note": f"excluded in --{setting.name} (too slow); run --full"})
            for r in rows[-len(TESTS):]:
                if spec.inputs == "outputs" and r["test"] not in OUTPUT_TESTS:
                    r["note"] = ("not applicable: compares model outputs [n, classes]; output "
                                 "tests only")
            continue
        t, c = time.perf_counter(), time.process_time()
        rows.extend(score_measure(spec, trained, setting, labels))
        timings.append((spec.name, time.perf_counter() - t, time.process_time() - c))
    summary = {"setting": setting, "settings": SETTINGS, "rows": rows, "timings": timings, "excluded": excluded,
               "trained": trained, "n_models": len(trained.specs), "command": command,
               "load_start": load0}
    report.write_csv(out / "validity.csv", rows, COLUMNS)
    report.write_models(out / "models.csv", trained)
    report.write_timings(out / "timings.csv", timings)
    report.heatmap(out / "heatmap.png", rows, TESTS)
    summary["wall_s"] = time.perf_counter() - wall0
    summary["cpu_s"] = time.process_time() - cpu0
    summary["load_end"] = os.getloadavg()
    if docs is not None:
        report.write_docs(docs, rows, summary, out)
    if results_md is not None:
        report.write_results_section(results_md, summary, out)
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help="4 models per group, n = 400 digits, RTD excluded (default)")
    size.add_argument("--full", action="store_true",
                      help="more models and seeds, n = 500, every measure, CNN monotonicity")
    size.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", required=True, type=Path, help="output folder")
    ap.add_argument("--measures", default=None,
                    help="comma-separated registry names (default: every registered measure)")
    ap.add_argument("--results-md", type=Path, default=ROOT / "benchmarks" / "RESULTS.md",
                    help="RESULTS.md whose validity section is rewritten")
    ap.add_argument("--docs", type=Path, default=ROOT / "docs" / "which-measure.md",
                    help="the generated 'which measure' page")
    ap.add_argument("--no-report", action="store_true",
                    help="write only DIR (no RESULTS.md section, no docs page)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    name = "full" if args.full else "tiny" if args.tiny else "quick"
    measures = [m.strip() for m in args.measures.split(",") if m.strip()] \
        if args.measures else None
    if measures:
        from simtorch_semantic.functional.registry import get_measure
        measures = [get_measure(m).name for m in measures]     # unknown names raise clearly
    cmd = "python3 benchmarks/validity/run.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    summary = run_benchmark(SETTINGS[name], args.out, measures, progress=not args.no_progress,
                            results_md=None if args.no_report else args.results_md,
                            docs=None if args.no_report else args.docs, command=cmd)
    print(f"validity ({name}): {summary['n_models']} models, {len(summary['timings'])} measures "
          f"scored in {summary['wall_s']:.0f} s wall, {summary['cpu_s']:.0f} CPU-s; "
          f"excluded: {', '.join(summary['excluded']) or 'none'}; wrote {args.out}/validity.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
