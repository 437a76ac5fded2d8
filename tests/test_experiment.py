"""Experiments in-process: models, dead layers, MLflow round trips, run lifecycle and reproducibility."""

from __future__ import annotations

import logging
import math
import re

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from conftest import (EPOCH_METRICS, FINAL_METRICS, kernel_arrays, load_saved_model, saved_model_accuracy,
                      zero_count)
from harness.config import ConfigError
from harness.data import load_dataset
from harness.experiment import prepare, run_experiment
from harness.job import run_job
from harness.models import build_model
from harness.training import TrainingDiverged

# Runs whose model does not matter to the test use the smallest one on 300 digits.
LIGHT = ("model=lenet_300_100", "dataset.max_train_samples=300")
# At this learning rate the cnn's training loss becomes infinite within three steps, but lenet_300_100's may
# stay finite.
DIVERGING = ("model=cnn", "dataset.max_train_samples=300", "train.learning_rate=1e6")


def layer_summary(model) -> list[tuple]:
    """Return (class name, filters or units, kernel size) for every Conv and Dense layer."""
    rows = []
    for layer in model.layers:
        config = layer.get_config()
        if "filters" in config:
            rows.append((type(layer).__name__, config["filters"], tuple(config["kernel_size"])))
        elif "units" in config:
            rows.append((type(layer).__name__, config["units"], None))
    return rows


@pytest.mark.parametrize("name,input_shape,expected", [
    ("cnn", (8, 8, 1), [("Conv2D", 32, (3, 3)), ("Conv2D", 64, (3, 3)), ("Conv2D", 128, (3, 3)),
                        ("Dense", 64, None), ("Dense", 10, None)]),
    ("cnn", (28, 28, 1), [("Conv2D", 32, (3, 3)), ("Conv2D", 64, (3, 3)), ("Conv2D", 128, (3, 3)),
                          ("Dense", 64, None), ("Dense", 10, None)]),
    ("lenet_300_100", (28, 28, 1), [("Dense", 300, None), ("Dense", 100, None), ("Dense", 10, None)]),
    ("lenet5", (28, 28, 1), [("Conv2D", 6, (5, 5)), ("Conv2D", 16, (5, 5)), ("Dense", 120, None),
                             ("Dense", 84, None), ("Dense", 10, None)]),
])
def test_model_layer_structure(name, input_shape, expected):
    model = build_model(name, input_shape, 10)

    assert layer_summary(model) == expected
    assert model.layers[-1].name == "classifier"
    assert model.layers[-1].get_config()["activation"] == "softmax"
    assert tuple(model.output.shape) == (None, 10)


def test_cnn_params_on_digits():
    model = build_model("cnn", (8, 8, 1), 10)

    # Three 2x2 poolings take 8x8 to 1x1, so Flatten passes 128 features to dense1.
    convolutions = (3 * 3 * 1 * 32 + 32) + (3 * 3 * 32 * 64 + 64) + (3 * 3 * 64 * 128 + 128)
    expected = convolutions + (128 * 64 + 64) + (64 * 10 + 10)
    assert model.count_params() == expected


def test_unknown_model_rejected():
    with pytest.raises(ConfigError) as raised:
        build_model("vgg", (28, 28, 1), 10)

    assert "model.name" in str(raised.value)
    assert "'vgg'" in str(raised.value)


def test_lenet5_digits_rejected(make_config, workdir, store, caplog):
    cfg = make_config("model=lenet5", "dataset=digits")

    with pytest.raises(ConfigError) as raised:
        prepare(cfg)
    with caplog.at_level(logging.INFO), pytest.raises(SystemExit):
        run_job(cfg)

    message = str(raised.value)
    assert "model=lenet5" in message
    assert "dataset=digits" in message
    assert "8x8" in message
    assert "10x10" in message
    assert "model=lenet5" in caplog.text
    assert "training " not in caplog.text
    assert "epoch 1/" not in caplog.text
    assert not store.path.exists()


def test_cnn_trains_on_digits(make_config, tmp_path):
    outcome = run_experiment(make_config("model=cnn", "prune=none"), tmp_path / "out")

    model = load_saved_model(outcome.model_path)
    assert tuple(model.input_shape) == (None, 8, 8, 1)
    assert outcome.metrics["test_accuracy"] > 0.3
    assert outcome.metrics["sparsity"] == 0.0
    assert outcome.history[-1]["train_loss"] < outcome.history[0]["train_loss"]


def test_dead_layer_warned_and_tagged(make_config, workdir, store, caplog):
    cfg = make_config("model=lenet_300_100", "prune=static", "threshold=1.0")

    with caplog.at_level(logging.WARNING, logger="harness"):
        record = run_job(cfg)

    run = store.client().get_run(record["run_id"])
    model_file = store.download(record["run_id"], "model/model.keras", workdir / "download")
    saved = kernel_arrays(load_saved_model(model_file))
    all_zero = {name for name, weights in saved.items() if not np.any(weights)}
    tagged = set(run.data.tags["dead_layers"].split(","))
    warnings = [entry.getMessage() for entry in caplog.records if entry.levelno == logging.WARNING]
    assert run.info.status == "FINISHED"
    assert math.isfinite(run.data.metrics["test_accuracy"])
    assert all_zero
    assert tagged == all_zero
    for name in all_zero:
        assert any(f"layer {name} " in message for message in warnings), name


def test_reload_matches_logged_metrics(make_config, workdir, store, capsys):
    cfg = make_config("model=lenet_300_100", "prune=dynamic", "threshold=0.02")

    record = run_job(cfg)

    run_id = record["run_id"]
    metrics = store.client().get_run(run_id).data.metrics
    model_file = store.download(run_id, "model/model.keras", workdir / "download")
    model = load_saved_model(model_file)
    data = load_dataset(cfg.dataset)
    accuracy = saved_model_accuracy(model, data)
    zeros, total = zero_count(kernel_arrays(model))
    assert accuracy == pytest.approx(metrics["test_accuracy"], abs=1e-6)
    assert zeros == metrics["prunable_params"] - metrics["nonzero_params"]
    assert total == metrics["prunable_params"]
    assert zeros / total == pytest.approx(metrics["sparsity"])
    assert model_file.stat().st_size == metrics["model_bytes"]

    output = capsys.readouterr().out
    assert re.search(rf"prune=dynamic threshold=0.02 sparsity={metrics['sparsity']:.4f} "
                     rf"test_accuracy={metrics['test_accuracy']:.4f} run_id={run_id}", output)
    assert f"mlflow ui --backend-store-uri {store.uri}" in output


def test_artifacts_round_trip(make_config, workdir, store):
    cfg = make_config(*LIGHT, "prune=static", "threshold=0.02", "train.epochs=2", "prune.fine_tune_epochs=1")

    record = run_job(cfg)

    run_id = record["run_id"]
    client = store.client()
    folder = workdir / "download"
    config = OmegaConf.load(store.download(run_id, "config.yaml", folder))
    layers = pd.read_csv(store.download(run_id, "layer_sparsity.csv", folder))
    history = pd.read_csv(store.download(run_id, "history.csv", folder))
    metrics = client.get_run(run_id).data.metrics
    logged_loss = [metric.value for metric in sorted(client.get_metric_history(run_id, "train_loss"),
                                                    key=lambda metric: metric.step)]
    assert OmegaConf.to_container(config) == OmegaConf.to_container(cfg, resolve=True)
    assert layers["layer"].tolist() == ["dense1", "dense2", "classifier"]
    assert int(layers["zeros"].sum()) == metrics["prunable_params"] - metrics["nonzero_params"]
    assert history["phase"].tolist() == ["train", "train", "fine_tune"]
    assert history["train_loss"].tolist() == pytest.approx(logged_loss)


@pytest.mark.parametrize("overrides,epochs", [
    pytest.param(("prune=dynamic", "train.epochs=3"), 3, id="dynamic_3_epochs"),
    pytest.param(("prune=static", "train.epochs=2", "prune.fine_tune_epochs=1"), 3, id="static_fine_tune"),
    pytest.param(("prune=none", "train.epochs=2"), 2, id="none_2_epochs"),
])
def test_epoch_metric_steps(make_config, workdir, store, overrides, epochs):
    record = run_job(make_config(*LIGHT, *overrides))

    run = store.client().get_run(record["run_id"])
    for key in EPOCH_METRICS:
        if key == "sparsity":
            continue
        assert store.metric_steps(run.info.run_id, key) == list(range(epochs)), key
    assert store.metric_steps(run.info.run_id, "sparsity") == list(range(epochs + 1))
    for key in FINAL_METRICS:
        assert key in run.data.metrics, key
    assert ("dense_test_accuracy" in run.data.metrics) == ("prune=static" in overrides)
    assert run.data.params["train.epochs"] == str(3 if "prune=dynamic" in overrides else 2)
    assert run.data.params["prune.mode"] == overrides[0].split("=")[1]


def test_diverged_run_failed(make_config, workdir, store):
    with pytest.raises(TrainingDiverged):
        run_job(make_config(*DIVERGING, "prune=dynamic"))

    failed = store.runs()
    assert len(failed) == 1
    assert failed[0].info.status == "FAILED"
    assert failed[0].data.tags["error"].startswith("TrainingDiverged: training loss became")
    assert failed[0].data.tags["diverged"] == "true"


def test_run_after_failure_fresh(make_config, workdir, store):
    with pytest.raises(TrainingDiverged):
        run_job(make_config(*DIVERGING, "prune=dynamic"))
    failed = store.runs()[0]
    client = store.client()
    failed_history = {key: len(client.get_metric_history(failed.info.run_id, key)) for key in EPOCH_METRICS}

    record = run_job(make_config(*LIGHT, "prune=dynamic"))

    runs = {run.info.run_id: run for run in store.runs()}
    after = client.get_run(failed.info.run_id)
    assert record["status"] == "FINISHED"
    assert record["run_id"] != failed.info.run_id
    assert runs[record["run_id"]].info.status == "FINISHED"
    assert after.info.status == "FAILED"
    assert after.data.metrics == failed.data.metrics
    for key, count in failed_history.items():
        assert len(client.get_metric_history(failed.info.run_id, key)) == count, key
    assert not [run for run in runs.values() if run.info.status == "RUNNING"]


def test_resume_skips_finished(make_config, workdir, store):
    first = run_job(make_config(*LIGHT, "prune=none"))
    second = run_job(make_config(*LIGHT, "prune=none"))

    assert second["status"] == "SKIPPED"
    assert second["run_id"] == first["run_id"]
    assert len(store.runs()) == 1


def test_same_seed_same_metrics(make_config, tmp_path):
    overrides = ("prune=dynamic", "threshold=0.02", "dataset.max_train_samples=500")

    first = run_experiment(make_config(*overrides), tmp_path / "first")
    second = run_experiment(make_config(*overrides), tmp_path / "second")
    reseeded = run_experiment(make_config(*overrides, "seed=1"), tmp_path / "reseeded")

    # The .keras file records its save time and the optimizer's generated name ("adam_3"), so its size
    # may differ by a few bytes between identical runs.
    varying = {"train_seconds", "model_bytes", "model_gzip_bytes"}
    same = {key: value for key, value in first.metrics.items() if key not in varying}
    assert {key: value for key, value in second.metrics.items() if key not in varying} == same
    assert second.history == first.history
    first_weights = kernel_arrays(load_saved_model(first.model_path))
    second_weights = kernel_arrays(load_saved_model(second.model_path))
    for name, weights in first_weights.items():
        assert np.array_equal(second_weights[name], weights), name
    assert reseeded.metrics["test_loss"] != first.metrics["test_loss"]


def stored_values(model_path) -> dict[str, int]:
    """Count the values that a .keras file stores for the model's weights and for its optimizer."""
    import io
    import zipfile

    import h5py

    counts = {"model": 0, "optimizer": 0}
    with zipfile.ZipFile(model_path) as archive:
        weights = h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r")

    def add(name, item):
        if isinstance(item, h5py.Dataset):
            counts["optimizer" if name.startswith("optimizer") else "model"] += item.size

    weights.visititems(add)
    return counts


def test_saved_model_weights_only(make_config, tmp_path):
    dense = run_experiment(make_config(*LIGHT, "prune=none"), tmp_path / "dense")
    pruned = run_experiment(make_config(*LIGHT, "prune=static", "threshold=1.0"), tmp_path / "pruned")

    counts = stored_values(pruned.model_path)
    assert pruned.metrics["sparsity"] == 1.0
    assert counts["model"] == pruned.metrics["total_params"]
    assert counts["optimizer"] < 100
    # Every kernel of the pruned model is zero, so only biases and the config remain to compress.
    assert pruned.metrics["model_gzip_bytes"] < 0.25 * dense.metrics["model_gzip_bytes"]


def test_reused_baseline_same_size(make_config, workdir, store):
    trained = run_job(make_config(*LIGHT, "prune=none", "resume=false"))
    reused = run_job(make_config(*LIGHT, "prune=none", "resume=false"))

    runs = {run.info.run_id: run for run in store.runs()}
    first = runs[trained["run_id"]]
    second = runs[reused["run_id"]]
    assert second.data.tags["baseline_reused"] == "true"
    assert second.data.metrics["test_accuracy"] == first.data.metrics["test_accuracy"]
    # The save time and the optimizer's generated name may change a few bytes, nothing more.
    assert abs(second.data.metrics["model_bytes"] - first.data.metrics["model_bytes"]) <= 64
    assert abs(second.data.metrics["model_gzip_bytes"] - first.data.metrics["model_gzip_bytes"]) <= 64
