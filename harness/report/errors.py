"""The error that the report raises for a bad selection or store."""


class ReportError(ValueError):
    """A report that cannot be built from the given store, experiment or selection of runs."""
