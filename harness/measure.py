"""Measurements of a model as it is: exact zeros, parameter counts and file sizes."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import keras
import numpy as np
import pandas as pd

from harness.pruning.masks import PrunableKernel


@dataclass(frozen=True)
class SparsityStats:
    """Exact-zero counts of a model's prunable kernels (skipped layers excluded)."""

    prunable_params: int
    nonzero_params: int
    total_params: int
    layers: pd.DataFrame
    dead_layers: tuple[str, ...]

    @property
    def sparsity(self) -> float:
        """Fraction of prunable weights that are exactly zero."""
        if self.prunable_params == 0:
            return 0.0
        return 1.0 - self.nonzero_params / self.prunable_params

    @property
    def compression_ratio(self) -> float:
        """Prunable weights divided by non-zero prunable weights; inf when all are zero."""
        if self.nonzero_params == 0:
            return float("inf")
        return self.prunable_params / self.nonzero_params


def sparsity_stats(model: keras.Model, kernels: Sequence[PrunableKernel]) -> SparsityStats:
    """Count exact zeros in the kernels' current values."""
    rows = []
    for kernel in kernels:
        weights = np.asarray(kernel.variable.numpy())
        zeros = int(np.count_nonzero(weights == 0))
        rows.append({"layer": kernel.layer, "kind": kernel.kind, "weights": int(weights.size), "zeros": zeros,
                     "sparsity": zeros / weights.size, "skipped": kernel.skipped})
    layers = pd.DataFrame(rows, columns=["layer", "kind", "weights", "zeros", "sparsity", "skipped"])
    pruned = layers[~layers["skipped"]]
    prunable = int(pruned["weights"].sum())
    nonzero = prunable - int(pruned["zeros"].sum())
    dead = tuple(pruned.loc[pruned["zeros"] == pruned["weights"], "layer"])
    total = int(sum(int(np.prod(variable.shape)) for variable in model.weights))
    return SparsityStats(prunable, nonzero, total, layers, dead)


def file_sizes(path: Path) -> tuple[int, int]:
    """Return the size of a file in bytes and the size of its gzip compression (level 9)."""
    data = Path(path).read_bytes()
    return len(data), len(gzip.compress(data, compresslevel=9, mtime=0))
