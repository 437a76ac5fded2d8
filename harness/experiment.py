"""One pruning experiment, start to end: build, train, prune, measure, record."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import logging  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Optional  # noqa: E402

import keras  # noqa: E402
import pandas as pd  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from harness import tracking  # noqa: E402
from harness.cache import Baseline, DenseCache, baseline_key  # noqa: E402
from harness.config import validate  # noqa: E402
from harness.data import Dataset, load_dataset  # noqa: E402
from harness.measure import SparsityStats, file_sizes, sparsity_stats  # noqa: E402
from harness.models import build_model  # noqa: E402
from harness.pruning import attach_masks, detach_masks, finalize_masks, prunable_kernels, prune_once  # noqa: E402
from harness.pruning.masks import PrunableKernel  # noqa: E402
from harness.training import compile_model, evaluate, fit, seed_everything  # noqa: E402

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """Measurements of one experiment: final metrics, per-epoch rows and the saved model's path."""

    metrics: dict[str, float]
    history: list[dict]
    layers: pd.DataFrame
    dead_layers: tuple[str, ...]
    model_path: Path
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class Prepared:
    """A validated config with its data and freshly built model, ready to train."""

    cfg: DictConfig
    data: Dataset
    model: keras.Model
    kernels: list[PrunableKernel]
    baseline: Optional[Baseline] = None


def prepare(cfg: DictConfig) -> Prepared:
    """Validate the config, load the data and build the model; raise ConfigError before any training."""
    validate(cfg)
    data = load_dataset(cfg.dataset)
    seed_everything(cfg.seed)
    model = build_model(cfg.model.name, data.input_shape, data.num_classes, dataset=cfg.dataset.name)
    kernels = prunable_kernels(model, list(cfg.prune.skip_layers))
    if cfg.prune.mode != "dynamic" and cfg.prune.l1 > 0:
        log.warning("prune.l1=%s is ignored with prune=%s: the L1 penalty applies to dynamic pruning only",
                    cfg.prune.l1, cfg.prune.mode)
    return Prepared(cfg, data, model, kernels)


def _total_epochs(cfg: DictConfig) -> int:
    return cfg.train.epochs + (cfg.prune.fine_tune_epochs if cfg.prune.mode == "static" else 0)


def train_dense(job: Prepared, on_epoch=None, cache: Optional[DenseCache] = None,
                run_id: Optional[str] = None) -> list[dict]:
    """Train the model without pruning for train.epochs epochs, or load it from the dense cache.

    A reused baseline's per-epoch rows are passed to `on_epoch` again, so every run carries its
    full history. The reuse and the run that trained the baseline are stored in `job.baseline`.
    """
    compile_model(job.model, job.cfg.train)

    def train() -> list[dict]:
        return fit(job.model, job.data, job.cfg.train, epochs=job.cfg.train.epochs, initial_epoch=0,
                   total_epochs=_total_epochs(job.cfg), kernels=job.kernels, phase="train", on_epoch=on_epoch)

    if cache is None:
        return train()
    job.baseline = cache.load_or_train(baseline_key(job.cfg), job.model, train, run_id)
    if job.baseline.reused and on_epoch is not None:
        for row in job.baseline.history:
            on_epoch(row["epoch"], row)
    return list(job.baseline.history)


def _run_static(job: Prepared, on_epoch, metrics: dict[str, float], cache: Optional[DenseCache],
                run_id: Optional[str]) -> list[dict]:
    cfg = job.cfg
    history = train_dense(job, on_epoch, cache, run_id)
    metrics["dense_test_loss"], metrics["dense_test_accuracy"] = evaluate(job.model, job.data, cfg.train.batch_size)
    log.info("dense model: test_accuracy=%.4f; pruning every weight with |w| < %s", metrics["dense_test_accuracy"],
             cfg.threshold)

    masks = prune_once(job.kernels, cfg.threshold)
    if cfg.prune.fine_tune_epochs > 0:
        compile_model(job.model, cfg.train)
        attach_masks(job.kernels, cfg.threshold, initial=masks)
        try:
            history += fit(job.model, job.data, cfg.train, epochs=cfg.prune.fine_tune_epochs,
                           initial_epoch=cfg.train.epochs, total_epochs=_total_epochs(cfg), kernels=job.kernels,
                           phase="fine_tune", on_epoch=on_epoch)
        finally:
            detach_masks(job.kernels)
    return history


def _run_dynamic(job: Prepared, on_epoch) -> list[dict]:
    cfg = job.cfg
    optimizer = compile_model(job.model, cfg.train)
    attach_masks(job.kernels, cfg.threshold, iterations=optimizer.iterations, begin_step=cfg.prune.begin_step,
                 frequency=cfg.prune.frequency)
    if cfg.prune.l1 > 0:
        for kernel in job.kernels:
            if not kernel.skipped:
                kernel.variable.regularizer = keras.regularizers.L1(cfg.prune.l1)

    last_epoch = cfg.train.epochs - 1

    def final_mask_on_last_epoch(epoch: int) -> None:
        # The last epoch's row already shows the model that is evaluated and saved.
        if epoch == last_epoch:
            finalize_masks(job.kernels, cfg.threshold)

    try:
        return fit(job.model, job.data, cfg.train, epochs=cfg.train.epochs, initial_epoch=0,
                   total_epochs=_total_epochs(cfg), kernels=job.kernels, phase="train", on_epoch=on_epoch,
                   before_epoch_end=final_mask_on_last_epoch)
    finally:
        finalize_masks(job.kernels, cfg.threshold)
        detach_masks(job.kernels)
        for kernel in job.kernels:
            kernel.variable.regularizer = None


def train_and_prune(job: Prepared, on_epoch=None, cache: Optional[DenseCache] = None,
                    run_id: Optional[str] = None) -> tuple[list[dict], dict[str, float]]:
    """Train according to prune.mode and return the per-epoch rows and mode-specific metrics.

    Dynamic pruning changes training itself, so only static and none jobs use the dense cache.
    """
    metrics: dict[str, float] = {}
    mode = job.cfg.prune.mode
    if mode == "static":
        history = _run_static(job, on_epoch, metrics, cache, run_id)
    elif mode == "dynamic":
        history = _run_dynamic(job, on_epoch)
    else:
        history = train_dense(job, on_epoch, cache, run_id)
    return history, metrics


def save_model(model: keras.Model, path: Path, train_cfg) -> None:
    """Save architecture and weights without optimizer state, so file sizes measure the model itself.

    Keras 3 writes a trained optimizer's variables into a .keras file (Adam keeps two per weight).
    A copy compiled with a fresh, unbuilt optimizer saves only its two scalars, and the file still
    loads compiled, so `keras.saving.load_model(path).evaluate(...)` works with no custom objects.
    """
    copy = keras.Model.from_config(model.get_config())
    copy.set_weights(model.get_weights())
    compile_model(copy, train_cfg)
    copy.save(path)


def measure(job: Prepared, out_dir: Path, train_seconds: float, extra: dict[str, float],
            history: list[dict]) -> Outcome:
    """Evaluate, save and measure the final model; every count comes from its weights as saved."""
    test_loss, test_accuracy = evaluate(job.model, job.data, job.cfg.train.batch_size)
    model_path = out_dir / "model.keras"
    save_model(job.model, model_path, job.cfg.train)
    stats: SparsityStats = sparsity_stats(job.model, job.kernels)
    model_bytes, model_gzip_bytes = file_sizes(model_path)
    metrics = {
        "test_accuracy": test_accuracy,
        "test_loss": test_loss,
        "sparsity": stats.sparsity,
        "nonzero_params": stats.nonzero_params,
        "prunable_params": stats.prunable_params,
        "total_params": stats.total_params,
        "compression_ratio": stats.compression_ratio,
        "model_bytes": model_bytes,
        "model_gzip_bytes": model_gzip_bytes,
        "train_seconds": train_seconds,
        **extra,
    }
    for name in stats.dead_layers:
        log.warning("layer %s lost all its weights at threshold=%s: its output no longer depends on its input",
                    name, job.cfg.threshold)
    return Outcome(metrics, history, stats.layers, stats.dead_layers, model_path)


def write_artifacts(cfg: DictConfig, outcome: Outcome, out_dir: Path) -> list[Path]:
    """Write the config, per-layer sparsity and history files next to the saved model."""
    config_path = out_dir / "config.yaml"
    config_path.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    layers_path = out_dir / "layer_sparsity.csv"
    outcome.layers.to_csv(layers_path, index=False)
    history_path = out_dir / "history.csv"
    pd.DataFrame(outcome.history).to_csv(history_path, index=False)
    return [config_path, layers_path, history_path]


def run_experiment(cfg: DictConfig, out_dir: Path, on_epoch=None, job: Optional[Prepared] = None,
                   cache: Optional[DenseCache] = None, run_id: Optional[str] = None) -> Outcome:
    """Run one experiment on a prepared job (or prepare it) and write its files to out_dir.

    Args:
        on_epoch: called with (epoch, row) after each epoch, row holding the EPOCH_METRICS.
        cache: dense-model cache for static and none jobs; None trains every baseline.
        run_id: the MLflow run recorded as the trainer of a newly cached baseline.
    """
    job = job or prepare(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)

    log.info("training %s on %s (prune=%s, threshold=%s, seed=%s)", cfg.model.name, cfg.dataset.name,
             cfg.prune.mode, cfg.threshold, cfg.seed)
    started = time.perf_counter()
    history, extra = train_and_prune(job, on_epoch, cache, run_id)
    train_seconds = time.perf_counter() - started

    outcome = measure(job, out_dir, train_seconds, extra, history)
    if job.baseline is not None:
        outcome.tags.update({"baseline_reused": str(job.baseline.reused).lower(),
                             "baseline_run_id": job.baseline.trained_by_run or "unknown",
                             "baseline_key": job.baseline.key})
        outcome.metrics["dense_train_seconds"] = job.baseline.train_seconds
    write_artifacts(cfg, outcome, out_dir)
    return outcome


def summary_line(cfg: DictConfig, metrics: dict[str, Any], run_id: str) -> str:
    """Return the one-line result of a run."""
    return (f"prune={cfg.prune.mode} threshold={cfg.threshold} sparsity={metrics['sparsity']:.4f} "
            f"test_accuracy={metrics['test_accuracy']:.4f} run_id={run_id}")


__all__ = ["Outcome", "Prepared", "prepare", "run_experiment", "summary_line", "tracking"]
