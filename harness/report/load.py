"""Read the job runs of one MLflow experiment into pandas, through MLflow's client API only."""

from __future__ import annotations

import hashlib
import logging
import math
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional
from urllib.parse import unquote, urlsplit, urlunsplit

import mlflow.artifacts
import pandas as pd
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from harness.report.errors import ReportError

logger = logging.getLogger(__name__)

KIND_TAG = "harness.kind"
SWEEP_TAG = "sweep_id"
# Tag of a sweep's parent run listing its job runs, comma-separated, skipped ones included.
RUN_IDS_TAG = "harness.run_ids"
SWEEP_COMMAND = "python -m harness -m prune=static,dynamic threshold=0.01,0.05"
SWEEP_HINT = f"run a sweep first with {SWEEP_COMMAND}"

# Final metrics of a job run, each logged once (sparsity also per epoch).
FINAL_METRICS = (
    "test_accuracy",
    "test_loss",
    "sparsity",
    "nonzero_params",
    "prunable_params",
    "total_params",
    "compression_ratio",
    "model_bytes",
    "model_gzip_bytes",
    "train_seconds",
    "dense_test_accuracy",
)
LAYER_SPARSITY_ARTIFACT = "layer_sparsity.csv"
_SEARCH_PAGE_SIZE = 1000


@dataclass(frozen=True)
class Selection:
    """The job runs chosen for one report."""

    # Folder name of the report: the sweep id, "all", or "runs-<hash of the sorted run ids>".
    name: str
    # The selection in words for messages and the report header, e.g. "sweep_id 'abc'".
    description: str
    runs: list[Run]


def local_store_path(tracking_uri: str) -> Optional[Path]:
    """Return the file or folder of a local tracking store, or None for a server or database URI."""
    if tracking_uri.startswith("sqlite:///"):
        location = unquote(tracking_uri[len("sqlite:///"):].split("?", 1)[0])
        if location in ("", ":memory:"):
            return None
        return Path(location)
    if tracking_uri.startswith("file:"):
        return Path(unquote(urlsplit(tracking_uri).path))
    if "://" not in tracking_uri:
        return Path(tracking_uri)
    return None


def display_uri(tracking_uri: str) -> str:
    """Return the tracking URI with any password replaced by ***, for messages and the report."""
    parts = urlsplit(tracking_uri)
    if not parts.password:
        return tracking_uri
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def open_client(tracking_uri: str) -> MlflowClient:
    """Return a client for an existing tracking store.

    A missing local store raises ReportError, because MlflowClient would create an empty one there.
    """
    path = local_store_path(tracking_uri)
    if path is not None and not path.exists():
        raise ReportError(
            f"MLflow store not found: {path} (tracking URI {display_uri(tracking_uri)}); "
            f"{SWEEP_HINT}, or pass --tracking-uri"
        )
    return MlflowClient(tracking_uri)


def find_experiment_id(client: MlflowClient, experiment: str, tracking_uri: str) -> str:
    """Return the id of an active experiment, or raise ReportError naming the experiments that exist."""
    found = client.get_experiment_by_name(experiment)
    if found is not None and found.lifecycle_stage == "active":
        return found.experiment_id

    names = sorted(e.name for e in client.search_experiments(max_results=50))
    state = "is deleted" if found is not None else "not found"
    raise ReportError(
        f"experiment {experiment!r} {state} in {display_uri(tracking_uri)}; "
        f"active experiments: {', '.join(names) or 'none'}; {SWEEP_HINT}, or pass --experiment"
    )


def search_job_runs(client: MlflowClient, experiment_id: str) -> list[Run]:
    """Return every active job run of the experiment, the most recently started first."""
    runs: list[Run] = []
    page_token = None
    while True:
        page = client.search_runs(
            experiment_ids=[experiment_id],
            filter_string=f"tags.`{KIND_TAG}` = 'job'",
            order_by=["attributes.start_time DESC"],
            max_results=_SEARCH_PAGE_SIZE,
            page_token=page_token,
        )
        runs.extend(page)
        page_token = page.token
        if not page_token:
            return runs


def folder_name(sweep_id: str) -> str:
    """Return a folder name for a sweep id: characters other than letters, digits, '.', '_' and '-' become '_'."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", sweep_id).lstrip(".")
    return name or "sweep"


def select_runs(
    client: MlflowClient,
    experiment_id: str,
    experiment: str,
    *,
    sweep_id: Optional[str] = None,
    run_ids: Optional[list[str]] = None,
    all_runs: bool = False,
) -> Selection:
    """Choose the job runs of one sweep (the latest by default), of a list of run ids, or all of them."""
    if (sweep_id is not None) + (run_ids is not None) + bool(all_runs) > 1:
        raise ReportError(
            f"pass at most one of sweep_id, run_ids and all_runs; received sweep_id={sweep_id!r}, "
            f"run_ids={run_ids!r}, all_runs={all_runs!r}"
        )
    if run_ids is not None:
        return _select_run_ids(client, experiment_id, experiment, run_ids)

    job_runs = search_job_runs(client, experiment_id)
    if not job_runs:
        raise ReportError(f"no finished runs in experiment {experiment!r}: it has no job runs; {SWEEP_HINT}")
    if all_runs:
        return Selection("all", "all job runs", job_runs)

    if sweep_id is None:
        latest = job_runs[0]
        sweep_id = latest.data.tags.get(SWEEP_TAG)
        if not sweep_id:
            raise ReportError(
                f"the latest job run {latest.info.run_id} in experiment {experiment!r} has no {SWEEP_TAG} tag; "
                "pass --run-ids or --all"
            )
    chosen = [run for run in job_runs if run.data.tags.get(SWEEP_TAG) == sweep_id]
    recorded = _recorded_run_ids(client, experiment_id, sweep_id)
    if recorded:
        # A resumed sweep records the runs it skipped too, which carry an earlier sweep's id.
        chosen = [run for run in job_runs if run.info.run_id in recorded]
    if not chosen:
        known = list(dict.fromkeys(run.data.tags.get(SWEEP_TAG) for run in job_runs if run.data.tags.get(SWEEP_TAG)))
        raise ReportError(
            f"no finished runs in experiment {experiment!r} for sweep_id {sweep_id!r}: no job run has this "
            f"sweep_id; sweep ids in this experiment, latest first: {', '.join(known[:20]) or 'none'}; "
            f"pass one of them with --sweep-id, or {SWEEP_HINT}"
        )
    return Selection(folder_name(sweep_id), f"sweep_id {sweep_id!r}", chosen)


def _recorded_run_ids(client: MlflowClient, experiment_id: str, sweep_id: str) -> set[str]:
    """Return the job run ids that a sweep's parent run lists in its RUN_IDS_TAG, or an empty set."""
    if "'" in sweep_id:
        return set()
    parents = client.search_runs(
        experiment_ids=[experiment_id],
        filter_string=f"tags.`{KIND_TAG}` = 'sweep' and tags.`{SWEEP_TAG}` = '{sweep_id}'",
        max_results=1,
    )
    listed = parents[0].data.tags.get(RUN_IDS_TAG, "") if parents else ""
    return {run_id for run_id in listed.split(",") if run_id}


def _select_run_ids(client: MlflowClient, experiment_id: str, experiment: str, run_ids: list[str]) -> Selection:
    unique_ids = sorted(set(run_ids))
    if not unique_ids:
        raise ReportError("run_ids is empty; pass at least one run id, or use sweep_id or all_runs")

    runs = []
    for run_id in unique_ids:
        try:
            run = client.get_run(run_id)
        except MlflowException as error:
            raise ReportError(f"run id {run_id!r} not found: {error.message}") from error
        if run.info.experiment_id != experiment_id:
            raise ReportError(
                f"run {run_id} belongs to experiment id {run.info.experiment_id}, not to experiment "
                f"{experiment!r} (id {experiment_id}); pass its experiment with --experiment"
            )
        if run.data.tags.get(KIND_TAG) == "sweep":
            raise ReportError(
                f"run {run_id} is the parent run of sweep {run.data.tags.get(SWEEP_TAG)!r}, not a job run; "
                "pass --sweep-id to report on the whole sweep"
            )
        runs.append(run)

    digest = hashlib.sha256(",".join(unique_ids).encode()).hexdigest()[:10]
    return Selection(f"runs-{digest}", f"run ids {', '.join(unique_ids)}", runs)


def decode_metric(value: float) -> float:
    """Return a metric value as logged.

    MLflow's SQL store (mlflow/store/tracking/sqlalchemy_store.py in MLflow 3.17) saves +-inf as the largest
    float, +-1.7976931348623157e308, so those values become infinite again.
    """
    if abs(value) >= sys.float_info.max:
        return math.copysign(math.inf, value)
    return value


def _to_number(text: Optional[str]) -> float:
    if text is None:
        return math.nan
    try:
        return float(text)
    except ValueError:
        return math.nan


def runs_to_frame(runs: Iterable[Run]) -> pd.DataFrame:
    """Return one row per run: ids, status, tags, numeric threshold and seed, final metrics and all params.

    The prune mode, model and data set come from the tags of the same name, else from the params
    prune.mode, model.name and dataset.name. Params are kept as text in the `params` column (a dict).
    """
    rows = []
    for run in runs:
        tags = run.data.tags
        params = dict(run.data.params)
        metrics = {key: decode_metric(value) for key, value in run.data.metrics.items()}
        row = {
            "run_id": run.info.run_id,
            "run_name": run.info.run_name or "",
            "status": run.info.status,
            "start_time": pd.to_datetime(run.info.start_time, unit="ms", utc=True),
            "sweep_id": tags.get(SWEEP_TAG, ""),
            "prune": tags.get("prune") or params.get("prune.mode", ""),
            "model": tags.get("model") or params.get("model.name", ""),
            "dataset": tags.get("dataset") or params.get("dataset.name", ""),
            "threshold": _to_number(params.get("threshold")),
            "seed": _to_number(params.get("seed")),
            "dead_layers": tags.get("dead_layers", ""),
            "git_commit": tags.get("mlflow.source.git.commit", ""),
            "error": tags.get("error") or tags.get("mlflow.note.content", ""),
        }
        for key in FINAL_METRICS:
            row[key] = metrics.get(key, math.nan)
        row["params"] = params
        rows.append(row)

    columns = ["run_id", "run_name", "status", "start_time", "sweep_id", "prune", "model", "dataset",
               "threshold", "seed", "dead_layers", "git_commit", "error", *FINAL_METRICS, "params"]
    frame = pd.DataFrame(rows, columns=columns)
    for key in ("threshold", "seed", *FINAL_METRICS):
        frame[key] = pd.to_numeric(frame[key], errors="coerce").astype(float)
    return frame


def metric_history(client: MlflowClient, run_id: str, key: str) -> pd.Series:
    """Return a metric's values indexed by step; a step logged twice keeps its latest value."""
    history = client.get_metric_history(run_id, key)
    if not history:
        return pd.Series(dtype=float, name=key)
    frame = pd.DataFrame(
        {
            "step": [metric.step for metric in history],
            "timestamp": [metric.timestamp for metric in history],
            "value": [decode_metric(metric.value) for metric in history],
        }
    )
    frame = frame.sort_values(["step", "timestamp"]).drop_duplicates("step", keep="last")
    return frame.set_index("step")["value"].rename(key)


def _epoch_count(val_accuracy: pd.Series, sparsity: pd.Series, params: dict) -> Optional[int]:
    """Return the number of epochs E of a run, so that per-epoch values have steps 0..E-1.

    val_accuracy is logged once per epoch, so its last step is E-1. Without it, E is the train.epochs
    param plus prune.fine_tune_epochs. The final sparsity is logged at step E, after the last epoch.
    """
    if not val_accuracy.empty:
        return int(val_accuracy.index.max()) + 1
    epochs = _to_number(params.get("train.epochs"))
    if math.isfinite(epochs):
        fine_tune = _to_number(params.get("prune.fine_tune_epochs"))
        return int(epochs) + (int(fine_tune) if math.isfinite(fine_tune) else 0)
    if len(sparsity) > 1:
        return int(sparsity.index.max())
    return None


def load_epoch_history(client: MlflowClient, run_id: str, params: dict) -> pd.DataFrame:
    """Return the per-epoch val_accuracy and sparsity of a run, with columns step, val_accuracy, sparsity.

    Steps are epoch indexes 0..E-1. The final sparsity, logged at step E, is left out.
    """
    val_accuracy = metric_history(client, run_id, "val_accuracy")
    sparsity = metric_history(client, run_id, "sparsity")
    epochs = _epoch_count(val_accuracy, sparsity, params)

    frame = pd.concat([val_accuracy, sparsity], axis=1).reindex(columns=["val_accuracy", "sparsity"])
    if epochs is not None:
        frame = frame[frame.index < epochs]
    frame.index.name = "step"
    return frame.reset_index()


def _parse_bool(value: object) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes")


def load_layer_sparsity(tracking_uri: str, run_ids: Iterable[str], notes: list[str]) -> pd.DataFrame:
    """Download layer_sparsity.csv of each run into one frame with a run_id column.

    A run without the artifact, or with one that lacks the layer or sparsity column, is skipped
    and a sentence saying so is appended to notes.
    """
    tables = []
    with tempfile.TemporaryDirectory(prefix="harness-report-") as folder:
        for run_id in run_ids:
            destination = Path(folder) / run_id
            destination.mkdir()
            try:
                path = mlflow.artifacts.download_artifacts(
                    run_id=run_id,
                    artifact_path=LAYER_SPARSITY_ARTIFACT,
                    dst_path=str(destination),
                    tracking_uri=tracking_uri,
                )
                table = pd.read_csv(path)
            except (MlflowException, OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
                logger.warning("run %s: %s not read (%s); left out of the per-layer figure",
                               run_id, LAYER_SPARSITY_ARTIFACT, error)
                notes.append(f"Run {run_id} has no readable {LAYER_SPARSITY_ARTIFACT}, so it is left out of figure 5.")
                continue

            missing = {"layer", "sparsity"} - set(table.columns)
            if missing:
                notes.append(
                    f"Run {run_id}: {LAYER_SPARSITY_ARTIFACT} lacks the column(s) {', '.join(sorted(missing))}, "
                    "so it is left out of figure 5."
                )
                continue
            table["layer"] = table["layer"].astype(str)
            table["sparsity"] = pd.to_numeric(table["sparsity"], errors="coerce")
            if "skipped" in table.columns:
                table["skipped"] = table["skipped"].map(_parse_bool)
            else:
                table["skipped"] = False
            table.insert(0, "run_id", run_id)
            tables.append(table[["run_id", "layer", "sparsity", "skipped"]])

    if not tables:
        return pd.DataFrame({"run_id": pd.Series(dtype=str), "layer": pd.Series(dtype=str),
                             "sparsity": pd.Series(dtype=float), "skipped": pd.Series(dtype=bool)})
    return pd.concat(tables, ignore_index=True)

