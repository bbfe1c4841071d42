"""Digits evaluation: a small CNN classifier of the 8x8 digits and the metrics built on it.

What FID (Heusel et al. 2017) does with Inception features for ImageNet-sized images is done
here with the penultimate features of a CNN trained on the digits training split: the Frechet
distance between Gaussians fitted to the features of generated and reference images, the
class distribution of generated images, and, for class-conditional models, how often the
classifier agrees with the requested class.

The classifier is trained once (a few seconds on a CPU) and cached in the user's cache
directory as safetensors weights plus a JSON file with its held-out accuracy; loading never
unpickles anything.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F  # noqa: N812 (the usual name)

from driftlab.core.config import ConfigError, check_int, check_positive
from driftlab.diffusion.data import load_dataset

CACHE_ENV = "DRIFTLAB_CACHE"
CACHE_NAME = "digits_classifier"
# Bumped whenever the architecture or training recipe changes, so a stale cache is retrained.
CLASSIFIER_VERSION = 1
NUM_CLASSES = 10
FEATURES = 128


class DigitsClassifier(nn.Module):
    """A small CNN for ``[N, 1, 8, 8]`` images in ``[-1, 1]``.

    ``conv3x3(32) -> conv3x3(64) -> avgpool -> conv3x3(64) -> avgpool`` (8 -> 4 -> 2 pixels),
    then ``Linear(256, features)`` with SiLU: the feature layer the Frechet distance is
    computed in; a linear head maps it to the 10 class logits.
    """

    def __init__(self, features: int = FEATURES) -> None:
        super().__init__()
        self.num_features = check_int("features", features, minimum=1)
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.SiLU(),
            nn.AvgPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.SiLU(),
            nn.AvgPool2d(2),
            nn.Flatten(),
        )
        self.feature_layer = nn.Linear(64 * 2 * 2, features)
        self.head = nn.Linear(features, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``[N, features]``."""
        return F.silu(self.feature_layer(self.conv(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``[N, 10]``."""
        return self.head(self.features(x))


def _as_images(x: torch.Tensor) -> torch.Tensor:
    """Digits ``[N, 1, 8, 8]`` or flat ``[N, 64]`` as float32 ``[N, 1, 8, 8]`` in ``[-1, 1]``.

    Generated samples are clipped to the data range first, as images are before FID is
    computed (they are quantised to 8-bit pixels); the classifier never saw values outside it.
    """
    x = torch.as_tensor(x)
    if x.ndim == 2 and x.shape[1] == 64:
        x = x.reshape(-1, 1, 8, 8)
    if x.ndim != 4 or tuple(x.shape[1:]) != (1, 8, 8):
        raise ConfigError(f"digits must have shape [N, 1, 8, 8] or [N, 64], got {tuple(x.shape)}")
    return x.to(torch.float32).clamp(-1.0, 1.0)


def _batched(
    classifier: DigitsClassifier, x: torch.Tensor, fn: str, batch_size: int = 1024
) -> torch.Tensor:
    """``classifier.<fn>`` over ``x`` in eval mode, in batches, without a graph."""
    x = _as_images(x)
    device = next(classifier.parameters()).device
    was_training = classifier.training
    classifier.eval()
    with torch.no_grad():
        out = [
            getattr(classifier, fn)(x[i : i + batch_size].to(device)).cpu()
            for i in range(0, x.shape[0], batch_size)
        ]
    classifier.train(was_training)
    if not out:
        raise ConfigError("need at least one image, got an empty batch")
    return torch.cat(out)


def predict(classifier: DigitsClassifier, x: torch.Tensor) -> torch.Tensor:
    """Predicted classes ``[N]`` of digits ``x``."""
    return _batched(classifier, x, "forward").argmax(dim=1)


# ----- training and the cache ---------------------------------------------------------------


def train_digits_classifier(
    seed: int = 0, epochs: int = 30, batch_size: int = 64, lr: float = 2e-3
) -> tuple[DigitsClassifier, dict[str, Any]]:
    """Train :class:`DigitsClassifier` on the digits ``train`` split (1,437 images).

    Adam with cosine decay and one-pixel random shifts (the digits are small, so a shift is
    the augmentation that keeps them legible). Initialisation and batches come from ``seed``
    alone, without touching torch's global generator.

    Returns:
        the classifier (in eval mode) and ``info``: ``test_accuracy`` on the held-out
        ``test`` split (360 images), ``train_seconds``, ``seed``, ``epochs``, ``version``.
    """
    check_int("seed", seed, minimum=0)
    check_int("epochs", epochs, minimum=1)
    check_int("batch_size", batch_size, minimum=1)
    check_positive("lr", lr)
    start = time.perf_counter()
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        classifier = DigitsClassifier()
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=lr)
    steps_per_epoch = -(-len(train.x) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)
    classifier.train()
    for _ in range(epochs):
        order = torch.randperm(len(train.x), generator=generator)
        for i in range(0, len(order), batch_size):
            index = order[i : i + batch_size]
            x = _shift(train.x[index], generator)
            loss = F.cross_entropy(classifier(x), train.labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    classifier.eval()
    accuracy = float((predict(classifier, test.x) == test.labels).to(torch.float64).mean())
    info = {
        "test_accuracy": accuracy,
        "train_seconds": time.perf_counter() - start,
        "seed": seed,
        "epochs": epochs,
        "version": CLASSIFIER_VERSION,
        "features": classifier.num_features,
    }
    return classifier, info


def _shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to one pixel in each direction, filling with background (-1)."""
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)
    dy, dx = torch.randint(0, 3, (2, x.shape[0]), generator=generator)
    rows = (dy[:, None] + torch.arange(8))[:, None, :, None].expand(-1, 1, 8, 10)
    shifted = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(8))[:, None, None, :].expand(-1, 1, 8, 8)
    return shifted.gather(3, cols)


def cache_directory(cache_dir: str | Path | None = None) -> Path:
    """Where cached models live: ``cache_dir``, else ``$DRIFTLAB_CACHE``, else
    ``$XDG_CACHE_HOME/driftlab``, else ``~/.cache/driftlab``."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "driftlab"


def load_digits_classifier(
    cache_dir: str | Path | None = None,
) -> tuple[DigitsClassifier, dict[str, Any]]:
    """The cached digits classifier and its ``info`` (see :func:`train_digits_classifier`).

    The first call trains it (seed 0) and writes ``digits_classifier.safetensors`` and
    ``digits_classifier.json`` (its held-out accuracy and recipe) to :func:`cache_directory`;
    later calls load them. A cache written by another classifier version is retrained.
    """
    directory = cache_directory(cache_dir)
    weights = directory / f"{CACHE_NAME}.safetensors"
    meta = directory / f"{CACHE_NAME}.json"
    if weights.exists() and meta.exists():
        info = json.loads(meta.read_text(encoding="utf-8"))
        if info.get("version") == CLASSIFIER_VERSION:
            classifier = DigitsClassifier(info.get("features", FEATURES))
            classifier.load_state_dict(load_file(str(weights)))
            return classifier.eval(), info
    classifier, info = train_digits_classifier()
    directory.mkdir(parents=True, exist_ok=True)
    # Written to temporary names and renamed, the JSON last: a concurrent reader sees either
    # no cache or a complete one.
    weights_tmp = weights.with_name(weights.name + f".{os.getpid()}.tmp")
    meta_tmp = meta.with_name(meta.name + f".{os.getpid()}.tmp")
    save_file({k: v.contiguous() for k, v in classifier.state_dict().items()}, str(weights_tmp))
    meta_tmp.write_text(json.dumps(info, indent=2), encoding="utf-8")
    weights_tmp.replace(weights)
    meta_tmp.replace(meta)
    return classifier, info


# ----- metrics -------------------------------------------------------------------------------


def frechet_distance(feats_a: Any, feats_b: Any) -> float:
    """Frechet distance between Gaussians fitted to two feature sets ``[N, d]`` (Dowson &
    Landau 1982; the FID of Heusel et al. 2017):

    ``||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))``.

    ``tr((S_a S_b)^(1/2))`` is computed as ``tr((S_a^(1/2) S_b S_a^(1/2))^(1/2))``, the same
    number (the matrices are similar), because the second is symmetric positive
    semidefinite: both roots come from symmetric eigendecompositions, real by construction,
    with round-off negative eigenvalues clipped to zero. ``scipy.linalg.sqrtm`` of the
    non-symmetric product ``S_a S_b`` (pytorch-fid's route) can instead return complex or
    non-finite roots when a covariance is singular (fewer samples than features, or dead
    features), which is then patched by adding ``eps I``. float64 throughout.
    """
    a = np.asarray(torch.as_tensor(feats_a).detach().cpu(), dtype=np.float64)
    b = np.asarray(torch.as_tensor(feats_b).detach().cpu(), dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ConfigError(f"features must be [N, d] with one d, got {a.shape} and {b.shape}")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ConfigError(f"need at least 2 samples per set, got {a.shape[0]} and {b.shape[0]}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    cov_a, cov_b = np.atleast_2d(cov_a), np.atleast_2d(cov_b)
    root_a = _psd_sqrt(cov_a)
    middle = root_a @ cov_b @ root_a
    tr_covmean = float(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum())
    diff = mu_a - mu_b
    value = float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * tr_covmean)
    return max(value, 0.0)  # round-off can leave -1e-12 for identical sets


def _psd_sqrt(cov: np.ndarray) -> np.ndarray:
    """Principal square root of a symmetric PSD matrix through its eigendecomposition:
    real and symmetric by construction, round-off negative eigenvalues clipped to zero."""
    eigenvalues, eigenvectors = scipy.linalg.eigh((cov + cov.T) / 2)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ eigenvectors.T


def digits_fd(
    samples: torch.Tensor, reference: torch.Tensor, classifier: DigitsClassifier
) -> float:
    """Frechet distance between ``samples`` and ``reference`` digits in the classifier's
    feature space (the digits analogue of FID)."""
    return frechet_distance(
        _batched(classifier, samples, "features"), _batched(classifier, reference, "features")
    )


def class_distribution(samples: torch.Tensor, classifier: DigitsClassifier) -> list[float]:
    """Fraction of ``samples`` the classifier assigns to each class, a list of 10 numbers."""
    counts = torch.bincount(predict(classifier, samples), minlength=NUM_CLASSES)
    return (counts.to(torch.float64) / counts.sum()).tolist()


def class_accuracy(
    samples: torch.Tensor, requested_labels: torch.Tensor, classifier: DigitsClassifier
) -> dict[str, Any]:
    """How often the classifier recognises the class each sample was generated for.

    Returns:
        ``per_class``: ``{"0": accuracy, ...}`` for every requested class; ``mean``: the mean
        of those (each class weighted equally); ``overall``: the fraction of all samples.
    """
    requested = torch.as_tensor(requested_labels).to(torch.int64).flatten()
    if requested.shape[0] != _as_images(samples).shape[0]:
        raise ConfigError(
            f"requested_labels must have one label per sample ({samples.shape[0]}), "
            f"got {requested.shape[0]}"
        )
    if requested.numel() and (requested.min() < 0 or requested.max() >= NUM_CLASSES):
        raise ConfigError(f"requested_labels must lie in 0..{NUM_CLASSES - 1}")
    correct = (predict(classifier, samples) == requested).to(torch.float64)
    per_class = {
        str(int(c)): float(correct[requested == c].mean()) for c in torch.unique(requested)
    }
    return {
        "per_class": per_class,
        "mean": float(np.mean(list(per_class.values()))),
        "overall": float(correct.mean()),
    }
