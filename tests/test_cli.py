"""`python -m harness` end to end: sweeps, the shared store, failures, signals and single runs.

Each module-scoped fixture starts one CLI process (about 6 s of TensorFlow import plus training)
and several tests check what it left behind.
"""

from __future__ import annotations

import math
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import EPOCH_METRICS, FINAL_METRICS, Store, cli_env, cli_output, run_cli
from test_data import write_mnist_npz

GRID_EPOCHS = 2
RESULT_LINE = re.compile(r"^prune=(\w+) threshold=(\S+) sparsity=([0-9.]+) test_accuracy=([0-9.]+) "
                         r"run_id=([0-9a-f]{32})$", re.MULTILINE)
JOB_FILES = {"layer_sparsity.csv", "history.csv", "config.yaml"}
# Runs whose model does not matter to the test use the smallest one on 300 digits.
LIGHT = ["model=lenet_300_100", "dataset=digits", "dataset.max_train_samples=300"]


def runs_by_sweep(store: Store) -> dict[str, list]:
    grouped: dict[str, list] = {}
    for run in store.runs():
        grouped.setdefault(run.data.tags["sweep_id"], []).append(run)
    return grouped


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """A 2 x 2 sweep of prune mode and threshold on digits, recorded in its own store."""
    folder = tmp_path_factory.mktemp("grid")
    store = Store(folder / "mlflow.db")
    result = run_cli(["-m", "prune=dynamic,static", "threshold=0.01,0.05", "dataset=digits",
                      f"train.epochs={GRID_EPOCHS}", f"tracking.uri={store.uri}"], cwd=folder)
    return result, store


def test_grid_exit_zero(grid):
    result, _ = grid

    assert result.returncode == 0, cli_output(result)[-3000:]


def test_grid_jobs_nested(grid):
    _, store = grid

    jobs = store.runs()
    parents = store.runs(kind="sweep")
    assert len(jobs) == 4
    assert len(parents) == 1
    assert [run.info.status for run in jobs] == ["FINISHED"] * 4
    assert parents[0].info.status == "FINISHED"
    assert {run.data.tags["mlflow.parentRunId"] for run in jobs} == {parents[0].info.run_id}
    assert {run.data.tags["sweep_id"] for run in jobs} == {parents[0].data.tags["sweep_id"]}


def test_grid_tags(grid):
    _, store = grid

    for run in store.runs():
        tags = run.data.tags
        assert tags["prune"] == run.data.params["prune.mode"]
        assert tags["model"] == "cnn"
        assert tags["dataset"] == "digits"
        # The launch folder is outside any git work tree, so the tag is expected to be absent. If a
        # commit is recorded, it must be a full hash.
        commit = tags.get("mlflow.source.git.commit")
        assert commit is None or re.fullmatch(r"[0-9a-f]{40}", commit)


def test_grid_params_dotted(grid):
    _, store = grid

    pairs = set()
    for run in store.runs():
        params = run.data.params
        assert params["train.epochs"] == str(GRID_EPOCHS)
        assert params["dataset.name"] == "digits"
        assert params["model.name"] == "cnn"
        assert params["prune.frequency"] == "100"
        assert "train.batch_size" in params
        pairs.add((params["prune.mode"], float(params["threshold"])))
    assert pairs == {("dynamic", 0.01), ("dynamic", 0.05), ("static", 0.01), ("static", 0.05)}


def test_grid_thresholds_numeric(grid):
    _, store = grid

    thresholds = sorted(float(run.data.params["threshold"]) for run in store.runs())
    by_text = sorted(run.data.params["threshold"] for run in store.runs())
    assert thresholds == [0.01, 0.01, 0.05, 0.05]
    assert [float(text) for text in by_text] == thresholds


def test_grid_final_metrics(grid):
    _, store = grid

    for run in store.runs():
        metrics = run.data.metrics
        for key in FINAL_METRICS:
            assert math.isfinite(metrics[key]), key
        assert ("dense_test_accuracy" in metrics) == (run.data.params["prune.mode"] == "static")
        assert metrics["nonzero_params"] < metrics["prunable_params"]


def test_grid_epoch_steps(grid):
    _, store = grid

    for run in store.runs():
        for key in EPOCH_METRICS:
            if key == "sparsity":
                continue
            assert store.metric_steps(run.info.run_id, key) == list(range(GRID_EPOCHS)), key
        assert store.metric_steps(run.info.run_id, "sparsity") == list(range(GRID_EPOCHS + 1))


def test_grid_artifacts(grid):
    _, store = grid
    client = store.client()

    for run in store.runs():
        top = {Path(entry.path).name for entry in client.list_artifacts(run.info.run_id)}
        model = {entry.path for entry in client.list_artifacts(run.info.run_id, "model")}
        assert JOB_FILES <= top
        assert model == {"model/model.keras"}


def test_grid_summary_printed(grid):
    result, store = grid

    output = result.stdout
    run_ids = {run.info.run_id for run in store.runs()}
    assert "Sweep summary: 4 jobs" in output
    assert {match.group(5) for match in RESULT_LINE.finditer(output)} == run_ids


@pytest.fixture(scope="module")
def shared_launch(tmp_path_factory):
    """Two sweeps launched from one folder with no tracking.uri, one with hydra.job.chdir=true, one without."""
    folder = tmp_path_factory.mktemp("launch")
    # resume=false: the second sweep repeats configs of the first, and every job must run here.
    common = [*LIGHT, f"train.epochs={GRID_EPOCHS}", "resume=false"]
    moved = run_cli(["-m", "prune=dynamic,static", "prune.frequency=10", "hydra.job.chdir=true", *common], cwd=folder)
    stayed = run_cli(["-m", "prune=none,static", "threshold=0.01,0.05", "hydra.job.chdir=false", *common],
                     cwd=folder)
    return folder, moved, stayed


def test_chdir_sweeps_exit_zero(shared_launch):
    _, moved, stayed = shared_launch

    assert moved.returncode == 0, cli_output(moved)[-3000:]
    assert stayed.returncode == 0, cli_output(stayed)[-3000:]


def test_chdir_sweeps_share_store(shared_launch):
    folder, _, _ = shared_launch
    store = Store(folder / "outputs" / "mlflow.db")

    sizes = sorted(len(runs) for runs in runs_by_sweep(store).values())
    assert sizes == [2, 4]
    assert len(store.runs(kind="sweep")) == 2
    assert {run.info.status for run in store.runs(kind=None)} == {"FINISHED"}


def test_job_folders_hold_no_store(shared_launch):
    folder, _, _ = shared_launch

    job_folders = [path for path in (folder / "outputs" / "multirun").glob("*/*") if path.name.isdigit()]
    assert len(job_folders) == 6
    for job_folder in job_folders:
        for name in ("mlflow.db", "mlruns", "mlartifacts"):
            assert not list(job_folder.rglob(name)), f"{name} in {job_folder}"
    assert not (folder / "mlruns").exists()
    assert (folder / "outputs" / "mlartifacts").is_dir()


def test_frequency_valid_every_mode(shared_launch):
    folder, _, _ = shared_launch
    store = Store(folder / "outputs" / "mlflow.db")

    runs = [run for run in store.runs() if run.data.params["prune.frequency"] == "10"]
    assert sorted(run.data.params["prune.mode"] for run in runs) == ["dynamic", "static"]
    assert [run.info.status for run in runs] == ["FINISHED", "FINISHED"]


def test_model_size_falls_with_sparsity(shared_launch, tmp_path):
    folder, _, _ = shared_launch
    store = Store(folder / "outputs" / "mlflow.db")
    runs = [run for run in store.runs() if run.data.params["prune.frequency"] == "100"]
    dense = [run.data.metrics for run in runs if run.data.params["prune.mode"] == "none"]
    static = sorted((run.data.metrics for run in runs if run.data.params["prune.mode"] == "static"),
                    key=lambda metrics: metrics["sparsity"])

    assert len(dense) == 2
    assert len(static) == 2
    for metrics in static:
        assert all(metrics["model_gzip_bytes"] < other["model_gzip_bytes"] for other in dense)
    assert static[0]["sparsity"] < static[1]["sparsity"]
    assert static[1]["model_gzip_bytes"] < static[0]["model_gzip_bytes"]
    for run in runs:
        model_file = store.download(run.info.run_id, "model/model.keras", tmp_path / run.info.run_id)
        assert model_file.stat().st_size == run.data.metrics["model_bytes"]


def test_bad_job_rejected_in_sweep(tmp_path):
    store = Store(tmp_path / "mlflow.db")

    result = run_cli(["-m", "prune=static", "threshold=0.01,-1,0.05", *LIGHT, "train.epochs=1",
                      f"tracking.uri={store.uri}"], cwd=tmp_path)

    output = cli_output(result)
    summary = output.partition("Sweep summary")[2]
    jobs = store.runs()
    parents = store.runs(kind="sweep")
    assert result.returncode != 0
    assert re.search(r"threshold must be .*got -1", output)
    assert re.search(r"job 2 \[.*threshold=-1.*\]", summary)
    assert sorted(float(run.data.params["threshold"]) for run in jobs) == [0.01, 0.05]
    assert [run.info.status for run in jobs] == ["FINISHED", "FINISHED"]
    assert all("test_accuracy" in run.data.metrics for run in jobs)
    assert len(parents) == 1
    assert parents[0].info.status == "FAILED"
    assert "RUNNING" not in {run.info.status for run in store.runs(kind=None)}


def read_until(process: subprocess.Popen, pattern: str, timeout: float) -> tuple[list[str], bool]:
    """Collect the process's output lines until one matches `pattern` or `timeout` seconds pass.

    A reader thread keeps draining the pipe afterwards, so the process never blocks on a full pipe.
    Returns the list that the thread keeps appending to, and whether the pattern was seen.
    """
    lines: list[str] = []
    seen: queue.Queue = queue.Queue()

    def drain() -> None:
        for line in process.stdout:
            lines.append(line)
            if re.search(pattern, line):
                seen.put(True)
        seen.put(False)

    threading.Thread(target=drain, daemon=True).start()
    try:
        return lines, seen.get(timeout=timeout)
    except queue.Empty:
        return lines, False


def test_sigterm_kills_then_fresh_run(tmp_path):
    store = Store(tmp_path / "mlflow.db")
    process = subprocess.Popen(
        [sys.executable, "-m", "harness", "prune=dynamic", *LIGHT, "train.epochs=200",
         f"tracking.uri={store.uri}"], cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    try:
        lines, trained = read_until(process, r"epoch 1/200", timeout=120)
        process.send_signal(signal.SIGTERM)
        killed_code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
    killed = store.runs()
    client = store.client()
    history = {key: len(client.get_metric_history(killed[0].info.run_id, key)) for key in EPOCH_METRICS}

    later = run_cli(["prune=dynamic", *LIGHT, "train.epochs=2", f"tracking.uri={store.uri}"],
                    cwd=tmp_path)

    assert trained, "".join(lines)[-3000:]
    assert killed_code == 143
    assert len(killed) == 1
    assert killed[0].info.status == "KILLED"
    assert "SIGTERM" in killed[0].data.tags["error"]
    assert later.returncode == 0, cli_output(later)[-3000:]
    assert "already active" not in cli_output(later)
    results = RESULT_LINE.findall(later.stdout)
    assert len(results) == 1
    mode, threshold, sparsity, accuracy, run_id = results[0]
    runs = {run.info.run_id: run for run in store.runs()}
    assert run_id != killed[0].info.run_id
    assert runs[run_id].info.status == "FINISHED"
    assert (mode, float(threshold)) == ("dynamic", 0.01)
    assert float(sparsity) == pytest.approx(runs[run_id].data.metrics["sparsity"], abs=5e-5)
    assert float(accuracy) == pytest.approx(runs[run_id].data.metrics["test_accuracy"], abs=5e-5)
    assert f"mlflow ui --backend-store-uri {store.uri}" in later.stdout
    assert runs[killed[0].info.run_id].info.status == "KILLED"
    for key, count in history.items():
        assert len(client.get_metric_history(killed[0].info.run_id, key)) == count, key


def test_relative_dataset_path_chdir(tmp_path):
    write_mnist_npz(tmp_path / "mnist.npz")

    result = run_cli(["dataset=mnist", "dataset.path=mnist.npz", "model=lenet_300_100", "train.epochs=1",
                      "hydra.job.chdir=true", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"], cwd=tmp_path)

    assert result.returncode == 0, cli_output(result)[-3000:]
    assert len(RESULT_LINE.findall(result.stdout)) == 1


def test_single_run_config_error(tmp_path):
    store = Store(tmp_path / "mlflow.db")

    result = run_cli(["threshold=-1", f"tracking.uri={store.uri}"], cwd=tmp_path)

    output = cli_output(result)
    assert result.returncode == 2
    assert re.search(r"threshold must be .*got -1", output)
    assert "Traceback" not in output
    assert store.runs(kind=None) == []
