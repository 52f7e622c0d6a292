r"""SemanticCKA: CKA between permutation-invariant ("semantic") RSMs of every layer pair.

Wald et al., "Decoupling Semantic Similarity from Spatial Alignment for Neural Networks"
(NeurIPS 2024). The activations of all N samples are collected; for every selected layer the
N x N semantic RSM ``K[i, j] = kernel(x_i, pi*(x_j))`` (optimal permutation of positions, see
:mod:`simtorch_semantic.functional.semantic`) is built once; the result's ``[a, b]`` entry is

.. math::  \mathrm{CKA}(K_a, L_b) = \frac{\mathrm{HSIC}(K_a, L_b)}
           {\sqrt{\mathrm{HSIC}(K_a, K_a)\,\mathrm{HSIC}(L_b, L_b)}},

biased HSIC by default (``unbiased=True`` for Song et al.'s estimator), all layer pairs at once
with :func:`~simtorch_semantic.functional.hsic.hsic_all_pairs`.

Positive semi-definiteness. The semantic RSM is a kernel over a *maximum* over permutations, which
need not be positive semi-definite (the identity-permutation baseline always is for ``ip`` and
``cosine``). What the code does, ``psd=``:

``None`` (default)
    CKA on the centred RSM exactly as given (what the paper does). The biased HSIC
    ``tr(HKH HLH)`` is the Frobenius inner product of the centred RSMs, so CKA is still a cosine
    in ``[-1, 1]`` and ``CKA(K, K) = 1``; it may leave ``[0, 1]`` when an RSM is indefinite. When
    an RSM has a negative eigenvalue larger than ``1e-6`` of its largest one, a note in the result
    names the layer and the size of the negative part.
``"clip"``
    Project every RSM onto the PSD cone first (``eigh``, negative eigenvalues set to 0: the
    nearest PSD matrix in Frobenius norm); CKA is then in ``[0, 1]`` (biased estimator).

Layers without spatial extent (2-D outputs such as fc layers, or ``S = 1`` as after global
pooling) have nothing to permute: their RSM is the baseline one (identical to the semantic one
when ``S = 1``), and a note in the result says so. ``baseline=True`` uses the spatio-semantic
baseline RSM (no permutation) for every layer, on the same path, for a layer-by-layer comparison.

Activation layouts (``layout="auto"``): 4-D ``(n, c, h, w)`` (and ``(n, c, d, h, w, ...)``, every
trailing axis a position axis); 3-D ``(n, t, d)`` tokens (as in the original code);
``layout="ncs"`` reads 3-D as ``(n, c, s)``.

Plan before work. When the first batch arrives (before anything is collected or matched), the
layer shapes and the planned number of samples give a plan: per layer ``S``, ``C``, the number of
pair problems ``n (n - 1) / 2``, the solver (``matching="auto"``: ``matching.choose_solver``) and
its estimated time (``matching.estimate_seconds``, calibrated by
``benchmarks/calibrate_matching.py``, plus forming the affinities), and the total. It is printed to stderr (when progress is
on) and kept in ``measure.plan``; above ``max_minutes`` (default 60; None: no limit) the run stops
with :class:`PlanTooLarge`, whose message holds the plan and concrete ways to shrink it (fewer
samples, ``max_positions=``, fewer layers). All pairs of all layers then advance one progress bar
with an ETA. Layers of either model whose activations are identical to an earlier layer's, or a
positive multiple of them (eval-mode batch norm at its initial statistics, identities), reuse
its RSM (scaled for the linear kernel) with a note; ``max_positions`` average-pools every map to at most that many positions first
(:func:`~simtorch_semantic.functional.semantic.pool_positions`; an approximation, off by
default).
"""
from __future__ import annotations


import math
import sys

import numpy as np
import torch
from tqdm.auto import tqdm

from ..functional.cka import cka_from_hsic
from ..functional.hsic import hsic_all_pairs
from ..functional.matching import (MATCHINGS, check_options, choose_solver, estimate_seconds,
                                    resolve_n_workers)
from ..functional.matching import format_seconds as _fmt_seconds
from ..functional.semantic import (
    KERNELS,
    check_max_positions as _check_max_positions,
    pool_positions,
    pooled_grid,
    positive_multiple,
    semantic_sim_parallel,
    similarity_calculation,
)
from ..distributed import pair_sharding
from ..distributed import rank as dist_rank
from .collect import CollectingSimilarity
from .inference import INFERENCE_OPTIONS

__all__ = ["SemanticCKA", "rsm_cka_matrix", "psd_clip", "PlanTooLarge", "SemanticPlan"]


# floating-point rate of forming one pair's affinity ``V_i V_j^T`` (a single-threaded float32
# product) in the plan's estimate: 2 S^2 C flops took 23 ms at S = 2304, C = 64 (30 GFLOP/s) and
# 0.7 ms at S = 576 (62 GFLOP/s) on the 2-core test machine; the lower rate is used
_AFFINITY_FLOPS = 3.0e10


class SemanticPlan:
    """The work of a semantic CKA run, estimated before any matching.

    Attributes:
        rows: list of dicts, one per layer: ``model``, ``layer``, ``S`` (positions matched,
            after ``max_positions``), ``C``, ``pairs`` (pair problems), ``solver`` ("exact",
            "batched", "auction", ..., "baseline" for layers without positions, "reused" for
            activations identical to, or a positive multiple of, an earlier layer's), ``seconds`` (estimate).
        n: samples; max_positions, n_workers: as given.
    """

    def __init__(self, rows, n, max_positions=None, n_workers=None):
        self.rows = rows
        self.n = n
        self.max_positions = max_positions
        self.n_workers = n_workers

    @property
    def total_seconds(self) -> float:
        return float(sum(r["seconds"] for r in self.rows))

    @property
    def total_pairs(self) -> int:
        return int(sum(r["pairs"] for r in self.rows if r["solver"] not in ("baseline", "reused")))

    def format(self) -> str:
        """The plan as a text table with the total."""
        head = f"{'layer':<28} {'S':>6} {'C':>5} {'pairs':>8}  {'solver':<9} {'estimate':>9}"
        lines = [f"semantic CKA plan: {self.n} samples"
                 + (f", max_positions={self.max_positions}" if self.max_positions else ""), head]
        for r in self.rows:
            name = f"{r['model']}.{r['layer']}"
            lines.append(f"{name[:28]:<28} {r['S']:>6} {r['C']:>5} {r['pairs']:>8}  "
                         f"{r['solver']:<9} {_fmt_seconds(r['seconds']):>9}")
        lines.append(f"total: {self.total_pairs} pair problems, about "
                     f"{_fmt_seconds(self.total_seconds)}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


class PlanTooLarge(ValueError):
    """A semantic CKA plan above the time budget; ``plan`` holds it, ``suggestions`` the
    largest ``n`` and ``max_positions`` that fit (None when nothing fits)."""

    def __init__(self, message, plan, suggestions):
        super().__init__(message)
        self.plan = plan
        self.suggestions = suggestions

PSD_MODES = (None, "clip")


def psd_clip(K):
    """Nearest positive semi-definite matrix in Frobenius norm: ``V max(w, 0) V^T`` (float64).

    Args:
        K: symmetric ``[n, n]`` array or tensor.

    Returns:
        float64 NumPy ``[n, n]``.
    """
    K = np.asarray(K, dtype=np.float64)
    K = 0.5 * (K + K.T)
    w, V = np.linalg.eigh(K)
    return (V * np.maximum(w, 0.0)) @ V.T


def _negative_part(K):
    """(most negative eigenvalue, largest eigenvalue magnitude) of a symmetric matrix."""
    w = np.linalg.eigvalsh(0.5 * (K + K.T))
    return float(w[0]), float(np.abs(w).max())


def rsm_cka_matrix(Ks, Ls, unbiased=False, psd=None, device="cpu"):
    """CKA between every RSM of ``Ks`` and every RSM of ``Ls``.

    Args:
        Ks: ``[a, n, n]`` (or a list of ``[n, n]``) RSMs of model 1's layers; Ls: ``[b, n, n]``.
        unbiased: Song et al.'s unbiased HSIC (``n >= 4``) instead of the biased one.
        psd: None (RSMs as given) or "clip" (projected to the PSD cone, :func:`psd_clip`).
        device: where the HSIC products run.

    Returns:
        float64 NumPy ``[a, b]``; NaN where an RSM is constant after centring.
    """
    if psd not in PSD_MODES:
        raise ValueError(f"psd must be None (RSM as given) or 'clip' (PSD projection), got {psd!r}")
    Ks = [np.asarray(K, dtype=np.float64) for K in Ks]
    Ls = [np.asarray(L, dtype=np.float64) for L in Ls]
    if psd == "clip":
        Ks = [psd_clip(K) for K in Ks]
        Ls = [psd_clip(L) for L in Ls]
    K = torch.as_tensor(np.stack(Ks), device=device)
    L = torch.as_tensor(np.stack(Ls), device=device)
    xy, xx, yy = hsic_all_pairs(K, L, unbiased=unbiased)
    return cka_from_hsic(xy, xx, yy).cpu().numpy().astype(np.float64)


class SemanticCKA(CollectingSimilarity):
    """CKA between the semantic (permutation-invariant) RSMs of every layer of two models.

    Parameters
    ----------
    sim_model1, sim_model2 : SimilarityModel
    kernel : {"rbf", "linear", "cosine"}  (``"ip"``, the old name of ``"linear"``, warns)
        Kernel of the aligned pair (RBF bandwidth: median heuristic over each layer's whole RSM).
    matching : str
        "auto" (default: exact scipy for small S, a certified auction above, chosen per layer by
        the calibrated cost model ``functional.matching.choose_solver``) or a solver of
        ``functional.matching.SOLVERS``; ``**matching_options`` go to it (e.g. ``rel_tol=`` for
        the certified auctions, ``k=`` for "batch_optimal").
    max_minutes : float or None
        Time budget of the matching (default 60): a plan estimated above it stops the run at the
        first batch with :class:`PlanTooLarge` (module docstring). None: no limit.
    max_positions : int, optional
        Average-pool every feature map to at most this many positions before matching (an
        approximation, see ``functional.semantic.pool_positions``). Default None: full
        resolution.
    print_plan : bool or None
        Print the plan to stderr: None (default) when progress is on, True always, False never.
    baseline : bool
        Use the spatio-semantic baseline RSM (no permutation) instead.
    device : str or torch.device
        Where the HSIC products run; the affinities of the pairs are computed where the
        activations are stored (``store_device``), the assignments on the CPU.
    n_workers : int, optional
        Solver threads (default: the CPUs available).
    unbiased : bool
        Unbiased HSIC (default biased).
    psd : None or "clip"
        What to do about indefinite RSMs (module docstring). Default None: as given.
    layout : {"auto", "ncs", "nsc"}
        How 3-D activations are read (module docstring).
    store_device, max_memory, input_key, input_fn :
        See :class:`CollectingSimilarity` / :class:`BaseSimilarity`.

    Notes
    -----
    ``result().notes`` lists the layers that fell back to the baseline RSM and the indefinite
    ones.
    """

    name = "semantic_cka"
    higher_is_similar = True
    memory_hint = "use fewer samples (max_batches=) or fewer layers"

    def __init__(self, sim_model1, sim_model2, *, kernel="rbf", matching="auto", baseline=False,
                 device="cpu", n_workers=None, unbiased=False, psd=None, layout="auto",
                 store_device="cpu", max_memory=None, input_key=None, input_fn=None,
                 max_minutes=60, max_positions=None, print_plan=None, **matching_options):
        if kernel == "ip":  # the old name of "linear"
            import warnings

            warnings.warn("SemanticCKA: kernel='ip' is the old name of kernel='linear'; use 'linear'.",
                          DeprecationWarning, stacklevel=2)
            kernel = "linear"
        inference = {k: matching_options.pop(k) for k in INFERENCE_OPTIONS if k in matching_options}
        if kernel not in KERNELS:
            raise ValueError(f"SemanticCKA: unknown kernel {kernel!r}; valid kernels are "
                             f"{list(KERNELS)}")
        if not isinstance(matching, str) or matching not in MATCHINGS:
            raise ValueError(f"SemanticCKA: unknown matching (solver) {matching!r}; valid choices "
                             f"are {list(MATCHINGS)}")
        if max_minutes is not None and (isinstance(max_minutes, bool)
                                        or not isinstance(max_minutes, (int, float, np.integer,
                                                                        np.floating))
                                        or not math.isfinite(max_minutes) or max_minutes <= 0):
            raise ValueError(f"SemanticCKA: max_minutes must be a positive number of minutes or "
                             f"None (no limit), got {max_minutes!r}")
        try:
            max_positions = _check_max_positions(max_positions)
        except ValueError as exc:
            raise ValueError(f"SemanticCKA: {exc}") from None
        if psd not in PSD_MODES:
            raise ValueError(f"SemanticCKA: psd must be None (RSM as given) or 'clip' (PSD "
                             f"projection), got {psd!r}")
        if layout not in ("auto", "ncs", "nsc"):
            raise ValueError(f"SemanticCKA: unknown layout {layout!r}; valid: 'auto', 'ncs', 'nsc'")
        if n_workers is not None and (isinstance(n_workers, bool)
                                      or not isinstance(n_workers, (int, np.integer))
                                      or n_workers < 1):
            raise ValueError(f"SemanticCKA: n_workers must be a positive integer or None, got "
                             f"{n_workers!r}")
        self.kernel = kernel
        self.matching = matching
        self.baseline = bool(baseline)
        self.n_workers = n_workers
        self.unbiased = bool(unbiased)
        self.psd = psd
        self.layout = layout
        try:
            check_options(matching, matching_options, "SemanticCKA: ")
        except TypeError as err:  # a typo of the measure's own keyword is the likely cause
            import difflib
            import inspect
            own = [k for k, p in inspect.signature(SemanticCKA.__init__).parameters.items()
                   if p.kind is p.KEYWORD_ONLY] + list(INFERENCE_OPTIONS)
            close = sorted({c for k in matching_options
                            for c in difflib.get_close_matches(k, own, n=2, cutoff=0.75)})
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise TypeError(f"{err} (keywords that are not SemanticCKA's own go to the solver; "
                            f"its own: {', '.join(own)}){hint}") from None
        self.matching_options = dict(matching_options)
        self.max_minutes = None if max_minutes is None else float(max_minutes)
        self.max_positions = max_positions
        if print_plan not in (None, True, False):
            raise ValueError(f"SemanticCKA: print_plan must be None (when progress is on), True "
                             f"or False, got {print_plan!r}")
        self.print_plan = print_plan
        self.plan = None
        self.matching_stats = []
        super().__init__(sim_model1, sim_model2, device, store_device=store_device,
                         max_memory=max_memory, input_key=input_key, input_fn=input_fn, **inference)

    def _params(self) -> dict:
        p = {"kernel": self.kernel, "matching": self.matching, "baseline": self.baseline,
             "unbiased": self.unbiased, "psd": self.psd, "layout": self.layout,
             "max_positions": self.max_positions}
        p.update(self.matching_options)
        return p

    # -- RSMs
    def _layer_layout(self, act):
        if act.ndim >= 4:
            return "ncs"
        if act.ndim == 3:
            return "nsc" if self.layout == "auto" else self.layout
        return None

    def _positions(self, act):
        """Number of positions S matched for an activation ``[n, ...]`` (0 for flat outputs),
        after ``max_positions`` pooling."""
        lay = self._layer_layout(act)
        if lay is None:
            return 0
        shape = tuple(act.shape[2:]) if lay == "ncs" else tuple(act.shape[1:-1])
        S = int(np.prod(shape))
        mp = self.max_positions
        if mp is None or S <= mp:
            return S
        if len(shape) >= 2:
            h, w = pooled_grid(int(np.prod(shape[:-1])) if len(shape) > 2 else shape[0],
                               shape[-1], mp)
            return h * w
        return mp

    def _channels(self, act):
        lay = self._layer_layout(act)
        if lay is None:
            return int(np.prod(act.shape[1:]))
        return int(act.shape[1]) if lay == "ncs" else int(act.shape[-1])

    def _solver_for(self, S):
        return choose_solver(S, self.store_device) if self.matching == "auto" else self.matching

    def _estimate(self, solver, S, pairs, C=0):
        """Seconds to match ``pairs`` problems of ``S`` positions and ``C`` channels: the solver's
        calibrated time plus forming the affinities (one ``S x S x C`` product per pair)."""
        try:
            sec = estimate_seconds(solver, S, pairs, n_workers=self.n_workers)
        except ValueError:  # solvers without a cost model (batch_optimal, greedy): <= auction
            sec = estimate_seconds("auction", S, pairs, n_workers=self.n_workers)
        workers = min(resolve_n_workers(self.n_workers), max(int(pairs), 1))
        return sec + pairs * 2.0 * S * S * C / _AFFINITY_FLOPS / workers

    def make_plan(self, feats1, feats2, n):
        """:class:`SemanticPlan` for ``n`` samples from one batch of each model's activations."""
        rows = []
        seen = []
        for model, feats in ((self.sim_model1, feats1), (self.sim_model2, feats2)):
            for layer in model.layers:
                if layer not in feats:
                    continue
                act = feats[layer]
                S, C = self._positions(act), self._channels(act)
                pairs = n * (n - 1) // 2
                if any(positive_multiple(act, a) is not None for a in seen):
                    solver, sec = "reused", 0.0
                elif S <= 1 or self.baseline:
                    solver, sec = "baseline", 0.0
                else:
                    solver = self._solver_for(S)
                    sec = self._estimate(solver, S, pairs, C)
                seen.append(act)
                rows.append({"model": model.model_name, "layer": layer, "S": max(S, 1), "C": C,
                             "pairs": pairs, "solver": solver, "seconds": float(sec)})
        return SemanticPlan(rows, n, self.max_positions, self.n_workers)

    def _suggestions(self, plan, budget):
        """Largest n and max_positions whose plan fits ``budget`` seconds (None if none)."""
        def total(n, mp):
            t = 0.0
            for r in plan.rows:
                if r["solver"] in ("baseline", "reused"):
                    continue
                S = r["S"] if mp is None else min(r["S"], mp)
                t += self._estimate(self._solver_for(S), S, n * (n - 1) // 2, r["C"])
            return t
        best_n = None
        for n in range(plan.n - 1, 3, -1):
            if total(n, self.max_positions) <= budget:
                best_n = n
                break
        best_mp = None
        for mp in (4096, 3136, 2304, 1600, 1024, 784, 576, 400, 256, 196, 144, 100, 64, 49, 36,
                   25, 16, 9, 4):
            if (self.max_positions is None or mp < self.max_positions) \
                    and total(plan.n, mp) <= budget:
                best_mp = mp
                break
        return {"n": best_n, "max_positions": best_mp}

    def _update_state(self, feats1, feats2, batch) -> None:
        if self._store1.n_samples == 0 and not self.baseline:
            # plan before work: estimate every layer's matching from the first batch
            n = max(self._planned_samples or 0, next(iter(feats1.values())).shape[0])
            self.plan = self.make_plan(feats1, feats2, n)
            if (self.print_plan or (self.print_plan is None and self._progress)) \
                    and dist_rank() == 0:
                print(self.plan.format(), file=sys.stderr, flush=True)
            budget = None if self.max_minutes is None else 60.0 * self.max_minutes
            if budget is not None and self.plan.total_seconds > budget:
                sug = self._suggestions(self.plan, budget)
                ways = []
                if sug["n"]:
                    ways.append(f"fewer samples (n <= {sug['n']}, e.g. max_batches=)")
                if sug["max_positions"]:
                    ways.append(f"max_positions={sug['max_positions']} (average-pools the maps; "
                                "an approximation)")
                ways.append("fewer or coarser layers (layers_to_include=)")
                ways.append(f"or a larger max_minutes (now {self.max_minutes:g})")
                raise PlanTooLarge(
                    f"SemanticCKA: the matching would take about "
                    f"{_fmt_seconds(self.plan.total_seconds)}, above max_minutes="
                    f"{self.max_minutes:g}; shrink it with " + "; ".join(ways)
                    + ".\n" + self.plan.format(), self.plan, sug)
        super()._update_state(feats1, feats2, batch)

    def _rsm(self, model_name, layer, act, bar=None):
        """The N x N RSM of one layer's activations ``act [N, ...]`` (float64 NumPy)."""
        lay = self._layer_layout(act)
        if act.ndim > 4:  # (n, c, d, h, w, ...): every trailing axis is a position axis
            act = act.reshape(act.shape[0], act.shape[1], act.shape[2], -1)
        if lay is None:
            flat = act.reshape(act.shape[0], -1)
            if not self.baseline:
                self._notes.append(
                    f"{model_name}.{layer}: output {tuple(act.shape[1:])} has no spatial extent; "
                    "baseline RSM used (no permutation)")
            return similarity_calculation(flat[:, :, None], kernel=self.kernel)
        if self.max_positions is not None:
            act = pool_positions(act, self.max_positions, lay)
        S = int(np.prod(act.shape[2:])) if lay == "ncs" else int(np.prod(act.shape[1:-1]))
        if self.baseline:
            return similarity_calculation(act, kernel=self.kernel, layout=lay)
        if S == 1:
            self._notes.append(
                f"{model_name}.{layer}: a single position (S = 1); baseline RSM used (identical "
                "to the semantic one)")
            return similarity_calculation(act, kernel=self.kernel, layout=lay)
        stats = {}
        K = semantic_sim_parallel(act, kernel=self.kernel, matching=self.matching,
                                  n_workers=self.n_workers, layout=lay,
                                  progress=self._progress and bar is None, progress_bar=bar,
                                  stats=stats, **self.matching_options)
        if stats:
            self.matching_stats.append({"model": model_name, "layer": layer, **stats})
        return K

    def _rsms(self, acts, model, built, bar=None):
        """RSMs of ``model``'s layers in order. ``built`` is a list of (activation, RSM) already
        made (either model): identical activations reuse their RSM (a positive multiple ``c``
        of an earlier layer's activations reuses it times ``c^2`` for the linear kernel, as is
        for cosine and RBF: the alignments are the same), and new ones are added."""
        out = []
        for layer in [l for l in model.layers if l in acts]:
            act = acts[layer]
            K = None
            for other_act, other_K, other_name in built:
                c = positive_multiple(act, other_act)
                if c is not None:
                    K = other_K * (c * c) if self.kernel in ("linear", "ip") else other_K
                    if c != 1.0:
                        self._notes.append(
                            f"{model.model_name}.{layer}: activations are {c:.6g} x those of "
                            f"{other_name}; its RSM was derived from that one (same alignments)")
                    break
            if K is None:
                K = self._rsm(model.model_name, layer, act, bar=bar)
                built.append((act, K, f"{model.model_name}.{layer}"))
                if self.psd is None and not self.baseline:
                    lo, hi = _negative_part(K)
                    if lo < -1e-6 * hi:
                        self._notes.append(
                            f"{model.model_name}.{layer}: the semantic RSM is not positive "
                            f"semi-definite (most negative eigenvalue {lo:.3g}, largest "
                            f"|eigenvalue| {hi:.3g}); CKA uses it as given (psd='clip' projects it)")
            out.append(K)
        return out

    def _check_batch(self, n: int) -> None:
        pass  # the number of samples is checked once all are collected

    def _matrix_from_activations(self, acts1: dict, acts2: dict) -> np.ndarray:
        n = next(iter(acts1.values())).shape[0]
        need = 4 if self.unbiased else 2
        if n < need:
            raise ValueError(f"SemanticCKA needs at least {need} samples "
                             f"({'unbiased' if self.unbiased else 'biased'} HSIC), got {n}")
        self.matching_stats = []
        built = []
        bar = None
        if not self.baseline:
            if self.plan is None or self.plan.n != n:  # update() called by hand: plan now
                self.plan = self.make_plan(acts1, acts2, n)
            total = self.plan.total_pairs
            bar = tqdm(total=total, desc="semantic pairs (all layers)", unit="pair",
                       disable=not self._progress or total == 0, leave=False, smoothing=0.05)
        try:
            with pair_sharding(self._many):  # under torch.distributed each rank solves its share
                Ks = self._rsms(acts1, self.sim_model1, built, bar)
                Ls = self._rsms(acts2, self.sim_model2, built, bar)  # identical layers not redone
        finally:
            if bar is not None:
                bar.close()
        if self.matching_stats:
            done = [st for st in self.matching_stats if st["pairs"]]
            if done:
                gap = max(st["max_rel_gap"] for st in done)
                fb = sum(st["exact_fallback"] for st in done)
                solvers = sorted({st["solver"] for st in done})
                head = (f"matching: {sum(st['pairs'] for st in done)} pair problems in "
                        f"{sum(st['seconds'] for st in done):.1f} s ({', '.join(solvers)})")
                if all(st["certified"] for st in done):
                    self._notes.append(
                        f"{head}; every one certified within {gap:.2e} of its optimum "
                        "(relative)" + (f", {fb} of them by the exact fallback" if fb else ""))
                else:
                    self._notes.append(f"{head}; not certified (an approximate solver)")
        M = rsm_cka_matrix(Ks, Ls, unbiased=self.unbiased, psd=self.psd, device=self.device)
        if self.inference_active:  # the RSMs are resampled by index gathers for inference
            clip = psd_clip if self.psd == "clip" else np.asarray
            self._keep_grams(*(torch.as_tensor(np.stack([clip(np.asarray(G, dtype=np.float64)) for G in Gs]),
                                               device=self.device) for Gs in (Ks, Ls)), self.unbiased)
        bad1 = np.where(np.all(np.isnan(M), axis=1))[0]
        bad2 = np.where(np.all(np.isnan(M), axis=0))[0]
        self._note_constant([(model, [model.layers[i] for i in bad])
                             for model, bad in ((self.sim_model1, bad1), (self.sim_model2, bad2))],
                            "constant in its semantic RSM after centring (or of non-positive "
                            "self-HSIC)")
        return M
