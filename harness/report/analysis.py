"""Split failed runs off, group the rest by config, and compute baselines, the Pareto front and findings."""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import pandas as pd

MODE_ORDER = ("none", "static", "dynamic")
# Params that name where runs are stored or cached, so the seeds of one config may differ in them.
_STORAGE_PARAMS = frozenset({"seed", "resume", "dataset.path"})
_STORAGE_PARAM_PREFIXES = ("tracking.", "cache.", "hydra.")
# Params that have a column of their own in the runs frame.
_COLUMN_PARAMS = frozenset({"threshold", "prune.mode", "model.name", "dataset.name"})
# Findings name the best accuracy among configs whose mean sparsity reaches each level.
SPARSITY_LEVELS = (0.5, 0.8, 0.9, 0.95, 0.99)
GROUP_COLUMNS = ["model", "dataset", "prune", "threshold_key", "config"]


def is_finite(values: pd.Series) -> pd.Series:
    """Return a boolean mask of the values that are finite numbers."""
    return pd.Series(np.isfinite(values.to_numpy(dtype=float)), index=values.index)


def mode_rank(mode: str) -> int:
    """Return the sort position of a prune mode: none, static, dynamic, then unknown modes."""
    return MODE_ORDER.index(mode) if mode in MODE_ORDER else len(MODE_ORDER)


def failure_reason(status: str, test_accuracy: float, sparsity: float) -> str:
    """Return why a run is left out of the table and figures, or "" when it is usable."""
    if status != "FINISHED":
        return f"status {status}"
    missing = [name for name, value in (("test_accuracy", test_accuracy), ("sparsity", sparsity))
               if not math.isfinite(value)]
    if missing:
        return f"no finite {' or '.join(missing)} (missing, NaN or infinite)"
    return ""


def split_failed(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Add a failure_reason column and return (finished runs, failed runs).

    A run has failed when its status is not FINISHED, or its test_accuracy or sparsity is not a finite number.
    """
    runs = runs.copy()
    runs["failure_reason"] = [
        failure_reason(status, accuracy, sparsity)
        for status, accuracy, sparsity in zip(runs["status"], runs["test_accuracy"], runs["sparsity"])
    ]
    runs["failed"] = runs["failure_reason"] != ""
    return runs[~runs["failed"]].copy(), runs[runs["failed"]].copy()


def _normalize_param(text: object) -> str:
    """Return a param's value in one spelling, so that "0.010" and "0.01" compare equal."""
    try:
        number = float(str(text))
    except ValueError:
        return str(text).strip()
    if number.is_integer() and abs(number) < 1e15:
        return str(int(number))
    return repr(number)


def _is_config_param(key: str) -> bool:
    if key in _STORAGE_PARAMS or key in _COLUMN_PARAMS:
        return False
    return not key.startswith(_STORAGE_PARAM_PREFIXES)


def add_config_columns(finished: pd.DataFrame) -> pd.DataFrame:
    """Add the columns that identify a config: threshold_key, config_params and config.

    threshold_key is the threshold, except for prune=none runs, whose threshold prunes nothing and is NaN.
    config_params lists the other params (as (key, value) pairs) that differ between the finished runs,
    leaving out seed and the storage params, and config writes them as "key=value, ...".
    """
    finished = finished.copy()
    normalized = [
        {key: _normalize_param(value) for key, value in params.items() if _is_config_param(key)}
        for params in finished["params"]
    ]
    keys = sorted(set().union(*normalized)) if normalized else []
    varying = [key for key in keys if len({values.get(key, "") for values in normalized}) > 1]

    finished["config_params"] = [tuple((key, values.get(key, "")) for key in varying) for values in normalized]
    finished["config"] = [", ".join(f"{key}={value}" for key, value in pairs) for pairs in finished["config_params"]]
    finished["threshold_key"] = finished["threshold"].where(finished["prune"] != "none", math.nan)
    return finished


def dense_baselines(finished: pd.DataFrame) -> pd.DataFrame:
    """Return the dense test_accuracy of each model and data set.

    The source is the prune=none runs' test_accuracy, else the static runs' dense_test_accuracy. Values are
    averaged per seed first, because static runs at several thresholds share one dense model per seed.
    baseline_std is the sample standard deviation over seeds, NaN with one seed.
    """
    rows = []
    for (model, dataset), group in finished.groupby(["model", "dataset"], sort=True):
        dense = group[group["prune"] == "none"]
        if len(dense):
            per_seed = dense.groupby("seed", dropna=False)["test_accuracy"].mean()
            source = "prune=none runs (test_accuracy)"
        else:
            static = group[(group["prune"] == "static") & is_finite(group["dense_test_accuracy"])]
            per_seed = static.groupby("seed", dropna=False)["dense_test_accuracy"].mean()
            source = "static runs (dense_test_accuracy)"
        if per_seed.empty:
            continue
        rows.append(
            {
                "model": model,
                "dataset": dataset,
                "baseline": per_seed.mean(),
                "baseline_std": per_seed.std(ddof=1),
                "baseline_seeds": len(per_seed),
                "baseline_source": source,
            }
        )
    columns = ["model", "dataset", "baseline", "baseline_std", "baseline_seeds", "baseline_source"]
    return pd.DataFrame(rows, columns=columns)


def add_baseline_columns(runs: pd.DataFrame, baselines: pd.DataFrame) -> pd.DataFrame:
    """Add dense_baseline and accuracy_drop (dense_baseline - test_accuracy) to each run."""
    lookup = {(row.model, row.dataset): row.baseline for row in baselines.itertuples()}
    runs = runs.copy()
    runs["dense_baseline"] = [lookup.get(key, math.nan) for key in zip(runs["model"], runs["dataset"])]
    runs["accuracy_drop"] = runs["dense_baseline"] - runs["test_accuracy"]
    return runs


def pareto_mask(accuracy: Iterable[float], sparsity: Iterable[float]) -> np.ndarray:
    """Return which points are Pareto-optimal when both accuracy and sparsity are maximised.

    A point is Pareto-optimal when no other point has accuracy >= and sparsity >= its own with at least one
    of them strictly greater. Points with a non-finite value are never Pareto-optimal.
    """
    accuracy = np.asarray(list(accuracy), dtype=float)
    sparsity = np.asarray(list(sparsity), dtype=float)
    mask = np.zeros(len(accuracy), dtype=bool)
    valid = np.flatnonzero(np.isfinite(accuracy) & np.isfinite(sparsity))

    # Walk from the highest sparsity down. At one sparsity only the most accurate points can be optimal,
    # and only if they beat every point of higher sparsity.
    best_at_higher_sparsity = -math.inf
    for level in np.unique(sparsity[valid])[::-1]:
        at_level = valid[sparsity[valid] == level]
        top = accuracy[at_level].max()
        if top > best_at_higher_sparsity:
            mask[at_level[accuracy[at_level] == top]] = True
        best_at_higher_sparsity = max(best_at_higher_sparsity, top)
    return mask


def add_pareto_column(finished: pd.DataFrame) -> pd.DataFrame:
    """Add a boolean pareto column, computed within each model and data set."""
    finished = finished.copy()
    finished["pareto"] = False
    for _, group in finished.groupby(["model", "dataset"], sort=False):
        mask = pareto_mask(group["test_accuracy"], group["sparsity"])
        finished.loc[group.index, "pareto"] = mask
    finished["pareto"] = finished["pareto"].astype(bool)
    return finished


def format_number(value: float) -> str:
    """Return a seed, threshold or param value as short text: 0, 0.005, 1e-05."""
    if not math.isfinite(value):
        return "?"
    if float(value).is_integer():
        return str(int(value))
    return f"{value:g}"


def summarize(finished: pd.DataFrame, baselines: pd.DataFrame) -> pd.DataFrame:
    """Return one row per config with run and seed counts, means, sample standard deviations and Pareto counts.

    Rows are sorted by model, data set, prune mode (none, static, dynamic), numeric threshold and config.
    """
    lookup = {(row.model, row.dataset): row.baseline for row in baselines.itertuples()}
    rows = []
    for key, group in finished.groupby(GROUP_COLUMNS, dropna=False, sort=False):
        model, dataset, prune, threshold, config = key
        seeds = sorted(set(group["seed"].dropna()))
        accuracy_mean = group["test_accuracy"].mean()
        baseline = lookup.get((model, dataset), math.nan)
        rows.append(
            {
                "model": model,
                "dataset": dataset,
                "prune": prune,
                "threshold": threshold,
                "config": config,
                "runs": len(group),
                "seed_count": len(seeds),
                "seeds": ", ".join(format_number(seed) for seed in seeds),
                "sparsity_mean": group["sparsity"].mean(),
                "sparsity_std": group["sparsity"].std(ddof=1),
                "test_accuracy_mean": accuracy_mean,
                "test_accuracy_std": group["test_accuracy"].std(ddof=1),
                "dense_baseline": baseline,
                "accuracy_drop": baseline - accuracy_mean,
                "compression_ratio_mean": group["compression_ratio"].mean(),
                "model_gzip_bytes_mean": group["model_gzip_bytes"].mean(),
                "train_seconds_mean": group["train_seconds"].mean(),
                "pareto_runs": int(group["pareto"].sum()),
                "run_ids": " ".join(group["run_id"]),
                "config_params": group["config_params"].iloc[0],
            }
        )

    summary = pd.DataFrame(rows)
    if summary.empty:
        return summary
    summary["_rank"] = summary["prune"].map(mode_rank)
    summary = summary.sort_values(
        ["model", "dataset", "_rank", "prune", "threshold", "config"], na_position="first", kind="stable"
    )
    return summary.drop(columns="_rank").reset_index(drop=True)
