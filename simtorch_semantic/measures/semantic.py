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

With ``matching="exact"`` the first batch's layer shapes and the planned number of samples are
checked against the solver's time estimate; a layer that would take hours stops the run before
anything is collected, with the estimate and the approximate solvers to use instead.
"""
from __future__ import annotations


import numpy as np
import torch
from tqdm.auto import tqdm

from ..functional.cka import cka_from_hsic
from ..functional.hsic import hsic_all_pairs
from ..functional.matching import SOLVERS, check_exact_feasible
from ..functional.semantic import (
    KERNELS,
    semantic_sim_parallel,
    similarity_calculation,
)
from .collect import CollectingSimilarity

__all__ = ["SemanticCKA", "rsm_cka_matrix", "psd_clip"]

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
        Assignment solver (``functional.matching.SOLVERS``); ``**matching_options`` go to it
        (e.g. ``k=`` for "batch_optimal").
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

    ``result().notes`` lists the layers that fell back to the baseline RSM and the indefinite
    ones.
    """

    name = "semantic_cka"
    higher_is_similar = True
    memory_hint = "use fewer samples (max_batches=) or fewer layers"

    def __init__(self, sim_model1, sim_model2, *, kernel="rbf", matching="exact", baseline=False,
                 device="cpu", n_workers=None, unbiased=False, psd=None, layout="auto",
                 store_device="cpu", max_memory=None, input_key=None, input_fn=None,
                 **matching_options):
        if kernel == "ip":  # the old name of "linear"
            import warnings

            warnings.warn("SemanticCKA: kernel='ip' is the old name of kernel='linear'; use 'linear'.",
                          DeprecationWarning, stacklevel=2)
            kernel = "linear"
        if kernel not in KERNELS:
            raise ValueError(f"SemanticCKA: unknown kernel {kernel!r}; valid kernels are "
                             f"{list(KERNELS)}")
        if matching not in SOLVERS:
            raise ValueError(f"SemanticCKA: unknown matching (solver) {matching!r}; valid solvers "
                             f"are {list(SOLVERS)}")
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
        self.matching_options = dict(matching_options)
        super().__init__(sim_model1, sim_model2, device, store_device=store_device,
                         max_memory=max_memory, input_key=input_key, input_fn=input_fn)

    def _params(self) -> dict:
        p = {"kernel": self.kernel, "matching": self.matching, "baseline": self.baseline,
             "unbiased": self.unbiased, "psd": self.psd, "layout": self.layout}
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
        """Number of positions S of an activation ``[n, ...]`` (0 for flat outputs)."""
        lay = self._layer_layout(act)
        if lay is None:
            return 0
        return int(np.prod(act.shape[2:])) if lay == "ncs" else int(np.prod(act.shape[1:-1]))

    def _update_state(self, feats1, feats2, batch) -> None:
        if self._store1.n_samples == 0 and self.matching == "exact" and not self.baseline:
            # refuse hours of exact matching before collecting anything
            n = max(self._planned_samples or 0, next(iter(feats1.values())).shape[0])
            for model, feats in ((self.sim_model1, feats1), (self.sim_model2, feats2)):
                for layer, act in feats.items():
                    S = self._positions(act)
                    if S > 1:
                        try:
                            check_exact_feasible(S, n * (n - 1) // 2, n_workers=self.n_workers)
                        except ValueError as exc:
                            raise ValueError(f"SemanticCKA, layer {model.model_name}.{layer}: "
                                             f"{exc}") from None
        super()._update_state(feats1, feats2, batch)

    def _rsm(self, model_name, layer, act):
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
        S = self._positions(act)
        if self.baseline:
            return similarity_calculation(act, kernel=self.kernel, layout=lay)
        if S == 1:
            self._notes.append(
                f"{model_name}.{layer}: a single position (S = 1); baseline RSM used (identical "
                "to the semantic one)")
            return similarity_calculation(act, kernel=self.kernel, layout=lay)
        return semantic_sim_parallel(act, kernel=self.kernel, matching=self.matching,
                                     n_workers=self.n_workers, layout=lay,
                                     progress=self._progress, **self.matching_options)

    def _rsms(self, acts, model, reuse=None):
        """RSMs of ``model``'s layers in order; ``reuse`` maps (layer, activation) -> RSM already
        built for identical activations (a model compared with itself or with a copy)."""
        out = []
        items = [(layer, acts[layer]) for layer in model.layers if layer in acts]
        for layer, act in tqdm(items, desc=f"RSMs {model.model_name}", unit="layer",
                               disable=not self._progress or len(items) < 2, leave=False):
            K = None
            for other_act, other_K in (reuse or {}).get(layer, []):
                if other_act.shape == act.shape and torch.equal(other_act, act):
                    K = other_K
                    break
            if K is None:
                K = self._rsm(model.model_name, layer, act)
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
        Ks = self._rsms(acts1, self.sim_model1)
        built = {}
        for layer, K in zip([l for l in self.sim_model1.layers if l in acts1], Ks):
            built.setdefault(layer, []).append((acts1[layer], K))
        Ls = self._rsms(acts2, self.sim_model2, reuse=built)  # identical layers are not redone
        M = rsm_cka_matrix(Ks, Ls, unbiased=self.unbiased, psd=self.psd, device=self.device)
        bad1 = np.where(np.all(np.isnan(M), axis=1))[0]
        bad2 = np.where(np.all(np.isnan(M), axis=0))[0]
        for model, bad in ((self.sim_model1, bad1), (self.sim_model2, bad2)):
            for i in bad:
                self._note(f"{model.model_name}.{model.layers[i]}: RSM constant after centring "
                           "(or non-positive HSIC); its CKA is NaN")
        return M
