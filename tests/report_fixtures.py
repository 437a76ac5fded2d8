"""Fill a real MLflow SQLite store with sweeps and job runs shaped like those the harness logs.

Each job run gets the harness's tags, params as strings, final metrics, per-epoch histories at steps
0..E-1 with the final sparsity at step E, and the artifacts layer_sparsity.csv, history.csv, config.yaml
and model/model.keras. Tests compute their expected values from the LoggedRun records returned here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Optional

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

LAYERS = (("conv2d", "Conv2D", 288), ("dense", "Dense", 5408), ("dense_1", "Dense", 1280))
EPOCHS = 3


@dataclass
class LoggedRun:
    """Record of one logged job run: its identity, final metrics and per-epoch histories."""

    run_id: str
    sweep_id: str
    prune: str
    threshold: float
    seed: int
    model: str
    dataset: str
    status: str
    metrics: dict[str, float]
    history: dict[str, list[float]] = field(default_factory=dict)
    has_layer_csv: bool = False


def synthetic_metrics(prune: str, threshold: float, seed: int) -> dict[str, float]:
    """Return final metrics that vary with mode, threshold and seed roughly as real runs do."""
    dense_accuracy = 0.975 - 0.004 * seed
    if prune == "none":
        sparsity = 0.0
    else:
        rate = 30.0 if prune == "static" else 45.0
        sparsity = min(1.0, 1.0 - math.exp(-rate * threshold) + 0.01 * seed)
    penalty = 0.25 if prune == "static" else 0.08
    accuracy = dense_accuracy - penalty * sparsity**2 + 0.003 * ((seed * 7) % 3)
    prunable = 6976
    nonzero = round(prunable * (1.0 - sparsity))
    metrics = {
        "test_accuracy": accuracy,
        "test_loss": 0.1 + (1.0 - accuracy),
        "sparsity": sparsity,
        "nonzero_params": float(nonzero),
        "prunable_params": float(prunable),
        "total_params": 7210.0,
        "compression_ratio": prunable / nonzero if nonzero else math.inf,
        "model_bytes": 120_000.0,
        "model_gzip_bytes": 30_000.0 + 80_000.0 * (1.0 - sparsity) + 37.0 * seed,
        "train_seconds": (12.0 if prune == "dynamic" else 8.0) + 0.5 * seed + 100.0 * threshold,
    }
    if prune == "static":
        metrics["dense_test_accuracy"] = dense_accuracy
    return metrics


class StoreWriter:
    """Create experiments, sweep parent runs and job runs in one tracking store."""

    def __init__(self, tracking_uri: str, root: Path) -> None:
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        self.root = root
        self.clock_ms = 1_700_000_000_000
        self.runs: list[LoggedRun] = []

    def _tick(self) -> int:
        self.clock_ms += 1000
        return self.clock_ms

    def experiment(self, name: str) -> str:
        location = (self.root / "artifacts" / name).as_uri()
        return self.client.create_experiment(name, artifact_location=location)

    def sweep(self, experiment_id: str, sweep_id: str) -> str:
        run = self.client.create_run(
            experiment_id, start_time=self._tick(), tags={"harness.kind": "sweep", "sweep_id": sweep_id},
            run_name=f"sweep-{sweep_id}",
        )
        self.client.set_terminated(run.info.run_id, "FINISHED", end_time=self._tick())
        return run.info.run_id

    def job(
        self,
        experiment_id: str,
        parent_id: str,
        sweep_id: str,
        *,
        prune: str,
        threshold: float,
        seed: int = 0,
        model: str = "cnn",
        dataset: str = "mnist5k",
        metrics: Optional[dict[str, float]] = None,
        status: str = "FINISHED",
        with_history: bool = True,
        with_layer_csv: bool = True,
        extra_tags: Optional[dict[str, str]] = None,
        extra_params: Optional[dict[str, str]] = None,
        threshold_text: Optional[str] = None,
    ) -> LoggedRun:
        """Log one job run; metrics default to synthetic_metrics, and an empty dict logs none."""
        if metrics is None:
            metrics = synthetic_metrics(prune, threshold, seed)
        tags = {
            "harness.kind": "job",
            "sweep_id": sweep_id,
            "prune": prune,
            "model": model,
            "dataset": dataset,
            "mlflow.parentRunId": parent_id,
            "mlflow.source.git.commit": "0123456789abcdef0123456789abcdef01234567",
            **(extra_tags or {}),
        }
        run = self.client.create_run(experiment_id, start_time=self._tick(), tags=tags,
                                     run_name=f"{prune}-{threshold}-{seed}")
        run_id = run.info.run_id
        params = {
            "threshold": threshold_text if threshold_text is not None else str(threshold),
            "seed": str(seed),
            "prune.mode": prune,
            "model.name": model,
            "dataset.name": dataset,
            "train.epochs": str(EPOCHS),
            "train.batch_size": "64",
            "train.learning_rate": "0.001",
            "prune.fine_tune_epochs": "0",
            "prune.frequency": "100",
            "prune.l1": "0.0",
            "tracking.uri": self.tracking_uri,
            "cache.dir": str(self.root / "cache" / run_id),
            "resume": "True",
            **(extra_params or {}),
        }
        logged = LoggedRun(run_id, sweep_id, prune, threshold, seed, model, dataset, status, dict(metrics))

        timestamp = self._tick()
        batch = []
        if with_history and metrics:
            logged.history = self._history(prune, metrics)
            for key, values in logged.history.items():
                batch += [Metric(key, value, timestamp, step) for step, value in enumerate(values)]
        for key, value in metrics.items():
            # The final sparsity comes one step after the last epoch, as the harness logs it.
            step = EPOCHS if key == "sparsity" else 0
            batch.append(Metric(key, value, timestamp + 1, step))
        self.client.log_batch(run_id, metrics=batch, params=[Param(k, v) for k, v in params.items()])

        if metrics:
            self._log_artifacts(run_id, prune, metrics, logged.history, with_layer_csv)
            logged.has_layer_csv = with_layer_csv
        self.client.set_terminated(run_id, status, end_time=self._tick())
        self.runs.append(logged)
        return logged

    @staticmethod
    def _history(prune: str, metrics: dict[str, float]) -> dict[str, list[float]]:
        final_sparsity = metrics.get("sparsity", 0.0)
        accuracy = metrics.get("test_accuracy", 0.5)
        history: dict[str, list[float]] = {
            "train_loss": [1.0 / (epoch + 2) for epoch in range(EPOCHS)],
            "train_accuracy": [accuracy - 0.05 / (epoch + 1) for epoch in range(EPOCHS)],
            "val_loss": [1.1 / (epoch + 2) for epoch in range(EPOCHS)],
            "val_accuracy": [accuracy - 0.04 / (epoch + 1) for epoch in range(EPOCHS)],
        }
        if prune == "dynamic":
            # Masks grow during training; the final value at step EPOCHS is higher than any epoch's.
            history["sparsity"] = [final_sparsity * 0.8 * (epoch + 1) / EPOCHS for epoch in range(EPOCHS)]
        else:
            history["sparsity"] = [0.0] * EPOCHS
        return history

    def _log_artifacts(self, run_id: str, prune: str, metrics: dict[str, float], history: dict, with_layer_csv: bool):
        folder = self.root / "scratch" / run_id
        (folder / "model").mkdir(parents=True)
        sparsity = metrics.get("sparsity", 0.0)
        if with_layer_csv:
            lines = ["layer,kind,weights,zeros,sparsity,skipped"]
            for index, (name, kind, weights) in enumerate(LAYERS):
                layer_sparsity = min(1.0, sparsity * (0.8 + 0.2 * index)) if prune != "none" else 0.0
                zeros = round(weights * layer_sparsity)
                lines.append(f"{name},{kind},{weights},{zeros},{zeros / weights},False")
            (folder / "layer_sparsity.csv").write_text("\n".join(lines) + "\n")
            self.client.log_artifact(run_id, str(folder / "layer_sparsity.csv"))
        rows = ["epoch," + ",".join(history)] + [
            f"{epoch}," + ",".join(str(values[epoch]) for values in history.values()) for epoch in range(EPOCHS)
        ]
        (folder / "history.csv").write_text("\n".join(rows) + "\n")
        (folder / "config.yaml").write_text(f"prune:\n  mode: {prune}\n")
        (folder / "model" / "model.keras").write_bytes(b"not a real model")
        self.client.log_artifact(run_id, str(folder / "history.csv"))
        self.client.log_artifact(run_id, str(folder / "config.yaml"))
        self.client.log_artifact(run_id, str(folder / "model" / "model.keras"), artifact_path="model")


class TableParser(HTMLParser):
    """Collect the header and body cells of every <table> of a page, keyed by the table's id."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table: Optional[list[list[str]]] = None
        self._cell: Optional[list[str]] = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "table":
            self._table = self.tables.setdefault(dict(attrs).get("id", ""), [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self._table[-1].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def html_tables(page: str) -> dict[str, list[list[str]]]:
    """Return the rows of each table of an HTML page, header row first, keyed by table id."""
    parser = TableParser()
    parser.feed(page)
    return parser.tables
