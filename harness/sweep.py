"""Hydra callback that groups a multirun under one MLflow parent run and summarises it at the end."""

from __future__ import annotations

import atexit
import json
import logging
import math
from pathlib import Path
from typing import Any, Optional

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from harness import tracking
from harness.config import launch_dir, resolve_tracking_uri
from harness.report.load import RUN_IDS_TAG

log = logging.getLogger(__name__)

JOBS_FOLDER = "jobs"
# MLflow's limit on the length of a tag value.
MAX_TAG_LENGTH = 8000


def count_jobs(overrides: list[str]) -> int:
    """Return the number of jobs a basic sweep over these overrides launches."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    sizes = [len(list(override.sweep_string_iterator())) for override in parsed if override.is_sweep_override()]
    return max(1, math.prod(sizes)) if sizes else 1


def _sweep_dir(config: DictConfig) -> Path:
    directory = Path(config.hydra.sweep.dir)
    return directory if directory.is_absolute() else launch_dir() / directory


class SweepCallback(Callback):
    """Create the sweep's parent run, record each job, and print a summary and build a report at the end."""

    def __init__(self) -> None:
        self.parent_run_id: Optional[str] = None
        self.client = None
        self.ended = False

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from harness.job import SWEEP_FILE, new_sweep_id

        directory = _sweep_dir(config)
        directory.mkdir(parents=True, exist_ok=True)
        overrides = list(config.hydra.overrides.task)
        sweep_id = new_sweep_id()
        uri = resolve_tracking_uri(config.tracking.uri)

        self.client = tracking.client_for(uri)
        experiment_id = tracking.ensure_experiment(self.client, config.tracking.experiment)
        tags = {"harness.kind": "sweep", "sweep_id": sweep_id}
        commit = tracking.git_commit()
        if commit:
            tags["mlflow.source.git.commit"] = commit
        run = tracking.with_retry(
            lambda: self.client.create_run(experiment_id, tags=tags, run_name=f"sweep-{sweep_id}"),
            "creating the sweep run")
        self.parent_run_id = run.info.run_id
        tracking.log_params(self.client, self.parent_run_id, {"overrides": " ".join(overrides) or "(defaults)"})
        atexit.register(self._end_if_open, "KILLED")

        info = {"sweep_id": sweep_id, "parent_run_id": self.parent_run_id, "tracking_uri": uri,
                "experiment_id": experiment_id, "num_jobs": count_jobs(overrides)}
        (directory / SWEEP_FILE).write_text(json.dumps(info, indent=2))
        log.info("sweep %s: %d jobs, parent run %s, outputs in %s", sweep_id, info["num_jobs"],
                 self.parent_run_id, directory)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.get().mode != RunMode.MULTIRUN:
            return
        value = job_return._return_value
        if isinstance(value, dict):
            record = dict(value)
        else:
            record = {"status": "FAILED", "run_id": None, "error": tracking.describe_error(value)
                      if isinstance(value, BaseException) else str(value)}
        record["overrides"] = list(job_return.overrides or [])
        record["job"] = HydraConfig.get().job.num + 1
        folder = _sweep_dir(config) / JOBS_FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{record['job']}.json").write_text(json.dumps(record, indent=2, default=str))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        directory = _sweep_dir(config)
        records = read_job_records(directory)
        print(format_summary(records), flush=True)
        failed = [record for record in records if record["status"] == "FAILED"]
        sweep_info = json.loads((directory / "sweep.json").read_text())

        run_ids = ",".join(record["run_id"] for record in records if record.get("run_id"))
        if run_ids and len(run_ids) <= MAX_TAG_LENGTH:
            # Lets a later `python -m harness.report --sweep-id` select the same runs, skipped ones too.
            tracking.set_tags(self.client, self.parent_run_id, {RUN_IDS_TAG: run_ids})
        try:
            self._build_report(config, sweep_info, records)
        except Exception as error:
            log.warning("report for sweep %s not built: %s", sweep_info["sweep_id"], tracking.describe_error(error))

        if failed:
            lines = [f"job {record['job']} [{' '.join(record['overrides'])}]: {record.get('error')}"
                     for record in failed]
            tracking.set_tags(self.client, self.parent_run_id, {"failed_jobs": "\n".join(lines)[:5000]})
        self._end_if_open("FAILED" if failed else "FINISHED")
        if failed:
            raise SystemExit(1)

    def _build_report(self, config: DictConfig, sweep_info: dict[str, Any], records: list[dict[str, Any]]) -> None:
        from harness.report import build_report

        sweep_id = sweep_info["sweep_id"]
        out_root = launch_dir() / "outputs" / "reports"
        if any(record["status"] == "SKIPPED" for record in records):
            # Skipped jobs point to runs of an earlier sweep, so the report selects runs by id.
            run_ids = [record["run_id"] for record in records if record.get("run_id")]
            folder = build_report(sweep_info["tracking_uri"], config.tracking.experiment, run_ids=run_ids,
                                  out_root=out_root, folder_name=sweep_id)
        else:
            folder = build_report(sweep_info["tracking_uri"], config.tracking.experiment, sweep_id=sweep_id,
                                  out_root=out_root)
        files = sorted(path for path in folder.iterdir() if path.is_file())
        tracking.log_artifacts(self.client, self.parent_run_id, files, artifact_path="report")
        print(f"Report: {folder / 'report.html'}", flush=True)

    def _end_if_open(self, status: str) -> None:
        if self.parent_run_id is None or self.ended:
            return
        self.ended = True
        tracking.terminate(self.client, self.parent_run_id, status)


def read_job_records(directory: Path) -> list[dict[str, Any]]:
    """Return the job records of a sweep folder, in job order."""
    folder = directory / JOBS_FOLDER
    paths = sorted(folder.glob("*.json"), key=lambda path: int(path.stem)) if folder.is_dir() else []
    return [json.loads(path.read_text()) for path in paths]


def format_summary(records: list[dict[str, Any]]) -> str:
    """Return the end-of-sweep table of every job, then each failure with its overrides and error."""
    import pandas as pd

    rows = []
    for record in records:
        metrics = record.get("metrics") or {}
        rows.append({
            "job": record["job"],
            "overrides": " ".join(record["overrides"]),
            "status": record["status"],
            "sparsity": metrics.get("sparsity"),
            "test_accuracy": metrics.get("test_accuracy"),
            "run_id": record.get("run_id") or "-",
        })
    lines = [f"Sweep summary: {len(records)} jobs"]
    if rows:
        lines.append(pd.DataFrame(rows).to_string(index=False, float_format=lambda value: f"{value:.4f}"))
    failed = [record for record in records if record["status"] == "FAILED"]
    if failed:
        lines.append(f"{len(failed)} failed:")
        lines += [f"  job {record['job']} [{' '.join(record['overrides'])}]: {record.get('error')}"
                  for record in failed]
    return "\n".join(lines)


__all__ = ["SweepCallback", "count_jobs", "format_summary", "read_job_records"]
