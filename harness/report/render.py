"""Write the report as a self-contained HTML page and as Markdown that links the PNG files next to it."""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from harness.report.analysis import format_number
from harness.report.figures import ReportFigure
from harness.report.findings import mean_std_text

# Error texts longer than this are cut in the Failed runs table; runs.csv keeps them whole.
_MAX_ERROR_CHARS = 500

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; vertical-align: top; }
th { background: #f0f0f0; }
td.text, th.text { text-align: left; }
td:not(.text) { white-space: nowrap; }
figure { margin: 2em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #444; max-width: 70em; }
dl.meta { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dl.meta dt { font-weight: bold; }
dl.meta dd { margin: 0; }
pre { white-space: pre-wrap; margin: 0; font-size: 0.85em; }
"""


@dataclass
class Table:
    """Headers and text cells of a table; columns listed in text_columns are left-aligned."""

    headers: list[str]
    rows: list[list[str]]
    text_columns: frozenset[str]


@dataclass
class ReportContent:
    """Content that the HTML page and the Markdown file both show."""

    title: str
    # (label, value) pairs shown at the top: experiment, tracking URI, selection, counts.
    metadata: list[tuple[str, str]]
    findings: list[str]
    summary: Table
    figures: list[ReportFigure]
    failed: Table
    notes: list[str]


def _number_text(value: float, digits: int) -> str:
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    # Rounding first keeps a tiny negative value such as -1e-16 from printing as -0.0000.
    return f"{round(value, digits) + 0.0:.{digits}f}"


def summary_table(summary: pd.DataFrame) -> Table:
    """Return the table of configs: one row per prune mode, threshold, model, data set and other params."""
    show_params = bool((summary["config"] != "").any())
    headers = ["prune", "threshold", "model", "dataset"]
    if show_params:
        headers.append("other params")
    headers += ["seeds", "sparsity", "test_accuracy", "accuracy drop vs dense", "compression_ratio",
                "model_gzip_bytes", "train_seconds", "Pareto-optimal runs"]

    rows = []
    for _, row in summary.iterrows():
        seeds = f"{row['seed_count']} ({row['seeds']})" if row["seeds"] else "0"
        if row["runs"] != row["seed_count"]:
            seeds += f", {row['runs']} runs"
        cells = [row["prune"], format_number(row["threshold"]) if math.isfinite(row["threshold"]) else "—",
                 row["model"], row["dataset"]]
        if show_params:
            cells.append(row["config"])
        gzip_kib = row["model_gzip_bytes_mean"] / 1024
        cells += [
            seeds,
            mean_std_text(row["sparsity_mean"], row["sparsity_std"]),
            mean_std_text(row["test_accuracy_mean"], row["test_accuracy_std"]),
            _number_text(row["accuracy_drop"], 4),
            _number_text(row["compression_ratio_mean"], 2),
            f"{gzip_kib:.1f} KiB" if math.isfinite(gzip_kib) else "n/a",
            _number_text(row["train_seconds_mean"], 1),
            f"{row['pareto_runs']} of {row['runs']}" if row["pareto_runs"] else "no",
        ]
        rows.append(cells)
    return Table(headers, rows, frozenset({"prune", "model", "dataset", "other params", "seeds"}))


def overrides_text(row: pd.Series) -> str:
    """Return a failed run's config as Hydra overrides, from its params and, where they lack a key, its tags."""
    params = row["params"] if isinstance(row["params"], dict) else {}
    parts = []
    for key, param in (("prune", "prune.mode"), ("model", "model.name"), ("dataset", "dataset.name")):
        value = params.get(param) or row[key]
        if value:
            parts.append(f"{key}={value}")
    for key in ("threshold", "seed"):
        if key in params:
            parts.append(f"{key}={params[key]}")
    return " ".join(parts) or "(no params logged)"


def failed_table(failed: pd.DataFrame) -> Table:
    """Return the table of failed runs: run id, status, overrides, why it is left out, and the logged error."""
    rows = []
    for _, row in failed.iterrows():
        error = row["error"] or ""
        if len(error) > _MAX_ERROR_CHARS:
            error = error[:_MAX_ERROR_CHARS] + " … (cut; the error column of runs.csv has all of it)"
        rows.append([row["run_id"], row["status"], overrides_text(row), row["failure_reason"], error or "(none logged)"])
    headers = ["run id", "status", "overrides", "left out because", "error"]
    return Table(headers, rows, frozenset(headers))


def _html_table(table: Table, table_id: str) -> str:
    def cell(tag: str, header: str, text: str) -> str:
        css = ' class="text"' if header in table.text_columns else ""
        return f"<{tag}{css}>{html.escape(text)}</{tag}>"

    head = "".join(cell("th", header, header) for header in table.headers)
    body = "\n".join(
        "<tr>" + "".join(cell("td", header, text) for header, text in zip(table.headers, row)) + "</tr>"
        for row in table.rows
    )
    return f'<table id="{table_id}">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>'


def _png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render_html(content: ReportContent, folder: Path) -> str:
    """Return the report page; figures are embedded from the PNG files in folder as base64 data URIs."""
    escape = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{escape(content.title)}</title>",
        f"<style>{_STYLE}</style>",
        "</head>",
        "<body>",
        f"<h1>{escape(content.title)}</h1>",
        '<dl class="meta">',
        *(f"<dt>{escape(label)}</dt><dd>{escape(value)}</dd>" for label, value in content.metadata),
        "</dl>",
        "<h2>Findings</h2>",
        "<ul>",
        *(f"<li>{escape(sentence)}</li>" for sentence in content.findings),
        "</ul>",
        "<h2>Runs by config</h2>",
        "<p>Means ± sample standard deviation over the runs of each config; one run gives no standard deviation. "
        "accuracy drop vs dense = dense baseline test_accuracy − mean test_accuracy.</p>",
        _html_table(content.summary, "summary"),
        "<h2>Figures</h2>",
    ]
    for figure in content.figures:
        if figure.figure is None:
            continue
        source = _png_data_uri(folder / f"{figure.stem}.png")
        parts += [
            f'<figure id="{figure.stem}">',
            f'<img src="{source}" alt="Figure {figure.number}: {escape(figure.title)}">',
            f"<figcaption><b>Figure {figure.number}: {escape(figure.title)}.</b> {escape(figure.caption)}</figcaption>",
            "</figure>",
        ]

    parts.append("<h2>Failed runs</h2>")
    if content.failed.rows:
        parts.append(_html_table(content.failed, "failed"))
    else:
        parts.append("<p>None: every selected run finished with a finite test_accuracy and sparsity.</p>")
    if content.notes:
        parts += ["<h2>Notes</h2>", "<ul>", *(f"<li>{escape(note)}</li>" for note in content.notes), "</ul>"]
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _markdown_table(table: Table) -> list[str]:
    lines = ["| " + " | ".join(table.headers) + " |"]
    lines.append("|" + "|".join(":---" if header in table.text_columns else "---:" for header in table.headers) + "|")
    lines += ["| " + " | ".join(_markdown_cell(text) for text in row) + " |" for row in table.rows]
    return lines


def render_markdown(content: ReportContent) -> str:
    """Return the report as Markdown; figures are links to the PNG files in the same folder."""
    lines = [f"# {content.title}", ""]
    lines += [f"- **{label}:** {value}" for label, value in content.metadata]
    lines += ["", "## Findings", ""]
    lines += [f"- {sentence}" for sentence in content.findings]
    lines += ["", "## Runs by config", "",
              "Means ± sample standard deviation over the runs of each config; one run gives no standard deviation. "
              "accuracy drop vs dense = dense baseline test_accuracy − mean test_accuracy.", ""]
    lines += _markdown_table(content.summary)
    lines += ["", "## Figures", ""]
    for figure in content.figures:
        if figure.figure is None:
            continue
        lines += [f"![Figure {figure.number}: {figure.title}]({figure.stem}.png)", "",
                  f"**Figure {figure.number}: {figure.title}.** {figure.caption} (SVG: [{figure.stem}.svg]({figure.stem}.svg))",
                  ""]
    lines += ["## Failed runs", ""]
    if content.failed.rows:
        lines += _markdown_table(content.failed)
    else:
        lines.append("None: every selected run finished with a finite test_accuracy and sparsity.")
    if content.notes:
        lines += ["", "## Notes", ""]
        lines += [f"- {note}" for note in content.notes]
    lines.append("")
    return "\n".join(lines)


def generated_at() -> str:
    """Return the current UTC time for the report header, e.g. 2025-01-31 12:00 UTC."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
