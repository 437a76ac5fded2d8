"""Write the findings of a report as sentences that state only what the numbers show."""

from __future__ import annotations

import math

import pandas as pd

from harness.report.analysis import SPARSITY_LEVELS, format_number

# The findings name at most this many Pareto-optimal runs one by one and count the rest.
_MAX_LISTED_PARETO_RUNS = 8


def mean_std_text(mean: float, std: float, digits: int = 4) -> str:
    """Return "mean ± std", or only the mean when the standard deviation is unknown (one value)."""
    if not math.isfinite(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _config_label(row: pd.Series) -> str:
    label = row["prune"]
    if row["prune"] != "none" and math.isfinite(row["threshold"]):
        label += f" threshold {format_number(row['threshold'])}"
    if row["config"]:
        label += f" ({row['config']})"
    return label


def _baseline_sentence(model: str, dataset: str, baselines: pd.DataFrame) -> str:
    match = baselines[(baselines["model"] == model) & (baselines["dataset"] == dataset)]
    if match.empty:
        return (
            f"{model} on {dataset}: there is no dense baseline, because no prune=none run finished and no static "
            "run logged dense_test_accuracy, so accuracy drops are left blank."
        )
    row = match.iloc[0]
    start = f"{model} on {dataset}: the dense baseline test_accuracy is {row['baseline']:.4f}"
    if row["baseline_seeds"] < 2:
        return f"{start}, from {row['baseline_source']} with one seed, so its seed noise is unknown."
    return f"{start} ± {row['baseline_std']:.4f} over {row['baseline_seeds']} seeds, from {row['baseline_source']}."


def _noise_sentence(dynamic: pd.Series, static: pd.Series, difference: float) -> str:
    single = [row["prune"] for row in (dynamic, static) if row["seed_count"] < 2]
    if single:
        subject = "both modes have" if len(single) == 2 else f"{single[0]} has"
        return f"Seed noise is unknown, because {subject} only one seed, so this difference may be noise."
    combined = math.hypot(dynamic["test_accuracy_std"], static["test_accuracy_std"])
    if abs(difference) <= combined:
        return f"The difference is within seed noise (|difference| {abs(difference):.4f} <= combined std {combined:.4f})."
    return f"The difference exceeds seed noise (combined std {combined:.4f})."


def _comparison_sentence(dynamic: pd.Series, static: pd.Series) -> str:
    difference = dynamic["test_accuracy_mean"] - static["test_accuracy_mean"]
    if difference > 0:
        lead = f"dynamic keeps more accuracy than static, by {difference:.4f}"
    elif difference < 0:
        lead = f"static keeps more accuracy than dynamic, by {-difference:.4f}"
    else:
        lead = "dynamic and static reach the same mean test_accuracy"

    where = f"threshold {format_number(dynamic['threshold'])}"
    if dynamic["config"] or static["config"]:
        where += f" (dynamic: {dynamic['config'] or 'same params'}; static: {static['config'] or 'same params'})"
    sentence = (
        f"At {where}, {lead}: test_accuracy "
        f"{mean_std_text(dynamic['test_accuracy_mean'], dynamic['test_accuracy_std'])} (dynamic) vs "
        f"{mean_std_text(static['test_accuracy_mean'], static['test_accuracy_std'])} (static), at sparsity "
        f"{dynamic['sparsity_mean']:.4f} vs {static['sparsity_mean']:.4f}"
    )
    if math.isfinite(dynamic["train_seconds_mean"]) and math.isfinite(static["train_seconds_mean"]):
        sentence += (
            f", with mean train_seconds {dynamic['train_seconds_mean']:.1f} vs {static['train_seconds_mean']:.1f}"
        )
    return f"{sentence}. {_noise_sentence(dynamic, static, difference)}"


def _without_prune_params(pairs: tuple) -> tuple:
    return tuple((key, value) for key, value in pairs if not key.startswith("prune."))


def _mode_comparisons(panel: pd.DataFrame) -> list[str]:
    """Return one sentence per pair of dynamic and static configs with equal threshold and equal params.

    Params under prune.* may differ, because some of them apply to one mode only.
    """
    dynamic = panel[panel["prune"] == "dynamic"]
    static = panel[panel["prune"] == "static"]
    if dynamic.empty or static.empty:
        return []

    sentences = []
    for _, dynamic_row in dynamic.iterrows():
        for _, static_row in static.iterrows():
            same_threshold = dynamic_row["threshold"] == static_row["threshold"]
            same_params = _without_prune_params(dynamic_row["config_params"]) == _without_prune_params(
                static_row["config_params"]
            )
            if same_threshold and same_params:
                sentences.append(_comparison_sentence(dynamic_row, static_row))
    if not sentences:
        sentences.append(
            "Static and dynamic runs share no threshold with equal other params, so they are compared "
            "only at equal sparsity, in figure 1."
        )
    return sentences


def _sparsity_level_sentences(panel: pd.DataFrame) -> list[str]:
    """Return sentences naming the most accurate config among those whose mean sparsity reaches each level."""
    sentences = []
    previous_best = None
    for level in SPARSITY_LEVELS:
        candidates = panel[panel["sparsity_mean"] >= level]
        if candidates.empty:
            break
        best_index = candidates["test_accuracy_mean"].idxmax()
        # A config that is best at a lower level and reaches this level is also best here, so it is named once.
        if best_index == previous_best:
            continue
        previous_best = best_index
        best = panel.loc[best_index]
        sentences.append(
            f"Among configs with mean sparsity >= {level:g}, the best mean test_accuracy is "
            f"{mean_std_text(best['test_accuracy_mean'], best['test_accuracy_std'])}, by {_config_label(best)} "
            f"at sparsity {best['sparsity_mean']:.4f}."
        )
    return sentences


def _pareto_sentence(runs: pd.DataFrame) -> str:
    front = runs[runs["pareto"]].sort_values("sparsity")
    listed = [
        f"{_config_label(row)} seed {format_number(row['seed'])} "
        f"(sparsity {row['sparsity']:.4f}, test_accuracy {row['test_accuracy']:.4f})"
        for _, row in front.head(_MAX_LISTED_PARETO_RUNS).iterrows()
    ]
    sentence = f"{len(front)} of {len(runs)} finished runs are Pareto-optimal in test_accuracy and sparsity: "
    sentence += "; ".join(listed)
    if len(front) > _MAX_LISTED_PARETO_RUNS:
        sentence += f"; and {len(front) - _MAX_LISTED_PARETO_RUNS} more (see the pareto column of runs.csv)"
    return sentence + "."


def _dead_layer_sentences(runs: pd.DataFrame) -> list[str]:
    sentences = []
    dead = runs[runs["dead_layers"].fillna("") != ""]
    for (prune, threshold), group in dead.groupby(["prune", "threshold"], sort=True):
        layers = sorted({name.strip() for text in group["dead_layers"] for name in text.split(",") if name.strip()})
        sentences.append(
            f"{prune} threshold {format_number(threshold)} pruned every weight of layer(s) {', '.join(layers)} in "
            f"{len(group)} run(s); their mean test_accuracy is {group['test_accuracy'].mean():.4f}."
        )
    return sentences


def compute_findings(
    summary: pd.DataFrame, finished: pd.DataFrame, failed: pd.DataFrame, baselines: pd.DataFrame
) -> list[str]:
    """Return the findings as sentences, per model and data set, then a count of failed runs."""
    sentences = []
    modes = set(summary["prune"])
    if not {"static", "dynamic"} <= modes:
        pruned = sorted(modes - {"none"})
        sentences.append(
            f"Only {', '.join(pruned) or 'dense (prune=none)'} runs finished in this selection, so static and "
            "dynamic pruning are not compared."
        )

    for (model, dataset), panel in summary.groupby(["model", "dataset"], sort=False):
        runs = finished[(finished["model"] == model) & (finished["dataset"] == dataset)]
        sentences.append(_baseline_sentence(model, dataset, baselines))
        sentences.extend(_mode_comparisons(panel))
        sentences.extend(_sparsity_level_sentences(panel))
        sentences.append(_pareto_sentence(runs))
        sentences.extend(_dead_layer_sentences(runs))

    if len(failed):
        sentences.append(
            f"{len(failed)} run(s) failed and are left out of the table and figures; they are listed under Failed runs."
        )
    return sentences
