"""Time dense and dynamic-pruning training side by side in one process and write the times as JSON.

Usage: python benchmarks/train_pairs.py OUT.json PAIRS [HYDRA OVERRIDES ...]

Each side is `harness.experiment.prepare` followed by `train_and_prune` on a config composed with
Hydra's compose API from conf/config.yaml, with prune=none or prune=dynamic added to the overrides.
Every fit starts from a freshly built model, so each one traces its training step anew. The data
set is loaded once per process and shared by all fits, which read it without changing it. One
untimed 1-epoch fit per side comes first, so neither side pays the one-off set-up of the process
(TensorFlow's thread pools and first kernel runs). The pairs alternate their order, dense first and
then dynamic first, so a drift in machine load affects both sides alike.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gc  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import keras  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

import harness.experiment  # noqa: E402
from harness.config import register_configs  # noqa: E402
from harness.experiment import prepare, train_and_prune  # noqa: E402

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
MODES = ("none", "dynamic")
load_dataset_uncached = harness.experiment.load_dataset
loaded_datasets: dict[str, object] = {}


def load_dataset_once(dataset_cfg):
    """Return the data set for this config, loading it only on the first call."""
    key = json.dumps(OmegaConf.to_container(dataset_cfg, resolve=True), sort_keys=True)
    if key not in loaded_datasets:
        loaded_datasets[key] = load_dataset_uncached(dataset_cfg)
    return loaded_datasets[key]


def compose_config(overrides: list[str]):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides)


def time_training(mode: str, overrides: list[str]) -> dict:
    """Build a fresh model and return the wall and CPU seconds of its training."""
    keras.backend.clear_session()
    gc.collect()
    job = prepare(compose_config([*overrides, f"prune={mode}"]))
    epoch_ends: list[float] = []

    def on_epoch(epoch: int, row: dict) -> None:
        epoch_ends.append(time.perf_counter())

    cpu_started = time.process_time()
    started = time.perf_counter()
    history, _ = train_and_prune(job, on_epoch=on_epoch)
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    # The epochs after the first run an already traced training step, so they show the steady state.
    steady = epoch_ends[-1] - epoch_ends[0] if len(epoch_ends) > 1 else None
    return {"mode": mode, "wall_s": wall, "cpu_s": cpu, "after_first_epoch_s": steady,
            "epochs": len(history), "final_sparsity": history[-1]["sparsity"]}


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit("usage: python benchmarks/train_pairs.py OUT.json PAIRS [HYDRA OVERRIDES ...]")
    out, pairs, overrides = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    # prepare() looks load_dataset up in harness.experiment at call time, so every fit gets this one.
    harness.experiment.load_dataset = load_dataset_once

    warm_up = [key for key in overrides if not key.startswith("train.epochs=")] + ["train.epochs=1"]
    for mode in MODES:
        time_training(mode, warm_up)

    results = []
    for index in range(pairs):
        order = MODES if index % 2 == 0 else MODES[::-1]
        pair = {mode: time_training(mode, overrides) for mode in order}
        pair["order"] = list(order)
        results.append(pair)
        print(f"pair {index + 1}/{pairs}: dense {pair['none']['wall_s']:.2f} s, "
              f"dynamic {pair['dynamic']['wall_s']:.2f} s", flush=True)
    out.write_text(json.dumps({"overrides": overrides, "pairs": results}, indent=2))


if __name__ == "__main__":
    main()
