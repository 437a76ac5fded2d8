"""Pruning invariants: static and dynamic masks, the mask schedule, skipped layers and zero counts."""

from __future__ import annotations

import gzip

import keras
import numpy as np
import pytest

from conftest import kernel_arrays, load_saved_model, saved_model_accuracy, zero_count
from harness.data import load_dataset
from harness.experiment import prepare, run_experiment, train_dense
from harness.measure import file_sizes, sparsity_stats
from harness.models import build_model
from harness.pruning import attach_masks, detach_masks, finalize_masks, prunable_kernels, prune_once
from harness.training import compile_model, seed_everything


class StepRecorder(keras.callbacks.Callback):
    """Callback that copies every kernel and mask after each optimizer step, with the step's 0-based number."""

    def __init__(self, kernels, masks, optimizer):
        super().__init__()
        self.kernels = kernels
        self.masks = masks
        self.optimizer = optimizer
        self.steps: list[int] = []
        self.weights: list[dict[str, np.ndarray]] = []
        self.mask_values: list[dict[str, np.ndarray]] = []

    def on_train_batch_end(self, batch, logs=None):
        # The optimizer has already counted the step it just applied.
        self.steps.append(int(self.optimizer.iterations.numpy()) - 1)
        self.weights.append({kernel.layer: np.array(kernel.variable.numpy()) for kernel in self.kernels})
        self.mask_values.append({name: np.array(mask.numpy()) for name, mask in self.masks.items()})


def train_with_masks(make_config, *overrides, threshold, begin_step, frequency, epochs=2):
    """Train lenet_300_100 on 320 digits with masks attached and return the recorder and the kernels."""
    cfg = make_config("dataset.max_train_samples=320", *overrides)
    data = load_dataset(cfg.dataset)
    seed_everything(0)
    model = build_model("lenet_300_100", data.input_shape, data.num_classes)
    optimizer = compile_model(model, cfg.train)
    kernels = prunable_kernels(model)
    masks = attach_masks(kernels, threshold, iterations=optimizer.iterations, begin_step=begin_step,
                         frequency=frequency)
    recorder = StepRecorder(kernels, masks, optimizer)
    model.fit(data.x_train, data.y_train, batch_size=cfg.train.batch_size, epochs=epochs, shuffle=False, verbose=0,
              callbacks=[recorder])
    return recorder, kernels


def test_static_zeroes_exactly_below_threshold(make_config):
    job = prepare(make_config("model=lenet_300_100", "train.epochs=1"))
    train_dense(job)
    threshold = 0.02
    before = {variable.path: np.array(variable.numpy()) for variable in job.model.weights}
    kernel_paths = {kernel.layer: kernel.variable.path for kernel in job.kernels}

    masks = prune_once(job.kernels, threshold)

    after = {variable.path: np.array(variable.numpy()) for variable in job.model.weights}
    for layer, path in kernel_paths.items():
        below = np.abs(before[path]) < threshold
        assert below.any(), layer
        assert np.array_equal(after[path] == 0, below | (before[path] == 0)), layer
        assert np.array_equal(after[path][~below], before[path][~below]), layer
        assert np.array_equal(masks[layer] == 0, below), layer
        assert np.abs(after[path][~below]).min() >= threshold > np.abs(before[path][below]).max(), layer
    for path in set(before) - set(kernel_paths.values()):
        assert np.array_equal(after[path], before[path]), path


def test_fine_tune_mask_fixed(make_config):
    job = prepare(make_config("model=lenet_300_100", "train.epochs=1"))
    train_dense(job)
    masks = prune_once(job.kernels, 0.02)
    pruned = {kernel.layer: np.array(kernel.variable.numpy()) == 0 for kernel in job.kernels}

    compile_model(job.model, job.cfg.train)
    attach_masks(job.kernels, 0.02, initial=masks)
    job.model.fit(job.data.x_train, job.data.y_train, batch_size=32, epochs=1, verbose=0)
    detach_masks(job.kernels)

    for kernel in job.kernels:
        weights = np.array(kernel.variable.numpy())
        assert np.array_equal(weights == 0, pruned[kernel.layer]), kernel.layer
        assert kernel.variable.constraint is None, kernel.layer


@pytest.mark.parametrize("optimizer", [
    pytest.param(("train.optimizer=adam",), id="adam"),
    pytest.param(("train.optimizer=sgd", "train.momentum=0.9", "train.weight_decay=0.01",
                  "train.learning_rate=0.05"), id="sgd_momentum_weight_decay"),
])
def test_dynamic_masked_zero_every_step(make_config, optimizer):
    recorder, _ = train_with_masks(make_config, *optimizer, threshold=0.02, begin_step=0, frequency=1)

    assert recorder.steps == list(range(len(recorder.steps)))
    for step, (weights, masks) in enumerate(zip(recorder.weights, recorder.mask_values)):
        for layer, mask in masks.items():
            assert np.all(weights[layer][mask == 0] == 0), f"step {step} layer {layer}"
    final_masks = recorder.mask_values[-1]
    assert all((mask == 0).any() for mask in final_masks.values())


@pytest.mark.parametrize("optimizer", [
    pytest.param(("train.optimizer=adam",), id="adam"),
    pytest.param(("train.optimizer=sgd", "train.momentum=0.9", "train.weight_decay=0.01",
                  "train.learning_rate=0.05"), id="sgd_momentum_weight_decay"),
])
def test_dynamic_masks_only_grow(make_config, optimizer):
    recorder, _ = train_with_masks(make_config, *optimizer, threshold=0.02, begin_step=0, frequency=1)

    grew = 0
    for step in range(1, len(recorder.mask_values)):
        for layer, mask in recorder.mask_values[step].items():
            previous = recorder.mask_values[step - 1][layer]
            assert np.all(mask[previous == 0] == 0), f"step {step} layer {layer}"
            grew += int(np.count_nonzero(mask == 0) > np.count_nonzero(previous == 0))
    assert grew > 0


def test_dynamic_updates_follow_schedule(make_config):
    threshold, begin_step, frequency = 0.02, 3, 4
    recorder, _ = train_with_masks(make_config, threshold=threshold, begin_step=begin_step, frequency=frequency)
    steps = recorder.steps
    due = {step for step in steps if step >= begin_step and (step - begin_step) % frequency == 0}

    changed = set()
    for index, step in enumerate(steps):
        previous = None if index == 0 else recorder.mask_values[index - 1]
        for layer, mask in recorder.mask_values[index].items():
            before = np.ones_like(mask) if previous is None else previous[layer]
            if not np.array_equal(mask, before):
                changed.add(step)

    assert len(steps) == 20
    assert all(np.all(mask == 1) for index in range(begin_step) for mask in recorder.mask_values[index].values())
    assert changed <= due
    assert begin_step in changed
    for index, step in enumerate(steps):
        if step not in due:
            continue
        for layer, weights in recorder.weights[index].items():
            kept = weights[weights != 0]
            assert np.abs(kept).min() >= threshold, f"step {step} layer {layer}"


def test_finalize_prunes_below_threshold():
    inputs = keras.Input(shape=(3,))
    model = keras.Model(inputs, keras.layers.Dense(2, name="dense")(inputs))
    kernels = prunable_kernels(model)
    kernel = np.array([[0.5, 0.001], [-0.004, 0.2], [0.0, -0.3]], dtype=np.float32)
    kernels[0].variable.assign(kernel)
    masks = attach_masks(kernels, 0.005, iterations=keras.Variable(7, dtype="int64"), begin_step=0, frequency=100)

    finalize_masks(kernels, 0.005)

    expected = np.where(np.abs(kernel) >= 0.005, kernel, 0.0)
    assert np.array_equal(kernels[0].variable.numpy(), expected)
    assert np.array_equal(masks["dense"].numpy(), (np.abs(kernel) >= 0.005).astype(np.float32))


def test_dynamic_final_mask_between_updates(make_config, tmp_path):
    # 1,000 examples in batches of 40 make 25 steps per epoch, so 3 epochs end at step 74, between
    # the mask updates at steps 0 and 100.
    threshold = 0.05
    cfg = make_config("prune=dynamic", f"threshold={threshold}", "prune.frequency=100",
                      "dataset.max_train_samples=1000", "train.batch_size=40", "train.epochs=3")
    outcome = run_experiment(cfg, tmp_path / "out")

    saved = kernel_arrays(load_saved_model(outcome.model_path))
    zeros, total = zero_count(saved)
    for layer, weights in saved.items():
        assert not np.any((weights != 0) & (np.abs(weights) < threshold)), layer
    assert outcome.metrics["nonzero_params"] == total - zeros
    assert outcome.metrics["sparsity"] == pytest.approx(zeros / total, rel=1e-12)
    assert outcome.history[0]["sparsity"] == outcome.history[1]["sparsity"]
    assert outcome.history[2]["sparsity"] > outcome.history[1]["sparsity"]
    assert outcome.history[2]["sparsity"] == pytest.approx(outcome.metrics["sparsity"], rel=1e-12)


def test_dynamic_l1_counts_exact_zeros(make_config, tmp_path):
    threshold = 0.005
    cfg = make_config("model=lenet_300_100", "prune=dynamic", "prune.l1=0.001", f"threshold={threshold}")
    outcome = run_experiment(cfg, tmp_path / "l1")
    plain = run_experiment(make_config("model=lenet_300_100", "prune=dynamic", f"threshold={threshold}"),
                           tmp_path / "plain")

    data = load_dataset(cfg.dataset)
    model = load_saved_model(outcome.model_path)
    saved = kernel_arrays(model)
    zeros, total = zero_count(saved)
    small = sum(int(np.count_nonzero((weights != 0) & (np.abs(weights) < 2 * threshold)))
                for weights in saved.values())
    accuracy = saved_model_accuracy(model, data)

    for layer, weights in saved.items():
        assert not np.any((weights != 0) & (np.abs(weights) < threshold)), layer
        assert model.get_layer(layer).kernel_regularizer is None, layer
    assert small > 0
    assert outcome.metrics["nonzero_params"] == total - zeros
    assert outcome.metrics["sparsity"] == pytest.approx(zeros / total, rel=1e-12)
    assert accuracy == pytest.approx(outcome.metrics["test_accuracy"], abs=1e-6)
    # The L1 penalty is part of the training loss and pulls weights towards zero.
    assert outcome.history[0]["train_loss"] > plain.history[0]["train_loss"] + 0.1
    assert outcome.metrics["sparsity"] > plain.metrics["sparsity"]


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_skip_layers_stays_dense(make_config, tmp_path, mode):
    cfg = make_config("model=lenet_300_100", f"prune={mode}", "threshold=0.05", "prune.skip_layers=[dense1]")
    outcome = run_experiment(cfg, tmp_path / mode)

    saved = kernel_arrays(load_saved_model(outcome.model_path))
    zeros, total = zero_count(saved, skip=["dense1"])
    rows = outcome.layers.set_index("layer")
    assert np.count_nonzero(saved["dense1"] == 0) == 0
    assert all(np.count_nonzero(saved[name] == 0) > 0 for name in saved if name != "dense1")
    assert bool(rows.loc["dense1", "skipped"]) is True
    assert outcome.metrics["prunable_params"] == total
    assert outcome.metrics["nonzero_params"] == total - zeros
    assert outcome.metrics["sparsity"] == pytest.approx(zeros / total, rel=1e-12)


def test_skip_layers_unknown_name(make_config):
    from harness.config import ConfigError

    with pytest.raises(ConfigError) as raised:
        prepare(make_config("prune.skip_layers=[dense9]"))

    message = str(raised.value)
    assert "prune.skip_layers" in message
    assert "dense9" in message
    for name in ("conv1", "conv2", "conv3", "dense1", "classifier"):
        assert name in message


def hand_made_model():
    """Return a 4 -> 3 -> 2 -> 2 Dense model whose layers are named a, b and c, with zero biases."""
    inputs = keras.Input(shape=(4,))
    x = keras.layers.Dense(3, name="a")(inputs)
    x = keras.layers.Dense(2, name="b")(x)
    return keras.Model(inputs, keras.layers.Dense(2, name="c")(x))


def test_sparsity_stats_hand_made():
    model = hand_made_model()
    a = np.arange(1, 13, dtype=np.float32).reshape(4, 3)
    a.flat[[0, 4, 5, 7, 11]] = 0.0
    model.get_layer("a").kernel.assign(a)
    model.get_layer("b").kernel.assign(np.zeros((3, 2), np.float32))
    model.get_layer("c").kernel.assign(np.array([[1.0, 0.0], [2.0, 3.0]], np.float32))
    kernels = prunable_kernels(model, ["c"])

    stats = sparsity_stats(model, kernels)

    prunable = 12 + 6
    nonzero = (12 - 5) + 0
    assert stats.prunable_params == prunable
    assert stats.nonzero_params == nonzero
    assert stats.total_params == (4 * 3 + 3) + (3 * 2 + 2) + (2 * 2 + 2)
    assert stats.sparsity == pytest.approx(1 - nonzero / prunable)
    assert stats.compression_ratio == pytest.approx(prunable / nonzero)
    assert stats.dead_layers == ("b",)
    rows = stats.layers.set_index("layer")
    assert list(rows.index) == ["a", "b", "c"]
    assert rows["weights"].tolist() == [12, 6, 4]
    assert rows["zeros"].tolist() == [5, 6, 1]
    assert rows["sparsity"].tolist() == pytest.approx([5 / 12, 1.0, 0.25])
    assert rows["skipped"].tolist() == [False, False, True]
    assert set(rows["kind"]) == {"Dense"}


def test_sparsity_stats_all_zero():
    model = hand_made_model()
    for name in ("a", "b", "c"):
        layer = model.get_layer(name)
        layer.kernel.assign(np.zeros(layer.kernel.shape, np.float32))

    stats = sparsity_stats(model, prunable_kernels(model))

    assert stats.sparsity == 1.0
    assert stats.compression_ratio == float("inf")
    assert stats.dead_layers == ("a", "b", "c")


def test_sparsity_stats_all_skipped():
    model = hand_made_model()

    stats = sparsity_stats(model, prunable_kernels(model, ["a", "b", "c"]))

    assert stats.prunable_params == 0
    assert stats.sparsity == 0.0
    assert stats.dead_layers == ()


def test_file_sizes_real_bytes(tmp_path):
    path = tmp_path / "blob.bin"
    data = bytes(range(256)) * 40 + bytes(5000)
    path.write_bytes(data)

    size, gzip_size = file_sizes(path)

    assert size == len(data)
    assert gzip_size == len(gzip.compress(data, compresslevel=9, mtime=0))
    assert gzip_size < size
