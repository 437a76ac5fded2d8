"""The Hydra task: one experiment recorded as one MLflow run, with its whole lifecycle handled."""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import signal
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from harness import tracking
from harness.config import ConfigError, launch_dir, resolve_tracking_uri, validate

log = logging.getLogger(__name__)

SWEEP_FILE = "sweep.json"
# Config keys that change where results go, not what is computed; the config hash leaves them out.
NON_RESULT_KEYS = ("tracking", "cache", "resume")
# Keys that a prune mode ignores, so they do not make two otherwise identical jobs differ.
IGNORED_BY_MODE = {
    "none": ("threshold", "prune.fine_tune_epochs", "prune.begin_step", "prune.frequency", "prune.l1"),
    "static": ("prune.begin_step", "prune.frequency", "prune.l1"),
    "dynamic": ("prune.fine_tune_epochs",),
}


class JobTerminated(KeyboardInterrupt):
    """SIGTERM reached the job; handled like Ctrl-C so the run ends KILLED."""


def new_sweep_id() -> str:
    """Return a sortable, unique id for one invocation of the harness."""
    return f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def config_hash(cfg: DictConfig) -> str:
    """Return a hash of the resolved config that determines a run's results (seed included)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    for key in NON_RESULT_KEYS:
        container.pop(key, None)
    for key in IGNORED_BY_MODE.get(cfg.prune.mode, ()):
        parent, _, leaf = key.rpartition(".")
        (container[parent] if parent else container).pop(leaf, None)
    text = json.dumps(container, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def sweep_dir() -> Path:
    """Return the sweep's folder as an absolute path."""
    directory = Path(HydraConfig.get().sweep.dir)
    return directory if directory.is_absolute() else launch_dir() / directory


def read_sweep_info() -> dict[str, Any]:
    """Return what the sweep callback wrote for the jobs of this multirun, or {} outside one."""
    if not is_multirun():
        return {}
    path = sweep_dir() / SWEEP_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def job_overrides() -> list[str]:
    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def output_dir() -> Path:
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path.cwd()


def _raise_terminated(signum, frame):
    raise JobTerminated(f"received signal {signal.Signals(signum).name}")


def run_job(cfg: DictConfig) -> dict[str, Any]:
    """Run one experiment as an MLflow run and return its record.

    In a multirun, an ordinary error is recorded and returned, so the other jobs of the sweep still
    run and the sweep callback can list the failure. In a single run it is raised.
    """
    overrides = job_overrides()
    sweep = read_sweep_info()
    if sweep:
        log.info("job %d of %s: %s", HydraConfig.get().job.num + 1, sweep.get("num_jobs", "?"),
                 " ".join(overrides) or "(defaults)")
    record: dict[str, Any] = {"overrides": overrides, "status": "FAILED", "run_id": None, "error": None}
    try:
        validate(cfg)  # Before TensorFlow is imported, so a bad value is reported at once.
        record.update(_run_recorded(cfg, sweep, record))
    except ConfigError as error:
        record["error"] = tracking.describe_error(error)
        log.error("%s [%s]", error, " ".join(overrides) or "defaults")
        if not sweep:
            raise SystemExit(2) from None
    except Exception as error:
        record["error"] = tracking.describe_error(error)
        if not sweep:
            raise
        log.error("job failed: %s [%s]", record["error"], " ".join(overrides))
    return record


def dense_cache(cfg: DictConfig):
    """Return the dense-model cache for static and none jobs, or None when disabled or not used."""
    from harness.cache import DenseCache

    if not cfg.cache.enabled or cfg.prune.mode == "dynamic":
        return None
    root = Path(cfg.cache.dir).expanduser() if cfg.cache.dir else launch_dir() / "outputs" / "cache"
    return DenseCache(root if root.is_absolute() else launch_dir() / root)


def _run_recorded(cfg: DictConfig, sweep: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    from harness.experiment import prepare, run_experiment, summary_line
    from harness.training import TrainingDiverged

    job = prepare(cfg)  # Raises on invalid config before any MLflow run exists.
    uri = resolve_tracking_uri(cfg.tracking.uri)
    client = tracking.client_for(uri)
    experiment_id = tracking.ensure_experiment(client, cfg.tracking.experiment)
    digest = config_hash(cfg)

    if cfg.resume:
        finished = tracking.find_finished_run(client, experiment_id, digest)
        if finished is not None:
            log.info("skipped: finished as run %s (resume=false runs it again)", finished.info.run_id)
            metrics = dict(finished.data.metrics)
            if "sparsity" in metrics and "test_accuracy" in metrics:
                print(summary_line(cfg, metrics, finished.info.run_id), flush=True)
            return {"status": "SKIPPED", "run_id": finished.info.run_id, "metrics": metrics}

    run_id = tracking.start_run(client, experiment_id, cfg, digest, sweep_id=sweep.get("sweep_id") or new_sweep_id(),
                                parent_run_id=sweep.get("parent_run_id"), commit=tracking.git_commit())
    record["run_id"] = run_id  # Kept when the run fails, so the sweep summary can name it.
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous_handler = signal.signal(signal.SIGTERM, _raise_terminated) if on_main_thread else None
    try:
        def on_epoch(epoch: int, row: dict) -> None:
            tracking.log_metrics(client, run_id, {key: row[key] for key in tracking.EPOCH_METRICS}, step=epoch)

        outcome = run_experiment(cfg, output_dir() / "artifacts", on_epoch=on_epoch, job=job,
                                 cache=dense_cache(cfg), run_id=run_id)
        tracking.record_outcome(client, run_id, outcome, total_epochs=len(outcome.history))
        tracking.terminate(client, run_id, "FINISHED")
    except KeyboardInterrupt as error:
        tracking.end_with_error(client, run_id, error, "KILLED")
        raise
    except BaseException as error:
        if isinstance(error, TrainingDiverged):
            tracking.set_tags(client, run_id, {"diverged": "true"})
        tracking.end_with_error(client, run_id, error, "FAILED")
        raise
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous_handler)

    print(summary_line(cfg, outcome.metrics, run_id), flush=True)
    if not sweep:
        print(f"MLflow UI: mlflow ui --backend-store-uri {uri}", flush=True)
    return {"status": "FINISHED", "run_id": run_id, "metrics": outcome.metrics}
