"""Structured config schemas, their registration with Hydra, and input validation.

This module imports no TensorFlow, so composing or printing a config stays fast.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

MODEL_NAMES = ("cnn", "lenet_300_100", "lenet5")
DATASET_NAMES = ("mnist5k", "digits", "mnist")
PRUNE_MODES = ("none", "static", "dynamic")
OPTIMIZER_NAMES = ("adam", "sgd")
DEFAULT_EXPERIMENT = "pruning"


class ConfigError(ValueError):
    """An invalid config value, reported before any training or MLflow run starts."""


@dataclass
class ModelConfig:
    # Architecture name: one of cnn, lenet_300_100, lenet5.
    name: str = MISSING


@dataclass
class DatasetConfig:
    # Data set name: one of mnist5k, digits, mnist.
    name: str = MISSING
    # Local file to read (mnist only); null looks in Keras' cache, ~/.keras/datasets/mnist.npz.
    path: Optional[str] = None
    # Fraction of the examples held out for validation (mnist5k and digits; mnist takes it from train).
    val_fraction: float = 0.1
    # Fraction of the examples held out for testing (mnist5k and digits; mnist has its own test set).
    test_fraction: float = 0.2
    # Keep at most this many training examples, stratified; null keeps all. For quick checks.
    max_train_samples: Optional[int] = None


@dataclass
class PruneConfig:
    # Pruning mode: none (dense), static (once after training) or dynamic (masked during training).
    mode: str = MISSING
    # Names of Conv/Dense layers whose kernels stay dense.
    skip_layers: List[str] = field(default_factory=list)
    # static: epochs of fine-tuning after pruning, with pruned weights held at zero.
    fine_tune_epochs: int = 0
    # dynamic: optimizer step (0-based) of the first mask update.
    begin_step: int = 0
    # dynamic: optimizer steps between mask updates.
    frequency: int = 100
    # dynamic: L1 penalty weight lambda on the prunable kernels, added to the loss as lambda * sum|w|.
    l1: float = 0.0


@dataclass
class TrainConfig:
    # Passes over the training set.
    epochs: int = 5
    # Examples per optimizer step.
    batch_size: int = 64
    # Optimizer step size.
    learning_rate: float = 0.001
    # Optimizer: adam or sgd.
    optimizer: str = "adam"
    # sgd only: momentum coefficient in [0, 1).
    momentum: float = 0.9
    # Decoupled weight decay applied by the optimizer (0 disables it).
    weight_decay: float = 0.0


@dataclass
class TrackingConfig:
    # MLflow tracking URI; null means $MLFLOW_TRACKING_URI, else sqlite:///<launch dir>/outputs/mlflow.db.
    uri: Optional[str] = None
    # MLflow experiment name.
    experiment: str = DEFAULT_EXPERIMENT


@dataclass
class CacheConfig:
    # Reuse a finished dense model with the same model, data, training settings and seed.
    enabled: bool = True
    # Cache folder; null means <launch dir>/outputs/cache.
    dir: Optional[str] = None


@dataclass
class Config:
    model: ModelConfig = MISSING
    dataset: DatasetConfig = MISSING
    prune: PruneConfig = MISSING
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    # Magnitude threshold: prunable weights with |w| < threshold become exactly zero.
    threshold: float = 0.01
    # Seed for weight initialisation and the order of training examples; the data split is fixed.
    seed: int = 0
    # Skip a job whose identical config already finished in the same MLflow store.
    resume: bool = True


def register_configs() -> None:
    """Register the schemas that the YAML files under conf/ extend."""
    store = ConfigStore.instance()
    store.store(name="base_config", node=Config)
    # The group schemas live outside the selectable groups, so `model=...` offers only real models.
    store.store(group="schema", name="model", node=ModelConfig)
    store.store(group="schema", name="dataset", node=DatasetConfig)
    store.store(group="schema", name="prune", node=PruneConfig)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check(errors: list[str], ok: bool, key: str, value: Any, accepted: str) -> None:
    if not ok:
        errors.append(f"{key} must be {accepted}, got {value!r}")


def unknown_keys(cfg: Any, schema: Optional[type] = None, prefix: str = "") -> list[str]:
    """Return the dotted keys of a composed config that its schema does not define.

    Hydra accepts `+key=value` for any new key, so a mistyped key such as `+threshhold=0.05`
    would otherwise run the job with the default threshold.
    """
    schema = schema or Config
    known = {item.name: item for item in dataclasses.fields(schema)}
    found = []
    for key in cfg.keys():
        if key == "hydra":
            continue
        name = f"{prefix}{key}"
        if key not in known:
            found.append(name)
            continue
        node_type = typing.get_type_hints(schema)[key]
        if dataclasses.is_dataclass(node_type):
            found += unknown_keys(cfg[key], node_type, f"{name}.")
    return found


def config_errors(cfg: Any) -> list[str]:
    """Return one message per invalid value of a composed config, each naming key, value and rule."""
    errors: list[str] = [f"{key} is not a config key (misspelled? `python -m harness --cfg job` lists every key)"
                         for key in unknown_keys(cfg)]
    finite = lambda v: _is_number(v) and math.isfinite(v)  # noqa: E731

    _check(errors, cfg.model.name in MODEL_NAMES, "model.name", cfg.model.name, f"one of {', '.join(MODEL_NAMES)}")
    _check(errors, cfg.dataset.name in DATASET_NAMES, "dataset.name", cfg.dataset.name,
           f"one of {', '.join(DATASET_NAMES)}")
    _check(errors, cfg.prune.mode in PRUNE_MODES, "prune.mode", cfg.prune.mode, f"one of {', '.join(PRUNE_MODES)}")
    _check(errors, cfg.train.optimizer in OPTIMIZER_NAMES, "train.optimizer", cfg.train.optimizer,
           f"one of {', '.join(OPTIMIZER_NAMES)}")

    _check(errors, finite(cfg.threshold) and cfg.threshold >= 0, "threshold", cfg.threshold,
           "a finite number >= 0 (e.g. threshold=0.01)")
    _check(errors, cfg.train.epochs >= 1, "train.epochs", cfg.train.epochs, "an integer >= 1")
    _check(errors, cfg.train.batch_size >= 1, "train.batch_size", cfg.train.batch_size, "an integer >= 1")
    _check(errors, finite(cfg.train.learning_rate) and cfg.train.learning_rate > 0, "train.learning_rate",
           cfg.train.learning_rate, "a finite number > 0 (e.g. train.learning_rate=0.001)")
    _check(errors, finite(cfg.train.momentum) and 0 <= cfg.train.momentum < 1, "train.momentum",
           cfg.train.momentum, "a number in [0, 1)")
    _check(errors, finite(cfg.train.weight_decay) and cfg.train.weight_decay >= 0, "train.weight_decay",
           cfg.train.weight_decay, "a finite number >= 0")

    _check(errors, cfg.prune.fine_tune_epochs >= 0, "prune.fine_tune_epochs", cfg.prune.fine_tune_epochs,
           "an integer >= 0")
    _check(errors, cfg.prune.frequency >= 1, "prune.frequency", cfg.prune.frequency, "an integer >= 1")
    _check(errors, cfg.prune.begin_step >= 0, "prune.begin_step", cfg.prune.begin_step, "an integer >= 0")
    _check(errors, finite(cfg.prune.l1) and cfg.prune.l1 >= 0, "prune.l1", cfg.prune.l1, "a finite number >= 0")

    for key in ("val_fraction", "test_fraction"):
        value = cfg.dataset[key]
        _check(errors, finite(value) and 0 < value < 1, f"dataset.{key}", value, "a number in (0, 1)")
    limit = cfg.dataset.max_train_samples
    _check(errors, limit is None or limit >= 1, "dataset.max_train_samples", limit, "null or an integer >= 1")
    _check(errors, _is_number(cfg.seed) and 0 <= cfg.seed < 2**32, "seed", cfg.seed,
           "an integer in [0, 2**32 - 1] (e.g. seed=0)")
    _check(errors, not cfg.tracking.experiment == "", "tracking.experiment", cfg.tracking.experiment,
           "a non-empty name")
    return errors


def validate(cfg: Any) -> None:
    """Raise ConfigError listing every invalid value of a composed config."""
    errors = config_errors(cfg)
    if errors:
        raise ConfigError("invalid config: " + "; ".join(errors))


def launch_dir() -> Path:
    """Return the directory the command was started from, also after Hydra changed directory."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return Path(HydraConfig.get().runtime.cwd)
    except ImportError:  # pragma: no cover - hydra is a dependency
        pass
    return Path.cwd()


def resolve_tracking_uri(uri: Optional[str]) -> str:
    """Return the MLflow tracking URI: the config value, $MLFLOW_TRACKING_URI, or the SQLite default.

    A relative SQLite path or a plain relative folder is made absolute against the launch
    directory, so jobs that Hydra runs in other directories all write to one store.
    """
    if not uri:
        uri = os.environ.get("MLFLOW_TRACKING_URI") or None
    if not uri:
        return f"sqlite:///{launch_dir() / 'outputs' / 'mlflow.db'}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path = Path(uri[len("sqlite:///"):])
        if not path.is_absolute() and str(path) != ":memory:":
            return f"sqlite:///{launch_dir() / path}"
    if "://" not in uri and not Path(uri).is_absolute():
        return str(launch_dir() / uri)
    return uri
