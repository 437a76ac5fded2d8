"""Draw the figures of a report on matplotlib's Agg canvas.

pyplot is never imported, so MPLBACKEND and DISPLAY play no part and the figures render on a headless machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullLocator

from harness.report.analysis import format_number, is_finite, mode_rank

# Colour and marker of each prune mode, the same in every figure.
MODE_STYLES = {"none": ("tab:gray", "s"), "static": ("tab:blue", "o"), "dynamic": ("tab:orange", "^")}
_OTHER_MODE_STYLE = ("tab:purple", "D")
# Sparsity lies in [0, 1]; the margin keeps points at exactly 0 and 1 inside the axes.
SPARSITY_LIMITS = (-0.03, 1.03)
# Thresholds get one tick each up to this many distinct values; beyond it matplotlib picks the ticks.
_MAX_THRESHOLD_TICKS = 10
_PANEL_COLUMNS = 3
_PNG_DPI = 100


@dataclass
class ReportFigure:
    """One figure of the report, or the reason it has no data."""

    number: int
    # File stem after "figN_", e.g. "accuracy_vs_sparsity".
    name: str
    title: str
    caption: str
    # None when the selection has no data for this figure, and notes then give the reason.
    figure: Optional[Figure]
    notes: list[str] = field(default_factory=list)

    @property
    def stem(self) -> str:
        """File name without extension, e.g. fig1_accuracy_vs_sparsity."""
        return f"fig{self.number}_{self.name}"

    def save(self, folder: Path) -> tuple[Path, Path]:
        """Write the figure as PNG and SVG into folder and return both paths."""
        png = folder / f"{self.stem}.png"
        svg = folder / f"{self.stem}.svg"
        self.figure.savefig(png, dpi=_PNG_DPI)
        # The PNG draw has placed the axes. The figure size in inches is the same for the SVG, so the
        # constrained layout does not need to run again.
        self.figure.set_layout_engine("none")
        self.figure.savefig(svg, metadata={"Date": None})
        return png, svg


def mode_style(mode: str) -> tuple[str, str]:
    """Return the (colour, marker) of a prune mode."""
    return MODE_STYLES.get(mode, _OTHER_MODE_STYLE)


def panel_keys(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """Return the sorted (model, dataset) pairs of a frame, which get one panel each in every figure."""
    return sorted(set(zip(frame["model"], frame["dataset"])))


def _in_panel(frame: pd.DataFrame, key: tuple[str, str]) -> pd.DataFrame:
    return frame[(frame["model"] == key[0]) & (frame["dataset"] == key[1])]


def model_dataset(key: tuple[str, str]) -> str:
    """Return "model on dataset" for a panel key."""
    return f"{key[0]} on {key[1]}"


def _modes(frame: pd.DataFrame) -> list[str]:
    return sorted(set(frame["prune"]), key=lambda mode: (mode_rank(mode), mode))


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _panel_grid(count: int, width: float = 5.6, height: float = 4.2) -> tuple[Figure, list[Axes]]:
    """Return a figure with one axes per panel, at most three per row; unused axes are hidden."""
    columns = min(count, _PANEL_COLUMNS)
    rows = math.ceil(count / columns)
    figure = _new_figure(width * columns, height * rows)
    axes = list(figure.subplots(rows, columns, squeeze=False).flat)
    for unused in axes[count:]:
        unused.set_visible(False)
    return figure, axes[:count]


def _error_bars(std: pd.Series) -> Optional[np.ndarray]:
    """Return error bar half-lengths, or None when no value has a spread (one seed, or all equal)."""
    values = std.fillna(0.0).to_numpy(dtype=float)
    return values if np.any(values > 0) else None


def _baseline_row(baselines: pd.DataFrame, key: tuple[str, str]) -> Optional[pd.Series]:
    match = _in_panel(baselines, key)
    return None if match.empty else match.iloc[0]


def _draw_baseline(ax: Axes, baselines: pd.DataFrame, key: tuple[str, str], vertical: bool = False) -> None:
    """Draw the dense baseline accuracy as a reference line, with a band of ± one std over seeds."""
    row = _baseline_row(baselines, key)
    if row is None:
        return
    value, std = row["baseline"], row["baseline_std"]
    line = ax.axvline if vertical else ax.axhline
    band = ax.axvspan if vertical else ax.axhspan
    line(value, color="0.25", linestyle="--", linewidth=1, label=f"dense baseline {value:.4f}", gid="dense-baseline")
    if math.isfinite(std) and std > 0:
        band(value - std, value + std, color="0.5", alpha=0.15, linewidth=0)


def _finish_panel(ax: Axes, key: tuple[str, str], xlabel: str, ylabel: str) -> None:
    ax.set_title(model_dataset(key))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")


def accuracy_vs_sparsity(finished: pd.DataFrame, summary: pd.DataFrame, baselines: pd.DataFrame) -> ReportFigure:
    """Draw figure 1: test_accuracy against measured sparsity, mean ± std per config, Pareto-optimal runs ringed."""
    result = ReportFigure(
        1,
        "accuracy_vs_sparsity",
        "Test accuracy against achieved sparsity",
        "Large markers are config means with ± one sample standard deviation over seeds on both axes, "
        "labelled with the threshold; small dots are single runs; black rings mark Pareto-optimal runs "
        "(no other run has both higher-or-equal test_accuracy and sparsity). The dashed line is the dense baseline.",
        None,
    )
    keys = panel_keys(summary)
    figure, axes = _panel_grid(len(keys))
    for ax, key in zip(axes, keys):
        runs = _in_panel(finished, key)
        configs = _in_panel(summary, key)
        for mode in _modes(configs):
            color, marker = mode_style(mode)
            mode_runs = runs[runs["prune"] == mode]
            ax.scatter(mode_runs["sparsity"], mode_runs["test_accuracy"], s=12, color=color, alpha=0.35,
                       linewidth=0, gid=f"runs-{mode}")
            mode_configs = configs[configs["prune"] == mode]
            bars = ax.errorbar(
                mode_configs["sparsity_mean"], mode_configs["test_accuracy_mean"],
                xerr=_error_bars(mode_configs["sparsity_std"]), yerr=_error_bars(mode_configs["test_accuracy_std"]),
                fmt=marker, linestyle="none", color=color, markersize=7, capsize=3, label=f"{mode} (mean ± std)",
            )
            bars.lines[0].set_gid(f"means-{mode}")
            for _, row in mode_configs.iterrows():
                if math.isfinite(row["threshold"]):
                    ax.annotate(format_number(row["threshold"]), (row["sparsity_mean"], row["test_accuracy_mean"]),
                                xytext=(5, 4), textcoords="offset points", fontsize=7, color=color)

        front = runs[runs["pareto"]].sort_values(["sparsity", "test_accuracy"])
        ax.plot(front["sparsity"], front["test_accuracy"], color="black", linestyle=":", linewidth=0.8,
                gid="pareto-front")
        ax.scatter(front["sparsity"], front["test_accuracy"], s=110, facecolors="none", edgecolors="black",
                   linewidth=1.2, zorder=5, label="Pareto-optimal run", gid="pareto-runs")
        _draw_baseline(ax, baselines, key)
        ax.set_xlim(*SPARSITY_LIMITS)
        _finish_panel(ax, key, "sparsity (fraction of prunable weights that are exactly zero)", "test_accuracy")
    result.figure = figure
    return result


def _threshold_axis(ax: Axes, thresholds: np.ndarray) -> None:
    """Use a log x axis when every threshold is > 0 and they span a decade or more, else a linear one."""
    unique = np.unique(thresholds)
    if unique.min() > 0 and unique.max() / unique.min() >= 10:
        ax.set_xscale("log")
    if len(unique) <= _MAX_THRESHOLD_TICKS:
        ax.set_xticks(unique, labels=[format_number(value) for value in unique])
        ax.xaxis.set_minor_locator(NullLocator())
    if len(unique) > 5:
        ax.tick_params(axis="x", labelrotation=45)


def accuracy_vs_threshold(summary: pd.DataFrame, baselines: pd.DataFrame) -> ReportFigure:
    """Draw figure 2: test_accuracy against the threshold, one line per prune mode and config."""
    result = ReportFigure(
        2,
        "accuracy_vs_threshold",
        "Test accuracy against threshold",
        "Config means with ± one sample standard deviation over seeds, in numeric threshold order; each point "
        "is labelled with its mean sparsity. The dashed line is the dense baseline.",
        None,
    )
    pruned = summary[(summary["prune"] != "none") & is_finite(summary["threshold"])]
    if pruned.empty:
        result.notes.append("Figure 2 is left out: no static or dynamic config with a numeric threshold finished.")
        return result

    keys = panel_keys(pruned)
    figure, axes = _panel_grid(len(keys))
    for ax, key in zip(axes, keys):
        configs = _in_panel(pruned, key)
        for (mode, config), series in configs.groupby(["prune", "config"], sort=False):
            series = series.sort_values("threshold")
            color, marker = mode_style(mode)
            label = f"{mode} ({config})" if config else mode
            bars = ax.errorbar(series["threshold"], series["test_accuracy_mean"],
                               yerr=_error_bars(series["test_accuracy_std"]), fmt=f"{marker}-", color=color,
                               markersize=6, capsize=3, linewidth=1, label=label)
            bars.lines[0].set_gid(f"series-{mode}")
            for _, row in series.iterrows():
                ax.annotate(f"s={row['sparsity_mean']:.2f}", (row["threshold"], row["test_accuracy_mean"]),
                            xytext=(4, -10), textcoords="offset points", fontsize=6, color=color)
        _draw_baseline(ax, baselines, key)
        _threshold_axis(ax, configs["threshold"].to_numpy(dtype=float))
        _finish_panel(ax, key, "threshold (prunable weights with |w| < threshold are zeroed)", "test_accuracy")
    result.figure = figure
    return result


def accuracy_vs_compression(finished: pd.DataFrame, baselines: pd.DataFrame) -> ReportFigure:
    """Draw figure 3: test_accuracy against compression_ratio on a log axis; infinite ratios sit at the right edge."""
    result = ReportFigure(
        3,
        "accuracy_vs_compression",
        "Test accuracy against compression ratio",
        "One point per run; compression_ratio = prunable params / non-zero prunable params, on a log axis. "
        "Runs that pruned every prunable weight have an infinite ratio and are drawn at the right edge, marked ∞.",
        None,
    )
    ratio = finished["compression_ratio"]
    usable = finished[(ratio > 0) & ~ratio.isna()]
    if usable.empty:
        result.notes.append("Figure 3 is left out: no finished run logged a positive compression_ratio.")
        return result
    left_out = len(finished) - len(usable)
    if left_out:
        result.notes.append(f"Figure 3 leaves out {left_out} run(s) without a positive compression_ratio.")

    keys = panel_keys(usable)
    figure, axes = _panel_grid(len(keys))
    for ax, key in zip(axes, keys):
        runs = _in_panel(usable, key)
        infinite = np.isinf(runs["compression_ratio"])
        finite_ratios = runs.loc[~infinite, "compression_ratio"]
        # Three times the largest finite ratio leaves a visible gap on the log axis before the ∞ column.
        infinity_x = 3.0 * (finite_ratios.max() if len(finite_ratios) else 1.0)
        infinity_label = "compression_ratio = inf"
        for mode in _modes(runs):
            color, marker = mode_style(mode)
            mode_runs = runs[runs["prune"] == mode]
            mode_infinite = np.isinf(mode_runs["compression_ratio"])
            ax.scatter(mode_runs.loc[~mode_infinite, "compression_ratio"], mode_runs.loc[~mode_infinite, "test_accuracy"],
                       color=color, marker=marker, s=30, label=mode, gid=f"runs-{mode}")
            if mode_infinite.any():
                ax.scatter(np.full(int(mode_infinite.sum()), infinity_x), mode_runs.loc[mode_infinite, "test_accuracy"],
                           color=color, marker=marker, s=30, edgecolors="red", linewidth=1.2, label=infinity_label,
                           gid=f"infinite-{mode}")
                infinity_label = None
        if infinite.any():
            ax.axvline(infinity_x / 1.7, color="red", linestyle=":", linewidth=0.8)
            ax.annotate("∞", (infinity_x, 1.0), xycoords=("data", "axes fraction"), xytext=(0, -12),
                        textcoords="offset points", ha="center", color="red", fontsize=12)
            result.notes.append(
                f"{model_dataset(key)}: {int(infinite.sum())} run(s) have compression_ratio = inf (every prunable "
                "weight is zero); figure 3 draws them at the right edge, marked ∞."
            )
        _draw_baseline(ax, baselines, key)
        ax.set_xscale("log")
        _finish_panel(ax, key, "compression_ratio (log scale)", "test_accuracy")
    result.figure = figure
    return result


def gzip_size_vs_accuracy(finished: pd.DataFrame, baselines: pd.DataFrame) -> ReportFigure:
    """Draw figure 4: the gzip-compressed size of the saved model against test_accuracy."""
    result = ReportFigure(
        4,
        "gzip_size_vs_accuracy",
        "Gzip model size against accuracy",
        "One point per run: model_gzip_bytes of the saved model against test_accuracy. "
        "The dashed vertical line is the dense baseline accuracy.",
        None,
    )
    usable = finished[is_finite(finished["model_gzip_bytes"])]
    if usable.empty:
        result.notes.append("Figure 4 is left out: no finished run logged model_gzip_bytes.")
        return result

    keys = panel_keys(usable)
    figure, axes = _panel_grid(len(keys))
    for ax, key in zip(axes, keys):
        runs = _in_panel(usable, key)
        for mode in _modes(runs):
            color, marker = mode_style(mode)
            mode_runs = runs[runs["prune"] == mode]
            ax.scatter(mode_runs["test_accuracy"], mode_runs["model_gzip_bytes"] / 1024, color=color, marker=marker,
                       s=30, label=mode, gid=f"runs-{mode}")
        _draw_baseline(ax, baselines, key, vertical=True)
        ax.set_ylim(bottom=0)
        _finish_panel(ax, key, "test_accuracy", "model_gzip_bytes (KiB)")
    result.figure = figure
    return result


def _config_row_label(row: pd.Series) -> str:
    label = f"{row['prune']} {format_number(row['threshold'])}"
    if row["config"]:
        label += f" ({row['config']})"
    return label


def layer_sparsity(finished: pd.DataFrame, summary: pd.DataFrame, layers: pd.DataFrame) -> ReportFigure:
    """Draw figure 5: per-layer sparsity for each pruned config, averaged over the runs with a layer_sparsity.csv."""
    result = ReportFigure(
        5,
        "layer_sparsity",
        "Per-layer sparsity",
        "Mean sparsity of each layer's prunable weights per config (rows: prune mode and threshold), from the "
        "layer_sparsity.csv artifact of each run. A layer name ends in (skipped) when prune.skip_layers kept it dense. "
        "Dense runs (prune=none) are left out.",
        None,
    )
    columns = ["run_id", "model", "dataset", "prune", "threshold_key", "config"]
    table = layers.merge(finished[columns], on="run_id")
    table = table[table["prune"] != "none"]
    if table.empty:
        result.notes.append("Figure 5 is left out: no finished static or dynamic run has a readable layer_sparsity.csv.")
        return result

    keys = panel_keys(table)
    heights = []
    for key in keys:
        heights.append(len(_in_panel(table, key).groupby(["prune", "threshold_key", "config"], dropna=False)))
    widest = max(_in_panel(table, key)["layer"].nunique() for key in keys)
    figure = _new_figure(max(7.0, 1.1 * widest + 4), sum(1.2 + 0.45 * rows for rows in heights))
    axes = list(figure.subplots(len(keys), 1, squeeze=False, height_ratios=[1.2 + 0.45 * h for h in heights]).flat)

    image = None
    for ax, key in zip(axes, keys):
        panel = _in_panel(table, key)
        layer_order = list(dict.fromkeys(panel["layer"]))
        skipped = panel.groupby("layer")["skipped"].any()
        configs = _in_panel(summary, key)
        configs = configs[configs["prune"] != "none"]

        labels, matrix = [], []
        for _, config in configs.iterrows():
            same_threshold = panel["threshold_key"] == config["threshold"]
            if not math.isfinite(config["threshold"]):
                same_threshold = panel["threshold_key"].isna()
            runs = panel[(panel["prune"] == config["prune"]) & (panel["config"] == config["config"]) & same_threshold]
            if runs.empty:
                continue
            means = runs.groupby("layer")["sparsity"].mean().reindex(layer_order)
            labels.append(f"{_config_row_label(config)}, {runs['run_id'].nunique()} run(s)")
            matrix.append(means.to_numpy(dtype=float))

        values = np.ma.masked_invalid(np.array(matrix))
        image = ax.imshow(values, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        for (row, column), value in np.ndenumerate(values.filled(np.nan)):
            text = "n/a" if not math.isfinite(value) else f"{value:.2f}"
            ax.text(column, row, text, ha="center", va="center", fontsize=7,
                    color="white" if math.isfinite(value) and value < 0.6 else "black")
        ax.set_xticks(range(len(layer_order)),
                      labels=[f"{name} (skipped)" if skipped.get(name, False) else name for name in layer_order],
                      rotation=30, ha="right")
        ax.set_yticks(range(len(labels)), labels=labels, fontsize=8)
        ax.set_title(model_dataset(key))
    figure.colorbar(image, ax=axes, label="sparsity", shrink=0.9)
    result.figure = figure
    return result


def dynamic_epochs(finished: pd.DataFrame, histories: dict[str, pd.DataFrame]) -> ReportFigure:
    """Draw figure 6: val_accuracy and sparsity per epoch of each dynamic run."""
    result = ReportFigure(
        6,
        "dynamic_epochs",
        "Validation accuracy and sparsity per epoch (dynamic runs)",
        "One line per dynamic run, coloured by threshold: val_accuracy (top) and sparsity (bottom) at the end "
        "of each epoch, from the per-epoch metric histories (steps 0..E-1).",
        None,
    )
    has_history = finished["run_id"].map(lambda run_id: run_id in histories and not histories[run_id].empty)
    runs = finished[(finished["prune"] == "dynamic") & has_history]
    if runs.empty:
        result.notes.append("Figure 6 is left out: no finished dynamic run has a per-epoch metric history.")
        return result

    keys = panel_keys(runs)
    figure = _new_figure(5.6 * len(keys), 6.4)
    axes = figure.subplots(2, len(keys), squeeze=False, sharex="col")
    thresholds = sorted(set(runs["threshold"].dropna()))
    colormap = colormaps["viridis"]
    for column, key in enumerate(keys):
        top, bottom = axes[0][column], axes[1][column]
        labelled = set()
        panel_runs = _in_panel(runs, key).sort_values(["threshold", "config", "seed"])
        for _, run in panel_runs.iterrows():
            history = histories[run["run_id"]]
            position = thresholds.index(run["threshold"]) if run["threshold"] in thresholds else 0
            color = colormap(position / max(len(thresholds) - 1, 1) * 0.9)
            label_key = (run["threshold"], run["config"])
            label = None
            if label_key not in labelled:
                labelled.add(label_key)
                label = f"threshold {format_number(run['threshold'])}" + (f" ({run['config']})" if run["config"] else "")
            top.plot(history["step"], history["val_accuracy"], marker=".", color=color, linewidth=1, label=label,
                     gid=f"val_accuracy-{run['run_id']}")
            bottom.plot(history["step"], history["sparsity"], marker=".", color=color, linewidth=1,
                        gid=f"sparsity-{run['run_id']}")
        top.set_title(model_dataset(key))
        top.set_ylabel("val_accuracy")
        top.grid(True, alpha=0.3)
        top.legend(fontsize=7, loc="best")
        bottom.set_ylim(*SPARSITY_LIMITS)
        bottom.set_ylabel("sparsity")
        bottom.set_xlabel("epoch (step)")
        bottom.grid(True, alpha=0.3)
        bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    result.figure = figure
    return result


def make_figures(
    finished: pd.DataFrame,
    summary: pd.DataFrame,
    baselines: pd.DataFrame,
    layers: pd.DataFrame,
    histories: dict[str, pd.DataFrame],
) -> list[ReportFigure]:
    """Return figures 1 to 6 in order; a figure without data has figure=None and a note saying why."""
    return [
        accuracy_vs_sparsity(finished, summary, baselines),
        accuracy_vs_threshold(summary, baselines),
        accuracy_vs_compression(finished, baselines),
        gzip_size_vs_accuracy(finished, baselines),
        layer_sparsity(finished, summary, layers),
        dynamic_epochs(finished, histories),
    ]
