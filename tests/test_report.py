"""Tests of the comparison report against real MLflow SQLite stores and real matplotlib figures."""

from __future__ import annotations

import math
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from harness.report import ReportError, build_report
from harness.report.__main__ import main as report_main
from harness.report.analysis import pareto_mask
from harness.report.build import collect_report_data
from harness.report.figures import make_figures
from harness.report.load import load_epoch_history
from harness.report.render import summary_table
from report_fixtures import EPOCHS, LoggedRun, StoreWriter, html_tables, synthetic_metrics

REPO_ROOT = Path(__file__).resolve().parents[1]
FAILED_ERROR = "ConfigError: threshold must be a finite number >= 0, got -1.0"
NAN_NOTE = "loss became NaN in epoch 2"
NAN_RUN_SPARSITY = 0.4321
SHUFFLED_THRESHOLDS = (0.05, 1e-05, 0.01, 0.001, 0.005)
CLOSE_ACCURACIES = {"static": (0.950, 0.960), "dynamic": (0.953, 0.959)}


@dataclass
class Store:
    """A tracking store filled once per test session, with the runs logged into each experiment."""

    uri: str
    runs: dict[str, list[LoggedRun]]
    failed_run: LoggedRun
    nan_run: LoggedRun
    run_without_layer_csv: LoggedRun


def _fill_main(writer: StoreWriter) -> tuple[LoggedRun, LoggedRun, LoggedRun]:
    """Experiment "pruning": an older one-run sweep, then sweep-main with three seeds of each config."""
    experiment = writer.experiment("pruning")
    old = writer.sweep(experiment, "sweep-old")
    writer.job(experiment, old, "sweep-old", prune="static", threshold=0.02)

    parent = writer.sweep(experiment, "sweep-main")
    run_without_layer_csv = None
    for seed in (0, 1, 2):
        writer.job(experiment, parent, "sweep-main", prune="none", threshold=0.01, seed=seed)
        for threshold in (0.01, 0.05):
            writer.job(experiment, parent, "sweep-main", prune="static", threshold=threshold, seed=seed)
            skip_csv = threshold == 0.05 and seed == 2
            run = writer.job(experiment, parent, "sweep-main", prune="dynamic", threshold=threshold, seed=seed,
                             with_layer_csv=not skip_csv)
            if skip_csv:
                run_without_layer_csv = run

    failed_run = writer.job(experiment, parent, "sweep-main", prune="static", threshold=-1.0, metrics={},
                            status="FAILED", extra_tags={"error": FAILED_ERROR})
    nan_metrics = synthetic_metrics("dynamic", 0.02, 0)
    nan_metrics.update(test_accuracy=math.nan, sparsity=NAN_RUN_SPARSITY)
    nan_run = writer.job(experiment, parent, "sweep-main", prune="dynamic", threshold=0.02, metrics=nan_metrics,
                         extra_tags={"mlflow.note.content": NAN_NOTE})
    return failed_run, nan_run, run_without_layer_csv


def _fill_small_cases(writer: StoreWriter) -> None:
    experiment = writer.experiment("single")
    writer.job(experiment, writer.sweep(experiment, "one"), "one", prune="static", threshold=0.01)

    experiment = writer.experiment("onemode")
    parent = writer.sweep(experiment, "dyn")
    for threshold in (0.01, 0.05):
        writer.job(experiment, parent, "dyn", prune="dynamic", threshold=threshold)

    # Logged out of order, and as Python writes them ("1e-05"), so text order differs from numeric order.
    experiment = writer.experiment("thresholds")
    parent = writer.sweep(experiment, "grid")
    for threshold in SHUFFLED_THRESHOLDS:
        for prune in ("dynamic", "static"):
            writer.job(experiment, parent, "grid", prune=prune, threshold=threshold, threshold_text=str(threshold))

    # No prune=none run, so the baseline comes from dense_test_accuracy. Threshold 1.0 prunes every weight.
    experiment = writer.experiment("extremes")
    parent = writer.sweep(experiment, "edge")
    writer.job(experiment, parent, "edge", prune="static", threshold=0.0)
    writer.job(experiment, parent, "edge", prune="static", threshold=0.05)
    everything_pruned = synthetic_metrics("static", 1.0, 0)
    everything_pruned.update(sparsity=1.0, nonzero_params=0.0, compression_ratio=math.inf, test_accuracy=0.098)
    writer.job(experiment, parent, "edge", prune="static", threshold=1.0, metrics=everything_pruned,
               extra_tags={"dead_layers": "conv2d,dense,dense_1"})

    # Two seeds per mode whose accuracies overlap, so the difference between the modes is within seed noise.
    experiment = writer.experiment("close")
    parent = writer.sweep(experiment, "close")
    for prune, accuracies in CLOSE_ACCURACIES.items():
        for seed, accuracy in enumerate(accuracies):
            metrics = synthetic_metrics(prune, 0.01, seed)
            metrics["test_accuracy"] = accuracy
            writer.job(experiment, parent, "close", prune=prune, threshold=0.01, seed=seed, metrics=metrics)

    # Two models, and dynamic runs with two L1 weights: two panels per figure and a column of other params.
    experiment = writer.experiment("variants")
    parent = writer.sweep(experiment, "mixed")
    for model in ("cnn", "lenet5"):
        writer.job(experiment, parent, "mixed", prune="static", threshold=0.05, model=model)
        for l1 in ("0.0", "0.001"):
            writer.job(experiment, parent, "mixed", prune="dynamic", threshold=0.05, model=model,
                       extra_params={"prune.l1": l1})

    writer.experiment("empty")
    experiment = writer.experiment("broken")
    writer.job(experiment, writer.sweep(experiment, "bad"), "bad", prune="static", threshold=-1.0, metrics={},
               status="FAILED", extra_tags={"error": FAILED_ERROR})


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> Store:
    root = tmp_path_factory.mktemp("mlflow")
    writer = StoreWriter(f"sqlite:///{root / 'mlflow.db'}", root)
    failed_run, nan_run, run_without_layer_csv = _fill_main(writer)
    _fill_small_cases(writer)

    experiments = {run.run_id: run for run in writer.runs}
    by_experiment: dict[str, list[LoggedRun]] = {}
    for run_id, run in experiments.items():
        name = writer.client.get_experiment(writer.client.get_run(run_id).info.experiment_id).name
        by_experiment.setdefault(name, []).append(run)
    return Store(writer.tracking_uri, by_experiment, failed_run, nan_run, run_without_layer_csv)


@pytest.fixture(scope="session")
def reports_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("reports")


@pytest.fixture(scope="session")
def main_report(store, reports_root) -> Path:
    return build_report(store.uri, "pruning", out_root=reports_root)


@pytest.fixture(scope="session")
def main_data(store):
    return collect_report_data(store.uri, "pruning")


def _figures(data) -> dict[int, object]:
    figures = make_figures(data.finished, data.summary, data.baselines, data.layers, data.histories)
    return {figure.number: figure for figure in figures}


def _main_sweep_runs(store: Store) -> list[LoggedRun]:
    return [run for run in store.runs["pruning"] if run.sweep_id == "sweep-main"]


def _finished(runs: list[LoggedRun]) -> list[LoggedRun]:
    return [
        run for run in runs
        if run.status == "FINISHED" and all(math.isfinite(run.metrics.get(key, math.nan))
                                            for key in ("test_accuracy", "sparsity"))
    ]


def _plotted_points(ax) -> list[tuple[float, float]]:
    points = []
    for line in ax.lines:
        points += [(float(x), float(y)) for x, y in zip(line.get_xdata(), line.get_ydata())]
    for collection in ax.collections:
        points += [(float(x), float(y)) for x, y in collection.get_offsets()]
    return points


def _artist(ax, gid: str):
    matches = [artist for artist in [*ax.lines, *ax.collections] if artist.get_gid() == gid]
    assert matches, f"no artist with gid {gid!r}"
    return matches[0]


# Table and files.


def test_summary_matches_logged_metrics(store, main_report):
    summary = pd.read_csv(main_report / "summary.csv")
    finished = _finished(_main_sweep_runs(store))
    dense = [run.metrics["test_accuracy"] for run in finished if run.prune == "none"]
    baseline = statistics.mean(dense)

    configs: dict[tuple, list[LoggedRun]] = {}
    for run in finished:
        key = (run.prune, None if run.prune == "none" else run.threshold)
        configs.setdefault(key, []).append(run)
    assert len(summary) == len(configs)

    for _, row in summary.iterrows():
        key = (row["prune"], None if row["prune"] == "none" else row["threshold"])
        runs = configs[key]
        accuracy = [run.metrics["test_accuracy"] for run in runs]
        sparsity = [run.metrics["sparsity"] for run in runs]
        assert row["runs"] == len(runs)
        assert row["seed_count"] == 3
        assert row["seeds"] == "0, 1, 2"
        assert row["test_accuracy_mean"] == pytest.approx(statistics.mean(accuracy), rel=1e-12)
        assert row["test_accuracy_std"] == pytest.approx(statistics.stdev(accuracy), rel=1e-9)
        assert row["sparsity_mean"] == pytest.approx(statistics.mean(sparsity), rel=1e-12, abs=1e-15)
        assert row["sparsity_std"] == pytest.approx(statistics.stdev(sparsity), rel=1e-9, abs=1e-15)
        assert row["accuracy_drop"] == pytest.approx(baseline - statistics.mean(accuracy), rel=1e-9, abs=1e-12)
        assert row["compression_ratio_mean"] == pytest.approx(
            statistics.mean(run.metrics["compression_ratio"] for run in runs), rel=1e-12)
        assert row["model_gzip_bytes_mean"] == pytest.approx(
            statistics.mean(run.metrics["model_gzip_bytes"] for run in runs), rel=1e-12)
        assert row["train_seconds_mean"] == pytest.approx(
            statistics.mean(run.metrics["train_seconds"] for run in runs), rel=1e-12)


def test_html_table_shows_logged_means(store, main_report):
    table = html_tables((main_report / "report.html").read_text(encoding="utf-8"))["summary"]
    header, rows = table[0], table[1:]
    column = {name: index for index, name in enumerate(header)}
    finished = _finished(_main_sweep_runs(store))

    static_005 = [row for row in rows if row[column["prune"]] == "static" and row[column["threshold"]] == "0.05"]
    assert len(static_005) == 1
    accuracy = [run.metrics["test_accuracy"] for run in finished if run.prune == "static" and run.threshold == 0.05]
    expected = f"{statistics.mean(accuracy):.4f} ± {statistics.stdev(accuracy):.4f}"
    assert static_005[0][column["test_accuracy"]] == expected
    assert static_005[0][column["seeds"]] == "3 (0, 1, 2)"
    assert [row[column["prune"]] for row in rows] == ["none", "static", "static", "dynamic", "dynamic"]


def test_runs_csv_has_numeric_columns(store, main_report):
    runs = pd.read_csv(main_report / "runs.csv")
    assert len(runs) == len(_main_sweep_runs(store))
    for column in ("threshold", "seed", "test_accuracy", "sparsity", "compression_ratio", "model_gzip_bytes",
                   "train_seconds", "accuracy_drop"):
        assert pd.api.types.is_float_dtype(runs[column]), column
    assert runs["pareto"].dtype == bool
    assert runs["failed"].dtype == bool


def test_report_files_are_written(main_report):
    names = {path.name for path in main_report.iterdir()}
    assert {"report.html", "report.md", "runs.csv", "summary.csv"} <= names
    for number, stem in enumerate(["accuracy_vs_sparsity", "accuracy_vs_threshold", "accuracy_vs_compression",
                                   "gzip_size_vs_accuracy", "layer_sparsity", "dynamic_epochs"], start=1):
        assert f"fig{number}_{stem}.png" in names
        assert f"fig{number}_{stem}.svg" in names
    markdown = (main_report / "report.md").read_text(encoding="utf-8")
    assert "](fig1_accuracy_vs_sparsity.png)" in markdown


def test_html_is_self_contained(main_report):
    page = (main_report / "report.html").read_text(encoding="utf-8")
    sources = re.findall(r'<img src="([^"]*)"', page)
    assert len(sources) == len(list(main_report.glob("fig*.png")))
    assert all(source.startswith("data:image/png;base64,") for source in sources)
    assert not re.search(r'(src|href)="(https?:|//)', page)
    assert "<link" not in page
    assert "<script" not in page


# Pareto front.


def _dominated_brute_force(accuracy: list[float], sparsity: list[float], index: int) -> bool:
    a, s = accuracy[index], sparsity[index]
    return any(
        other != index and accuracy[other] >= a and sparsity[other] >= s and (accuracy[other] > a or sparsity[other] > s)
        for other in range(len(accuracy))
    )


def test_pareto_mask_matches_brute_force():
    generator = random.Random(7)
    for _ in range(50):
        count = generator.randint(1, 25)
        # Few distinct values, so ties in accuracy, in sparsity and in both are common.
        accuracy = [generator.choice([0.1, 0.5, 0.9, 0.95, 0.97]) for _ in range(count)]
        sparsity = [generator.choice([0.0, 0.3, 0.5, 0.9, 1.0]) for _ in range(count)]
        expected = [not _dominated_brute_force(accuracy, sparsity, index) for index in range(count)]
        assert pareto_mask(accuracy, sparsity).tolist() == expected


def test_pareto_mask_hand_made_set():
    accuracy = [0.98, 0.97, 0.97, 0.90, 0.96, 0.50, 0.97]
    sparsity = [0.00, 0.50, 0.40, 0.95, 0.50, 1.00, 0.50]
    # 0.97 at 0.40 and 0.96 at 0.50 are dominated by 0.97 at 0.50. The two equal points at 0.50 both stay.
    assert pareto_mask(accuracy, sparsity).tolist() == [True, True, False, True, False, True, True]


def test_pareto_mask_ignores_nan():
    assert pareto_mask([math.nan, 0.9], [1.0, 0.5]).tolist() == [False, True]


def test_runs_csv_pareto_matches_brute_force(main_report):
    runs = pd.read_csv(main_report / "runs.csv")
    finished = runs[~runs["failed"]].reset_index(drop=True)
    accuracy, sparsity = finished["test_accuracy"].tolist(), finished["sparsity"].tolist()
    expected = [not _dominated_brute_force(accuracy, sparsity, index) for index in range(len(finished))]
    assert finished["pareto"].tolist() == expected
    assert not runs.loc[runs["failed"], "pareto"].any()


def test_pareto_runs_ringed_in_figure_1(main_data):
    ax = _figures(main_data)[1].figure.axes[0]
    ringed = sorted(map(tuple, _artist(ax, "pareto-runs").get_offsets().tolist()))
    front = main_data.finished[main_data.finished["pareto"]]
    assert ringed == sorted(zip(front["sparsity"], front["test_accuracy"]))


# Failed runs.


def test_failed_runs_listed_with_error(store, main_report):
    runs = pd.read_csv(main_report / "runs.csv").set_index("run_id")
    assert runs.loc[store.failed_run.run_id, "failed"]
    assert runs.loc[store.nan_run.run_id, "failed"]
    assert runs["failed"].sum() == 2

    failed_rows = html_tables((main_report / "report.html").read_text(encoding="utf-8"))["failed"][1:]
    by_id = {row[0]: row for row in failed_rows}
    assert set(by_id) == {store.failed_run.run_id, store.nan_run.run_id}
    assert by_id[store.failed_run.run_id][1] == "FAILED"
    assert FAILED_ERROR in by_id[store.failed_run.run_id]
    assert "threshold=-1.0" in by_id[store.failed_run.run_id][2]
    assert NAN_NOTE in by_id[store.nan_run.run_id]
    assert "test_accuracy" in by_id[store.nan_run.run_id][3]


def test_failed_runs_not_in_table(main_report):
    summary = pd.read_csv(main_report / "summary.csv")
    assert not ((summary["prune"] == "dynamic") & (summary["threshold"] == 0.02)).any()
    assert not (summary["threshold"] == -1.0).any()


def test_failed_runs_not_plotted(main_data):
    for figure in _figures(main_data).values():
        if figure.figure is None:
            continue
        for ax in figure.figure.axes:
            assert all(not math.isclose(x, NAN_RUN_SPARSITY) for x, _ in _plotted_points(ax)), figure.stem


def test_all_runs_failed_raises(store, tmp_path):
    with pytest.raises(ReportError, match="no finished runs in experiment 'broken' for sweep_id 'bad'"):
        build_report(store.uri, "broken", out_root=tmp_path)


# Small selections.


def test_single_run_report(store, reports_root):
    folder = build_report(store.uri, "single", out_root=reports_root)
    summary = pd.read_csv(folder / "summary.csv")
    assert folder.name == "one"
    assert len(summary) == 1
    assert summary.loc[0, "seed_count"] == 1
    assert math.isnan(summary.loc[0, "test_accuracy_std"])
    assert (folder / "fig1_accuracy_vs_sparsity.png").exists()
    assert not (folder / "fig6_dynamic_epochs.png").exists()
    page = (folder / "report.html").read_text(encoding="utf-8")
    assert "Figure 6 is left out: no finished dynamic run" in page
    assert "static and dynamic pruning are not compared" in page


def test_one_mode_report(store, reports_root):
    folder = build_report(store.uri, "onemode", out_root=reports_root)
    summary = pd.read_csv(folder / "summary.csv")
    assert summary["prune"].tolist() == ["dynamic", "dynamic"]
    assert (folder / "fig6_dynamic_epochs.png").exists()
    page = (folder / "report.html").read_text(encoding="utf-8")
    assert "Only dynamic runs finished" in page
    assert "no dense baseline" in page


@pytest.fixture(scope="session")
def variants_data(store):
    return collect_report_data(store.uri, "variants")


def test_other_params_split_configs(variants_data):
    summary = variants_data.summary
    assert summary[["model", "prune", "config"]].values.tolist() == [
        ["cnn", "static", "prune.l1=0"],
        ["cnn", "dynamic", "prune.l1=0"],
        ["cnn", "dynamic", "prune.l1=0.001"],
        ["lenet5", "static", "prune.l1=0"],
        ["lenet5", "dynamic", "prune.l1=0"],
        ["lenet5", "dynamic", "prune.l1=0.001"],
    ]
    assert "other params" in summary_table(summary).headers


def test_two_models_get_two_panels(variants_data):
    data = variants_data
    figures = _figures(data)
    for number in (1, 2, 3, 4):
        titles = [ax.get_title() for ax in figures[number].figure.axes if ax.get_visible()]
        assert titles == ["cnn on mnist5k", "lenet5 on mnist5k"], number
    comparisons = [text for text in data.findings if text.startswith("At threshold 0.05")]
    assert len(comparisons) == 4


# Thresholds as numbers.


@pytest.fixture(scope="session")
def thresholds_data(store):
    return collect_report_data(store.uri, "thresholds")


def test_table_orders_thresholds_numerically(store, reports_root):
    folder = build_report(store.uri, "thresholds", out_root=reports_root)
    summary = pd.read_csv(folder / "summary.csv")
    for prune in ("static", "dynamic"):
        assert summary.loc[summary["prune"] == prune, "threshold"].tolist() == sorted(SHUFFLED_THRESHOLDS)

    rows = html_tables((folder / "report.html").read_text(encoding="utf-8"))["summary"][1:]
    static_thresholds = [row[1] for row in rows if row[0] == "static"]
    assert static_thresholds == ["1e-05", "0.001", "0.005", "0.01", "0.05"]


def test_figure_2_thresholds_in_numeric_order(thresholds_data):
    ax = _figures(thresholds_data)[2].figure.axes[0]
    for prune in ("static", "dynamic"):
        assert _artist(ax, f"series-{prune}").get_xdata().tolist() == sorted(SHUFFLED_THRESHOLDS)
    assert ax.get_xscale() == "log"


def test_figure_2_draws_threshold_zero_linearly(extremes_data):
    ax = _figures(extremes_data)[2].figure.axes[0]
    assert ax.get_xscale() == "linear"
    assert _artist(ax, "series-static").get_xdata().tolist() == [0.0, 0.05, 1.0]
    assert ax.get_xlim()[0] < 0.0


def test_findings_compare_modes_at_each_threshold(store, main_data):
    finished = _finished(_main_sweep_runs(store))
    for threshold in (0.01, 0.05):
        accuracy = {
            prune: [run.metrics["test_accuracy"] for run in finished if run.prune == prune and run.threshold == threshold]
            for prune in ("static", "dynamic")
        }
        difference = statistics.mean(accuracy["dynamic"]) - statistics.mean(accuracy["static"])
        combined = math.hypot(statistics.stdev(accuracy["dynamic"]), statistics.stdev(accuracy["static"]))
        sentence = next(text for text in main_data.findings if text.startswith(f"At threshold {threshold:g},"))
        leader = "dynamic keeps more accuracy" if difference > 0 else "static keeps more accuracy"
        assert leader in sentence
        assert f"by {abs(difference):.4f}" in sentence
        verdict = "within seed noise" if abs(difference) <= combined else "exceeds seed noise"
        assert verdict in sentence


def test_findings_difference_within_seed_noise(store):
    findings = collect_report_data(store.uri, "close").findings
    sentence = next(text for text in findings if text.startswith("At threshold 0.01,"))
    difference = statistics.mean(CLOSE_ACCURACIES["dynamic"]) - statistics.mean(CLOSE_ACCURACIES["static"])
    combined = math.hypot(*(statistics.stdev(values) for values in CLOSE_ACCURACIES.values()))
    assert f"dynamic keeps more accuracy than static, by {difference:.4f}" in sentence
    assert f"within seed noise (|difference| {difference:.4f} <= combined std {combined:.4f})" in sentence


def test_findings_one_seed_noise_unknown(thresholds_data):
    sentences = [text for text in thresholds_data.findings if text.startswith("At threshold")]
    assert len(sentences) == len(SHUFFLED_THRESHOLDS)
    for sentence in sentences:
        assert "Seed noise is unknown, because both modes have only one seed" in sentence


# Per-epoch history.


def test_epoch_history_has_steps_below_epochs(store):
    run = next(run for run in _main_sweep_runs(store) if run.prune == "dynamic" and run.status == "FINISHED"
               and run.threshold == 0.05)
    client = MlflowClient(store.uri)
    history = load_epoch_history(client, run.run_id, client.get_run(run.run_id).data.params)
    assert history["step"].tolist() == list(range(EPOCHS))
    assert history["val_accuracy"].tolist() == pytest.approx(run.history["val_accuracy"])
    assert history["sparsity"].tolist() == pytest.approx(run.history["sparsity"])
    assert run.metrics["sparsity"] not in history["sparsity"].tolist()


def test_final_sparsity_is_last_step(store, main_report):
    runs = pd.read_csv(main_report / "runs.csv").set_index("run_id")
    for run in _finished(_main_sweep_runs(store)):
        assert runs.loc[run.run_id, "sparsity"] == pytest.approx(run.metrics["sparsity"], abs=1e-15)


def test_figure_6_plots_epochs(store, main_data):
    figure = _figures(main_data)[6].figure
    run = next(run for run in _main_sweep_runs(store) if run.prune == "dynamic" and run.status == "FINISHED")
    line = _artist(figure.axes[1], f"sparsity-{run.run_id}")
    assert line.get_xdata().tolist() == list(range(EPOCHS))
    assert line.get_ydata().tolist() == pytest.approx(run.history["sparsity"])


# Edge values.


@pytest.fixture(scope="session")
def extremes_data(store):
    return collect_report_data(store.uri, "extremes")


def test_sparsity_zero_and_one_drawn(extremes_data):
    ax = _figures(extremes_data)[1].figure.axes[0]
    low, high = ax.get_xlim()
    assert low < 0.0
    assert high > 1.0
    assert sorted(_artist(ax, "means-static").get_xdata().tolist()) == [0.0, pytest.approx(0.7768698398515702), 1.0]


def test_infinite_compression_ratio_drawn_at_right(extremes_data):
    assert np.isinf(extremes_data.runs["compression_ratio"]).sum() == 1

    figure = _figures(extremes_data)[3]
    ax = figure.figure.axes[0]
    infinite_x = _artist(ax, "infinite-static").get_offsets()[:, 0]
    finite_x = _artist(ax, "runs-static").get_offsets()[:, 0]
    assert infinite_x.min() > finite_x.max()
    assert ax.get_xlim()[1] > infinite_x.max()
    assert any("compression_ratio = inf" in note for note in figure.notes)


def test_baseline_from_dense_test_accuracy(store, extremes_data):
    data = extremes_data
    dense = {run.seed: run.metrics["dense_test_accuracy"] for run in store.runs["extremes"]}
    assert data.baselines["baseline"].tolist() == pytest.approx([statistics.mean(dense.values())])
    assert data.baselines["baseline_source"].tolist() == ["static runs (dense_test_accuracy)"]


def test_dead_layers_in_findings(extremes_data):
    assert any("layer(s) conv2d, dense, dense_1" in sentence for sentence in extremes_data.findings)


def test_missing_layer_csv_noted(store, main_data):
    assert any(store.run_without_layer_csv.run_id in note for note in main_data.notes)
    assert store.run_without_layer_csv.run_id not in set(main_data.layers["run_id"])


# Selections and errors.


def test_default_selection_is_latest_sweep(main_report):
    runs = pd.read_csv(main_report / "runs.csv")
    assert main_report.name == "sweep-main"
    assert set(runs["sweep_id"]) == {"sweep-main"}


def test_selection_by_sweep_id(store):
    data = collect_report_data(store.uri, "pruning", sweep_id="sweep-old")
    assert data.selection.name == "sweep-old"
    assert len(data.runs) == 1


def test_selection_of_all_runs(store):
    data = collect_report_data(store.uri, "pruning", all_runs=True)
    assert data.selection.name == "all"
    assert sorted(data.runs["run_id"]) == sorted(run.run_id for run in store.runs["pruning"])


def test_selection_by_run_ids(store):
    ids = [run.run_id for run in _main_sweep_runs(store)[:2]]
    first = collect_report_data(store.uri, "pruning", run_ids=ids)
    second = collect_report_data(store.uri, "pruning", run_ids=list(reversed(ids)))
    assert re.fullmatch(r"runs-[0-9a-f]{10}", first.selection.name)
    assert first.selection.name == second.selection.name
    assert sorted(first.runs["run_id"]) == sorted(ids)


def test_unknown_run_id_raises(store, tmp_path):
    with pytest.raises(ReportError, match="run id '0+' not found"):
        build_report(store.uri, "pruning", run_ids=["0" * 32], out_root=tmp_path)


def test_two_selections_raise(store, tmp_path):
    with pytest.raises(ReportError, match="at most one of sweep_id, run_ids and all_runs"):
        build_report(store.uri, "pruning", sweep_id="sweep-old", all_runs=True, out_root=tmp_path)


def test_unknown_sweep_id_raises(store, tmp_path):
    with pytest.raises(ReportError, match="no finished runs in experiment 'pruning' for sweep_id 'nope'") as caught:
        build_report(store.uri, "pruning", sweep_id="nope", out_root=tmp_path)
    assert "sweep-main, sweep-old" in str(caught.value)
    assert not (tmp_path / "nope").exists()


def test_empty_experiment_raises(store, tmp_path):
    with pytest.raises(ReportError, match="no finished runs in experiment 'empty': it has no job runs"):
        build_report(store.uri, "empty", out_root=tmp_path)


def test_unknown_experiment_raises(store, tmp_path):
    with pytest.raises(ReportError, match="experiment 'missing' not found"):
        build_report(store.uri, "missing", out_root=tmp_path)


def test_missing_store_raises_without_creating_it(tmp_path):
    database = tmp_path / "absent.db"
    with pytest.raises(ReportError, match="MLflow store not found"):
        build_report(f"sqlite:///{database}", "pruning", out_root=tmp_path)
    assert not database.exists()


# Command line.


def _cli_environment() -> dict[str, str]:
    environment = dict(os.environ)
    environment.pop("DISPLAY", None)
    environment["MPLBACKEND"] = "TkAgg"
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), environment.get("PYTHONPATH")]))
    return environment


def test_cli_headless_writes_report(store, tmp_path):
    # -X importtime lists every module the command imports on stderr, TensorFlow included if it were.
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "harness.report", "--tracking-uri", store.uri,
         "--experiment", "extremes", "--out", str(tmp_path / "out")],
        env=_cli_environment(), cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    page = Path(result.stdout.strip())
    assert page == tmp_path / "out" / "edge" / "report.html"
    assert page.exists()
    assert len(list(page.parent.glob("fig*.png"))) == 5
    imported = re.findall(r"^import time:.*\|\s*(\S+)$", result.stderr, flags=re.MULTILINE)
    assert "harness.report.figures" in imported
    assert "tensorflow" not in imported


def test_cli_unknown_sweep_exits_1(store, tmp_path, capsys):
    code = report_main(["--tracking-uri", store.uri, "--sweep-id", "nope", "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 1
    assert "error: no finished runs in experiment 'pruning' for sweep_id 'nope'" in captured.err
    assert captured.out == ""


def test_cli_rejects_two_selections(store, capsys):
    with pytest.raises(SystemExit) as caught:
        report_main(["--tracking-uri", store.uri, "--sweep-id", "sweep-main", "--all"])
    assert caught.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


# Browser.

# The browser test writes this script into a copy of report.html. After the load event it stores each
# image's naturalWidth in a data attribute, which --dump-dom prints. The report itself contains no script.
_PROBE = (
    "<script>window.addEventListener('load', () => {"
    " for (const image of document.images) image.dataset.naturalWidth = image.naturalWidth;"
    " document.body.dataset.loaded = 'yes'; });</script>"
)


@pytest.mark.browser
def test_report_renders_in_chromium(main_report, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("headless Chromium not installed: apt-get install -y chromium")
    page = (main_report / "report.html").read_text(encoding="utf-8")
    probed = tmp_path / "report.html"
    probed.write_text(page.replace("</body>", _PROBE + "</body>"), encoding="utf-8")

    result = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=5000", "--dump-dom", probed.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    assert 'data-loaded="yes"' in dom
    widths = [int(width) for width in re.findall(r'data-natural-width="(\d+)"', dom)]
    assert len(widths) == len(list(main_report.glob("fig*.png")))
    assert all(width > 0 for width in widths)
    summary_rows = html_tables(dom)["summary"]
    assert len(summary_rows) == 6
