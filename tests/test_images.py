"""Tests of the shipped photographs and the deterministic default dataset (images.py)."""
import numpy as np
import pytest
import torch
from PIL import Image

from simtorch_semantic.images import (DATA_DIR, IMAGENET_MEAN, IMAGENET_STD,
                                      AugmentedImageDataset, default_dataset, load_images)

MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


def _write(path, size=(40, 30), mode="RGB", color=(200, 30, 60)):
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "L":
        color = color[0]
    elif mode == "RGBA":
        color = (*color, 128)
    Image.new(mode, size, color).save(path)
    return path


# ------------------------------------------------------------------------ shipped photographs
def test_shipped_photographs_load_offline_and_are_licensed():
    images = load_images()
    assert len(images) >= 5
    for im in images:
        assert im.mode == "RGB"
        assert min(im.size) == 256
    names = sorted(p.name for p in DATA_DIR.glob("*.jpg"))
    licence = (DATA_DIR / "LICENSE.md").read_text(encoding="utf-8")
    for name in names:                      # every shipped image has its source and licence
        assert f"`{name}`" in licence


def test_load_images_directory_sorted_recursive_rgb(tmp_path):
    _write(tmp_path / "b.png", mode="L")
    _write(tmp_path / "a.jpg")
    _write(tmp_path / "sub" / "c.png", mode="RGBA")
    _write(tmp_path / ".hidden.png")
    (tmp_path / "notes.txt").write_text("not an image")
    images = load_images(tmp_path)
    assert len(images) == 3
    assert all(im.mode == "RGB" and im.size == (40, 30) for im in images)
    # order: a.jpg, b.png (grey -> equal channels), sub/c.png
    assert np.asarray(images[0])[0, 0, 0] > 150
    b = np.asarray(images[1])[0, 0]
    assert b[0] == b[1] == b[2] == 200
    assert len(load_images(str(tmp_path / "sub"))) == 1


def test_load_images_empty_directory(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="no image files found in"):
        load_images(tmp_path)


def test_load_images_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_images(tmp_path / "nope")


def test_load_images_file_instead_of_directory(tmp_path):
    path = _write(tmp_path / "a.png")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        load_images(path)


def test_load_images_unreadable_file_is_named(tmp_path):
    _write(tmp_path / "good.png")
    (tmp_path / "broken.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(ValueError, match="broken.jpg"):
        load_images(tmp_path)


# ------------------------------------------------------------------------ default_dataset
def test_default_dataset_shape_dtype_length():
    ds = default_dataset(n=20, size=40)
    assert isinstance(ds, torch.utils.data.Dataset)
    assert len(ds) == 20
    x = ds[13]
    assert x.shape == (3, 40, 40) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=8)))
    assert batch.shape == (8, 3, 40, 40)
    # de-normalised pixels lie in [0, 1]
    for i in range(len(ds)):
        pixels = ds[i] * STD + MEAN
        assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


def test_default_dataset_is_deterministic_in_any_order():
    a = default_dataset(n=24, size=32, seed=3)
    b = default_dataset(n=24, size=32, seed=3)
    forward = torch.stack([a[i] for i in range(24)])
    backward = torch.stack([b[i] for i in reversed(range(24))]).flip(0)
    assert torch.equal(forward, backward)
    assert torch.equal(a[-1], a[23])
    # a view does not depend on n: in view order, sample 20 is view 20 for any n > 20
    assert torch.equal(default_dataset(n=30, size=32, seed=3, shuffle=False)[20],
                       default_dataset(n=24, size=32, seed=3, shuffle=False)[20])


def test_default_dataset_seed_changes_only_augmented_samples():
    k = len(load_images())
    a = default_dataset(n=3 * k, size=32, seed=0, shuffle=False)
    b = default_dataset(n=3 * k, size=32, seed=1, shuffle=False)
    for i in range(k):                       # first pass: plain photographs, seed-independent
        assert torch.equal(a[i], b[i])
    differing = sum(not torch.equal(a[i], b[i]) for i in range(k, 3 * k))
    assert differing == 2 * k
    # augmented views of the same photograph differ from each other
    assert not torch.equal(a[k], a[2 * k])


def test_first_sample_is_the_resized_centre_crop():
    """Independent reference: PIL resize of the shorter side + centre crop, then normalise."""
    size = 64
    photo = load_images()[0]
    w, h = photo.size
    scale = size / min(w, h)
    ref = photo.resize((max(size, round(w * scale)), max(size, round(h * scale))),
                       Image.Resampling.BILINEAR)
    left, top = (ref.size[0] - size) // 2, (ref.size[1] - size) // 2
    ref = np.asarray(ref.crop((left, top, left + size, top + size)), dtype=np.float64) / 255.0
    ref = (ref - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    got = default_dataset(n=1, size=size)[0].permute(1, 2, 0).double().numpy()
    assert got.shape == ref.shape
    assert np.abs(got - ref).mean() < 0.05


def test_default_dataset_accepts_pil_images_and_folders(tmp_path):
    _write(tmp_path / "x.png", size=(50, 20), color=(10, 200, 10))
    _write(tmp_path / "y.png", size=(20, 50), color=(10, 10, 200))
    from_folder = default_dataset(n=6, size=16, images=tmp_path)
    from_list = default_dataset(n=6, size=16, images=load_images(tmp_path))
    assert all(torch.equal(from_folder[i], from_list[i]) for i in range(6))
    single = default_dataset(n=2, size=16, images=Image.new("RGB", (30, 30), (0, 0, 0)))
    assert single[1].shape == (3, 16, 16)
    # a uniform green image (x.png, the first) stays green after augmentation (small jitter)
    green = [i for i in range(6) if from_folder.image_index(i) == 0 and from_folder.order[i] >= 2]
    pixels = from_folder[green[0]] * STD + MEAN
    assert (pixels[1] > pixels[0]).all() and (pixels[1] > pixels[2]).all()
    assert isinstance(from_folder, AugmentedImageDataset)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"n": 0}, ValueError, "n must be >= 1"),
    ({"n": 2.5}, TypeError, "n must be an int"),
    ({"n": True}, TypeError, "n must be an int"),
    ({"size": 4}, ValueError, "size must be >= 8"),
    ({"seed": "a"}, TypeError, "seed must be an int"),
    ({"shuffle": 1}, TypeError, "shuffle must be True or False"),
    ({"images": []}, ValueError, "images is an empty sequence"),
    ({"images": [1]}, TypeError, r"images\[0\] must be a PIL.Image.Image"),
    ({"images": 3}, TypeError, "images must be None, a folder path"),
])
def test_default_dataset_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        default_dataset(**kwargs)


def test_default_dataset_index_out_of_range():
    ds = default_dataset(n=4, size=16)
    with pytest.raises(IndexError, match="out of range"):
        ds[4]
    assert np.int64(2) == 2 and default_dataset(n=np.int64(3), size=16)[2].shape == (3, 16, 16)


# ------------------------------------------------------------------------ shuffled order (issue 8)
def test_shuffled_order_is_a_seeded_permutation_of_the_views():
    k = len(load_images())
    n = 5 * k + 3
    plain = default_dataset(n=n, size=16, seed=2, shuffle=False)
    shuffled = default_dataset(n=n, size=16, seed=2)
    assert shuffled.shuffle and not plain.shuffle
    assert sorted(shuffled.order) == list(range(n)) and plain.order == tuple(range(n))
    assert shuffled.order != plain.order
    for i in (0, 1, n // 2, n - 1):  # sample i is view order[i], the same tensor as in view order
        assert torch.equal(shuffled[i], plain[shuffled.order[i]])
        assert shuffled.image_index(i) == shuffled.order[i] % k
    # deterministic per seed, different across seeds
    assert default_dataset(n=n, size=16, seed=2).order == shuffled.order
    assert default_dataset(n=n, size=16, seed=3).order != shuffled.order


def test_shuffled_batches_are_not_stratified_by_photograph():
    """View order puts each photograph ~b/k times in every batch of b; shuffled order does not.

    Over the consecutive batches of 8, count the pairs of samples in the same batch that show the
    same photograph. For a uniformly random order the expected fraction of same-photograph pairs
    is the population fraction (sampling without replacement), sum_p m_p (m_p - 1) / (n (n - 1)).
    """
    k = len(load_images())
    n, b = 70 * k, 8
    expected = k * 70 * 69 / (n * (n - 1))

    def same_fraction(ds):
        labels = np.array([ds.image_index(i) for i in range(n)])[: n // b * b].reshape(-1, b)
        same = (labels[:, :, None] == labels[:, None, :]).sum() - labels.size
        return same / (labels.shape[0] * b * (b - 1))

    # per batch pair-fraction has a standard error of roughly sqrt(p (1 - p) / pairs)
    se = np.sqrt(expected * (1 - expected) / (n // b * b * (b - 1) / 2))
    assert same_fraction(default_dataset(n=n, size=8, seed=0, shuffle=False)) < expected - 5 * se
    assert abs(same_fraction(default_dataset(n=n, size=8, seed=0)) - expected) < 5 * se


def test_n_distinct_images_is_reported():
    k = len(load_images())
    assert default_dataset(n=3 * k, size=16).n_distinct_images == k
    assert default_dataset(n=2, size=16).n_distinct_images == 2
    ds = default_dataset(n=4, size=16, images=[Image.new("RGB", (20, 20))] * 1)
    assert ds.n_distinct_images == 1
    assert "distinct images=1" in repr(ds)
