"""SimilarityResult: a layer x layer matrix with everything needed to read, plot and reload it.

Files are written without pickle: ``.npz`` holds the matrix plus a JSON string of the metadata;
``.csv`` (the matrix with layer names as header/index) is always written together with a ``.json``
sidecar (metadata and the matrix again, so the JSON alone is enough to reload). Every write goes
to a temporary file in the same directory that is then renamed over the target.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SimilarityResult", "atomic_write_bytes", "INFERENCE_FIELDS"]

_FORMAT_VERSION = 1

#: per-cell inference arrays a result may carry (see docs/inference.md), each shaped like the
#: matrix or None when not computed
INFERENCE_FIELDS = ("ci_low", "ci_high", "p_value", "p_value_adjusted", "null_mean", "calibrated")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _jsonable(value: Any) -> Any:
    """Turn parameters into JSON-friendly values (tuples -> lists, numpy scalars -> Python)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, type):
        return value.__name__
    return repr(value)


def _matrix_to_json(matrix: np.ndarray) -> list:
    """Nested lists with NaN/Inf written as null/strings (JSON has no NaN)."""
    out = []
    for row in matrix:
        out.append([float(v) if math.isfinite(v) else (None if math.isnan(v) else str(float(v))) for v in row])
    return out


def _matrix_from_json(rows: list) -> np.ndarray:
    return np.array(
        [[np.nan if v is None else float(v) for v in row] for row in rows], dtype=np.float64
    ).reshape(len(rows), -1 if rows else 0)


@dataclass
class SimilarityResult:
    """A layer x layer similarity (or distance) matrix and its provenance.

    Attributes
    ----------
    matrix : np.ndarray, float64, shape ``[len(row_layers), len(col_layers)]``
        ``matrix[i, j]`` compares layer ``row_layers[i]`` of model 1 with ``col_layers[j]`` of
        model 2.
    row_layers, col_layers : list of str
        Layer names of model 1 (rows) and model 2 (columns), in forward order.
    model1_name, model2_name : str
    measure : str
        Name of the measure, e.g. ``"cka"``.
    params : dict
        The measure's parameters (kernel, estimator, ...), JSON-serialisable.
    n_samples : int
        Number of samples the matrix was computed from.
    higher_is_similar : bool
        False for distances (Procrustes disparity, angular distances).
    notes : list of str
        Remarks about individual layers (fallbacks, constant activations, ...).
    ci_low, ci_high : np.ndarray or None
        Bootstrap confidence interval of every cell (``n_bootstrap > 0``); the level and method
        are in ``params["inference"]``.
    p_value, p_value_adjusted : np.ndarray or None
        Permutation p-value of every cell (``n_permutations > 0``) and the family-wise adjusted
        one over the whole matrix (Westfall-Young max-T).
    null_mean, calibrated : np.ndarray or None
        Mean of each cell's permutation null, and the score relative to it (0 at chance, 1 for
        a perfect match; see :func:`~simtorch_semantic.functional.inference.calibrated_scores`).
    """

    matrix: np.ndarray
    row_layers: list
    col_layers: list
    model1_name: str = "model 1"
    model2_name: str = "model 2"
    measure: str = "similarity"
    params: dict = field(default_factory=dict)
    n_samples: int = 0
    higher_is_similar: bool = True
    notes: list = field(default_factory=list)
    ci_low: np.ndarray | None = None
    ci_high: np.ndarray | None = None
    p_value: np.ndarray | None = None
    p_value_adjusted: np.ndarray | None = None
    null_mean: np.ndarray | None = None
    calibrated: np.ndarray | None = None

    def __post_init__(self):
        self.matrix = np.asarray(self.matrix, dtype=np.float64)
        if self.matrix.ndim != 2:
            raise ValueError(f"matrix must be 2-D, got shape {self.matrix.shape}")
        self.row_layers = [str(n) for n in self.row_layers]
        self.col_layers = [str(n) for n in self.col_layers]
        if self.matrix.shape != (len(self.row_layers), len(self.col_layers)):
            raise ValueError(
                f"matrix shape {self.matrix.shape} does not match {len(self.row_layers)} row "
                f"layers x {len(self.col_layers)} column layers"
            )
        self.params = dict(self.params)
        self.notes = list(self.notes)
        for name in INFERENCE_FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            value = np.asarray(value, dtype=np.float64)
            if value.shape != self.matrix.shape:
                raise ValueError(f"{name} has shape {value.shape} but the matrix is "
                                 f"{self.matrix.shape}; pass an array shaped like the matrix or None")
            setattr(self, name, value)

    def inference_arrays(self) -> dict:
        """The inference arrays that were computed, ``{name: [L1, L2] float64}``."""
        return {name: getattr(self, name) for name in INFERENCE_FIELDS if getattr(self, name) is not None}

    def significant(self, alpha: float = 0.05, adjusted: bool = True) -> np.ndarray:
        """Boolean ``[L1, L2]``: cells whose (family-wise adjusted, by default) permutation
        p-value is below ``alpha``. Needs a result computed with ``n_permutations > 0``."""
        p = self.p_value_adjusted if adjusted else self.p_value
        if p is None:
            raise ValueError("this result has no p-values: compute it with n_permutations > 0 "
                             "(e.g. CKA(m1, m2, n_permutations=1000))")
        with np.errstate(invalid="ignore"):
            return p < alpha

    # ------------------------------------------------------------------ views
    def __array__(self, dtype=None, copy=None):
        if dtype is None:
            return self.matrix.copy() if copy else self.matrix
        return self.matrix.astype(dtype)

    @property
    def shape(self) -> tuple:
        return self.matrix.shape

    def __getitem__(self, key):
        """``result["layer1", "layer2"]`` gives one entry by names; other keys index the matrix."""
        if isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, str) for k in key):
            return float(self.matrix[self._index(self.row_layers, key[0], "row"),
                                     self._index(self.col_layers, key[1], "column")])
        return self.matrix[key]

    @staticmethod
    def _index(names: list, name: str, kind: str) -> int:
        try:
            return names.index(name)
        except ValueError:
            raise KeyError(f"{kind} layer {name!r} not in this result; {kind} layers: {names}") from None

    def to_dataframe(self, long: bool = False):
        """The matrix as a pandas DataFrame (index: model 1 layers, columns: model 2 layers).

        ``long=True``: one row per cell with columns ``row_layer``, ``col_layer``, ``value`` and
        the inference columns ``ci_low``, ``ci_high``, ``p_value``, ``p_value_adjusted``,
        ``null_mean``, ``calibrated`` (NaN where not computed).
        """
        import pandas as pd

        if long:
            rows, cols = self.matrix.shape
            data = {"row_layer": np.repeat(self.row_layers, cols),
                    "col_layer": np.tile(self.col_layers, rows),
                    "value": self.matrix.ravel()}
            for name in INFERENCE_FIELDS:
                value = getattr(self, name)
                data[name] = np.full(rows * cols, np.nan) if value is None else value.ravel()
            return pd.DataFrame(data)
        frame = pd.DataFrame(self.matrix, index=self.row_layers, columns=self.col_layers)
        frame.index.name = self.model1_name
        frame.columns.name = self.model2_name
        return frame

    def metadata(self) -> dict:
        """Everything except the matrix, as a JSON-serialisable dict."""
        return {
            "format_version": _FORMAT_VERSION,
            "row_layers": self.row_layers,
            "col_layers": self.col_layers,
            "model1_name": self.model1_name,
            "model2_name": self.model2_name,
            "measure": self.measure,
            "params": _jsonable(self.params),
            "n_samples": int(self.n_samples),
            "higher_is_similar": bool(self.higher_is_similar),
            "notes": [str(n) for n in self.notes],
        }

    def __repr__(self) -> str:
        return (
            f"SimilarityResult({self.measure}, {self.model1_name} x {self.model2_name}, "
            f"{self.matrix.shape[0]}x{self.matrix.shape[1]} layers, n_samples={self.n_samples})"
        )

    # ------------------------------------------------------------------ I/O
    def save(self, path: str | os.PathLike) -> list[Path]:
        """Save without pickle; returns the paths written.

        ``*.npz``: matrix and metadata in one file. ``*.csv`` or ``*.json``: both a CSV of the
        matrix (layer names in header and first column) and a JSON file with the metadata and the
        matrix are written next to each other (same stem).
        """
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix == ".npz":
            buffer = io.BytesIO()
            np.savez(buffer, matrix=self.matrix, metadata=np.array(json.dumps(self.metadata())),
                     **self.inference_arrays())
            atomic_write_bytes(path, buffer.getvalue())
            return [path]
        if suffix in (".csv", ".json"):
            csv_path, json_path = path.with_suffix(".csv"), path.with_suffix(".json")
            text = io.StringIO()
            writer = csv.writer(text, lineterminator="\n")
            writer.writerow([f"{self.model1_name} \\ {self.model2_name}", *self.col_layers])
            for name, row in zip(self.row_layers, self.matrix):
                writer.writerow([name, *(repr(float(v)) for v in row)])
            atomic_write_bytes(csv_path, text.getvalue().encode("utf-8"))
            meta = self.metadata()
            meta["matrix"] = _matrix_to_json(self.matrix)
            for name, value in self.inference_arrays().items():
                meta[name] = _matrix_to_json(value)
            atomic_write_bytes(json_path, json.dumps(meta, indent=2).encode("utf-8"))
            written = [csv_path, json_path]
            if self.inference_arrays():  # one row per cell with the intervals and p-values
                cells_path = path.with_name(path.stem + "_cells.csv")
                text = io.StringIO()
                self.to_dataframe(long=True).to_csv(text, index=False, lineterminator="\n",
                                                    float_format=repr)
                atomic_write_bytes(cells_path, text.getvalue().encode("utf-8"))
                written.append(cells_path)
            return written
        raise ValueError(f"path must end in .npz, .csv or .json, got {str(path)!r}")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SimilarityResult":
        """Load a result written by :meth:`save` (``.npz``, ``.json``, or ``.csv`` with its ``.json``)."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                if "matrix" not in data or "metadata" not in data:
                    raise ValueError(f"{path} is not a SimilarityResult file (keys: {list(data.keys())})")
                matrix = data["matrix"]
                meta = json.loads(str(data["metadata"]))
                arrays = {name: data[name] for name in INFERENCE_FIELDS if name in data}
        elif suffix in (".csv", ".json"):
            json_path = path.with_suffix(".json")
            if not json_path.exists():
                raise FileNotFoundError(
                    f"{json_path} not found: a CSV result is loaded together with its JSON sidecar"
                )
            meta = json.loads(json_path.read_text(encoding="utf-8"))
            if "matrix" not in meta:
                raise ValueError(f"{json_path} is not a SimilarityResult file (no 'matrix' key)")
            matrix = _matrix_from_json(meta.pop("matrix"))
            arrays = {name: _matrix_from_json(meta.pop(name)) for name in INFERENCE_FIELDS
                      if name in meta}
        else:
            raise ValueError(f"path must end in .npz, .csv or .json, got {str(path)!r}")
        meta.pop("format_version", None)
        return cls(matrix=matrix, **meta, **arrays)

    # ------------------------------------------------------------------ plots
    def plot(self, title=None, xlabel=None, ylabel=None, cmap=None, ax=None, annot=None,
             vmin=None, vmax=None, save_path=None, significance="hatch", alpha=0.05):
        """Heatmap of the matrix with layer names on the axes; returns the matplotlib Axes.

        Rows (y axis) are model 1's layers, columns (x axis) model 2's. The colour range starts
        from the measure's nominal range where the measure registry knows it (``[0, 1]`` for CKA)
        and is extended, with a mark, to values outside it; NaN cells are hatched.
        ``higher_is_similar`` sets the direction: distances get the colour map reversed (default
        ``cmap``) and a colour bar saying "lower = more similar". See
        :func:`~simtorch_semantic.plotting.plot_similarity_matrix`. With ``save_path`` the figure
        is saved as well.
        When the result has p-values, cells that are not significant at ``alpha`` (family-wise
        adjusted p-value when present) are hatched (``significance="hatch"``), left blank
        (``"mask"``) or drawn like the others (``None``).
        """
        if significance not in ("hatch", "mask", None):
            raise ValueError(f"significance must be 'hatch', 'mask' or None, got {significance!r}")
        p = self.p_value_adjusted if self.p_value_adjusted is not None else self.p_value
        with np.errstate(invalid="ignore"):
            weak = None if p is None or significance is None else ~(p < alpha)
        from .plotting import plot_similarity_matrix

        if title is None:
            title = f"{self.measure}: {self.model1_name} vs {self.model2_name}"
        ax = plot_similarity_matrix(
            np.where(weak, np.nan, self.matrix) if significance == "mask" and weak is not None
            else self.matrix, self.row_layers, self.col_layers, title=title,
            xlabel=xlabel if xlabel is not None else self.model2_name,
            ylabel=ylabel if ylabel is not None else self.model1_name,
            cmap=cmap, ax=ax, annot=annot, vmin=vmin, vmax=vmax,
            cbar_label=self.measure if self.higher_is_similar else f"{self.measure}, a distance",
            higher_is_similar=self.higher_is_similar, value_range=self.value_range(),
        )
        if significance == "hatch" and weak is not None:
            from .plotting import hatch_cells

            hatch_cells(ax, weak, label=f"p >= {alpha:g}" + (" (adjusted)" if p is self.p_value_adjusted else ""))
        if save_path is not None:
            ax.figure.savefig(save_path, dpi=150, bbox_inches="tight")
        return ax

    def value_range(self):
        """The nominal ``(low, high)`` of this result's measure from the measure registry, or
        None when the registry does not know the measure (or its direction disagrees)."""
        from .functional.registry import get_measure

        try:
            spec = get_measure(self.measure)
        except (ValueError, TypeError, ImportError):  # unknown, or a family's extra is missing
            return None
        if bool(spec.higher_is_similar) != bool(self.higher_is_similar):
            return None
        return tuple(float(v) for v in spec.value_range)
