"""Training data for diffusion models: 2-D toy sets, scikit-learn's digits, a folder of images.

``load_dataset(name, split, n, seed, root, resolution)`` returns a :class:`Dataset` holding the
samples ``x [N, ...]`` (float32) and, for labelled sets, integer class labels. ``BatchSampler``
draws an endless stream of shuffled minibatches whose position can be saved and restored, so a
resumed training run sees exactly the batches it would have seen.

The 2-D sets are generated from a seeded generator (``train`` and ``test`` from different
seeds derived from ``seed``, so the test set is an independent draw) and normalised by their
*population* mean and standard deviation, written below in closed form: each coordinate has
mean 0 and the entries, pooled over both coordinates, have standard deviation 1 (EDM's
``sigma_data`` is then 1). The normalisation is one isotropic scale, so shapes are not
distorted. Their constructions follow FFJORD (Grathwohl et al. 2019, ``lib/toy_data.py``),
which many diffusion and flow papers reuse for toy experiments.

The image sets (``digits``, ``folder``) are scaled to ``[-1, 1]`` as in DDPM (Ho et al. 2020)
and split once into train and test by a fixed seed, independent of ``seed``: every run, whatever
its seed, holds out the same test images. ``seed`` only chooses the subset when ``n`` is given.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F  # noqa: N812 (the usual name)

from driftlab.core.config import ConfigError, check_choice, check_int
from driftlab.diffusion.analytic import GaussianMixture

TOY_SETS = ("moons", "swissroll", "8gaussians", "checkerboard", "pinwheel")
IMAGE_SETS = ("digits", "folder")
DATASETS = TOY_SETS + IMAGE_SETS
SPLITS = ("train", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

TOY_SIZES = {"train": 20000, "test": 5000}
DIGITS_TEST_FRACTION = 0.2  # 1,797 images -> 1,437 train / 360 test
FOLDER_TEST_FRACTION = 0.1  # floor(N / 10) test images: none for a folder of fewer than 10
SPLIT_SEED = 0  # the fixed seed of the image sets' train/test split

MOONS_NOISE = 0.1  # FFJORD's make_moons(noise=0.1)
SWISSROLL_NOISE = 1.0  # FFJORD's make_swiss_roll(noise=1.0)
PINWHEEL_ARMS, PINWHEEL_RADIAL_STD, PINWHEEL_TANGENTIAL_STD, PINWHEEL_RATE = 5, 0.3, 0.1, 0.25


@dataclass
class Dataset:
    """Samples ``x [N, ...]`` (float32) and optional labels ``[N]`` (int64 in ``0..K-1``).

    ``num_classes`` is ``K`` for labelled sets and 0 otherwise; ``class_names`` names the
    classes when they have names (digits ``"0".."9"``, a folder's subfolders).
    """

    name: str
    x: torch.Tensor
    labels: torch.Tensor | None
    num_classes: int
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.x.ndim < 2 or self.x.dtype != torch.float32:
            raise ConfigError(
                f"Dataset x must be float32 of shape [N, ...], got {self.x.dtype} "
                f"{tuple(self.x.shape)}"
            )
        if self.labels is not None and (
            self.labels.dtype != torch.int64 or self.labels.shape != (self.x.shape[0],)
        ):
            raise ConfigError(
                f"Dataset labels must be int64 of shape [{self.x.shape[0]}], got "
                f"{self.labels.dtype} {tuple(self.labels.shape)}"
            )
        if (self.labels is None) != (self.num_classes == 0):
            given = "None" if self.labels is None else "a tensor"
            raise ConfigError(
                f"Dataset num_classes must be 0 exactly when labels is None, got "
                f"num_classes={self.num_classes} with labels {given}"
            )

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one sample, e.g. ``(2,)`` or ``(1, 8, 8)``."""
        return tuple(self.x.shape[1:])

    @property
    def dim(self) -> int:
        """Numbers per sample (``prod(shape)``)."""
        return math.prod(self.shape)

    @property
    def sigma_data(self) -> float:
        """Standard deviation of all entries of ``x`` (EDM's ``sigma_data``); nan when empty."""
        if self.x.numel() < 2:
            return math.nan
        return float(self.x.to(torch.float64).std())


# ----- seeds ------------------------------------------------------------------------------
def _generator(seed: int, *keys: str | int) -> torch.Generator:
    """A torch generator seeded from ``(seed, *keys)`` through NumPy's SeedSequence, so that
    e.g. the train and test draws of one set and the sets among themselves are independent
    streams. Strings are keyed by CRC-32, which (unlike ``hash``) is stable across runs."""
    words = [seed] + [zlib.crc32(k.encode()) if isinstance(k, str) else k for k in keys]
    state = np.random.SeedSequence(words).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


# ----- 2-D sets ---------------------------------------------------------------------------
def _moons(n: int, g: torch.Generator) -> torch.Tensor:
    """Two interleaved half circles, as ``sklearn.datasets.make_moons`` (FFJORD uses noise 0.1):
    outer ``(cos t, sin t)``, inner ``(1 - cos t, 1/2 - sin t)``, ``t ~ U[0, pi]``, half the
    points on each, plus ``N(0, 0.1^2)`` noise.

    Population moments: mean ``(1/2, 1/4)``; variances ``3/4`` and ``9/16 - 1/pi`` (plus the
    noise variance), from ``E cos t = 0``, ``E sin t = 2/pi``, ``E cos^2 t = E sin^2 t = 1/2``.
    """
    t = math.pi * torch.rand(n, generator=g, dtype=torch.float64)
    inner = torch.randperm(n, generator=g) < n // 2
    x = torch.stack([torch.cos(t), torch.sin(t)], dim=1)
    x[inner] = torch.tensor([1.0, 0.5], dtype=torch.float64) - x[inner]
    x = x + MOONS_NOISE * torch.randn(n, 2, generator=g, dtype=torch.float64)
    mean = torch.tensor([0.5, 0.25], dtype=torch.float64)
    variance = (0.75 + 0.5625 - 1 / math.pi) / 2 + MOONS_NOISE**2
    return (x - mean) / math.sqrt(variance)


def _swissroll(n: int, g: torch.Generator) -> torch.Tensor:
    """The 2-D swiss roll of FFJORD: ``make_swiss_roll``'s ``(t cos t, t sin t)`` plane with
    ``t = 3 pi/2 (1 + 2u)``, ``u ~ U[0, 1]``, plus ``N(0, 1)`` noise.

    Population moments: with ``t ~ U[a, b]``, ``a = 3 pi/2``, ``b = 9 pi/2``,
    ``E[t cos t] = [t sin t + cos t]_a^b / (b - a) = 2`` and
    ``E[t sin t] = [sin t - t cos t]_a^b / (b - a) = 2 / (3 pi)``; the second moments sum to
    ``E t^2 = (b^3 - a^3) / (3 (b - a))``.
    """
    a, b = 1.5 * math.pi, 4.5 * math.pi
    t = a + (b - a) * torch.rand(n, generator=g, dtype=torch.float64)
    x = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1)
    x = x + SWISSROLL_NOISE * torch.randn(n, 2, generator=g, dtype=torch.float64)
    mean = torch.tensor([2.0, 2 / (3 * math.pi)], dtype=torch.float64)
    second_moment = (b**3 - a**3) / (3 * (b - a))
    variance = (second_moment - float(mean.square().sum())) / 2 + SWISSROLL_NOISE**2
    return (x - mean) / math.sqrt(variance)


def eight_gaussians_mixture() -> GaussianMixture:
    """The exact distribution of the ``"8gaussians"`` set.

    FFJORD's ring (radius 4, component std 0.5, i.e. std / radius = 1/8) rescaled to unit
    standard deviation per entry: ``r^2 / 2 + s^2 = 1`` with ``s = r / 8`` gives
    ``r = sqrt(64 / 33)``. Use it to score a trained model against the exact log-density.
    """
    radius = math.sqrt(64 / 33)
    return GaussianMixture.ring(n_modes=8, radius=radius, std=radius / 8)


def _eight_gaussians(n: int, g: torch.Generator) -> torch.Tensor:
    return eight_gaussians_mixture().sample(n, generator=g)


def _checkerboard(n: int, g: torch.Generator) -> torch.Tensor:
    """FFJORD's checkerboard: ``x1 ~ U[-2, 2]`` and ``x2`` uniform on the cells of a 4x4 board
    whose parity matches ``x1``'s column, so each coordinate is ``U[-2, 2]`` (mean 0, variance
    ``4/3``)."""
    x1 = 4 * torch.rand(n, generator=g, dtype=torch.float64) - 2
    row = torch.rand(n, generator=g, dtype=torch.float64)
    row = row - 2 * torch.randint(0, 2, (n,), generator=g, dtype=torch.float64)
    x2 = row + torch.remainder(torch.floor(x1), 2)  # Python-style mod: columns alternate parity
    return torch.stack([x1, x2], dim=1) / math.sqrt(4 / 3)


def _pinwheel(n: int, g: torch.Generator) -> torch.Tensor:
    """FFJORD's pinwheel: 5 arms; a point of arm ``k`` is ``f = (1 + 0.3 z1, 0.1 z2)`` rotated
    by ``-(2 pi k / 5 + 0.25 exp(f_1))``, then doubled.

    Rotations keep ``|f|``, so the per-entry variance is ``4 E|f|^2 / 2 = 2 (1 + 0.3^2 + 0.1^2)``;
    the mean is 0 because the arms, equally filled here (``k = i mod 5``), are symmetric.
    """
    arm = torch.randperm(n, generator=g) % PINWHEEL_ARMS
    stds = torch.tensor([PINWHEEL_RADIAL_STD, PINWHEEL_TANGENTIAL_STD], dtype=torch.float64)
    f = torch.randn(n, 2, generator=g, dtype=torch.float64) * stds
    f[:, 0] += 1.0
    angle = 2 * math.pi * arm / PINWHEEL_ARMS + PINWHEEL_RATE * torch.exp(f[:, 0])
    cos, sin = torch.cos(angle), torch.sin(angle)
    # FFJORD's einsum("ti,tij->tj", f, [[cos, -sin], [sin, cos]]).
    x = torch.stack([f[:, 0] * cos + f[:, 1] * sin, -f[:, 0] * sin + f[:, 1] * cos], dim=1)
    variance = 2 * (1 + PINWHEEL_RADIAL_STD**2 + PINWHEEL_TANGENTIAL_STD**2)
    return 2 * x / math.sqrt(variance)


_TOY_GENERATORS = {
    "moons": _moons,
    "swissroll": _swissroll,
    "8gaussians": _eight_gaussians,
    "checkerboard": _checkerboard,
    "pinwheel": _pinwheel,
}


# ----- digits -----------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # a heavy import, needed only for this set

    digits = load_digits()
    return digits.images.astype(np.float32), digits.target.astype(np.int64)


def _stratified_split(
    labels: torch.Tensor, test_fraction: float, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(train, test)``: ``ceil(test_fraction N)`` test samples, allotted to classes in
    proportion to their counts (largest remainder), each part in a seeded random order. Done
    here rather than by ``sklearn.model_selection`` so the split cannot change with its version."""
    n_test = math.ceil(test_fraction * len(labels))
    counts = torch.bincount(labels).to(torch.float64)
    quota = n_test * counts / counts.sum()
    alloc = torch.floor(quota).long()
    order = torch.argsort(quota - alloc, descending=True, stable=True)
    alloc[order[: n_test - int(alloc.sum())]] += 1
    train, test = [], []
    for c in range(len(counts)):
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.randperm(len(members), generator=g)]
        test.append(members[: alloc[c]])
        train.append(members[alloc[c] :])
    train_idx, test_idx = torch.cat(train), torch.cat(test)
    return (
        train_idx[torch.randperm(len(train_idx), generator=g)],
        test_idx[torch.randperm(len(test_idx), generator=g)],
    )


def _load_digits(split: str, resolution: int | None) -> Dataset:
    """scikit-learn's 1,797 8x8 handwritten digits (UCI optdigits), pixels ``0..16`` mapped
    linearly to ``[-1, 1]``; optionally resized (bilinear, antialiased) to ``resolution``."""
    images, target = _digits_arrays()
    x = torch.from_numpy(images)[:, None] / 8.0 - 1.0
    labels = torch.from_numpy(target)
    train, test = _stratified_split(
        labels, DIGITS_TEST_FRACTION, _generator(SPLIT_SEED, "digits-split")
    )
    idx = train if split == "train" else test
    x = x[idx]
    if resolution is not None and resolution != 8:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True)
        x = x.clamp(-1.0, 1.0)
    names = tuple(str(c) for c in range(10))
    return Dataset("digits", x.contiguous(), labels[idx], 10, names)


# ----- a folder of images -----------------------------------------------------------------
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L")  # 16-bit grey (PNG) opens as one of these


def _find_images(root: Path) -> list[Path]:
    files = [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _read_image(path: Path, grey: bool, resolution: int) -> np.ndarray:
    """One image as float32 ``[H, W, C]`` in ``[0, 1]``: centre-cropped to a square, then
    resized with PIL's bicubic filter (antialiased when shrinking)."""
    from PIL import Image

    with Image.open(path) as img:
        if grey and img.mode in _WIDE_MODES:
            # 16-bit grey: keep the precision by resizing in float mode, on the 0..255 scale.
            img = Image.fromarray(np.asarray(img, dtype=np.float32) / 257.0)  # mode "F"
        else:
            img = img.convert("L" if grey else "RGB")  # alpha is dropped, palettes expanded
    width, height = img.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    img = img.crop((left, top, left + side, top + side))
    if side != resolution:
        img = img.resize((resolution, resolution), Image.Resampling.BICUBIC)
    array = np.clip(np.asarray(img, dtype=np.float32) / 255.0, 0.0, 1.0)
    return array[..., None] if array.ndim == 2 else array


def _load_folder(root: str | None, resolution: int | None) -> tuple[Dataset, torch.Tensor]:
    """All PNG/JPEG images under ``root`` (recursively, in sorted path order), and the random
    order of the fixed split. See :func:`load_dataset`."""
    from PIL import Image, UnidentifiedImageError

    if root is None:
        raise ConfigError("dataset 'folder' needs root=<a directory of PNG/JPEG images>")
    if resolution is None:
        raise ConfigError("dataset 'folder' needs resolution=<image side in pixels>, got None")
    check_int("resolution", resolution, minimum=1)
    base = Path(root).expanduser()
    if not base.is_dir():
        raise ConfigError(f"root must be an existing directory, got {str(root)!r}")
    files = _find_images(base)
    if not files:
        raise ConfigError(
            f"root {str(root)!r} holds no images; allowed suffixes: {', '.join(IMAGE_SUFFIXES)}"
        )
    modes = []
    for path in files:
        try:
            with Image.open(path) as img:
                modes.append(img.mode)
        except (UnidentifiedImageError, OSError) as err:
            raise ConfigError(f"cannot read image {str(path)!r}: {err}") from err
    grey = all(mode in _GREY_MODES for mode in modes)
    x = np.stack([_read_image(p, grey, resolution) for p in files])
    x = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous() * 2.0 - 1.0

    # Labels come from first-level subfolders when every image lies in one and there are at
    # least two of them; a single subfolder or loose images at the top mean "unlabelled".
    parts = [p.relative_to(base).parts for p in files]
    folders = sorted({q[0] for q in parts if len(q) > 1})
    if all(len(q) > 1 for q in parts) and len(folders) >= 2:
        index = {name: i for i, name in enumerate(folders)}
        labels = torch.tensor([index[q[0]] for q in parts], dtype=torch.int64)
        dataset = Dataset("folder", x, labels, len(folders), tuple(folders))
    else:
        dataset = Dataset("folder", x, None, 0)
    return dataset, torch.randperm(len(files), generator=_generator(SPLIT_SEED, "folder-split"))


def _subset(dataset: Dataset, idx: torch.Tensor) -> Dataset:
    labels = None if dataset.labels is None else dataset.labels[idx]
    return Dataset(
        dataset.name, dataset.x[idx].contiguous(), labels, dataset.num_classes, dataset.class_names
    )


# ----- entry point ------------------------------------------------------------------------
def load_dataset(
    name: str,
    split: str = "train",
    n: int | None = None,
    seed: int = 0,
    root: str | None = None,
    resolution: int | None = None,
) -> Dataset:
    """Load one of :data:`DATASETS`.

    - 2-D sets (``moons``, ``swissroll``, ``8gaussians``, ``checkerboard``, ``pinwheel``):
      ``n`` points (default 20,000 for ``train``, 5,000 for ``test``) drawn from a generator
      seeded by ``(seed, name, split)``, shape ``[n, 2]``, mean 0 and unit pooled std; see each
      ``_name`` function for the construction. Unlabelled.
    - ``digits``: scikit-learn's 8x8 digits, ``[N, 1, 8, 8]`` in ``[-1, 1]`` (pixel ``v`` in
      ``0..16`` becomes ``v / 8 - 1``), labels ``0..9``; a fixed stratified split of
      1,437 train / 360 test images. ``resolution`` other than 8 resizes them (bilinear).
    - ``folder``: every ``.png/.jpg/.jpeg`` under ``root`` (recursively), centre-cropped to a
      square and resized to ``resolution`` (bicubic), ``[N, C, H, W]`` in ``[-1, 1]``; ``C = 1``
      when every image is greyscale, else 3 (RGB; alpha dropped). Labelled by first-level
      subfolder (sorted names -> ``0..K-1``) when all images sit in two or more subfolders,
      else unlabelled. A fixed random split puts ``floor(N / 10)`` images in ``test`` (none for
      fewer than 10 images: ``test`` is then empty) and the rest in ``train``, each part in
      sorted path order.

    For the image sets the split does not depend on ``seed``; with ``n`` given, ``seed`` picks
    which ``n`` images of the split are returned. Bad arguments raise ``ConfigError``.
    """
    check_choice("dataset", name, DATASETS)
    check_choice("split", split, SPLITS)
    check_int("seed", seed, minimum=0)
    if n is not None:
        check_int("n", n, minimum=1)
    if name != "folder" and root is not None:
        raise ConfigError(f"root applies only to dataset 'folder', got root={root!r} for {name!r}")
    if name in TOY_SETS:
        if resolution is not None:
            raise ConfigError(
                f"resolution applies only to image sets {IMAGE_SETS}, got {resolution!r} "
                f"for {name!r}"
            )
        size = TOY_SIZES[split] if n is None else n
        x = _TOY_GENERATORS[name](size, _generator(seed, name, split))
        return Dataset(name, x.to(torch.float32).contiguous(), None, 0)

    if name == "digits":
        if resolution is not None:
            check_int("resolution", resolution, minimum=1)
        dataset = _load_digits(split, resolution)
    else:
        full, order = _load_folder(root, resolution)
        n_test = int(FOLDER_TEST_FRACTION * len(full))
        part = order[:n_test] if split == "test" else order[n_test:]
        dataset = _subset(full, part.sort().values)  # each part in sorted path order
    if n is None:
        return dataset
    if n > len(dataset):
        raise ConfigError(f"n must be <= {len(dataset)} (the size of {name!r} {split}), got {n}")
    pick = torch.randperm(len(dataset), generator=_generator(seed, name, split, "subset"))[:n]
    return _subset(dataset, pick)


# ----- minibatches ------------------------------------------------------------------------
class BatchSampler:
    """An endless stream of shuffled minibatches ``(x, labels)`` (``labels`` is None for
    unlabelled sets), resumable exactly.

    Epoch ``e`` visits the samples in the order ``randperm(N)`` of a generator seeded by
    ``(seed, e)``; the stream is the concatenation of the epochs, cut into ``batch_size``
    chunks, so a batch may straddle two epochs and every batch has ``batch_size`` samples
    (even when ``batch_size > N``). The state is just ``(seed, epoch, position)``, so
    ``load_state_dict(state_dict())`` in a new process continues the same stream.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int = 0) -> None:
        if len(dataset) == 0:
            raise ConfigError(f"dataset {dataset.name!r} is empty; cannot draw batches from it")
        self.dataset = dataset
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.seed = check_int("seed", seed, minimum=0)
        self.epoch = 0
        self.position = 0
        self._order: torch.Tensor | None = None  # the current epoch's permutation

    def _epoch_order(self) -> torch.Tensor:
        if self._order is None:
            g = _generator(self.seed, "batches", self.epoch)
            self._order = torch.randperm(len(self.dataset), generator=g)
        return self._order

    def next_indices(self) -> torch.Tensor:
        """The dataset indices of the next batch (advances the stream)."""
        parts, needed = [], self.batch_size
        while needed:
            order = self._epoch_order()
            take = order[self.position : self.position + needed]
            parts.append(take)
            needed -= len(take)
            self.position += len(take)
            if self.position == len(order):
                self.epoch, self.position, self._order = self.epoch + 1, 0, None
        return torch.cat(parts)

    def __iter__(self) -> BatchSampler:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        idx = self.next_indices()
        labels = None if self.dataset.labels is None else self.dataset.labels[idx]
        return self.dataset.x[idx], labels

    def state_dict(self) -> dict[str, int]:
        return {
            "seed": self.seed,
            "epoch": self.epoch,
            "position": self.position,
            "num_samples": len(self.dataset),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the stream saved by :meth:`state_dict` (its seed replaces this one's)."""
        if int(state["num_samples"]) != len(self.dataset):
            raise ConfigError(
                f"the saved batch state is for a dataset of {state['num_samples']} samples, "
                f"this one has {len(self.dataset)}"
            )
        position = int(state["position"])
        if not 0 <= position < len(self.dataset):
            raise ConfigError(f"position must be in [0, {len(self.dataset)}), got {position}")
        self.seed = check_int("seed", int(state["seed"]), minimum=0)
        self.epoch = check_int("epoch", int(state["epoch"]), minimum=0)
        self.position = position
        self._order = None


def batches(
    dataset: Dataset, batch_size: int, generator: torch.Generator | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """An endless :class:`BatchSampler` whose seed is drawn from ``generator`` (torch's
    global generator when None), so a seeded generator gives the same stream every time."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return BatchSampler(dataset, batch_size, seed)
