"""One-shot magnitude pruning of a trained model."""

from __future__ import annotations

from typing import Iterable

import numpy as np

from harness.pruning.masks import PrunableKernel


def prune_once(kernels: Iterable[PrunableKernel], threshold: float) -> dict[str, np.ndarray]:
    """Set every weight with |w| < threshold in the kernels that are not skipped to exactly zero.

    Returns:
        The mask of each pruned layer (1.0 kept, 0.0 pruned), by layer name.
    """
    masks = {}
    for kernel in kernels:
        if kernel.skipped:
            continue
        weights = np.asarray(kernel.variable.numpy())
        mask = (np.abs(weights) >= threshold).astype(np.float32)
        kernel.variable.assign((weights * mask).astype(weights.dtype))
        masks[kernel.layer] = mask
    return masks
