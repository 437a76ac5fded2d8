"""Run `python -m harness` with timers around its phases and write them to a JSON file.

Usage: python benchmarks/timed_job.py OUT.json [HYDRA OVERRIDES ...]

The harness code runs unchanged. This script replaces module attributes that the harness looks
up at call time (`harness.job.run_job` and functions of `harness.experiment`, `harness.tracking`,
`harness.cache` and `harness.sweep`) with timed wrappers, then starts the harness entry point with
the remaining arguments. Durations are wall-clock seconds. The `time.time()` stamps let the parent
process, which records when it launched this one, compute start-up and exit times.
"""

from __future__ import annotations

import time

SCRIPT_STARTED = time.time()

import atexit  # noqa: E402
import builtins  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import runpy  # noqa: E402
import sys  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

EXPERIMENT_MODULE = "harness.experiment"
# Seconds spent in each wrapped function, summed over calls, and the number of calls.
seconds: dict[str, float] = defaultdict(float)
calls: dict[str, int] = defaultdict(int)
stamps: dict[str, float] = {"script_started": SCRIPT_STARTED}
# (start, end) of each call of the task function. A sweep has one per job.
task_spans: list[tuple[float, float]] = []
# Stack of the wrapped functions running now. The harness runs a job in one thread, so one stack does.
active: list[str] = []
# Seconds of each wrapped function spent inside another, keyed "inner in outer", for example the
# MLflow calls that log per-epoch metrics from inside `fit`.
nested: dict[str, float] = defaultdict(float)


def timed(name: str, function):
    """Return `function` wrapped so that its wall time adds to seconds[name]."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        outer = list(active)
        active.append(name)
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            elapsed = time.perf_counter() - started
            active.pop()
            seconds[name] += elapsed
            calls[name] += 1
            for enclosing in outer:
                nested[f"{name} in {enclosing}"] += elapsed

    return wrapper


def wrap_attributes(module, prefix: str, names: tuple[str, ...]) -> None:
    for name in names:
        setattr(module, name, timed(f"{prefix}.{name}", getattr(module, name)))


def install_job_timer() -> None:
    import harness.cache
    import harness.job
    import harness.sweep
    import harness.tracking

    wrap_attributes(harness.tracking, "tracking", (
        "client_for", "ensure_experiment", "find_finished_run", "start_run", "log_metrics", "set_tags",
        "log_artifacts", "record_outcome", "terminate", "git_commit"))
    wrap_attributes(harness.cache.DenseCache, "cache", ("load_or_train",))
    wrap_attributes(harness.sweep.SweepCallback, "sweep", ("on_multirun_start", "on_multirun_end", "_build_report"))
    original_run_job = harness.job.run_job
    original_import = builtins.__import__

    def timing_import(name, globals=None, locals=None, fromlist=(), level=0):
        # The task function imports harness.experiment, and with it TensorFlow and Keras, on first use.
        if name != EXPERIMENT_MODULE or EXPERIMENT_MODULE in sys.modules:
            return original_import(name, globals, locals, fromlist, level)
        stamps["tensorflow_import_started"] = time.time()
        module = original_import(name, globals, locals, fromlist, level)
        stamps["tensorflow_imported"] = time.time()
        wrap_attributes(sys.modules[EXPERIMENT_MODULE], "experiment", (
            "prepare", "train_and_prune", "fit", "evaluate", "measure", "write_artifacts", "file_sizes",
            "sparsity_stats"))
        return module

    @functools.wraps(original_run_job)
    def run_job(cfg):
        started = time.time()
        stamps.setdefault("task_started", started)
        builtins.__import__ = timing_import
        try:
            return original_run_job(cfg)
        finally:
            builtins.__import__ = original_import
            stamps["task_ended"] = time.time()
            task_spans.append((started, stamps["task_ended"]))

    harness.job.run_job = run_job


def write_report(path: Path) -> None:
    stamps["exiting"] = time.time()
    path.write_text(json.dumps({"stamps": stamps, "task_spans": task_spans, "seconds": dict(seconds),
                                "calls": dict(calls), "nested": dict(nested)}, indent=2))


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: python benchmarks/timed_job.py OUT.json [HYDRA OVERRIDES ...]")
    out = Path(sys.argv[1])
    atexit.register(write_report, out)
    install_job_timer()
    sys.argv = ["harness", *sys.argv[2:]]
    runpy.run_module("harness", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
