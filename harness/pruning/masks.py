"""Binary masks on prunable kernels, enforced inside the compiled training step.

A mask is a non-trainable variable of the kernel's shape containing 1 (kept) or 0 (pruned). It is
attached to the kernel variable as a Keras constraint. Keras 3 optimizers apply a variable's
constraint right after every update (`BaseOptimizer.apply`), so a pruned weight is exactly zero
after every optimizer step, whatever the optimizer's momentum or weight decay did.
The constraint is set on the variable, not on the layer, so the layer config and the saved model
carry no pruning state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import keras
import numpy as np
from keras import ops

from harness.config import ConfigError
from harness.models import prunable_layers


@dataclass
class PrunableKernel:
    """The kernel variable of one Conv or Dense layer, and whether config leaves it dense."""

    layer: str
    kind: str
    variable: keras.Variable
    skipped: bool


def prunable_kernels(model: keras.Model, skip_layers: Sequence[str] = ()) -> list[PrunableKernel]:
    """Return the kernel of every Conv and Dense layer, marking those named in skip_layers.

    Raises:
        ConfigError: when a name in skip_layers is not a Conv or Dense layer of the model.
    """
    found = prunable_layers(model)
    names = [layer.name for layer in found]
    unknown = [name for name in skip_layers if name not in names]
    if unknown:
        raise ConfigError(
            f"prune.skip_layers must name Conv or Dense layers of model {model.name!r} "
            f"({', '.join(names)}), got {list(skip_layers)!r}; unknown: {', '.join(unknown)}")
    return [PrunableKernel(layer.name, type(layer).__name__, layer.kernel, layer.name in skip_layers)
            for layer in found]


class MaskConstraint(keras.constraints.Constraint):
    """Multiply a kernel by its mask after every optimizer step, optionally growing the mask.

    With `iterations` given, the mask also drops every weight with |w| < threshold at optimizer
    steps begin_step, begin_step + frequency, ... (0-based, counted by the optimizer), so masks
    only grow. Without it the mask is held fixed, as in fine-tuning after static pruning.

    Args:
        mask: variable of the kernel's shape with values 0.0 or 1.0.
        threshold: magnitude below which a weight is pruned at a mask update.
        iterations: the optimizer's step counter; `None` keeps the mask fixed.
        begin_step: first optimizer step with a mask update.
        frequency: optimizer steps between mask updates.
    """

    def __init__(self, mask: keras.Variable, threshold: float, iterations: Optional[keras.Variable] = None,
                 begin_step: int = 0, frequency: int = 1):
        self.mask = mask
        self.threshold = float(threshold)
        self.iterations = iterations
        self.begin_step = int(begin_step)
        self.frequency = int(frequency)

    def __call__(self, w):
        if self.iterations is not None:
            # The optimizer increments its counter after the constraints, so this is the current step.
            step = ops.cast(self.iterations, "int64")
            due = ops.logical_and(step >= self.begin_step, (step - self.begin_step) % self.frequency == 0)
            kept = ops.cast(ops.greater_equal(ops.abs(w), self.threshold), w.dtype)
            self.mask.assign(ops.where(due, self.mask * kept, self.mask))
        return w * self.mask

    def get_config(self):
        # Masks are run state, never serialised: the constraint is detached before saving.
        return {"threshold": self.threshold, "begin_step": self.begin_step, "frequency": self.frequency}


def attach_masks(kernels: Iterable[PrunableKernel], threshold: float, *,
                 iterations: Optional[keras.Variable] = None, begin_step: int = 0, frequency: int = 1,
                 initial: Optional[dict[str, np.ndarray]] = None) -> dict[str, keras.Variable]:
    """Attach a MaskConstraint to each kernel that is not skipped and return the masks by layer name.

    Args:
        initial: starting mask per layer; absent layers start from the kernel's nonzero pattern,
            so weights that are already exactly zero stay pruned.
    """
    masks = {}
    for kernel in kernels:
        if kernel.skipped:
            continue
        start = initial.get(kernel.layer) if initial else None
        if start is None:
            start = (np.asarray(kernel.variable.numpy()) != 0).astype(np.float32)
        mask = keras.Variable(start.astype(np.float32), trainable=False, name=f"{kernel.layer}_mask")
        kernel.variable.constraint = MaskConstraint(mask, threshold, iterations, begin_step, frequency)
        masks[kernel.layer] = mask
    return masks


def finalize_masks(kernels: Iterable[PrunableKernel], threshold: float) -> None:
    """Grow each attached mask by the threshold once more and write the masked weights.

    Training can end between two mask updates, so weights that fell below the threshold since the
    last update are pruned here, and the kernel leaves training exactly equal to kernel * mask.
    """
    for kernel in kernels:
        constraint = kernel.variable.constraint
        if not isinstance(constraint, MaskConstraint):
            continue
        weights = np.asarray(kernel.variable.numpy())
        mask = np.asarray(constraint.mask.numpy()) * (np.abs(weights) >= threshold)
        constraint.mask.assign(mask.astype(np.float32))
        kernel.variable.assign((weights * mask).astype(weights.dtype))


def detach_masks(kernels: Iterable[PrunableKernel]) -> None:
    """Remove the mask constraints so the model saves and trains as a plain Keras model."""
    for kernel in kernels:
        if isinstance(kernel.variable.constraint, MaskConstraint):
            kernel.variable.constraint = None
