"""Data sets: 2-D toy sets against their closed-form moments, digits, image folders, batches."""

import json
import math
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from driftlab.core import ConfigError
from driftlab.diffusion.data import (
    DATASETS,
    TOY_SETS,
    BatchSampler,
    Dataset,
    batches,
    eight_gaussians_mixture,
    load_dataset,
)

DIGIT_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]  # sklearn's digits per class


# ----- 2-D sets ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", TOY_SETS)
def test_toy_sets_are_centred_with_unit_std(name):
    data = load_dataset(name)
    assert data.x.shape == (20000, 2) and data.x.dtype == torch.float32
    assert data.labels is None and data.num_classes == 0
    assert data.shape == (2,) and data.dim == 2 and len(data) == 20000
    # Population mean 0 and pooled std 1; the standard error of a mean of 20,000 is ~0.007.
    assert data.x.mean(0).abs().max() < 0.03
    assert abs(data.sigma_data - 1.0) < 0.02
    assert len(load_dataset(name, split="test")) == 5000


@pytest.mark.parametrize("name", TOY_SETS)
def test_toy_sets_are_seeded_and_test_is_a_separate_draw(name):
    a = load_dataset(name, n=500, seed=3)
    assert torch.equal(a.x, load_dataset(name, n=500, seed=3).x)
    assert not torch.allclose(a.x, load_dataset(name, n=500, seed=4).x)
    assert not torch.allclose(a.x, load_dataset(name, split="test", n=500, seed=3).x)


def test_moons_lie_on_two_half_circles():
    x = load_dataset("moons").x.double()
    raw = x * math.sqrt((0.75 + 0.5625 - 1 / math.pi) / 2 + 0.01) + torch.tensor([0.5, 0.25])
    outer = (raw.norm(dim=1) - 1).abs()
    inner = ((raw - torch.tensor([1.0, 0.5])).norm(dim=1) - 1).abs()
    off = torch.minimum(outer, inner)
    assert (off < 0.3).double().mean() > 0.99  # noise std 0.1: 3 standard deviations
    # Per-axis stds of the normalised set: sqrt(0.76 / 0.507) and sqrt(0.254 / 0.507).
    assert torch.allclose(x.std(0), torch.tensor([1.2244, 0.7077], dtype=x.dtype), atol=0.02)


def test_swissroll_radius_spans_the_roll():
    x = load_dataset("swissroll").x.double()
    a, b = 1.5 * math.pi, 4.5 * math.pi
    scale = math.sqrt(((b**3 - a**3) / (3 * (b - a)) - 4 - (2 / (3 * math.pi)) ** 2) / 2 + 1)
    raw = x * scale + torch.tensor([2.0, 2 / (3 * math.pi)])
    radius = raw.norm(dim=1)
    # t is uniform on [4.71, 14.14]; unit noise blurs the ends by a few units at most.
    assert 1.0 < radius.min() < 4.7 and 14.1 < radius.max() < 19.0
    assert abs(radius.mean() - 3 * math.pi) < 0.1


def test_eight_gaussians_follow_their_exact_mixture():
    data = load_dataset("8gaussians")
    mixture = eight_gaussians_mixture()
    assert torch.allclose(mixture.means.norm(dim=1), torch.full((8,), math.sqrt(64 / 33)).double())
    counts = torch.bincount(mixture.classify(data.x.double()), minlength=8)
    assert (counts.double() / len(data) - 1 / 8).abs().max() < 0.01
    # Average log-density of the data under the mixture equals minus its entropy (~ -1.18).
    test = load_dataset("8gaussians", split="test")
    assert (
        abs(mixture.log_prob(data.x.double()).mean() - mixture.log_prob(test.x.double()).mean())
        < 0.05
    )


def test_checkerboard_fills_only_even_cells():
    raw = load_dataset("checkerboard").x.double() * math.sqrt(4 / 3)
    assert raw.abs().max() <= 2.0 + 1e-6
    parity = (torch.floor(raw[:, 0]) + torch.floor(raw[:, 1])).remainder(2)
    assert torch.all(parity == 0)
    # 8 occupied cells of the 4x4 board, about equally filled.
    cells = Counter(map(tuple, torch.floor(raw).long().tolist()))
    assert len(cells) == 8
    assert max(cells.values()) / min(cells.values()) < 1.1


def test_pinwheel_has_five_arms():
    x = load_dataset("pinwheel").x.double() * math.sqrt(2.2) / 2
    radius = x.norm(dim=1)
    assert abs(radius.square().mean() - 1.1) < 0.02  # E|f|^2 = 1 + 0.3^2 + 0.1^2
    # The angle minus the arm's spiral (0.25 e^{f1}, f1 ~ radius) clusters at 5 directions.
    angle = torch.atan2(-x[:, 1], x[:, 0]) - 0.25 * torch.exp(radius)
    arm = torch.round(angle.remainder(2 * math.pi) / (2 * math.pi / 5)).long() % 5
    counts = torch.bincount(arm, minlength=5).double() / len(x)
    assert (counts - 0.2).abs().max() < 0.02


# ----- digits -----------------------------------------------------------------------------
def test_digits_scaled_split_and_stratified():
    train, test = load_dataset("digits"), load_dataset("digits", split="test")
    assert train.x.shape == (1437, 1, 8, 8) and test.x.shape == (360, 1, 8, 8)
    assert train.labels.dtype == torch.int64 and train.num_classes == 10
    assert train.class_names == tuple("0123456789")
    assert train.x.min() == -1.0 and train.x.max() == 1.0
    assert torch.equal(train.x * 8, torch.round(train.x * 8))  # v / 8 - 1 for v in 0..16
    counts_test = torch.bincount(test.labels, minlength=10)
    counts_train = torch.bincount(train.labels, minlength=10)
    assert (counts_test + counts_train).tolist() == DIGIT_COUNTS
    assert counts_test.sum() == 360
    expected = 360 * torch.tensor(DIGIT_COUNTS) / 1797
    assert (counts_test - expected).abs().max() < 1
    assert abs(train.sigma_data - 0.7522) < 1e-3


def test_digits_split_is_fixed_and_disjoint():
    from sklearn.datasets import load_digits

    a, b = load_dataset("digits", seed=0), load_dataset("digits", seed=7)
    assert torch.equal(a.x, b.x) and torch.equal(a.labels, b.labels)
    test = load_dataset("digits", split="test")
    rows = Counter(
        (bytes(img.numpy()), int(y))
        for img, y in zip(
            torch.cat([a.x, test.x]).flatten(1), torch.cat([a.labels, test.labels]), strict=True
        )
    )
    digits = load_digits()
    full = torch.from_numpy(digits.images.astype(np.float32)).flatten(1) / 8 - 1
    assert rows == Counter(
        (bytes(img.numpy()), int(y)) for img, y in zip(full, digits.target, strict=True)
    )


def test_digits_subset_and_resolution():
    a, b = load_dataset("digits", n=100, seed=0), load_dataset("digits", n=100, seed=1)
    assert a.x.shape == (100, 1, 8, 8) and not torch.equal(a.x, b.x)
    assert torch.equal(a.x, load_dataset("digits", n=100, seed=0).x)
    big = load_dataset("digits", split="test", resolution=16)
    assert big.x.shape == (360, 1, 16, 16)
    assert big.x.min() >= -1.0 and big.x.max() <= 1.0
    with pytest.raises(ConfigError, match="n must be <= 360"):
        load_dataset("digits", split="test", n=361)


# ----- a folder of images -----------------------------------------------------------------
def _save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array), mode=mode).save(path)


def test_folder_rgb_crop_resize_and_scale(tmp_path):
    # 30 wide x 10 high: red | green | blue thirds; the centre square is the green third.
    stripes = np.zeros((10, 30, 3), np.uint8)
    stripes[:, :10, 0], stripes[:, 10:20, 1], stripes[:, 20:, 2] = 255, 255, 255
    _save(tmp_path / "stripes.png", stripes)
    _save(tmp_path / "white.jpg", np.full((16, 16, 3), 255, np.uint8))
    _save(tmp_path / "grey.png", np.zeros((12, 12), np.uint8))  # grey among RGB: becomes RGB
    (tmp_path / "notes.txt").write_text("not an image")
    data = load_dataset("folder", root=str(tmp_path), resolution=4)
    assert data.x.shape == (3, 3, 4, 4) and data.labels is None and data.num_classes == 0
    grey, stripes_x, white = data.x  # sorted by path: grey.png, stripes.png, white.jpg
    assert torch.all(grey == -1.0)
    assert torch.equal(stripes_x[:, 0, 0], torch.tensor([-1.0, 1.0, -1.0]))
    assert torch.all(stripes_x[1] == 1.0) and torch.all(stripes_x[0] == -1.0)
    assert (white - 1.0).abs().max() < 0.02  # JPEG may round 255 slightly


def test_folder_all_grey_is_one_channel_and_16_bit_keeps_precision(tmp_path):
    _save(tmp_path / "a.png", np.full((8, 8), 255, np.uint8))
    _save(tmp_path / "b.png", np.full((8, 8), 32768, np.uint16))
    data = load_dataset("folder", root=str(tmp_path), resolution=8)
    assert data.x.shape == (2, 1, 8, 8)
    assert torch.all(data.x[0] == 1.0)
    assert torch.allclose(data.x[1], torch.tensor(32768 / 65535 * 2 - 1), atol=1e-5)


def test_folder_labels_from_subfolders_and_split(tmp_path):
    for i in range(7):
        _save(tmp_path / "dog" / f"{i}.png", np.full((6, 6, 3), 200, np.uint8))
    for i in range(5):
        _save(tmp_path / "cat" / "nested" / f"{i}.jpeg", np.full((6, 6, 3), 50, np.uint8))
    train = load_dataset("folder", root=str(tmp_path), resolution=6)
    test = load_dataset("folder", split="test", root=str(tmp_path), resolution=6)
    assert len(train) == 11 and len(test) == 1  # floor(12 / 10) = 1 held out
    assert train.num_classes == 2 and train.class_names == ("cat", "dog")
    labels = torch.cat([train.labels, test.labels])
    assert torch.bincount(labels).tolist() == [5, 7]
    # Cats are dark (50), dogs light (200): the labels follow the images.
    means = torch.cat([train.x, test.x]).mean((1, 2, 3))
    assert torch.all((means > 0) == (labels == 1))
    again = load_dataset("folder", root=str(tmp_path), resolution=6, seed=5)
    assert torch.equal(again.x, train.x)  # the split is fixed


def test_folder_single_subfolder_is_unlabelled_and_tiny_test_is_empty(tmp_path):
    for i in range(3):
        _save(tmp_path / "only" / f"{i}.png", np.zeros((4, 4, 3), np.uint8))
    assert load_dataset("folder", root=str(tmp_path), resolution=4).labels is None
    test = load_dataset("folder", split="test", root=str(tmp_path), resolution=4)
    assert test.x.shape == (0, 3, 4, 4)
    with pytest.raises(ConfigError, match="empty"):
        BatchSampler(test, 2)


def test_folder_errors(tmp_path):
    with pytest.raises(ConfigError, match="holds no images"):
        load_dataset("folder", root=str(tmp_path), resolution=8)
    with pytest.raises(ConfigError, match=r"existing directory.*missing"):
        load_dataset("folder", root=str(tmp_path / "missing"), resolution=8)
    with pytest.raises(ConfigError, match="needs root"):
        load_dataset("folder", resolution=8)
    _save(tmp_path / "a.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(ConfigError, match="needs resolution"):
        load_dataset("folder", root=str(tmp_path))
    with pytest.raises(ConfigError, match="resolution must be >= 1, got 0"):
        load_dataset("folder", root=str(tmp_path), resolution=0)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ConfigError, match=r"cannot read image.*broken\.png"):
        load_dataset("folder", root=str(tmp_path), resolution=4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "mnist"}, "dataset must be one of .*'moons'.*got 'mnist'"),
        ({"name": "moons", "split": "val"}, "split must be one of 'train', 'test'; got 'val'"),
        ({"name": "moons", "n": 0}, "n must be >= 1, got 0"),
        ({"name": "moons", "seed": -1}, "seed must be >= 0, got -1"),
        ({"name": "moons", "resolution": 8}, "resolution applies only to image sets"),
        ({"name": "digits", "root": "x"}, "root applies only to dataset 'folder'"),
        ({"name": "digits", "resolution": 0}, "resolution must be >= 1, got 0"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        load_dataset(**kwargs)


def test_dataset_names_and_validation():
    assert DATASETS == (
        "moons",
        "swissroll",
        "8gaussians",
        "checkerboard",
        "pinwheel",
        "digits",
        "folder",
    )
    with pytest.raises(ConfigError, match="num_classes must be 0 exactly when labels is None"):
        Dataset("x", torch.zeros(3, 2), None, 2)
    with pytest.raises(ConfigError, match="int64"):
        Dataset("x", torch.zeros(3, 2), torch.zeros(3, dtype=torch.int32), 2)


# ----- batches ----------------------------------------------------------------------------
def _toy(n: int) -> Dataset:
    return Dataset("toy", torch.arange(n, dtype=torch.float32)[:, None], torch.arange(n), n)


def test_batches_cover_each_epoch_once_and_straddle_epochs():
    sampler = BatchSampler(_toy(10), batch_size=4, seed=0)
    seen = torch.cat([next(sampler)[0].flatten() for _ in range(5)]).long()
    assert torch.bincount(seen, minlength=10).tolist() == [2] * 10  # 20 draws = 2 epochs
    assert sorted(seen[:10].tolist()) == list(range(10))  # the first epoch is a permutation
    assert sampler.state_dict() == {"seed": 0, "epoch": 2, "position": 0, "num_samples": 10}
    x, labels = next(BatchSampler(_toy(3), batch_size=7, seed=0))
    assert x.shape == (7, 1) and torch.equal(x[:, 0].long(), labels)


def test_batches_are_seeded():
    data = _toy(50)
    a = [next(BatchSampler(data, 8, seed=1))[0] for _ in range(2)]
    assert torch.equal(a[0], a[1])
    assert not torch.equal(a[0], next(BatchSampler(data, 8, seed=2))[0])
    it1 = batches(data, 8, torch.Generator().manual_seed(0))
    it2 = batches(data, 8, torch.Generator().manual_seed(0))
    assert all(torch.equal(next(it1)[0], next(it2)[0]) for _ in range(10))


def test_batch_sampler_resumes_exactly_mid_epoch():
    data = load_dataset("digits", n=100)
    full = BatchSampler(data, batch_size=32, seed=5)
    uninterrupted = [next(full) for _ in range(9)]
    first = BatchSampler(data, batch_size=32, seed=5)
    for _ in range(4):
        next(first)
    state = json.loads(json.dumps(first.state_dict()))  # survives a JSON checkpoint
    assert state["epoch"] == 1 and state["position"] == 28  # 128 = 100 + 28: mid-epoch
    resumed = BatchSampler(data, batch_size=32, seed=0)  # the saved seed takes over
    resumed.load_state_dict(state)
    for expected_x, expected_y in uninterrupted[4:]:
        x, y = next(resumed)
        assert torch.equal(x, expected_x) and torch.equal(y, expected_y)
    with pytest.raises(ConfigError, match="100 samples, this one has 50"):
        BatchSampler(_toy(50), 8).load_state_dict(state)
