"""Magnitude pruning of Conv and Dense kernels: masks, one-shot (static) and in-training (dynamic)."""

from harness.pruning.masks import (
    MaskConstraint,
    PrunableKernel,
    attach_masks,
    detach_masks,
    finalize_masks,
    prunable_kernels,
)
from harness.pruning.static import prune_once

__all__ = [
    "MaskConstraint",
    "PrunableKernel",
    "attach_masks",
    "detach_masks",
    "finalize_masks",
    "prunable_kernels",
    "prune_once",
]
