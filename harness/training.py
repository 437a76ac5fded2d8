"""Training: seeding, optimizers, compiling and fitting with one log line per epoch."""

from __future__ import annotations

import logging
import math
from typing import Callable, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from harness.data import Dataset
from harness.pruning.masks import PrunableKernel

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow and turn on deterministic TensorFlow ops."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def make_optimizer(train_cfg) -> keras.optimizers.Optimizer:
    """Build the optimizer named by train.optimizer with decoupled weight decay when it is > 0."""
    weight_decay = train_cfg.weight_decay or None
    if train_cfg.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=train_cfg.learning_rate, weight_decay=weight_decay)
    return keras.optimizers.SGD(learning_rate=train_cfg.learning_rate, momentum=train_cfg.momentum,
                                weight_decay=weight_decay)


def compile_model(model: keras.Model, train_cfg) -> keras.optimizers.Optimizer:
    """Compile for integer labels with a fresh optimizer, and return the optimizer."""
    optimizer = make_optimizer(train_cfg)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return optimizer


def count_zero_fraction(kernels: Sequence[PrunableKernel]) -> float:
    """Return the fraction of exactly-zero weights in the kernels that are not skipped."""
    pruned = [np.asarray(kernel.variable.numpy()) for kernel in kernels if not kernel.skipped]
    total = sum(weights.size for weights in pruned)
    if total == 0:
        return 0.0
    return sum(int(np.count_nonzero(weights == 0)) for weights in pruned) / total


class EpochReporter(keras.callbacks.Callback):
    """Log one line per epoch, pass the epoch's metrics on, and stop at once on a NaN or infinite loss."""

    def __init__(self, kernels: Sequence[PrunableKernel], phase: str, total_epochs: int,
                 on_epoch: Optional[Callable[[int, dict], None]] = None,
                 before_epoch_end: Optional[Callable[[int], None]] = None):
        super().__init__()
        self.kernels = kernels
        self.phase = phase
        self.total_epochs = total_epochs
        self.on_epoch = on_epoch
        self.before_epoch_end = before_epoch_end
        self.rows: list[dict] = []

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.model.stop_training = True
            raise TrainingDiverged(f"training loss became {float(loss)} at batch {batch} ({self.phase})")

    def on_epoch_end(self, epoch, logs=None):
        if self.before_epoch_end is not None:
            self.before_epoch_end(epoch)
        logs = logs or {}
        row = {
            "epoch": epoch,
            "phase": self.phase,
            "train_loss": float(logs.get("loss", math.nan)),
            "train_accuracy": float(logs.get("accuracy", math.nan)),
            "val_loss": float(logs.get("val_loss", math.nan)),
            "val_accuracy": float(logs.get("val_accuracy", math.nan)),
            "sparsity": count_zero_fraction(self.kernels),
        }
        self.rows.append(row)
        log.info("epoch %d/%d (%s): train_loss=%.4f train_accuracy=%.4f val_loss=%.4f val_accuracy=%.4f "
                 "sparsity=%.4f", epoch + 1, self.total_epochs, self.phase, row["train_loss"],
                 row["train_accuracy"], row["val_loss"], row["val_accuracy"], row["sparsity"])
        if self.on_epoch is not None:
            self.on_epoch(epoch, row)


def fit(model: keras.Model, data: Dataset, train_cfg, *, epochs: int, initial_epoch: int, total_epochs: int,
        kernels: Sequence[PrunableKernel], phase: str, on_epoch: Optional[Callable[[int, dict], None]] = None,
        before_epoch_end: Optional[Callable[[int], None]] = None) -> list[dict]:
    """Train for `epochs` epochs numbered from `initial_epoch` and return one metrics row per epoch."""
    reporter = EpochReporter(kernels, phase, total_epochs, on_epoch, before_epoch_end)
    model.fit(data.x_train, data.y_train, batch_size=train_cfg.batch_size, epochs=initial_epoch + epochs,
              initial_epoch=initial_epoch, validation_data=(data.x_val, data.y_val), shuffle=True, verbose=0,
              callbacks=[reporter])
    return reporter.rows


def evaluate(model: keras.Model, data: Dataset, batch_size: int) -> tuple[float, float]:
    """Return (test_loss, test_accuracy) on the test split."""
    loss, accuracy = model.evaluate(data.x_test, data.y_test, batch_size=max(batch_size, 256), verbose=0)
    return float(loss), float(accuracy)
