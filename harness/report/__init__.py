"""Comparison report of pruning runs tracked in MLflow: a table, findings and figures per sweep.

The question a sweep answers is: at the same sparsity, which pruning keeps more accuracy, and at what cost?
This package imports no TensorFlow; it reads runs through MLflow's client API only.
"""

from harness.report.build import build_report
from harness.report.errors import ReportError

__all__ = ["ReportError", "build_report"]
