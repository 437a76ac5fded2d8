"""MLflow access: store and experiment set-up, retries on a busy SQLite store, params and run lifecycle."""

from __future__ import annotations

import logging
import random
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, TypeVar

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

T = TypeVar("T")

TRUNCATION_MARK = "...[truncated]"
# Retries with exponential backoff, about 60 s in all, for a store that another process has locked.
RETRY_ATTEMPTS = 12
RETRY_FIRST_DELAY = 0.05


def _is_transient(error: BaseException) -> bool:
    text = str(error).lower()
    return any(word in text for word in ("database is locked", "database table is locked", "busy",
                                          "unique constraint failed", "already exists", "deadlock"))


def with_retry(call: Callable[[], T], what: str) -> T:
    """Run an MLflow call, retrying with backoff while the store reports a lock or a creation race."""
    delay = RETRY_FIRST_DELAY
    for attempt in range(1, RETRY_ATTEMPTS + 1):
        try:
            return call()
        except Exception as error:  # MlflowException and SQLAlchemy errors both carry the cause in text.
            if attempt == RETRY_ATTEMPTS or not _is_transient(error):
                raise
            log.debug("%s failed (%s), retry %d in %.2f s", what, error, attempt, delay)
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")


def client_for(uri: str):
    """Return an MlflowClient on the store, creating a SQLite file's folder first."""
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return with_retry(lambda: MlflowClient(tracking_uri=uri), f"opening the MLflow store {uri}")


def ensure_experiment(client, name: str) -> str:
    """Return the id of the named experiment, creating it when missing (safe against a concurrent create)."""
    location = artifact_location(client.tracking_uri)

    def get_or_create() -> str:
        found = client.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                raise ValueError(f"tracking.experiment {name!r} is deleted in this store; restore it with "
                                 f"'mlflow experiments restore' or choose another name")
            return found.experiment_id
        return client.create_experiment(name, artifact_location=location)

    return with_retry(get_or_create, f"getting experiment {name!r}")


def flatten_config(cfg: DictConfig | Mapping[str, Any], max_length: Optional[int] = None) -> dict[str, str]:
    """Flatten a config to dotted keys with string values, shortening over-long values visibly."""
    if max_length is None:
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH as max_length
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
            return
        text = "null" if value is None else str(value)
        if len(text) > max_length:
            text = text[: max_length - len(TRUNCATION_MARK)] + TRUNCATION_MARK
        flat[prefix] = text

    walk("", container)
    return flat


def git_commit(directory: Optional[Path] = None) -> Optional[str]:
    """Return the commit checked out in `directory` (default: the harness's source tree), or None."""
    directory = directory or Path(__file__).resolve().parent.parent
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True,
                                timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else None


def log_params(client, run_id: str, params: Mapping[str, str]) -> None:
    """Log params in batches of 100, MLflow's limit per batch."""
    from mlflow.entities import Param

    items = [Param(key, value) for key, value in params.items()]
    for start in range(0, len(items), 100):
        batch = items[start:start + 100]
        with_retry(lambda: client.log_batch(run_id, params=batch), "logging params")


def log_metrics(client, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
    """Log several metrics at one step in a single call."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(key, float(value), now, step) for key, value in metrics.items()]
    with_retry(lambda: client.log_batch(run_id, metrics=batch), "logging metrics")


def set_tags(client, run_id: str, tags: Mapping[str, str]) -> None:
    from mlflow.entities import RunTag

    batch = [RunTag(key, str(value)) for key, value in tags.items()]
    with_retry(lambda: client.log_batch(run_id, tags=batch), "setting tags")


def log_artifacts(client, run_id: str, paths: Iterable[Path], artifact_path: Optional[str] = None) -> None:
    for path in paths:
        with_retry(lambda: client.log_artifact(run_id, str(path), artifact_path), f"logging artifact {path}")


def terminate(client, run_id: str, status: str) -> None:
    """End a run with status FINISHED, FAILED or KILLED."""
    with_retry(lambda: client.set_terminated(run_id, status=status), f"ending run {run_id}")


def describe_error(error: BaseException) -> str:
    """Return 'Type: message', the form in which run errors are recorded."""
    message = str(error) or repr(error)
    return f"{type(error).__name__}: {message}"


EPOCH_METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "sparsity")
CONFIG_HASH_TAG = "config_hash"


def artifact_location(uri: str) -> Optional[str]:
    """Return where a new experiment of a SQLite store keeps artifacts: beside the database file.

    MLflow's own default is ./mlruns under the current directory, which would scatter artifacts
    into every folder Hydra runs a job in. Other stores keep their own default (None).
    """
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()


def find_finished_run(client, experiment_id: str, digest: str):
    """Return the latest FINISHED job run with this config hash, or None."""
    found = with_retry(lambda: client.search_runs(
        [experiment_id], filter_string=f"tags.{CONFIG_HASH_TAG} = '{digest}' and attributes.status = 'FINISHED'",
        max_results=1, order_by=["attributes.start_time DESC"]), "searching finished runs")
    return found[0] if found else None


def start_run(client, experiment_id: str, cfg, digest: str, *, sweep_id: str, parent_run_id: Optional[str],
              commit: Optional[str]) -> str:
    """Create a job run with its tags and params, and return its id."""
    tags = {
        "harness.kind": "job",
        "prune": cfg.prune.mode,
        "model": cfg.model.name,
        "dataset": cfg.dataset.name,
        "sweep_id": sweep_id,
        CONFIG_HASH_TAG: digest,
    }
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    if commit:
        tags["mlflow.source.git.commit"] = commit
    name = f"{cfg.prune.mode}-t{cfg.threshold}-s{cfg.seed}"
    run = with_retry(lambda: client.create_run(experiment_id, tags=tags, run_name=name), "creating a run")
    run_id = run.info.run_id
    try:
        log_params(client, run_id, flatten_config(cfg))
    except BaseException as error:
        end_with_error(client, run_id, error, "FAILED")
        raise
    return run_id


def record_outcome(client, run_id: str, outcome, total_epochs: int) -> None:
    """Log an experiment's final metrics, tags and files.

    The final `sparsity` is logged at step `total_epochs`, one past the last epoch's, so the run's
    latest value is the saved model's. The other final metrics are logged at step 0.
    """
    final = dict(outcome.metrics)
    sparsity = final.pop("sparsity")
    log_metrics(client, run_id, final, step=0)
    log_metrics(client, run_id, {"sparsity": sparsity}, step=total_epochs)
    tags = dict(outcome.tags)
    if outcome.dead_layers:
        tags["dead_layers"] = ",".join(outcome.dead_layers)
    if tags:
        set_tags(client, run_id, tags)
    directory = outcome.model_path.parent
    log_artifacts(client, run_id, [directory / "config.yaml", directory / "layer_sparsity.csv",
                                   directory / "history.csv"])
    log_artifacts(client, run_id, [outcome.model_path], artifact_path="model")


def end_with_error(client, run_id: str, error: BaseException, status: str) -> None:
    """Record the error on the run and end it with `status`, logging (not raising) failures of either step."""
    text = describe_error(error)
    try:
        set_tags(client, run_id, {"error": text[:5000], "error_type": type(error).__name__,
                                  "mlflow.note.content": f"{status}: {text[:5000]}"})
    except Exception:  # The status below matters more than the tags.
        log.exception("could not record the error on run %s", run_id)
    try:
        terminate(client, run_id, status)
    except Exception:
        log.exception("could not end run %s as %s", run_id, status)
