"""Build the comparison report: read the runs, analyse them, draw the figures and write the files."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd

from harness.report.analysis import (
    add_baseline_columns,
    add_config_columns,
    add_pareto_column,
    dense_baselines,
    mode_rank,
    split_failed,
    summarize,
)
from harness.report.errors import ReportError
from harness.report.figures import ReportFigure, make_figures
from harness.report.findings import compute_findings
from harness.report.load import (
    SWEEP_COMMAND,
    Selection,
    display_uri,
    find_experiment_id,
    load_epoch_history,
    load_layer_sparsity,
    open_client,
    runs_to_frame,
    select_runs,
)
from harness.report.render import (
    ReportContent,
    failed_table,
    generated_at,
    render_html,
    render_markdown,
    summary_table,
)

logger = logging.getLogger(__name__)

# Columns of runs.csv, one row per selected run.
RUN_COLUMNS = [
    "run_id", "run_name", "status", "failed", "failure_reason", "start_time", "sweep_id",
    "prune", "threshold", "model", "dataset", "seed", "config",
    "test_accuracy", "test_loss", "sparsity", "nonzero_params", "prunable_params", "total_params",
    "compression_ratio", "model_bytes", "model_gzip_bytes", "train_seconds", "dense_test_accuracy",
    "dense_baseline", "accuracy_drop", "pareto", "dead_layers", "git_commit", "error",
]
# Columns of summary.csv, one row per config, as in the report's table.
SUMMARY_COLUMNS = [
    "prune", "threshold", "model", "dataset", "config", "runs", "seed_count", "seeds",
    "sparsity_mean", "sparsity_std", "test_accuracy_mean", "test_accuracy_std", "dense_baseline", "accuracy_drop",
    "compression_ratio_mean", "model_gzip_bytes_mean", "train_seconds_mean", "pareto_runs", "run_ids",
]
# Files a report writes; those left from an earlier report in the same folder are removed first.
_OUTPUT_PATTERNS = ("fig[0-9]_*.png", "fig[0-9]_*.svg", "report.html", "report.md", "runs.csv", "summary.csv")


@dataclass
class ReportData:
    """Everything a report shows, read from MLflow and analysed."""

    experiment: str
    # The tracking URI with any password replaced by ***.
    tracking_uri: str
    selection: Selection
    # Every selected run, finished and failed, with the columns of runs.csv.
    runs: pd.DataFrame
    finished: pd.DataFrame
    failed: pd.DataFrame
    baselines: pd.DataFrame
    # One row per config, sorted by model, data set, prune mode and numeric threshold.
    summary: pd.DataFrame
    # Per-layer sparsity of the finished pruned runs that have a layer_sparsity.csv.
    layers: pd.DataFrame
    # Per-epoch val_accuracy and sparsity of each finished dynamic run, by run id.
    histories: dict[str, pd.DataFrame]
    findings: list[str]
    notes: list[str]


def _sort_runs(runs: pd.DataFrame) -> pd.DataFrame:
    runs = runs.assign(_rank=runs["prune"].map(mode_rank))
    runs = runs.sort_values(["model", "dataset", "_rank", "prune", "threshold", "seed", "run_id"],
                            na_position="first", kind="stable")
    return runs.drop(columns="_rank").reset_index(drop=True)


def collect_report_data(
    tracking_uri: str,
    experiment: str,
    *,
    sweep_id: Optional[str] = None,
    run_ids: Optional[list[str]] = None,
    all_runs: bool = False,
) -> ReportData:
    """Read the selected runs from MLflow and compute the table, baselines, Pareto front and findings.

    Raises:
        ReportError: the store or experiment does not exist, the selection is invalid or empty,
            or no selected run finished with a finite test_accuracy and sparsity.
    """
    client = open_client(tracking_uri)
    experiment_id = find_experiment_id(client, experiment, tracking_uri)
    selection = select_runs(client, experiment_id, experiment, sweep_id=sweep_id, run_ids=run_ids, all_runs=all_runs)
    logger.debug("read %d job runs of experiment %r for %s", len(selection.runs), experiment, selection.description)

    finished, failed = split_failed(runs_to_frame(selection.runs))
    if finished.empty:
        first = failed.iloc[0]
        raise ReportError(
            f"no finished runs in experiment {experiment!r} for {selection.description}: all {len(failed)} selected "
            f"run(s) failed (e.g. run {first['run_id']}: {first['failure_reason']}); fix the failure and "
            f"run the sweep again, e.g. {SWEEP_COMMAND}"
        )
    for _, run in failed.iterrows():
        logger.warning("run %s of %s left out of the report: %s", run["run_id"], selection.description,
                       run["failure_reason"])

    finished = add_config_columns(finished)
    baselines = dense_baselines(finished)
    finished = add_pareto_column(add_baseline_columns(finished, baselines))
    failed = add_baseline_columns(failed, baselines).assign(pareto=False, config="")
    summary = summarize(finished, baselines)

    notes: list[str] = []
    pruned_ids = finished.loc[finished["prune"] != "none", "run_id"]
    layers = load_layer_sparsity(tracking_uri, pruned_ids, notes)
    dynamic = finished[finished["prune"] == "dynamic"]
    histories = {run["run_id"]: load_epoch_history(client, run["run_id"], run["params"]) for _, run in dynamic.iterrows()}

    runs = _sort_runs(pd.concat([frame for frame in (finished, failed) if len(frame)], ignore_index=True))
    runs["pareto"] = runs["pareto"].astype(bool)
    return ReportData(
        experiment=experiment,
        tracking_uri=display_uri(tracking_uri),
        selection=selection,
        runs=runs,
        finished=finished,
        failed=_sort_runs(failed),
        baselines=baselines,
        summary=summary,
        layers=layers,
        histories=histories,
        findings=compute_findings(summary, finished, failed, baselines),
        notes=notes,
    )


def _metadata(data: ReportData) -> list[tuple[str, str]]:
    commits = sorted({commit[:10] for commit in data.runs["git_commit"] if commit})
    modes = sorted(set(data.finished["prune"]), key=mode_rank)
    return [
        ("experiment", data.experiment),
        ("tracking URI", data.tracking_uri),
        ("selection", data.selection.description),
        ("runs", f"{len(data.runs)} selected, {len(data.finished)} finished, {len(data.failed)} failed"),
        ("prune modes", ", ".join(modes)),
        ("git commits", ", ".join(commits) or "not logged"),
        ("generated", generated_at()),
    ]


def _remove_previous_outputs(folder: Path) -> None:
    for pattern in _OUTPUT_PATTERNS:
        for path in folder.glob(pattern):
            path.unlink()


def write_report(data: ReportData, folder: Path) -> list[ReportFigure]:
    """Write figures, runs.csv, summary.csv, report.html and report.md into folder; return the figures."""
    folder.mkdir(parents=True, exist_ok=True)
    _remove_previous_outputs(folder)

    figures = make_figures(data.finished, data.summary, data.baselines, data.layers, data.histories)
    for figure in figures:
        if figure.figure is not None:
            figure.save(folder)
            logger.debug("wrote %s.png and .svg", folder / figure.stem)

    data.runs[RUN_COLUMNS].to_csv(folder / "runs.csv", index=False)
    data.summary[SUMMARY_COLUMNS].to_csv(folder / "summary.csv", index=False)

    content = ReportContent(
        title=f"Pruning comparison: {data.experiment}, {data.selection.description}",
        metadata=_metadata(data),
        findings=data.findings,
        summary=summary_table(data.summary),
        figures=figures,
        failed=failed_table(data.failed),
        notes=data.notes + [note for figure in figures for note in figure.notes],
    )
    (folder / "report.html").write_text(render_html(content, folder), encoding="utf-8")
    (folder / "report.md").write_text(render_markdown(content), encoding="utf-8")
    return figures


def build_report(
    tracking_uri: str,
    experiment: str,
    *,
    sweep_id: Optional[str] = None,
    run_ids: Optional[list[str]] = None,
    all_runs: bool = False,
    out_root: Path,
    folder_name: Optional[str] = None,
) -> Path:
    """Write the comparison report of the selected runs into out_root/<name>/ and return that folder.

    <name> is the sweep id (by default that of the most recently started job run), "all" with all_runs,
    or "runs-<hash of the sorted ids>" with run_ids; `folder_name` replaces it. Pass at most one of
    sweep_id, run_ids and all_runs.

    Raises:
        ReportError: the store or experiment does not exist, the selection is invalid or empty,
            or no selected run finished with a finite test_accuracy and sparsity.
    """
    data = collect_report_data(tracking_uri, experiment, sweep_id=sweep_id, run_ids=run_ids, all_runs=all_runs)
    folder = Path(out_root) / (folder_name or data.selection.name)
    write_report(data, folder)
    logger.info("report of %s written to %s", data.selection.description, folder)
    return folder
