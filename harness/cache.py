"""Cache of trained dense models, so static and dense jobs that share a baseline train it once.

An entry is a folder `<root>/<key>/` holding `weights.npz` (the model's weights, no optimizer
state) and `meta.json`. The key hashes exactly the config parts that determine the dense model.
An entry is built in a temporary folder and renamed into place, so readers never see a partial one, and `meta.json` carries the SHA-256 of
the weights file, so a damaged entry is detected, reported and rebuilt. An exclusive file lock per
key makes a second job that requests the same baseline wait for the first and then load it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

WEIGHTS_FILE = "weights.npz"
META_FILE = "meta.json"
# Bumped when the entry layout or the meaning of a key changes, so old entries are not read.
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Baseline:
    """A dense model's training record, whether trained now or loaded from the cache."""

    history: list[dict]
    train_seconds: float
    reused: bool
    trained_by_run: Optional[str]
    key: str


def baseline_key(cfg: DictConfig) -> str:
    """Hash the config parts that determine the trained dense model: model, data set, training, seed."""
    parts = {
        "format": FORMAT_VERSION,
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "dataset": OmegaConf.to_container(cfg.dataset, resolve=True),
        "train": OmegaConf.to_container(cfg.train, resolve=True),
        "seed": cfg.seed,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class DenseCache:
    """Dense baselines on disk under `root`, keyed by `baseline_key`."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def entry(self, key: str) -> Path:
        return self.root / key

    @contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f"{key}.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def read(self, key: str) -> Optional[dict]:
        """Return a valid entry's metadata, or None; a damaged entry is reported and removed."""
        folder = self.entry(key)
        if not folder.exists():
            return None
        problem = None
        try:
            meta = json.loads((folder / META_FILE).read_text())
            if meta.get("format") != FORMAT_VERSION:
                problem = f"format {meta.get('format')!r}, expected {FORMAT_VERSION}"
            elif _sha256(folder / WEIGHTS_FILE) != meta.get("sha256"):
                problem = "checksum of the weights file does not match"
        except (OSError, ValueError) as error:
            problem = f"unreadable ({type(error).__name__}: {error})"
        if problem is None:
            return meta
        log.warning("dense cache entry %s is damaged (%s); rebuilding it", folder, problem)
        shutil.rmtree(folder, ignore_errors=True)
        return None

    def _write(self, key: str, model, meta: dict) -> None:
        staging = self.root / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
        staging.mkdir(parents=True)
        try:
            with open(staging / WEIGHTS_FILE, "wb") as handle:
                np.savez(handle, *model.get_weights())
            meta = {**meta, "format": FORMAT_VERSION, "sha256": _sha256(staging / WEIGHTS_FILE)}
            (staging / META_FILE).write_text(json.dumps(meta, indent=2))
            os.replace(staging, self.entry(key))
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def load_or_train(self, key: str, model, train: Callable[[], list[dict]], run_id: Optional[str]) -> Baseline:
        """Load the dense weights for `key` into `model`, or call `train()` and store the result."""
        with self._locked(key):
            meta = self.read(key)
            if meta is not None:
                with np.load(self.entry(key) / WEIGHTS_FILE) as archive:
                    model.set_weights([archive[f"arr_{index}"] for index in range(len(archive.files))])
                log.info("dense baseline reused from cache entry %s (trained by run %s)", key, meta.get("run_id"))
                return Baseline(meta["history"], meta["train_seconds"], True, meta.get("run_id"), key)

            started = time.perf_counter()
            history = train()
            seconds = time.perf_counter() - started
            self._write(key, model, {"history": history, "train_seconds": seconds, "run_id": run_id,
                                     "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
            return Baseline(history, seconds, False, run_id, key)
