"""Sweeps at scale: dense-baseline cache, resume, failures among jobs, and parallel workers."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from harness.cache import META_FILE, WEIGHTS_FILE, DenseCache

ROOT = Path(__file__).resolve().parents[1]
TINY = ["dataset=digits", "train.epochs=1", "train.batch_size=64"]


def run_cli(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    env["PYTHONUNBUFFERED"] = "1"
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def job_runs(store: Path) -> list:
    client = MlflowClient(f"sqlite:///{store}")
    runs = []
    for experiment in client.search_experiments():
        runs += client.search_runs([experiment.experiment_id], filter_string="tags.`harness.kind` = 'job'")
    return runs


def tiny_model(seed: int = 0):
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(4,))
    return keras.Model(inputs, keras.layers.Dense(3, name="dense")(inputs))


# A job that takes one second to "train" a dense model, so a second job asks while it holds the entry.
RACER = textwrap.dedent("""
    import json, sys, time
    import keras, numpy as np
    from harness.cache import DenseCache

    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=(4,))
    model = keras.Model(inputs, keras.layers.Dense(3)(inputs))

    def train():
        time.sleep(1.0)
        model.set_weights([np.full((4, 3), 0.5, np.float32), np.arange(3, dtype=np.float32)])
        return [{"epoch": 0, "train_loss": 1.0}]

    baseline = DenseCache(sys.argv[1]).load_or_train("key", model, train, run_id=sys.argv[2])
    print(json.dumps({"reused": baseline.reused, "trained_by": baseline.trained_by_run,
                      "weights": [w.tolist() for w in model.get_weights()]}))
""")


def test_cache_race_trains_once(tmp_path):
    script = tmp_path / "racer.py"
    script.write_text(RACER)
    racers = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "cache"), f"run{index}"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for index in range(2)]
    results = []
    for racer in racers:
        out, err = racer.communicate(timeout=120)
        assert racer.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))

    assert sorted(result["reused"] for result in results) == [False, True]
    trainer = next(result for result in results if not result["reused"])
    reuser = next(result for result in results if result["reused"])
    assert reuser["trained_by"] == trainer["trained_by"]
    assert reuser["weights"] == trainer["weights"]
    entries = [path.name for path in (tmp_path / "cache").iterdir() if path.is_dir()]
    assert entries == ["key"]


def _train_into(model, value: float, calls: list):
    def train():
        calls.append(value)
        model.set_weights([np.full((4, 3), value, np.float32), np.zeros(3, np.float32)])
        return [{"epoch": 0, "train_loss": value}]
    return train


def test_cache_reuse_loads_weights(tmp_path):
    cache, calls = DenseCache(tmp_path), []
    first = tiny_model()
    cache.load_or_train("k", first, _train_into(first, 0.25, calls), run_id="a")
    second = tiny_model(seed=1)
    baseline = cache.load_or_train("k", second, _train_into(second, 0.75, calls), run_id="b")

    assert calls == [0.25]
    assert baseline.reused
    assert baseline.trained_by_run == "a"
    assert baseline.history == [{"epoch": 0, "train_loss": 0.25}]
    np.testing.assert_array_equal(second.get_weights()[0], np.full((4, 3), 0.25, np.float32))


@pytest.mark.parametrize("damage", ["flip_bytes", "truncate", "missing_meta"])
def test_cache_damaged_entry_rebuilt(tmp_path, caplog, damage):
    cache, calls = DenseCache(tmp_path), []
    model = tiny_model()
    cache.load_or_train("k", model, _train_into(model, 0.25, calls), run_id="a")
    weights = tmp_path / "k" / WEIGHTS_FILE
    if damage == "flip_bytes":
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:40])
    else:
        (tmp_path / "k" / META_FILE).unlink()

    with caplog.at_level(logging.WARNING, logger="harness.cache"):
        baseline = cache.load_or_train("k", model, _train_into(model, 0.5, calls), run_id="b")

    assert calls == [0.25, 0.5]
    assert not baseline.reused
    assert "damaged" in caplog.text
    assert cache.read("k") is not None
    assert cache.read("k")["run_id"] == "b"


@pytest.mark.slow
def test_static_sweep_trains_dense_once_and_resumes(tmp_path):
    first = run_cli(["-m", "prune=static", "threshold=0.005,0.05", *TINY], tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    runs = job_runs(tmp_path / "outputs" / "mlflow.db")
    reused = sorted(run.data.tags["baseline_reused"] for run in runs)
    assert reused == ["false", "true"]
    trainer = next(run for run in runs if run.data.tags["baseline_reused"] == "false")
    assert {run.data.tags["baseline_run_id"] for run in runs} == {trainer.info.run_id}
    accuracies = {run.data.params["threshold"]: run.data.metrics["dense_test_accuracy"] for run in runs}
    assert accuracies["0.005"] == accuracies["0.05"]

    again = run_cli(["-m", "prune=static", "threshold=0.005,0.05,0.01", *TINY], tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("skipped: finished as run") == 2
    for run in runs:
        assert f"skipped: finished as run {run.info.run_id}" in again.stdout
    after = job_runs(tmp_path / "outputs" / "mlflow.db")
    assert len(after) == 3
    new = [run for run in after if run.info.run_id not in {r.info.run_id for r in runs}]
    assert [run.data.params["threshold"] for run in new] == ["0.01"]
    report = Path(next(line for line in again.stdout.splitlines() if line.startswith("Report: "))[8:])
    reported = pd.read_csv(report.parent / "runs.csv")
    assert sorted(reported["run_id"]) == sorted(run.info.run_id for run in after)
    report.unlink()
    rebuilt = subprocess.run([sys.executable, "-m", "harness.report", "--sweep-id", report.parent.name],
                             cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert report.is_file()
    rebuilt_runs = pd.read_csv(report.parent / "runs.csv")
    assert sorted(rebuilt_runs["run_id"]) == sorted(run.info.run_id for run in after)

    forced = run_cli(["prune=static", "threshold=0.005", "resume=false", *TINY], tmp_path)
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert len(job_runs(tmp_path / "outputs" / "mlflow.db")) == 4


@pytest.mark.slow
def test_diverging_job_fails_alone(tmp_path):
    result = run_cli(["-m", "prune=dynamic", "train.optimizer=sgd", "train.learning_rate=0.01,1e9", *TINY], tmp_path)
    assert result.returncode != 0
    summary = result.stdout.split("Sweep summary")[-1]
    failure_lines = [line for line in summary.splitlines() if "TrainingDiverged" in line]
    assert len(failure_lines) == 1
    assert "train.learning_rate=1000000000.0" in failure_lines[0]
    runs = {run.data.params["train.learning_rate"]: run for run in job_runs(tmp_path / "outputs" / "mlflow.db")}
    assert runs["0.01"].info.status == "FINISHED"
    assert runs["1000000000.0"].info.status == "FAILED"
    assert runs["1000000000.0"].data.tags["diverged"] == "true"
    assert "TrainingDiverged" in runs["1000000000.0"].data.tags["error"]
    assert runs["1000000000.0"].info.run_id in summary


@pytest.mark.slow
def test_joblib_sweep_fresh_store(tmp_path):
    thresholds = "0.001,0.005,0.01,0.02,0.05,0.1"
    result = run_cli(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"threshold={thresholds}", *TINY],
                     tmp_path, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "database is locked" not in output
    client = MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    experiments = client.search_experiments()
    assert [experiment.name for experiment in experiments if experiment.name != "Default"] == ["pruning"]
    runs = job_runs(tmp_path / "outputs" / "mlflow.db")
    assert sorted(float(run.data.params["threshold"]) for run in runs) == [0.001, 0.005, 0.01, 0.02, 0.05, 0.1]
    assert {run.info.status for run in runs} == {"FINISHED"}
    assert len({run.data.tags["sweep_id"] for run in runs}) == 1
    assert sum(run.data.tags["baseline_reused"] == "false" for run in runs) == 1
