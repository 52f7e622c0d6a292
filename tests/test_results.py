"""SimilarityResult: views, no-pickle round trips, plotting, bad input."""
import json
import stat

import matplotlib
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

matplotlib.use("Agg")

from simtorch_semantic import CKA, SimilarityModel, SimilarityResult  # noqa: E402
from simtorch_semantic.results import atomic_write_bytes  # noqa: E402


def make(matrix=None, **kw):
    matrix = np.array([[1.0, 0.25, np.nan], [0.5, -np.inf, 0.125]]) if matrix is None else matrix
    return SimilarityResult(matrix, ["a", "b"], ["x", "y", "z"], model1_name="m1", model2_name="m2",
                            measure="cka", params={"kernel": "linear", "shape": (1, 2)},
                            n_samples=7, notes=["z is constant"], **kw)


def same(r1, r2):
    np.testing.assert_array_equal(r1.matrix, r2.matrix)  # NaN == NaN here, bit-exact floats
    assert r1.metadata() == r2.metadata()


@pytest.mark.parametrize("name", ["r.npz", "r.csv", "r.json"])
def test_round_trip_without_pickle(tmp_path, name):
    result = make()
    written = result.save(tmp_path / name)
    assert all(p.exists() for p in written)
    loaded = SimilarityResult.load(tmp_path / name)
    same(result, loaded)
    assert loaded.params == {"kernel": "linear", "shape": [1, 2]}
    if name.endswith(".npz"):
        with np.load(tmp_path / name, allow_pickle=False) as data:  # readable without pickle
            assert set(data.keys()) == {"matrix", "metadata"}


def test_csv_has_layer_names_and_json_has_everything(tmp_path):
    make().save(tmp_path / "r.csv")
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert lines[0].split(",")[1:] == ["x", "y", "z"]
    assert [line.split(",")[0] for line in lines[1:]] == ["a", "b"]
    meta = json.loads((tmp_path / "r.json").read_text())
    assert meta["measure"] == "cka" and meta["n_samples"] == 7 and meta["matrix"][0][2] is None
    mode = stat.S_IMODE((tmp_path / "r.csv").stat().st_mode)
    assert mode & stat.S_IRGRP  # atomic writes keep the usual permissions, not mkstemp's 0600


def test_views_dataframe_and_array():
    result = make()
    assert np.asarray(result).shape == (2, 3) and np.asarray(result).dtype == np.float64
    assert result["b", "z"] == 0.125 and result[0, 1] == 0.25
    with pytest.raises(KeyError, match="row layer 'q'"):
        result["q", "x"]
    frame = result.to_dataframe()
    assert list(frame.index) == ["a", "b"] and list(frame.columns) == ["x", "y", "z"]
    assert frame.loc["a", "y"] == 0.25
    assert "2x3 layers" in repr(result)


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="does not match"):
        SimilarityResult(np.zeros((2, 2)), ["a"], ["x", "y"])
    with pytest.raises(ValueError, match="2-D"):
        SimilarityResult(np.zeros(3), ["a"], ["x"])
    with pytest.raises(ValueError, match=".npz, .csv or .json"):
        make().save(tmp_path / "r.pkl")
    with pytest.raises(FileNotFoundError, match="JSON sidecar"):
        (tmp_path / "lonely.csv").write_text("a,b\n")
        SimilarityResult.load(tmp_path / "lonely.csv")
    np.savez(tmp_path / "other.npz", weights=np.zeros(2))
    with pytest.raises(ValueError, match="not a SimilarityResult"):
        SimilarityResult.load(tmp_path / "other.npz")


def test_atomic_write_leaves_no_temporary_on_failure(tmp_path, monkeypatch):
    import os

    target = tmp_path / "out.bin"
    atomic_write_bytes(target, b"one")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_plot_from_a_computed_result(tmp_path):
    import matplotlib.pyplot as plt

    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    sm = SimilarityModel(net, "net")
    result = CKA(sm, sm).compute(DataLoader(torch.randn(32, 4), batch_size=16), progress=False)
    before = dict(plt.rcParams)
    ax = result.plot(save_path=tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 1000
    assert ax.get_title() == "cka: net vs net" and ax.get_xlabel() == "net"
    assert dict(plt.rcParams) == before
    plt.close("all")
