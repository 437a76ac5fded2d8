"""Benchmarks of the pruning harness, printed as one table of ratios measured side by side.

Usage: python benchmarks/run.py [--repeats N] [--pairs N] [--epochs N] [--quick] [--only 1,3] [--json PATH]

Every figure compares two things measured in the same run on the same machine, with the two sides
interleaved (A B, B A, A B, ...), and is reported as the median of its repeats with the min-max
spread. Every CLI run starts in a fresh temporary folder, so it creates its own MLflow store and
dense cache. The figures, what each one times and the recorded results are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable, Optional, Sequence

BENCH_DIR = Path(__file__).resolve().parent
STATIC_THRESHOLDS = "0.005,0.01,0.02,0.05,0.1"
SEEDS = "0,1,2"
# Modules that composing or printing a config must not import.
HEAVY_MODULES = ("tensorflow", "keras", "mlflow", "sklearn", "matplotlib")
# Upper bound for one CLI run. Each sweep here takes about a minute on a busy 2-core machine.
CLI_TIMEOUT_S = 1200


class BenchmarkError(RuntimeError):
    """A benchmarked command failed. The message names the command and its log file."""


@dataclass
class Figure:
    """One row of the table: repeated measurements of a ratio, share or time, and its target."""

    label: str
    values: list[float]
    unit: str
    target: Optional[float] = None
    details: str = ""
    text_value: Optional[str] = None
    text_met: Optional[bool] = None

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def met(self) -> Optional[bool]:
        if self.text_met is not None:
            return self.text_met
        if self.target is None or not self.values:
            return None
        return self.median <= self.target

    def format_value(self, value: float) -> str:
        if self.unit == "%":
            return f"{100 * value:.1f}%"
        if self.unit == "s":
            return f"{value:.2f} s"
        return f"{value:.3f}x"

    def row(self) -> list[str]:
        if self.text_value is not None:
            median, spread = self.text_value, "-"
        elif not self.values:
            median, spread = "failed", "-"
        else:
            median = self.format_value(self.median)
            spread = f"{self.format_value(min(self.values))} - {self.format_value(max(self.values))}"
        if self.text_value is not None:
            target = "none imported"
        else:
            target = f"<= {self.format_value(self.target)}" if self.target is not None else "-"
        met = self.met()
        if met is None:
            result = "-"
        elif met:
            result = "met"
        else:
            result = "MISSED"
        count = str(len(self.values)) if self.values else "-"
        return [self.label, median, spread, count, target, result]


@dataclass
class Context:
    """Settings shared by the benchmarks and the folder their temporary runs go to."""

    root: Path
    repeats: int
    pairs: int
    # Overrides added to every run: empty, or train.epochs=N when --epochs is given.
    overrides: list[str]
    progress: Callable[[str], None]
    raw: dict = field(default_factory=dict)

    def fresh_folder(self, name: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.root))

    def epochs_text(self) -> str:
        return " ".join(self.overrides) if self.overrides else "default config (5 epochs)"


def child_env() -> dict[str, str]:
    """Return the caller's environment without MLFLOW_TRACKING_URI, so each run writes to its own folder's store."""
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def run_timed(command: Sequence[str], cwd: Path, log_name: str = "output.log") -> float:
    """Run a command in cwd with its output in cwd/log_name and return its wall time in seconds."""
    log_path = cwd / log_name
    with open(log_path, "w") as log:
        started = time.perf_counter()
        try:
            completed = subprocess.run(list(command), cwd=cwd, env=child_env(), stdout=log,
                                       stderr=subprocess.STDOUT, timeout=CLI_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise BenchmarkError(f"{' '.join(command)} timed out after {CLI_TIMEOUT_S} s. Output: {log_path}")
        wall = time.perf_counter() - started
    if completed.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        raise BenchmarkError(f"{' '.join(command)} failed with exit status {completed.returncode} in {cwd}. "
                             f"Last lines of {log_path}:\n{tail}")
    return wall


def harness_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "harness", *args]


def alternating(index: int, first, second) -> tuple:
    return (first, second) if index % 2 == 0 else (second, first)


def median_text(values: Sequence[float], unit: str = "s") -> str:
    return f"{statistics.median(values):.2f} {unit}"


# 1. Dynamic pruning's training time against dense training.

def bench_training(ctx: Context) -> list[Figure]:
    folder = ctx.fresh_folder("training")
    out = folder / "pairs.json"
    ctx.progress(f"1. dense and dynamic training, {ctx.pairs} pairs of fits, {ctx.epochs_text()}")
    run_timed([sys.executable, str(BENCH_DIR / "train_pairs.py"), str(out), str(ctx.pairs), *ctx.overrides], folder)
    pairs = json.loads(out.read_text())["pairs"]
    ctx.raw["training"] = pairs

    def ratios(key: str) -> list[float]:
        return [pair["dynamic"][key] / pair["none"][key] for pair in pairs]

    dense = [pair["none"]["wall_s"] for pair in pairs]
    dynamic = [pair["dynamic"]["wall_s"] for pair in pairs]
    cpu = ratios("cpu_s")
    whole = Figure("1a dynamic / dense, whole train_and_prune", ratios("wall_s"), "x", 1.03,
                   f"{ctx.epochs_text()}, cnn on mnist5k, batch 64. Medians: dense {median_text(dense)}, "
                   f"dynamic {median_text(dynamic)}. CPU-time ratio {statistics.median(cpu):.3f}x "
                   f"({min(cpu):.3f}x - {max(cpu):.3f}x)")
    steady = Figure("1b dynamic / dense, epochs after the 1st", ratios("after_first_epoch_s"), "x", 1.03,
                    f"epochs 2-{pairs[0]['none']['epochs']} of the same fits, after the training step is traced")
    return [whole, steady]


# 2. A static sweep over 5 thresholds against one dense job.

def bench_static_sweep(ctx: Context) -> list[Figure]:
    sides = {
        "dense": harness_command("prune=none", *ctx.overrides),
        "sweep": harness_command("-m", "prune=static", f"threshold={STATIC_THRESHOLDS}", *ctx.overrides),
    }
    walls: dict[str, list[float]] = {"dense": [], "sweep": []}
    for index in range(ctx.repeats):
        for side in alternating(index, "dense", "sweep"):
            ctx.progress(f"2. {side} CLI run, repeat {index + 1}/{ctx.repeats}")
            walls[side].append(run_timed(sides[side], ctx.fresh_folder(f"static-{side}")))
    ctx.raw["static_sweep"] = walls
    ratios = [sweep / dense for sweep, dense in zip(walls["sweep"], walls["dense"])]
    return [Figure("2  static sweep of 5 thresholds / 1 dense job", ratios, "x", 1.5,
                   f"{ctx.epochs_text()}. Medians: dense job {median_text(walls['dense'])}, "
                   f"sweep {median_text(walls['sweep'])} (CLI wall time, fresh folder each)")]


# 3. The share of a default run spent outside training and evaluation.

def outside_shares(timing: dict, process_wall: float, launched: float) -> dict[str, float]:
    """Split one timed run into its parts and return them with the two outside shares.

    Training is the time in `fit` less the MLflow calls made from it, which log per-epoch metrics.
    Evaluation is the time in `evaluate`. Everything else is outside training and evaluation.
    """
    stamps, seconds, nested = timing["stamps"], timing["seconds"], timing["nested"]
    task = sum(end - start for start, end in timing["task_spans"])
    tensorflow = stamps["tensorflow_imported"] - stamps["tensorflow_import_started"]
    mlflow_in_fit = nested.get("tracking.log_metrics in experiment.fit", 0.0)
    training = seconds["experiment.fit"] - mlflow_in_fit
    evaluation = seconds["experiment.evaluate"]
    # Count top-level MLflow calls only, because record_outcome's log_metrics and set_tags are inside it.
    tracking_total = sum(value for key, value in seconds.items()
                         if key.startswith("tracking.") and key != "tracking.git_commit")
    tracking_nested = sum(value for key, value in nested.items()
                          if key.startswith("tracking.") and " in tracking." in key)
    saving = (seconds["experiment.measure"] - nested.get("experiment.evaluate in experiment.measure", 0.0)
              + seconds.get("experiment.write_artifacts", 0.0))
    parts = {
        "process_wall": process_wall,
        "start_up": stamps["task_started"] - launched,
        "exit": launched + process_wall - stamps["task_ended"],
        "task": task,
        "tensorflow_import": tensorflow,
        "data_and_model": seconds["experiment.prepare"],
        "mlflow": tracking_total - tracking_nested,
        "training": training,
        "evaluation": evaluation,
        "saving_and_measuring": saving,
    }
    parts["other_in_task"] = task - sum(parts[key] for key in (
        "tensorflow_import", "data_and_model", "mlflow", "training", "evaluation", "saving_and_measuring"))
    parts["share_task"] = (task - tensorflow - training - evaluation) / (task - tensorflow)
    parts["share_process"] = (process_wall - training - evaluation) / process_wall
    return parts


def timed_default_run(ctx: Context, folder: Path, overrides: Sequence[str], log_name: str) -> dict[str, float]:
    out = folder / f"{log_name}.json"
    launched = time.time()
    wall = run_timed([sys.executable, str(BENCH_DIR / "timed_job.py"), str(out), *overrides], folder,
                     f"{log_name}.log")
    return outside_shares(json.loads(out.read_text()), wall, launched)


def breakdown_text(runs: list[dict[str, float]]) -> str:
    def med(key: str) -> float:
        return statistics.median(run[key] for run in runs)

    return (f"process {med('process_wall'):.1f} s = start-up {med('start_up'):.1f} + TensorFlow import "
            f"{med('tensorflow_import'):.1f} + data and model {med('data_and_model'):.1f} + MLflow {med('mlflow'):.1f} "
            f"+ training {med('training'):.1f} + evaluation {med('evaluation'):.1f} + saving and measuring "
            f"{med('saving_and_measuring'):.1f} + other {med('other_in_task'):.1f} + exit {med('exit'):.1f} s")


def bench_outside_share(ctx: Context) -> list[Figure]:
    # Each repeat runs the default experiment in a fresh folder, which creates the MLflow store, and
    # then once more in the same folder with seed=1, so that the store exists and resume skips nothing.
    fresh, existing = [], []
    for index in range(ctx.repeats):
        ctx.progress(f"3. timed default runs (new store, then existing store), repeat {index + 1}/{ctx.repeats}")
        folder = ctx.fresh_folder("default-run")
        fresh.append(timed_default_run(ctx, folder, ctx.overrides, "new-store"))
        existing.append(timed_default_run(ctx, folder, [*ctx.overrides, "seed=1"], "existing-store"))
    ctx.raw["default_run"] = {"new_store": fresh, "existing_store": existing}

    return [
        Figure("3a outside training+eval, task fn w/o TF import", [run["share_task"] for run in fresh], "%", 0.10,
               f"{ctx.epochs_text()}, new store. Medians: {breakdown_text(fresh)}"),
        Figure("3b same, second run with the store in place", [run["share_task"] for run in existing], "%", 0.10,
               f"seed=1. Medians: {breakdown_text(existing)}"),
        Figure("3c outside training+eval, whole process", [run["share_process"] for run in fresh], "%", 0.10,
               "new store; includes interpreter start-up, Hydra, the TensorFlow import and the exit"),
    ]


# 4. Composing and printing configs.

def imported_heavy_modules(args: Sequence[str], folder: Path) -> set[str]:
    """Run the CLI under -X importtime and return the heavy top-level modules it imported."""
    completed = subprocess.run([sys.executable, "-X", "importtime", "-m", "harness", *args], cwd=folder,
                               env=child_env(), capture_output=True, text=True, timeout=120, check=False)
    if completed.returncode != 0:
        raise BenchmarkError(f"python -X importtime -m harness {' '.join(args)} failed: {completed.stderr[-2000:]}")
    names = re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)$", completed.stderr, flags=re.MULTILINE)
    return {name.split(".")[0] for name in names} & set(HEAVY_MODULES)


def bench_cli(ctx: Context) -> list[Figure]:
    folder = ctx.fresh_folder("cli")
    commands = {"help": ["--help"], "cfg": ["--cfg", "job"]}
    walls: dict[str, list[float]] = {"help": [], "cfg": []}
    repeats = max(ctx.repeats, 5)
    ctx.progress(f"4. --help and --cfg job, {repeats} repeats each")
    for index in range(repeats):
        for name in alternating(index, "help", "cfg"):
            walls[name].append(run_timed(harness_command(*commands[name]), folder, f"{name}.log"))
    imported = {name: sorted(imported_heavy_modules(args, folder)) for name, args in commands.items()}
    ctx.raw["cli"] = {"walls": walls, "heavy_imports": imported}
    found = sorted(set(imported["help"]) | set(imported["cfg"]))
    return [
        Figure("4a python -m harness --help", walls["help"], "s", 2.0),
        Figure("4b python -m harness --cfg job", walls["cfg"], "s", 2.0),
        Figure("4c heavy imports in --help and --cfg job", [], "", None,
               f"checked with -X importtime for {', '.join(HEAVY_MODULES)}",
               text_value=", ".join(found) if found else "none", text_met=not found),
    ]


# 5. The seed sweep's wall time against the training time of its jobs.

def job_train_seconds(store: Path) -> list[float]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("pruning")
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`harness.kind` = 'job'")
    return [run.data.metrics["train_seconds"] for run in runs]


def bench_seed_sweep(ctx: Context) -> list[Figure]:
    walls, trained = [], []
    for index in range(ctx.repeats):
        ctx.progress(f"5. seed sweep, repeat {index + 1}/{ctx.repeats}")
        folder = ctx.fresh_folder("seed-sweep")
        walls.append(run_timed(harness_command("-m", f"seed={SEEDS}", *ctx.overrides), folder))
        seconds = job_train_seconds(folder / "outputs" / "mlflow.db")
        if len(seconds) != len(SEEDS.split(",")):
            raise BenchmarkError(f"expected {len(SEEDS.split(','))} job runs in {folder}, found {len(seconds)}")
        trained.append(sum(seconds))
    ctx.raw["seed_sweep"] = {"walls": walls, "train_seconds_sum": trained}
    return [Figure("5  seed sweep wall / sum of its train_seconds", [w / t for w, t in zip(walls, trained)], "x",
                   None, f"-m seed={SEEDS} (prune=static), {ctx.epochs_text()}. Medians: wall "
                         f"{median_text(walls)}, sum of train_seconds {median_text(trained)}")]


BENCHMARKS: dict[int, Callable[[Context], list[Figure]]] = {
    1: bench_training,
    2: bench_static_sweep,
    3: bench_outside_share,
    4: bench_cli,
    5: bench_seed_sweep,
}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_line() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = ", ".join(f"{name} {version(name)}" for name in ("tensorflow", "keras", "hydra-core", "mlflow"))
    return f"{cores} cores, {cpu_model()}; Python {platform.python_version()}, {versions}"


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def format_table(figures: list[Figure]) -> str:
    header = ["figure", "median", "spread (min - max)", "n", "target", "result"]
    rows = [header] + [figure.row() for figure in figures]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def parse_only(text: str) -> list[int]:
    try:
        chosen = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--only takes benchmark numbers such as 1,3, got {text!r}") from None
    unknown = [number for number in chosen if number not in BENCHMARKS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"--only takes numbers from {sorted(BENCHMARKS)}, got {text!r}")
    return chosen


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3,
                        help="repeats of each CLI measurement (benchmarks 2, 3, 5; at least 3; default 3)")
    parser.add_argument("--pairs", type=int, default=8,
                        help="dense/dynamic training pairs of benchmark 1 (at least 3; default 8)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="train.epochs for every benchmark (default: the config's 5, or 2 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="check that every benchmark runs: 3 repeats, 3 pairs, 2 epochs; its figures "
                             "are not comparable with those of a default run")
    parser.add_argument("--only", type=parse_only, default=sorted(BENCHMARKS),
                        help="comma-separated benchmark numbers to run, e.g. 1,4 (default: all)")
    parser.add_argument("--json", type=Path, default=None, help="also write every measurement to this JSON file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders of the runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.pairs = 3, 3
    if args.repeats < 3 or args.pairs < 3:
        parser.error(f"--repeats and --pairs must be at least 3 for a median, got {args.repeats} and {args.pairs}")
    if args.epochs is None and args.quick:
        args.epochs = 2
    if args.epochs is not None and args.epochs < 2:
        parser.error(f"--epochs must be at least 2, so benchmark 1 has epochs after the first; got {args.epochs}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()

    def progress(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f} s] {message}", file=sys.stderr, flush=True)

    root = Path(tempfile.mkdtemp(prefix="harness-bench-"))
    overrides = [f"train.epochs={args.epochs}"] if args.epochs is not None else []
    ctx = Context(root, args.repeats, args.pairs, overrides, progress)
    print(f"machine: {machine_line()}")
    print(f"load average at start: {load_average()}", flush=True)

    figures: list[Figure] = []
    failures: list[str] = []
    try:
        for number in args.only:
            try:
                figures += BENCHMARKS[number](ctx)
            except BenchmarkError as error:
                failures.append(f"benchmark {number}: {error}")
                progress(f"benchmark {number} failed: {error}")
    finally:
        if args.keep:
            progress(f"temporary runs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    total = time.perf_counter() - started
    print(f"load average at end: {load_average()}; benchmarks took {total / 60:.1f} min")
    print(f"command: python benchmarks/run.py {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip())
    print()
    print(format_table(figures))
    print()
    for figure in figures:
        if figure.details:
            print(f"{figure.label.split()[0]}: {figure.details}")
    for failure in failures:
        print(f"FAILED {failure}")
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": machine_line(), "seconds": total, "raw": ctx.raw,
                                         "figures": [vars(figure) for figure in figures], "failures": failures},
                                        indent=2, default=str))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
