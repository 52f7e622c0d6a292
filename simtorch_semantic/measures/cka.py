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

Constant layers (every sample identical) have HSIC(K, K) = 0: their CKA is NaN and a
``RuntimeWarning`` names the layer. NaN or Inf in an activation raises a ``ValueError`` naming the
layer and the first batch where it appeared.
"""

from __future__ import annotations

import numpy as np
import torch

from ..functional.cka import check_kernel, cka_from_hsic
from ..functional.dcka import dcka_from_hsic, dcka_hsic_terms, deconfound_gram
from ..functional.hsic import hsic_all_pairs
from ..functional.kernels import linear_gram, rbf_gram, streaming_linear_gram
from .collect import ActivationStore, CollectingSimilarity

__all__ = ["CKA", "DeltaCKA"]

_ESTIMATORS = ("minibatch", "full")


class CKA(CollectingSimilarity):
    """Centered Kernel Alignment between every layer of model 1 and every layer of model 2.

    Parameters
    ----------
    sim_model1, sim_model2 : SimilarityModel
    kernel : {"linear", "rbf"}
        Linear CKA or Gaussian-kernel CKA (Kornblith et al. 2019). ``"ip"``, the old name of
        ``"linear"``, is accepted with a ``DeprecationWarning``.
    estimator : {"minibatch", "full"}
        See the module docstring. ``minibatch`` always uses the unbiased HSIC.
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

    ``compute(loader)`` returns a :class:`~simtorch_semantic.results.SimilarityResult` whose
    ``[i, j]`` entry is CKA(layer i of model 1, layer j of model 2).
    """

    name = "cka"
    memory_hint = "use estimator='minibatch' (memory flat in the number of samples), fewer samples or fewer layers"

    def __init__(self, sim_model1, sim_model2, *, kernel="linear", estimator="minibatch", unbiased=None,
                 sigma_frac=0.8, sigma=None, device="cpu", store_device="cpu", max_memory=None,
                 input_key=None, input_fn=None):
        kernel = check_kernel(kernel, type(self).__name__)
        if estimator not in _ESTIMATORS:
            raise ValueError(f"estimator must be one of {_ESTIMATORS}, got {estimator!r}")
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
        super().__init__(sim_model1, sim_model2, device, store_device=store_device,
                         max_memory=max_memory, input_key=input_key, input_fn=input_fn)

    @property
    def streaming(self) -> bool:
        return self.estimator == "minibatch"

    # ------------------------------------------------------------------ Gram matrices
    def _gram(self, activation: torch.Tensor) -> torch.Tensor:
        """``[n, ...]`` activation -> ``[n, n]`` Gram in at least float32 (hook-time, no copy)."""
        if self.kernel == "linear":
            return streaming_linear_gram(activation)
        return rbf_gram(activation, sigma=self.sigma, sigma_frac=self.sigma_frac)

    def _stack_grams(self, grams: dict) -> torch.Tensor:
        return torch.stack([g.to(self.device, torch.float64) for g in grams.values()])

    # ------------------------------------------------------------------ state
    def _reset_state(self) -> None:
        super()._reset_state()
        self._sums_ready = False

    def _init_sums(self, n1: int, n2: int) -> None:
        """Zero HSIC sums for ``n1 x n2`` layers (sized from the first batch: a model's layer
        list is only final after its first capture)."""
        f64 = dict(dtype=torch.float64, device=self.device)
        self._xy = torch.zeros(n1, n2, **f64)
        self._xx = torch.zeros(n1, **f64)
        self._yy = torch.zeros(n2, **f64)
        self._bad1 = torch.full((n1,), -1, dtype=torch.long, device=self.device)
        self._bad2 = torch.full((n2,), -1, dtype=torch.long, device=self.device)
        self._sums_ready = True

    def _check_batch(self, n: int) -> None:
        if self.streaming and n < 4:
            raise ValueError(
                f"CKA(estimator='minibatch') uses the unbiased HSIC estimator, which needs at least 4 "
                f"samples per batch; batch {self._n_batches} has {n}. Use a larger batch_size, "
                f"drop_last=True in the DataLoader, or estimator='full'."
            )

    def _reduce(self, layer, activation):
        if self.streaming:
            return self._gram(activation)
        return super()._reduce(layer, activation)

    def _expect_samples(self, dataloader, max_batches) -> None:
        if not self.streaming:
            super()._expect_samples(dataloader, max_batches)

    def _mark_nonfinite(self, bad: torch.Tensor, grams: torch.Tensor) -> torch.Tensor:
        """Record (without a host sync) the first batch whose Gram holds NaN/Inf, per layer."""
        nonfinite = ~torch.isfinite(grams).flatten(1).all(dim=1)
        return torch.where(nonfinite & (bad < 0), torch.full_like(bad, self._n_batches), bad)

    def _accumulate(self, Ks: torch.Tensor, Ls: torch.Tensor) -> None:
        if not self._sums_ready:
            self._init_sums(len(Ks), len(Ls))
        xy, xx, yy = hsic_all_pairs(Ks, Ls, unbiased=self.unbiased)
        self._xy += xy
        self._xx += xx
        self._yy += yy

    def _update_state(self, feats1, feats2, batch) -> None:
        if not self.streaming:
            super()._update_state(feats1, feats2, batch)
            return
        Ks, Ls = self._stack_grams(feats1), self._stack_grams(feats2)
        if not self._sums_ready:
            self._init_sums(len(Ks), len(Ls))
        self._bad1 = self._mark_nonfinite(self._bad1, Ks)
        self._bad2 = self._mark_nonfinite(self._bad2, Ls)
        self._accumulate(Ks, Ls)

    # ------------------------------------------------------------------ result
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

    def _matrix_from_activations(self, acts1, acts2) -> np.ndarray:
        self._check_full_memory()
        Ks, Ls = self._full_grams(acts1), self._full_grams(acts2)
        self._accumulate(Ks, Ls)
        return self._finish()

    def _compute_matrix(self) -> np.ndarray:
        if not self.streaming:
            self._sums_ready = False
            return super()._compute_matrix()
        for bad, model in ((self._bad1, self.sim_model1), (self._bad2, self.sim_model2)):
            bad = bad.cpu()
            if bool((bad >= 0).any()):
                i = int(torch.nonzero(bad >= 0)[0, 0])
                raise ValueError(
                    f"layer {model.layers[i]!r} of {model.model_name} produced NaN or Inf in batch "
                    f"{int(bad[i])}; check the inputs and the model (e.g. overflow in half precision)"
                )
        return self._finish()

    def _sums(self):
        return tuple(self._all_reduce(t) for t in (self._xy, self._xx, self._yy))

    def _finish(self) -> np.ndarray:
        xy, xx, yy = self._sums()[:3]
        matrix = cka_from_hsic(xy, xx, yy).cpu().numpy()
        self._warn_constant(xx.cpu().numpy(), self.sim_model1)
        self._warn_constant(yy.cpu().numpy(), self.sim_model2)
        return matrix

    def _warn_constant(self, self_hsic: np.ndarray, model) -> None:
        for name, value in zip(model.layers, self_hsic):
            if not value > 0:
                message = (
                    f"layer {name!r} of {model.model_name} is constant over the samples (HSIC with "
                    f"itself is {value:.3g}): its {self.name} is undefined and set to NaN"
                )
                self._note(message)

    def _params(self) -> dict:
        params = {"kernel": self.kernel, "estimator": self.estimator, "unbiased": self.unbiased}
        if self.kernel == "rbf":
            params.update(sigma_frac=self.sigma_frac, sigma=self.sigma)
        return params


class DeltaCKA(CKA):
    """Deconfounded CKA (Cui et al., NeurIPS 2022) between every layer pair of two models.

    Each layer's Gram matrix ``K`` is regressed on the confounder's Gram matrix ``K_Z`` (by
    default the Gram of the flattened model input, a user-supplied ``confounder(batch)``
    otherwise): ``K_res = K - alpha K_Z`` with ``alpha = HSIC(K, K_Z) / HSIC(K_Z, K_Z)`` (least
    squares in the HSIC inner product), and CKA is computed between the residuals. Because
    everything is bilinear in HSIC terms, the minibatch estimator sums ``HSIC(K, L)``,
    ``HSIC(K, K_Z)``, ``HSIC(L, K_Z)``, ``HSIC(K_Z, K_Z)`` (and self terms) over batches and
    solves the regression once over the whole data set (not an average of per-batch values).

    Parameters (besides CKA's)
    ----------
    confounder : callable, optional
        ``confounder(batch) -> tensor [n, ...]`` computed from the raw batch (e.g. one-hot labels).
        Default: model 1's input.
    remove_negative_eig : bool
        Project each residual Gram to the positive semi-definite cone (clip negative eigenvalues),
        as in Cui et al.'s code. This is not bilinear, so it needs ``estimator="full"``.
    """

    name = "dcka"

    def __init__(self, sim_model1, sim_model2, *, kernel="linear", estimator="minibatch", unbiased=None,
                 sigma_frac=0.8, sigma=None, device="cpu", confounder=None,
                 remove_negative_eig=False, store_device="cpu", max_memory=None, input_key=None,
                 input_fn=None):
        if confounder is not None and not callable(confounder):
            raise TypeError(f"confounder must be a callable batch -> tensor, got {type(confounder).__name__}")
        if remove_negative_eig and estimator != "full":
            raise ValueError(
                "remove_negative_eig=True projects each residual Gram matrix to the PSD cone, which "
                "cannot be summed over batches; use estimator='full' with it"
            )
        self.confounder = confounder
        self.remove_negative_eig = bool(remove_negative_eig)
        super().__init__(sim_model1, sim_model2, kernel=kernel, estimator=estimator, unbiased=unbiased,
                         sigma_frac=sigma_frac, sigma=sigma, device=device, store_device=store_device,
                         max_memory=max_memory, input_key=input_key, input_fn=input_fn)

    def _init_sums(self, n1: int, n2: int) -> None:
        super()._init_sums(n1, n2)
        f64 = dict(dtype=torch.float64, device=self.device)
        self._xz = torch.zeros(n1, **f64)
        self._yz = torch.zeros(n2, **f64)
        self._zz = torch.zeros((), **f64)

    def _reset_state(self) -> None:
        super()._reset_state()
        self._z_store = ActivationStore(self.store_device)
        self._bad_z = torch.full((1,), -1, dtype=torch.long, device=self.device)

    def _confounder_of(self, batch) -> torch.Tensor:
        z = self.confounder(batch) if self.confounder is not None else self._input(batch)
        if not isinstance(z, torch.Tensor):
            z = torch.as_tensor(np.asarray(z))
        return z.detach()

    def _update_state(self, feats1, feats2, batch) -> None:
        z = self._confounder_of(batch)
        n = next(iter(feats1.values())).shape[0]
        if z.shape[0] != n:
            raise ValueError(f"the confounder gives {z.shape[0]} rows for a batch of {n} samples")
        if not self.streaming:
            self._z_store.add({"input": self._z_store.keep(z)})
            super()._update_state(feats1, feats2, batch)
            return
        Kz = self._gram(z.to(self.device))[None].to(torch.float64)
        self._bad_z = self._mark_nonfinite(self._bad_z, Kz)
        self._kz = Kz
        super()._update_state(feats1, feats2, batch)

    def _accumulate(self, Ks, Ls) -> None:
        if not self._sums_ready:
            self._init_sums(len(Ks), len(Ls))
        h = dcka_hsic_terms(Ks, Ls, self._kz[0], unbiased=self.unbiased)
        for name in ("xy", "xx", "yy", "xz", "yz", "zz"):
            getattr(self, "_" + name).add_(getattr(h, name))

    def _sums(self):
        return super()._sums() + tuple(self._all_reduce(t) for t in (self._xz, self._yz, self._zz))

    def _matrix_from_activations(self, acts1, acts2) -> np.ndarray:
        z = self._z_store.tensors()["input"]
        self._kz = self._full_grams({"input": z})
        if not self.remove_negative_eig:
            return super()._matrix_from_activations(acts1, acts2)
        self._check_full_memory()
        Kz = self._kz[0]
        Ks = torch.stack([deconfound_gram(K, Kz, True, self.unbiased) for K in self._full_grams(acts1)])
        Ls = torch.stack([deconfound_gram(L, Kz, True, self.unbiased) for L in self._full_grams(acts2)])
        self._init_sums(len(Ks), len(Ls))
        CKA._accumulate(self, Ks, Ls)
        return CKA._finish(self)  # plain CKA of the already deconfounded Grams

    def _compute_matrix(self) -> np.ndarray:
        if self.streaming and bool((self._bad_z >= 0).any()):
            raise ValueError(f"the confounder holds NaN or Inf in batch {int(self._bad_z[0])}")
        return super()._compute_matrix()

    def _finish(self) -> np.ndarray:
        terms = dict(zip(("xy", "xx", "yy", "xz", "yz", "zz"), self._sums()))
        if not bool(terms["zz"] > 0):
            raise ValueError("the confounder is constant over the samples: there is nothing to deconfound")
        matrix = dcka_from_hsic(terms)
        # residual self-HSIC: 0 for a constant layer or one the confounder explains completely
        zz = terms["zz"]
        self._warn_constant((terms["xx"] - terms["xz"] ** 2 / zz).cpu().numpy(), self.sim_model1)
        self._warn_constant((terms["yy"] - terms["yz"] ** 2 / zz).cpu().numpy(), self.sim_model2)
        return matrix.cpu().numpy()

    def _params(self) -> dict:
        params = super()._params()
        params.update(confounder="input" if self.confounder is None else getattr(self.confounder, "__name__", "callable"),
                      remove_negative_eig=self.remove_negative_eig)
        return params
