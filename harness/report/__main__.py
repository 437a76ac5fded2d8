"""Command line: python -m harness.report [--sweep-id ID | --run-ids ID ... | --all]."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from harness.config import DEFAULT_EXPERIMENT, resolve_tracking_uri
from harness.report import ReportError, build_report


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m harness.report",
        description="Write an HTML and Markdown report that compares the pruning runs of one sweep "
        "(by default the latest), and print the path of report.html.",
    )
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/outputs/mlflow.db)",
    )
    parser.add_argument(
        "--experiment", default=DEFAULT_EXPERIMENT, help=f"MLflow experiment name (default: {DEFAULT_EXPERIMENT})"
    )
    selection = parser.add_mutually_exclusive_group()
    selection.add_argument("--sweep-id", help="report on the job runs with this sweep_id tag (default: the latest sweep)")
    selection.add_argument("--run-ids", nargs="+", metavar="ID", help="report on these MLflow run ids")
    selection.add_argument("--all", action="store_true", help="report on every job run of the experiment")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder that receives one report folder per selection (default: <cwd>/outputs/reports)",
    )
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Build the report and print the path of report.html; return 1 with a message on stderr on a ReportError."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    tracking_uri = resolve_tracking_uri(args.tracking_uri)
    out_root = args.out if args.out is not None else Path.cwd() / "outputs" / "reports"
    try:
        folder = build_report(
            tracking_uri,
            args.experiment,
            sweep_id=args.sweep_id,
            run_ids=args.run_ids,
            all_runs=args.all,
            out_root=out_root,
        )
    except ReportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(folder / "report.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
