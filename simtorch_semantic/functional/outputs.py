r"""Functional similarity: compare what two models *output* on the same ``n`` samples.

``X [n, c]`` and ``Y [n, c]`` are model outputs over ``c`` classes: logits (default,
``outputs="logits"``: turned into probabilities with a softmax) or probabilities
(``outputs="probabilities"``: non-negative rows, each normalised to sum 1). ReSi (Klabunde et al.
2025) pairs these with the representational measures.

* **Jensen-Shannon divergence**: ``mean_i JS(p_i, q_i)`` with
  ``JS(p, q) = (KL(p || m) + KL(q || m)) / 2``, ``m = (p + q) / 2``, in bits (log base 2), so each
  term and the mean are in [0, 1] (Lin 1991). Computed from log-probabilities (no ``log 0``).
* **Disagreement** (ReSi; Madani et al. 2004): the fraction of samples whose predicted classes
  (argmax) differ, in [0, 1]. Ties in the argmax go to the lowest class index.
* **Absolute accuracy difference** (ReSi): ``|acc(X) - acc(Y)|`` with ``acc`` the fraction of
  samples whose argmax equals the integer label, in [0, 1]. Needs ``labels`` (``[n]`` integers
  in ``[0, c)``), passed as an option: ``accuracy_difference(X, Y, labels=y)``.

All three are 0 for identical outputs, symmetric, and have no feature invariances (permuting the
classes of one model changes its predictions). ``*_prepare(X, **options)`` converts one model's
outputs once; ``*_score`` compares two.
"""
from __future__ import annotations

import math

import torch

from ._common import choice, matrix
from ._validation import to_tensor

__all__ = [
    "OUTPUT_KINDS",
    "jensen_shannon", "jensen_shannon_prepare", "jensen_shannon_score",
    "disagreement", "disagreement_prepare", "disagreement_score",
    "accuracy", "accuracy_difference", "accuracy_score",
]

OUTPUT_KINDS = ("logits", "probabilities")


def _outputs(X, name: str = "X") -> torch.Tensor:
    A = to_tensor(X, name)
    if A.dim() != 2:
        raise ValueError(f"{name} must be model outputs of shape [n, classes] (2-D), got shape "
                         f"{tuple(A.shape)}.")
    return matrix(A, name, min_n=1)


def _log_probs(A: torch.Tensor, kind: str, name: str) -> torch.Tensor:
    if kind == "logits":
        return torch.log_softmax(A, dim=1)
    if bool((A < 0).any()):
        raise ValueError(f"{name} has negative entries, so it holds no probabilities; pass "
                         "outputs='logits' for raw scores, or non-negative probabilities.")
    total = A.sum(dim=1, keepdim=True)
    if not bool((total > 0).all()):
        row = int((~(total[:, 0] > 0)).nonzero()[0, 0])
        raise ValueError(f"{name} row {row} sums to 0; every row of probabilities needs positive "
                         "mass.")
    return torch.log(A / total)


def _check_pair(px: torch.Tensor, py: torch.Tensor, where: str) -> None:
    if px.shape != py.shape:
        raise ValueError(f"{where}: X has shape {tuple(px.shape)} and Y has {tuple(py.shape)}; both "
                         "must be outputs [n, classes] of the same samples and classes.")


# --------------------------------------------------------------------------- Jensen-Shannon
def jensen_shannon_prepare(X, outputs: str = "logits", **_options) -> torch.Tensor:
    """Log-probabilities ``[n, c]`` of the outputs ``X [n, c]``."""
    kind = choice(outputs, OUTPUT_KINDS, "outputs", "jensen_shannon")
    return _log_probs(_outputs(X), kind, "X")


def jensen_shannon_score(lx: torch.Tensor, ly: torch.Tensor, **_options) -> float:
    """Mean Jensen-Shannon divergence (bits) of two prepared log-probability matrices."""
    _check_pair(lx, ly, "jensen_shannon")
    lm = torch.logaddexp(lx, ly) - math.log(2.0)
    px, py = lx.exp(), ly.exp()
    # p (log p - log m) is 0 where p = 0 (log p = -inf): mask those terms
    kx = torch.where(px > 0, px * (lx - lm), torch.zeros_like(px)).sum(dim=1)
    ky = torch.where(py > 0, py * (ly - lm), torch.zeros_like(py)).sum(dim=1)
    js = (0.5 * (kx + ky) / math.log(2.0)).clamp(0.0, 1.0)
    return float(js.mean())


def jensen_shannon(X, Y, outputs: str = "logits") -> float:
    """Mean Jensen-Shannon divergence (bits, in [0, 1]) of the outputs ``X [n, c]``, ``Y [n, c]``."""
    kind = choice(outputs, OUTPUT_KINDS, "outputs", "jensen_shannon")
    A, B = _outputs(X, "X"), _outputs(Y, "Y")
    _check_pair(A, B, "jensen_shannon")
    return jensen_shannon_score(_log_probs(A, kind, "X"), _log_probs(B.to(A.device), kind, "Y"))


# --------------------------------------------------------------------------- disagreement
def disagreement_prepare(X, **_options) -> torch.Tensor:
    """Predicted classes ``[n]`` (argmax) of the outputs ``X [n, c]`` (logits or probabilities)."""
    return _outputs(X).argmax(dim=1)


def disagreement_score(cx: torch.Tensor, cy: torch.Tensor, **_options) -> float:
    """Fraction of samples whose two prepared predictions differ."""
    if cx.shape != cy.shape:
        raise ValueError(f"disagreement: X has {cx.numel()} samples and Y has {cy.numel()}; both must "
                         "hold the same samples.")
    return float((cx != cy.to(cx.device)).to(torch.float64).mean())


def disagreement(X, Y) -> float:
    """Fraction of samples on which the argmax of ``X [n, c]`` and ``Y [n, c]`` differ, in [0, 1]."""
    A, B = _outputs(X, "X"), _outputs(Y, "Y")
    _check_pair(A, B, "disagreement")
    return disagreement_score(A.argmax(dim=1), B.argmax(dim=1))


# --------------------------------------------------------------------------- accuracy
def _labels(labels, n: int, c: int) -> torch.Tensor:
    if labels is None:
        raise ValueError("accuracy_difference needs the true labels: pass labels=<[n] integer "
                         "class indices> (e.g. the targets of the evaluation set).")
    T = to_tensor(labels, "labels").reshape(-1)
    if T.is_floating_point():
        if not bool((T == T.round()).all()):
            raise ValueError("labels must be integer class indices, got non-integer values.")
        T = T.long()
    if T.numel() != n:
        raise ValueError(f"labels has {T.numel()} entries but the outputs have {n} samples; pass one "
                         "label per sample.")
    if T.numel() and (int(T.min()) < 0 or int(T.max()) >= c):
        raise ValueError(f"labels must lie in [0, {c}) for outputs with {c} classes, got values in "
                         f"[{int(T.min())}, {int(T.max())}].")
    return T.long()


def accuracy(X, labels=None, **_options) -> torch.Tensor:
    """Fraction of samples whose argmax of ``X [n, c]`` equals ``labels [n]`` (float64 scalar)."""
    A = _outputs(X)
    T = _labels(labels, A.shape[0], A.shape[1]).to(A.device)
    return (A.argmax(dim=1) == T).to(torch.float64).mean()


def accuracy_score(ax: torch.Tensor, ay: torch.Tensor, **_options) -> float:
    """``|ax - ay|`` of two prepared accuracies."""
    return float((torch.as_tensor(ax) - torch.as_tensor(ay)).abs())


def accuracy_difference(X, Y, labels=None) -> float:
    """``|acc(X) - acc(Y)|`` in [0, 1] for outputs ``X [n, c]``, ``Y [n, c]`` and ``labels [n]``."""
    A, B = _outputs(X, "X"), _outputs(Y, "Y")
    _check_pair(A, B, "accuracy_difference")
    return accuracy_score(accuracy(A, labels=labels), accuracy(B, labels=labels))

