"""Shared helpers: tiny composed configs, MLflow stores in tmp_path, CLI runs and kernel counts."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import subprocess  # noqa: E402
import sys  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Optional, Sequence  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from harness.config import register_configs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"

# The smallest real run: scikit-learn's 8x8 digits, two epochs of 32-example batches.
TINY_OVERRIDES = ("dataset=digits", "train.epochs=2", "train.batch_size=32")

# Final metrics that harness.experiment.measure() logs for every job.
FINAL_METRICS = ("test_accuracy", "test_loss", "sparsity", "nonzero_params", "prunable_params", "total_params",
                 "compression_ratio", "model_bytes", "model_gzip_bytes", "train_seconds")
EPOCH_METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "sparsity")

# Upper bound for one CLI run of a tiny sweep. Importing TensorFlow alone takes about 6 s
# (an estimate, measured on 2 CPU cores).
CLI_TIMEOUT_S = 300


def compose_config(overrides: Sequence[str]) -> DictConfig:
    """Compose conf/config.yaml with Hydra's compose API. A later override of a key wins."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def sqlite_uri(path: Path) -> str:
    return f"sqlite:///{path}"


@pytest.fixture
def make_config(tmp_path):
    """Return a function that composes a tiny config whose store and dense cache live in tmp_path."""

    def make(*overrides: str) -> DictConfig:
        store = [f"tracking.uri={sqlite_uri(tmp_path / 'mlflow.db')}", f"cache.dir={tmp_path / 'cache'}"]
        return compose_config([*TINY_OVERRIDES, *store, *overrides])

    return make


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run the test from tmp_path, where run_job writes artifacts outside a Hydra app."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


@dataclass
class Store:
    """An MLflow SQLite store at a file that the test owns."""

    path: Path

    @property
    def uri(self) -> str:
        return sqlite_uri(self.path)

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.uri)

    def runs(self, kind: Optional[str] = "job") -> list:
        """Return every run of every experiment, or only those tagged harness.kind=`kind`.

        An absent file has no runs and is not created, so a test can also check that it stays absent.
        """
        from mlflow.entities import ViewType

        if not self.path.exists():
            return []
        client = self.client()
        experiment_ids = [experiment.experiment_id for experiment in client.search_experiments(view_type=ViewType.ALL)]
        if not experiment_ids:
            return []
        runs = client.search_runs(experiment_ids, run_view_type=ViewType.ALL, max_results=1000)
        if kind is None:
            return list(runs)
        return [run for run in runs if run.data.tags.get("harness.kind") == kind]

    def metric_steps(self, run_id: str, key: str) -> list[int]:
        return sorted(metric.step for metric in self.client().get_metric_history(run_id, key))

    def download(self, run_id: str, artifact: str, destination: Path) -> Path:
        destination.mkdir(parents=True, exist_ok=True)
        return Path(self.client().download_artifacts(run_id, artifact, str(destination)))


@pytest.fixture
def store(tmp_path) -> Store:
    """The store that make_config points tracking.uri at."""
    return Store(tmp_path / "mlflow.db")


def cli_env() -> dict[str, str]:
    """Return the environment of a CLI run: quiet TensorFlow and no MLflow URI inherited from the caller."""
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_cli(args: Sequence[str], cwd: Path, timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run `python -m harness ARGS` in `cwd` and return the finished process with its output as text."""
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, env=cli_env(), capture_output=True,
                          text=True, timeout=timeout, check=False)


def cli_output(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


def kernel_arrays(model) -> dict[str, np.ndarray]:
    """Return the kernel of every Conv and Dense layer of a Keras model, by layer name."""
    import keras

    kinds = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D, keras.layers.Dense)
    return {layer.name: np.asarray(layer.kernel.numpy()) for layer in model.layers if isinstance(layer, kinds)}


def zero_count(arrays: dict[str, np.ndarray], skip: Sequence[str] = ()) -> tuple[int, int]:
    """Return (exact zeros, weights) over the arrays whose names are not in `skip`."""
    counted = [weights for name, weights in arrays.items() if name not in skip]
    zeros = sum(int(np.count_nonzero(weights == 0)) for weights in counted)
    return zeros, sum(weights.size for weights in counted)


def load_saved_model(path: Path):
    """Load a .keras file the way a user would: plain Keras, no custom objects."""
    import keras

    return keras.saving.load_model(path)


def saved_model_accuracy(model, data) -> float:
    """Return a loaded model's accuracy on the test split, compiling it first if it was saved uncompiled."""
    if not model.compiled:
        model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    _, accuracy = model.evaluate(data.x_test, data.y_test, batch_size=256, verbose=0)
    return float(accuracy)
