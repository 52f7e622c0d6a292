"""CKA and deconfounded CKA (dCKA) between every layer pair of two models.

Two estimators:

``estimator="minibatch"`` (default)
    Nguyen, Raghu & Kornblith (2021), "Do wide and deep networks learn the same things?": the
    unbiased HSIC of Song et al. (2012) is computed on every batch and *summed* over batches;
    ``CKA = sum HSIC(K, L) / sqrt(sum HSIC(K, K) * sum HSIC(L, L))``. Each term is an unbiased
    estimate of the population HSIC, so the result does not depend on the batch size (unlike an
    average of per-batch CKA values). Only each batch's ``[n, n]`` Gram matrix is formed, inside
    the forward hook; activations are never stored, so memory is flat in the number of samples.
    Batches need at least 4 samples. With ``kernel="rbf"`` the bandwidth is ``sigma_frac`` times
    the median pairwise distance *of each batch* (or the fixed ``sigma``).

``estimator="full"``
    Exact CKA over all N samples (biased HSIC, or ``unbiased=True``), computed from every layer's
    N x N Gram in float64. Activations of all samples are kept; before that would exhaust memory
    a ``MemoryError`` gives the estimate and suggests the minibatch estimator. The RBF bandwidth
    comes from the median distance over all N samples.

Classes: ``CKA(..., estimator=...)`` and ``DeltaCKA(...)`` are the front doors; they return an
instance of the form that does the work, :class:`StreamingCKA` / :class:`FullCKA` (and
:class:`StreamingDeltaCKA` / :class:`FullDeltaCKA`), each a subclass of the front door, so
``isinstance(m, CKA)`` holds. The streaming forms keep HSIC sums in registered states
(``hsic_xy [L1, L2]``, ``hsic_xx [L1]``, ``hsic_yy [L2]``, for dCKA also ``hsic_xz``, ``hsic_yz``,
``hsic_zz``), summed across processes under torch.distributed; with ``keep_batch_stats = True``
they also keep each batch's terms (``batch_hsic_xy [batches, L1, L2]``...), gathered in batch order
(for intervals over batches). The full forms collect activations (CollectingSimilarity).

Constant layers (every sample identical) have HSIC(K, K) = 0: their CKA is NaN, and one
``RuntimeWarning`` per run lists every such layer of both models. NaN or Inf in an activation
raises a ``ValueError`` naming the layer and the batch where it appeared, at that batch on the CPU
(every ``nonfinite_check_every`` batches on other devices). A batch smaller than 4 samples
(streaming) is refused before the first batch when the loader knows its batch sizes.
"""

from __future__ import annotations

import numpy as np
import torch

from ..functional.cka import check_kernel, cka_from_hsic
from ..functional.dcka import dcka_from_hsic, dcka_hsic_terms, deconfound_gram
from ..functional.inference import (dcka_bootstrap_from_grams, dcka_extended_grams,
                                    dcka_null_from_cross, dcka_permutation_null_from_grams)
from ..functional.hsic import hsic_all_pairs
from ..functional.kernels import linear_gram, rbf_gram, streaming_linear_gram
from .base import BaseSimilarity
from .collect import ActivationStore, CollectingSimilarity

__all__ = ["CKA", "DeltaCKA", "StreamingCKA", "FullCKA", "StreamingDeltaCKA", "FullDeltaCKA"]

_ESTIMATORS = ("minibatch", "full")
_CONSTANT = "constant over the samples (HSIC with itself is 0)"


def _f64(shape_fn):
    """A lazy state default: zeros of ``shape_fn(L1, L2)`` in float64."""
    return lambda n1, n2: torch.zeros(shape_fn(n1, n2), dtype=torch.float64)


class CKA(BaseSimilarity):
    """Centered Kernel Alignment between every layer of model 1 and every layer of model 2.

    Parameters
    ----------
    sim_model1, sim_model2 : SimilarityModel
    kernel : {"linear", "rbf"}
        Linear CKA or Gaussian-kernel CKA (Kornblith et al. 2019). ``"ip"``, the old name of
        ``"linear"``, is accepted with a ``DeprecationWarning``.
    estimator : {"minibatch", "full"}
        See the module docstring (default ``"minibatch"``). ``minibatch`` always uses the unbiased
        HSIC. The instance returned is a :class:`StreamingCKA` or a :class:`FullCKA` (both are
        CKA).
    unbiased : bool, optional
        For ``estimator="full"``: unbiased HSIC (Song et al. 2012) instead of the biased one
        (default, as in every CKA function). ``estimator="minibatch"`` is always unbiased:
        ``unbiased=False`` with it raises instead of being silently ignored.
    sigma_frac : float
        RBF bandwidth as a fraction of the median pairwise distance (default 0.8).
    sigma : float, optional
        Fixed RBF bandwidth (overrides ``sigma_frac``).
    device : str or torch.device
        Where HSIC sums are kept (Gram matrices are formed on each model's device).
    store_device, max_memory :
        For ``estimator="full"``: where activations are kept and how many bytes they may take.

    Notes
    -----
    ``compute(loader)`` returns a :class:`~simtorch_semantic.results.SimilarityResult` whose
    ``[i, j]`` entry is CKA(layer i of model 1, layer j of model 2).
    """

    name = "cka"
    memory_hint = "use estimator='minibatch' (memory flat in the number of samples), fewer samples or fewer layers"
    #: the form chosen for each estimator (front doors only; see __new__)
    _forms: dict | None = None
    #: True for the forms that collect activations (they take store_device and max_memory)
    _collects = False
    streaming = True

    def __new__(cls, *args, **kwargs):
        forms = cls.__dict__.get("_forms")
        if forms:
            estimator = kwargs.get("estimator") or "minibatch"
            if estimator not in _ESTIMATORS:
                raise ValueError(f"estimator must be one of {_ESTIMATORS}, got {estimator!r}")
            cls = forms[estimator]
        return super().__new__(cls)

    def __init__(self, sim_model1, sim_model2, *, kernel="linear", estimator=None, unbiased=None,
                 sigma_frac=0.8, sigma=None, device="cpu", store_device="cpu", max_memory=None,
                 input_key=None, input_fn=None, **inference):
        kernel = check_kernel(kernel, type(self).__name__)
        own = "minibatch" if self.streaming else "full"
        if estimator is None and type(self).__dict__.get("_forms") is None:
            estimator = own  # a form built directly, e.g. FullCKA(m1, m2)
        if estimator not in _ESTIMATORS:
            raise ValueError(f"estimator must be one of {_ESTIMATORS}, got {estimator!r}")
        if estimator != own:
            raise ValueError(f"{type(self).__name__} is the estimator={own!r} form; for "
                             f"estimator={estimator!r} use CKA(..., estimator={estimator!r})")
        if unbiased is not None and not isinstance(unbiased, (bool, np.bool_)):
            raise ValueError(f"unbiased must be True, False or None, got {unbiased!r}")
        if estimator == "minibatch" and unbiased is not None and not unbiased:
            raise ValueError(
                "estimator='minibatch' sums the unbiased HSIC over batches and has no biased form; "
                "leave unbiased unset (or True), or use estimator='full' for the biased estimator")
        self.kernel = kernel
        self.estimator = estimator
        # the package-wide default is the biased estimator; the minibatch one is unbiased only
        self.unbiased = True if estimator == "minibatch" else bool(unbiased)
        self.sigma_frac = self._check_positive_float("sigma_frac", sigma_frac)
        self.sigma = None if sigma is None else self._check_positive_float("sigma", sigma)
        storage = dict(store_device=store_device, max_memory=max_memory) if self._collects else {}
        super().__init__(sim_model1, sim_model2, device, input_key=input_key, input_fn=input_fn,
                         **storage, **inference)

    # ------------------------------------------------------------------ shared math
    def _gram(self, activation: torch.Tensor) -> torch.Tensor:
        """``[n, ...]`` activation -> ``[n, n]`` Gram in at least float32 (hook-time, no copy)."""
        if self.kernel == "linear":
            return streaming_linear_gram(activation)
        return rbf_gram(activation, sigma=self.sigma, sigma_frac=self.sigma_frac)

    def _matrix_from_terms(self, xy, xx, yy) -> np.ndarray:
        """CKA from summed HSIC terms, with one note listing every constant layer."""
        matrix = cka_from_hsic(xy, xx, yy).cpu().numpy()
        self._note_constant_layers(xx, yy, _CONSTANT)
        return matrix

    def _note_constant_layers(self, self1, self2, reason) -> None:
        """One note listing the layers of both models whose self-HSIC ``self1 [L1]``,
        ``self2 [L2]`` is not positive."""
        constant = [(model, [name for name, v in zip(model.layers, values.cpu().numpy()) if not v > 0])
                    for values, model in ((self1, self.sim_model1), (self2, self.sim_model2))]
        self._note_constant(constant, reason)

    def _params(self) -> dict:
        params = {"kernel": self.kernel, "estimator": self.estimator, "unbiased": self.unbiased}
        if self.kernel == "rbf":
            params.update(sigma_frac=self.sigma_frac, sigma=self.sigma)
        return params


class StreamingCKA(CKA):
    """CKA(estimator="minibatch"): unbiased HSIC terms summed over batches (module docstring).

    States (see :meth:`BaseSimilarity.add_state`): ``hsic_xy [L1, L2]``, ``hsic_xx [L1]``,
    ``hsic_yy [L2]`` summed; with ``keep_batch_stats = True`` also ``batch_hsic_xy``,
    ``batch_hsic_xx``, ``batch_hsic_yy``: one entry per batch (``[batches, ...]`` stacked).
    """

    streaming = True
    #: keep every batch's HSIC terms (per-batch statistics for intervals); off by default, on
    #: when n_bootstrap > 0
    keep_batch_stats = False
    #: inference over per-batch terms and within-batch permutations (measures/inference.py)
    inference_streaming = True
    _TERMS = ("xy", "xx", "yy")

    def _add_states(self) -> None:
        self.add_state("hsic_xy", _f64(lambda n1, n2: (n1, n2)))
        self.add_state("hsic_xx", _f64(lambda n1, n2: (n1,)))
        self.add_state("hsic_yy", _f64(lambda n1, n2: (n2,)))
        for term in self._TERMS:
            self.add_state(f"batch_hsic_{term}", [], reduce="cat")

    def _check_batch(self, n: int) -> None:
        if n < 4:
            raise ValueError(
                f"CKA(estimator='minibatch') uses the unbiased HSIC estimator, which needs at least 4 "
                f"samples per batch; batch {self._batch_index} has {n}. Use a larger batch_size, "
                f"drop_last=True in the DataLoader, or estimator='full'."
            )

    def _reduce(self, layer, activation):
        return self._gram(activation)

    def _stack_grams(self, grams: dict) -> torch.Tensor:
        return torch.stack([g.to(self.device, torch.float64) for g in grams.values()])

    def _batch_terms(self, Ks: torch.Tensor, Ls: torch.Tensor) -> dict:
        """This batch's HSIC terms ``{"xy": [L1, L2], "xx": [L1], "yy": [L2]}``."""
        return dict(zip(self._TERMS, hsic_all_pairs(Ks, Ls, unbiased=True)))

    def _update_state(self, feats1, feats2, batch) -> None:
        Ks, Ls = self._stack_grams(feats1), self._stack_grams(feats2)
        self._mark_nonfinite(1, Ks)
        self._mark_nonfinite(2, Ls)
        terms = self._batch_terms(Ks, Ls)
        for name, value in terms.items():
            getattr(self, f"hsic_{name}").add_(value)
            if self.keep_batch_stats:
                getattr(self, f"batch_hsic_{name}").append(value.detach().clone())
        self._inference_batch(Ks, Ls, unbiased=True)  # the permutation null, when asked for

    def batch_stats(self) -> dict:
        """The kept per-batch terms, ``{"xy": [B, L1, L2], "xx": [B, L1], ...}`` (empty dict
        unless ``keep_batch_stats``); inside ``result()`` they span every rank, in batch order."""
        return {t: self._cat_state(f"batch_hsic_{t}") for t in self._TERMS
                if getattr(self, f"batch_hsic_{t}")}

    def _compute_matrix(self) -> np.ndarray:
        return self._matrix_from_terms(self.hsic_xy, self.hsic_xx, self.hsic_yy)


class FullCKA(CKA, CollectingSimilarity):
    """CKA(estimator="full"): exact CKA from the N x N Gram matrices of all samples."""

    streaming = False
    _collects = True

    def _full_grams(self, acts: dict) -> torch.Tensor:
        grams = []
        for act in acts.values():
            X = act.to(self.device, torch.float64)
            grams.append(self._gram(X) if self.kernel == "rbf" else linear_gram(X, center=True))
        return torch.stack(grams)

    def _check_full_memory(self) -> None:
        n = self._store1.n_samples
        layers = len(self.sim_model1.layers) + len(self.sim_model2.layers) + 1
        self._check_result_memory(2 * layers * n * n * 8, f"{layers} Gram matrices of {n} x {n} float64")

    def _matrix_from_grams(self, Ks, Ls) -> np.ndarray:
        xy, xx, yy = hsic_all_pairs(Ks, Ls, unbiased=self.unbiased)
        return self._matrix_from_terms(xy, xx, yy)

    def _matrix_from_activations(self, acts1, acts2) -> np.ndarray:
        self._check_full_memory()
        Ks, Ls = self._full_grams(acts1), self._full_grams(acts2)
        self._keep_grams(Ks, Ls, self.unbiased)  # resampled by index gathers for inference (if on)
        return self._matrix_from_grams(Ks, Ls)


class DeltaCKA(CKA):
    """Deconfounded CKA (Cui et al., NeurIPS 2022) between every layer pair of two models.

    Each layer's Gram matrix ``K`` is regressed on the confounder's Gram matrix ``K_Z`` (by
    default the Gram of the flattened model input, a user-supplied ``confounder(batch)``
    otherwise): ``K_res = K - alpha K_Z`` with ``alpha = HSIC(K, K_Z) / HSIC(K_Z, K_Z)`` (least
    squares in the HSIC inner product), and CKA is computed between the residuals. Because
    everything is bilinear in HSIC terms, the minibatch estimator sums ``HSIC(K, L)``,
    ``HSIC(K, K_Z)``, ``HSIC(L, K_Z)``, ``HSIC(K_Z, K_Z)`` (and self terms) over batches and
    solves the regression once over the whole data set (not an average of per-batch values).
    The instance returned is a :class:`StreamingDeltaCKA` or a :class:`FullDeltaCKA`.

    Parameters (besides CKA's)
    ----------
    confounder : callable, optional
        ``confounder(batch) -> tensor [n, ...]`` computed from the raw batch (e.g. one-hot labels).
        Default: model 1's input.
    remove_negative_eig : bool
        Project each residual Gram to the positive semi-definite cone (clip negative eigenvalues),
        as in Cui et al.'s code. This is not bilinear, so it needs ``estimator="full"``.

    Inference (``n_bootstrap``, ``n_permutations``, ...) resamples the confounder with the
    samples and solves the regression again in every bootstrap replicate; the permutation null
    permutes model 2's *deconfounded* Gram (its Gram moved together with its confounder), see
    docs/inference.md.
    """

    name = "dcka"

    def __init__(self, sim_model1, sim_model2, *, kernel="linear", estimator=None, unbiased=None,
                 sigma_frac=0.8, sigma=None, device="cpu", confounder=None,
                 remove_negative_eig=False, store_device="cpu", max_memory=None, input_key=None,
                 input_fn=None, **inference):
        if confounder is not None and not callable(confounder):
            raise TypeError(f"confounder must be a callable batch -> tensor, got {type(confounder).__name__}")
        if remove_negative_eig and estimator != "full" and not isinstance(self, FullDeltaCKA):
            raise ValueError(
                "remove_negative_eig=True projects each residual Gram matrix to the PSD cone, which "
                "cannot be summed over batches; use estimator='full' with it"
            )
        self.confounder = confounder
        self.remove_negative_eig = bool(remove_negative_eig)
        super().__init__(sim_model1, sim_model2, kernel=kernel, estimator=estimator, unbiased=unbiased,
                         sigma_frac=sigma_frac, sigma=sigma, device=device, store_device=store_device,
                         max_memory=max_memory, input_key=input_key, input_fn=input_fn, **inference)

    def _add_states(self) -> None:
        super()._add_states()
        self.add_state("_nonfinite_z", torch.zeros((), dtype=torch.long), reduce="max")

    def _confounder_checked(self, batch, feats1) -> torch.Tensor:
        """The confounder of one batch ``[n, ...]``, its rows checked and NaN/Inf flagged."""
        z = self.confounder(batch) if self.confounder is not None else self._input(batch)
        if not isinstance(z, torch.Tensor):
            z = torch.as_tensor(np.asarray(z))
        z = z.detach()
        n = next(iter(feats1.values())).shape[0]
        if z.shape[0] != n:
            raise ValueError(f"the confounder gives {z.shape[0]} rows for a batch of {n} samples")
        bad = ~torch.isfinite(z).all() if z.is_floating_point() else torch.zeros((), dtype=torch.bool)
        flags = self._nonfinite_z
        self._nonfinite_z = torch.where(bad.to(flags.device) & (flags == 0),
                                        torch.full_like(flags, self._n_batches + 1), flags)
        return z

    def _raise_if_nonfinite(self) -> None:
        super()._raise_if_nonfinite()
        flag = int(self._nonfinite_z)
        if flag:
            raise ValueError(f"the confounder holds NaN or Inf in batch {flag - 1}")

    def _matrix_from_dcka_terms(self, terms: dict) -> np.ndarray:
        if not bool(terms["zz"] > 0):
            raise ValueError("the confounder is constant over the samples: there is nothing to deconfound")
        matrix = dcka_from_hsic(terms)
        # residual self-HSIC: 0 for a constant layer or one the confounder explains completely
        zz = terms["zz"]
        self._note_constant_layers(terms["xx"] - terms["xz"] ** 2 / zz,
                                   terms["yy"] - terms["yz"] ** 2 / zz,
                                   "constant over the samples or explained by the confounder "
                                   "(residual HSIC with itself is 0)")
        return matrix.cpu().numpy()

    def _resampled_unit(self) -> str:
        return (super()._resampled_unit() + "; the confounder is resampled with the samples and "
                "the regression solved again per replicate; the permutations move model 2's "
                "deconfounded Gram (its Gram together with its confounder)")

    def _params(self) -> dict:
        params = super()._params()
        params.update(confounder="input" if self.confounder is None else getattr(self.confounder, "__name__", "callable"),
                      remove_negative_eig=self.remove_negative_eig)
        return params


class StreamingDeltaCKA(DeltaCKA, StreamingCKA):
    """DeltaCKA(estimator="minibatch"): the six HSIC terms summed over batches (states
    ``hsic_xy``, ``hsic_xx``, ``hsic_yy``, ``hsic_xz [L1]``, ``hsic_yz [L2]``, ``hsic_zz []``)."""

    _TERMS = ("xy", "xx", "yy", "xz", "yz", "zz")
    #: the permutation null permutes [Ls; K_Z] against [Ks; K_Z] (dcka_null_from_cross)
    inference_null_extra = 1

    def _add_states(self) -> None:
        super()._add_states()
        self.add_state("hsic_xz", _f64(lambda n1, n2: (n1,)))
        self.add_state("hsic_yz", _f64(lambda n1, n2: (n2,)))
        self.add_state("hsic_zz", torch.zeros((), dtype=torch.float64))

    def _update_state(self, feats1, feats2, batch) -> None:
        z = self._confounder_checked(batch, feats1)
        self._kz = self._gram(z.to(self.device)).to(torch.float64)
        super()._update_state(feats1, feats2, batch)

    def _batch_terms(self, Ks, Ls) -> dict:
        h = dcka_hsic_terms(Ks, Ls, self._kz, unbiased=True)
        return {t: getattr(h, t) for t in self._TERMS}

    def _compute_matrix(self) -> np.ndarray:
        return self._matrix_from_dcka_terms(self._summed_terms())

    def _summed_terms(self) -> dict:
        return {t: getattr(self, f"hsic_{t}") for t in self._TERMS}

    # -- inference: per-batch terms resampled, the regression solved again per replicate
    def _inference_batch(self, Ks, Ls, unbiased) -> None:
        if self.n_permutations:  # permute model 2's Grams together with the confounder's
            Ks, Ls = dcka_extended_grams(Ks, Ls, self._kz)
        super()._inference_batch(Ks, Ls, unbiased)

    def _statistic_from_terms(self, terms: dict) -> torch.Tensor:
        return dcka_from_hsic(terms)

    def _null_from_cross(self, cross: torch.Tensor) -> torch.Tensor:
        return dcka_null_from_cross(cross, self._summed_terms())


class FullDeltaCKA(DeltaCKA, FullCKA):
    """DeltaCKA(estimator="full"): dCKA from the N x N Gram matrices of all samples (and of the
    confounder, collected alongside)."""

    def _reset_state(self) -> None:
        super()._reset_state()
        self._z_store = ActivationStore(self.store_device)

    def _stores(self) -> list:
        return super()._stores() + [("_z_store", self._z_store)]

    def _update_state(self, feats1, feats2, batch) -> None:
        z = self._confounder_checked(batch, feats1)
        self._z_store.add({"input": self._z_store.keep(z)})
        super()._update_state(feats1, feats2, batch)

    def _matrix_from_activations(self, acts1, acts2) -> np.ndarray:
        self._check_full_memory()
        Kz = self._full_grams({"input": self._z_store.tensors()["input"]})[0]
        Ks, Ls = self._full_grams(acts1), self._full_grams(acts2)
        # resampled (with the confounder's Gram) by index gathers for inference, if on
        self._keep_grams(Ks, Ls, self.unbiased, confounder=Kz)
        if self.n_permutations and not self.unbiased:
            self._note("with the biased HSIC the shared confounder's diagonal inflates the observed "
                       "dCKA relative to its permutation null, so p-values come out too small even "
                       "for unrelated models (docs/inference.md); use unbiased=True for p-values")
        if self.remove_negative_eig:
            Ks = deconfound_gram(Ks, Kz, True, self.unbiased)
            Ls = deconfound_gram(Ls, Kz, True, self.unbiased)
            return self._matrix_from_grams(Ks, Ls)  # plain CKA of the already deconfounded Grams
        h = dcka_hsic_terms(Ks, Ls, Kz, unbiased=self.unbiased)
        return self._matrix_from_dcka_terms({t: getattr(h, t) for t in StreamingDeltaCKA._TERMS})

    # -- inference: the confounder's Gram is gathered with the samples' (measures/inference.py)
    def _grams_bootstrap(self, idx: torch.Tensor) -> torch.Tensor:
        Ks, Ls, unbiased = self._inf_grams
        return dcka_bootstrap_from_grams(Ks, Ls, self._inf_confounder, idx, unbiased,
                                         self.remove_negative_eig)

    def _grams_null(self, perms: torch.Tensor) -> torch.Tensor:
        Ks, Ls, unbiased = self._inf_grams
        return dcka_permutation_null_from_grams(Ks, Ls, self._inf_confounder, perms.to(Ks.device),
                                                unbiased, self.remove_negative_eig,
                                                dtype=self.permutation_dtype)


CKA._forms = {"minibatch": StreamingCKA, "full": FullCKA}
DeltaCKA._forms = {"minibatch": StreamingDeltaCKA, "full": FullDeltaCKA}
