"""Config validation before any work, limits on both sides, and where the MLflow store resolves to."""

from __future__ import annotations

import logging

import pytest
from hydra.errors import ConfigCompositionException

from conftest import compose_config
from harness.config import ConfigError, config_errors, resolve_tracking_uri, validate
from harness.job import config_hash, run_job

# (override, key, the value as the message shows it, part of the accepted range)
INVALID = [
    ("threshold=-1", "threshold", "got -1.0", ">= 0"),
    ("threshold=nan", "threshold", "got nan", "finite"),
    ("threshold=inf", "threshold", "got inf", "finite"),
    ("train.epochs=0", "train.epochs", "got 0", ">= 1"),
    ("train.batch_size=0", "train.batch_size", "got 0", ">= 1"),
    ("train.learning_rate=0", "train.learning_rate", "got 0.0", "> 0"),
    ("train.learning_rate=-1", "train.learning_rate", "got -1.0", "> 0"),
    ("prune.fine_tune_epochs=-1", "prune.fine_tune_epochs", "got -1", ">= 0"),
    ("prune.frequency=0", "prune.frequency", "got 0", ">= 1"),
    ("prune.begin_step=-1", "prune.begin_step", "got -1", ">= 0"),
    ("prune.l1=-0.1", "prune.l1", "got -0.1", ">= 0"),
    ("prune.skip_layers=[dense9]", "prune.skip_layers", "got ['dense9']", "conv1, conv2, conv3, dense1, classifier"),
]


@pytest.mark.parametrize("override,key,value,accepted", INVALID, ids=[case[0] for case in INVALID])
def test_invalid_value_rejected(make_config, workdir, store, caplog, override, key, value, accepted):
    cfg = make_config("prune=dynamic", override)

    with caplog.at_level(logging.INFO), pytest.raises(SystemExit) as raised:
        run_job(cfg)

    message = caplog.text
    assert raised.value.code == 2
    assert key in message
    assert value in message
    assert accepted in message
    assert "training " not in message
    assert "epoch 1/" not in message
    assert not store.path.exists()
    assert not (workdir / "artifacts").exists()


@pytest.mark.parametrize("override,key,value,accepted", INVALID[:-1], ids=[case[0] for case in INVALID[:-1]])
def test_validate_message_names_key(override, key, value, accepted):
    cfg = compose_config([override])

    with pytest.raises(ConfigError) as raised:
        validate(cfg)

    assert f"{key} must be" in str(raised.value)
    assert value in str(raised.value)


@pytest.mark.parametrize("override", ["seed=-1", "seed=4294967296"])
def test_seed_out_of_range(override):
    with pytest.raises(ConfigError) as raised:
        validate(compose_config([override]))

    assert "seed must be" in str(raised.value)


def test_validate_lists_every_error():
    cfg = compose_config(["threshold=-1", "train.epochs=0", "prune.frequency=0"])

    errors = config_errors(cfg)

    assert len(errors) == 3
    assert errors[0].startswith("threshold")
    assert errors[1].startswith("train.epochs")
    assert errors[2].startswith("prune.frequency")


BOUNDARIES = ["threshold=0", "train.epochs=1", "train.batch_size=1", "train.learning_rate=1e-9",
              "prune.fine_tune_epochs=0", "prune.frequency=1", "prune.begin_step=0", "prune.l1=0",
              "train.momentum=0", "train.weight_decay=0", "dataset.max_train_samples=1"]


@pytest.mark.parametrize("override", BOUNDARIES)
def test_boundary_value_accepted(override):
    assert config_errors(compose_config([override])) == []


@pytest.mark.parametrize("override", ["train.momentum=1", "dataset.val_fraction=0", "dataset.test_fraction=1",
                                      "dataset.max_train_samples=0", "model.name=vgg", "prune.mode=sometimes",
                                      "train.optimizer=rmsprop", "tracking.experiment=''"])
def test_outside_value_rejected(override):
    key = override.split("=")[0]

    errors = config_errors(compose_config([override]))

    assert len(errors) == 1
    assert errors[0].startswith(key)


def test_wrong_type_rejected_at_compose():
    with pytest.raises(ConfigCompositionException) as raised:
        compose_config(["train.epochs=two"])

    assert "train.epochs" in str(raised.value)


@pytest.mark.parametrize("mode", ["none", "static", "dynamic"])
def test_prune_keys_valid_everywhere(mode):
    cfg = compose_config([f"prune={mode}", "prune.frequency=10", "prune.begin_step=5", "prune.l1=0.001",
                          "prune.fine_tune_epochs=1", "prune.skip_layers=[conv1]"])

    assert cfg.prune.mode == mode
    assert cfg.prune.frequency == 10
    assert config_errors(cfg) == []


def test_tracking_uri_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}"


def test_tracking_uri_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/env.db")

    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path}/env.db"


def test_tracking_uri_relative_sqlite(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    assert resolve_tracking_uri("sqlite:///stores/a.db") == f"sqlite:///{tmp_path / 'stores' / 'a.db'}"


def test_tracking_uri_absolute_kept(tmp_path):
    uri = f"sqlite:///{tmp_path}/a.db"

    assert resolve_tracking_uri(uri) == uri


def test_config_hash_ignores_storage():
    base = compose_config([])
    moved = compose_config(["tracking.uri=sqlite:////elsewhere/mlflow.db", "cache.enabled=false", "resume=false"])
    other = compose_config(["threshold=0.02"])
    reseeded = compose_config(["seed=1"])

    assert config_hash(moved) == config_hash(base)
    assert config_hash(other) != config_hash(base)
    assert config_hash(reseeded) != config_hash(base)


def test_config_hash_ignores_unused_prune_keys():
    static = compose_config(["prune=static"])
    dense = compose_config(["prune=none"])
    dynamic = compose_config(["prune=dynamic"])

    assert config_hash(compose_config(["prune=static", "prune.frequency=10", "prune.l1=0.1"])) == config_hash(static)
    assert config_hash(compose_config(["prune=none", "threshold=0.5"])) == config_hash(dense)
    assert config_hash(compose_config(["prune=dynamic", "prune.fine_tune_epochs=3"])) == config_hash(dynamic)
    assert config_hash(compose_config(["prune=dynamic", "prune.frequency=10"])) != config_hash(dynamic)
    assert config_hash(compose_config(["prune=static", "prune.fine_tune_epochs=3"])) != config_hash(static)


@pytest.mark.parametrize("override, key", [("+threshhold=0.05", "threshhold"), ("+prune.nosuch=3", "prune.nosuch"),
                                          ("+train.epoch=3", "train.epoch")])
def test_unknown_key_rejected(override, key):
    errors = config_errors(compose_config([override]))
    assert len(errors) == 1
    assert errors[0].startswith(f"{key} is not a config key")
