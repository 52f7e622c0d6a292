"""Bootstrap intervals, permutation tests and calibrated scores for every measure (issue 11).

:class:`InferenceMixin` is a base of :class:`~simtorch_semantic.measures.base.BaseSimilarity`;
it owns the options (``n_bootstrap``, ``n_permutations``, ``confidence``, ``seed``,
``interval``) and turns a measure's state into the result's ``ci_low``, ``ci_high``,
``p_value``, ``p_value_adjusted``, ``null_mean`` and ``calibrated`` arrays. The math lives in
:mod:`simtorch_semantic.functional.inference`. Three routes, picked by what the measure keeps:

streaming (per-batch HSIC terms; measures with ``inference_streaming = True``)
    For the bootstrap the measure keeps each batch's HSIC terms (``keep_batch_stats``: the
    ``"cat"`` states ``batch_hsic_xy [B, L1, L2]``, ``batch_hsic_xx [B, L1]``,
    ``batch_hsic_yy [B, L2]``, read with ``batch_stats()``) and *batches* are resampled; for
    the permutation test it calls :meth:`_inference_batch` with each batch's Grams, which adds
    the cross terms of ``n_permutations`` within-batch permutations to the ``"sum"`` state
    ``inference_null_xy [R, L1, L2]`` (divided at the end by the totals ``hsic_xx``,
    ``hsic_yy``). No Gram is kept, no extra forward pass is run, memory is flat in the number of
    samples, and both states are reduced across processes by the state registry.
Gram matrices of all samples (full CKA, semantic CKA)
    The measure hands its ``[L, N, N]`` Grams to :meth:`_keep_grams`; resamples and
    permutations are index gathers of them (the kernel, and an RBF bandwidth, stay those of the
    full data).
activations of all samples (RSA, Procrustes, CCA)
    The matrix is recomputed from the stored activations for every resample (model 1 and 2 at
    the same drawn samples) and every permutation (model 2's samples permuted).

How a replicate becomes the matrix is the measure's (hooks ``_statistic_from_terms``,
``_null_from_cross``, ``_grams_bootstrap``, ``_grams_null``; CKA's by default). Deconfounded CKA
keeps six per-batch terms, stacks the confounder's Gram onto both sides of the streaming
permutation null (``inference_null_extra = 1``: ``inference_null_xy [R, L1 + 1, L2 + 1]``), and
hands its confounder's ``[N, N]`` Gram to ``_keep_grams`` in the full form; the functions are
in :mod:`simtorch_semantic.functional.inference` (dCKA section).

BCa intervals need jackknife values: leave-one-batch-out for the streaming route, otherwise
leave-one-group-out over ``min(N, 20)`` random groups of samples (a grouped jackknife).
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np
import torch
from tqdm.auto import tqdm

from ..functional.inference import (INTERVAL_METHODS, bootstrap_counts, bootstrap_indices,
                                    bootstrap_interval, calibrated_scores,
                                    cka_bootstrap_from_grams, cka_from_terms,
                                    cka_permutation_null_from_grams, make_generator,
                                    permutation_p_values, permuted_hsic_cross, random_permutations,
                                    streaming_bootstrap_terms, streaming_jackknife_terms,
                                    westfall_young_p_values)
from .. import distributed as _dist

__all__ = ["InferenceMixin", "INFERENCE_OPTIONS"]

#: the keyword arguments every measure accepts for inference
INFERENCE_OPTIONS = ("n_bootstrap", "n_permutations", "confidence", "seed", "interval")

#: groups of the grouped jackknife (BCa) for measures that hold all samples
_JACKKNIFE_GROUPS = 20
#: below this many batches the streaming bootstrap's intervals are coarse: say so in the notes
_FEW_BATCHES = 10
#: replicates per progress-bar step of the Gram route
_GRAM_CHUNK = 25


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0 \
            or 0 < value < minimum:
        raise ValueError(f"{name} must be 0 (off) or an integer >= {minimum}, got {value!r}; "
                         f"1000 is a usual choice")
    return int(value)


class InferenceMixin:
    """Options and result arrays of bootstrap / permutation inference (module docstring).

    Parameters (keyword-only on every measure)
    ----------
    n_bootstrap : int
        Bootstrap resamples for the confidence interval of every cell (0: none).
    n_permutations : int
        Permutations for the p-value, the family-wise adjusted p-value and the calibrated score
        of every cell (0: none).
    confidence : float
        Level of the intervals (default 0.95).
    seed : int, optional
        Seed of the resampling; None draws a fresh one (recorded in ``params["inference"]``).
    interval : {"percentile", "bca"}
        Interval method.
    """

    #: why this measure cannot do inference (None: it can)
    inference_unsupported: str | None = None
    #: True for measures that offer the streaming route (per-batch HSIC states)
    inference_streaming = False
    #: extra Grams stacked onto both sides of the streaming permutation null (dCKA: the
    #: confounder's), so ``inference_null_xy`` is ``[R, L1 + e, L2 + e]``
    inference_null_extra = 0
    #: precision of the permuted Gram products of the permutation null (the Grams are
    #: double-centred in float64 first; sums and self terms stay float64). float32 halves the
    #: memory traffic of the gathers; set float64 on an instance for bit-for-bit double nulls.
    permutation_dtype = torch.float32

    def _init_inference(self, n_bootstrap=0, n_permutations=0, confidence=0.95, seed=None,
                        interval="percentile", **unknown) -> None:
        if unknown:
            raise TypeError(f"{type(self).__name__}() got an unexpected keyword argument "
                            f"{next(iter(unknown))!r}")
        self.n_bootstrap = _check_int("n_bootstrap", n_bootstrap, 2)
        self.n_permutations = _check_int("n_permutations", n_permutations, 1)
        if isinstance(confidence, bool) or not isinstance(confidence, numbers.Real) \
                or not 0.0 < float(confidence) < 1.0:
            raise ValueError(f"confidence must be a number strictly between 0 and 1 (e.g. 0.95), "
                             f"got {confidence!r}")
        self.confidence = float(confidence)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
                                 or seed < 0):
            raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
        self.seed = None if seed is None else int(seed)
        if interval not in INTERVAL_METHODS:
            raise ValueError(f"interval must be one of {INTERVAL_METHODS}, got {interval!r}")
        self.interval = interval
        if self.inference_active and self.inference_unsupported:
            raise ValueError(f"{type(self).__name__}: {self.inference_unsupported}; leave "
                             "n_bootstrap and n_permutations at 0")
        if self.inference_streaming:
            if self.n_bootstrap:
                self.keep_batch_stats = True
            if self.n_permutations:
                R, e = self.n_permutations, self.inference_null_extra
                self.add_state("inference_null_xy",
                               lambda n1, n2: torch.zeros(R, n1 + e, n2 + e, dtype=torch.float64))

    @property
    def inference_active(self) -> bool:
        return bool(getattr(self, "n_bootstrap", 0) or getattr(self, "n_permutations", 0))

    # ------------------------------------------------------------------ state
    def _reset_inference(self) -> None:
        self._inf_seed = None
        self._inf_grams = None      # (Ks, Ls, unbiased) of the Gram route
        self._inf_confounder = None  # the confounder's [N, N] Gram of the Gram route (dCKA)

    def _seed_used(self) -> int:
        if self._inf_seed is None:
            self._inf_seed = make_generator(self.seed)[1]  # draws a fresh one when seed is None
        return self._inf_seed

    def _batch_generator(self) -> torch.Generator:
        """Generator of one batch's draws, seeded from the seed and the batch's GLOBAL index, so
        that a run sharded over ranks (batches dealt in turn: local batch ``k`` of rank ``r`` is
        batch ``k * world + r``) draws exactly the permutations one process draws."""
        k = self._batch_index
        if self._many:
            k = k * _dist.world_size() + _dist.rank()
        derived = (self._seed_used() * 1_000_003 + 7_919 * (k + 1)) % (2 ** 63)
        return make_generator(derived, self.device)[0]

    def _result_generator(self) -> torch.Generator:
        """A fresh generator from the seed for the draws at ``result()``: every process of a
        torch.distributed run, whatever batches it saw, draws the same resamples."""
        return make_generator(self._seed_used(), self.device)[0]

    def _inference_batch(self, Ks: torch.Tensor, Ls: torch.Tensor, unbiased: bool) -> None:
        """Streaming route: add one batch's permuted cross terms (Grams ``[L1, n, n]``,
        ``[L2, n, n]``) to ``inference_null_xy``; on the measure's device, no host sync."""
        if not self.n_permutations:
            return
        perms = random_permutations(Ks.shape[-1], self.n_permutations, self._batch_generator())
        cross = permuted_hsic_cross(Ks, Ls, perms.to(Ks.device), unbiased, validate=False,
                                    dtype=self.permutation_dtype)
        self.inference_null_xy.add_(cross)

    def _keep_grams(self, Ks: torch.Tensor, Ls: torch.Tensor, unbiased: bool,
                    confounder: torch.Tensor | None = None) -> None:
        """Gram route: the ``[L1, N, N]`` and ``[L2, N, N]`` kernel matrices of all samples (and
        the confounder's ``[N, N]`` Gram, for dCKA)."""
        if self.inference_active:
            self._inf_grams = (Ks, Ls, bool(unbiased))
            self._inf_confounder = confounder

    # ------------------------------------------------------------------ the statistic
    # What is resampled is generic; how a replicate becomes the matrix is the measure's. These
    # defaults are CKA's; dCKA overrides them (measures/cka.py).
    def _statistic_from_terms(self, terms: dict) -> torch.Tensor:
        """Streaming route: the matrix ``[R, L1, L2]`` from (resampled) summed terms ``[R, ...]``."""
        return cka_from_terms(terms)

    def _null_from_cross(self, cross: torch.Tensor) -> torch.Tensor:
        """Streaming route: the null ``[R, L1, L2]`` from the summed permuted cross terms."""
        return cka_from_terms({"xy": cross, "xx": self.hsic_xx, "yy": self.hsic_yy})

    def _grams_bootstrap(self, idx: torch.Tensor) -> torch.Tensor:
        """Gram route: the matrix at each row of sample indices ``idx [R, m]``."""
        Ks, Ls, unbiased = self._inf_grams
        return cka_bootstrap_from_grams(Ks, Ls, idx, unbiased)

    def _grams_null(self, perms: torch.Tensor) -> torch.Tensor:
        """Gram route: the permutation null for model 2's samples permuted by ``perms [R, N]``."""
        Ks, Ls, unbiased = self._inf_grams
        return cka_permutation_null_from_grams(Ks, Ls, perms.to(Ks.device), unbiased,
                                               dtype=self.permutation_dtype)

    def _inference_params(self) -> dict:
        if not self.inference_active:
            return {}
        return {"inference": {"n_bootstrap": self.n_bootstrap, "n_permutations": self.n_permutations,
                              "confidence": self.confidence, "interval": self.interval,
                              "seed": self._seed_used(),
                              "resampled": self._resampled_unit(),
                              "adjusted": "westfall-young max-T (standardised)"}}

    def _resampled_unit(self) -> str:
        if self.inference_streaming:
            return "batches (bootstrap); samples within each batch (permutations)"
        return "samples"

    # ------------------------------------------------------------------ result
    def _run_inference(self, matrix: np.ndarray) -> dict:
        """The inference arrays for ``matrix [L1, L2]`` (empty when inference is off)."""
        if not self.inference_active:
            return {}
        gen = self._result_generator()
        out = {}
        higher = bool(self.higher_is_similar)
        if self.n_bootstrap and self.inference_streaming and self._n_batches < _FEW_BATCHES:
            self._note(f"the bootstrap resamples whole batches and only {self._n_batches} were "
                       f"seen: its intervals are coarse; use more, smaller batches")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # undefined cells are noted once, above
            if self.n_bootstrap:
                reps = self._bootstrap_replicates(gen)
                jack = self._jackknife_values() if self.interval == "bca" else None
                low, high = bootstrap_interval(reps, self.confidence, self.interval,
                                               estimate=matrix, jackknife=jack)
                out["ci_low"], out["ci_high"] = low, high
            if self.n_permutations:
                null = self._permutation_null(gen)
                null = null.detach().cpu().numpy() if isinstance(null, torch.Tensor) else np.asarray(null)
                out["p_value"] = permutation_p_values(matrix, null, higher)
                out["p_value_adjusted"] = westfall_young_p_values(matrix, null, higher)
                with np.errstate(invalid="ignore"):
                    out["null_mean"] = np.nanmean(null, axis=0) if null.shape[0] else None
                out["calibrated"] = calibrated_scores(matrix, out["null_mean"], higher)
        return out

    # -- bootstrap
    def _bootstrap_replicates(self, gen):
        if self.inference_streaming:
            stats = self.batch_stats()
            first = next(iter(stats.values()))
            counts = bootstrap_counts(first.shape[0], self.n_bootstrap, gen, first.device)
            return self._statistic_from_terms(streaming_bootstrap_terms(stats, counts))
        n = self._inference_n_samples()
        idx = bootstrap_indices(n, self.n_bootstrap, gen)
        if self._inf_grams is not None:
            return self._gram_replicates(idx, "bootstrap")
        return self._recompute(idx, same_for_both=True, desc="bootstrap")

    def _jackknife_values(self):
        if self.inference_streaming:
            return self._statistic_from_terms(streaming_jackknife_terms(self.batch_stats()))
        n = self._inference_n_samples()
        groups = min(n, _JACKKNIFE_GROUPS)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
        kept = [torch.cat([g for k, g in enumerate(order.chunk(groups)) if k != j]).sort().values
                for j in range(groups)]
        values = []
        for keep in kept:
            if self._inf_grams is not None:
                values.append(self._gram_replicates(keep[None].to(self._inf_grams[0].device), None)[0])
            else:
                values.append(self._recompute(keep[None], same_for_both=True, desc=None)[0])
        return torch.stack([torch.as_tensor(v) for v in values])

    # -- permutations
    def _permutation_null(self, gen):
        if self.inference_streaming:
            return self._null_from_cross(self.inference_null_xy)
        n = self._inference_n_samples()
        perms = random_permutations(n, self.n_permutations, gen)
        if self._inf_grams is not None:
            return self._grams_null(perms)
        return self._recompute(perms, same_for_both=False, desc="permutations")

    # -- helpers
    def _inference_n_samples(self) -> int:
        if self._inf_grams is not None:
            return int(self._inf_grams[0].shape[-1])
        return int(self._n_samples)

    def _gram_replicates(self, idx, desc) -> torch.Tensor:
        idx = idx.to(self._inf_grams[0].device)
        chunks = list(idx.split(_GRAM_CHUNK))
        parts = [self._grams_bootstrap(c)
                 for c in tqdm(chunks, desc=f"{self.name} {desc}", unit="chunk",
                               disable=desc is None or not self._progress or len(chunks) < 2)]
        return torch.cat(parts)

    def _recompute(self, idx: torch.Tensor, same_for_both: bool, desc) -> np.ndarray:
        """Recompute the matrix from stored activations for each row of ``idx [R, m]``:
        both models at those samples (``same_for_both``) or model 2's samples permuted."""
        acts1, acts2 = self._store1.tensors(), self._store2.tensors()
        notes, progress = list(self._notes), self._progress
        self._progress = False
        out = []
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for row in tqdm(idx.cpu(), desc=f"{self.name} {desc}", unit="resample",
                                disable=desc is None or not progress):
                    r1 = {k: v[row.to(v.device)] for k, v in acts1.items()} if same_for_both else acts1
                    r2 = {k: v[row.to(v.device)] for k, v in acts2.items()}
                    out.append(np.asarray(self._matrix_from_activations(r1, r2), dtype=np.float64))
        finally:
            self._notes, self._progress = notes, progress
        return np.stack(out)
