"""Resumable training checkpoints: written atomically, only the latest kept.

Layout of `<out_dir>/checkpoint/`:
    state.pt            student weights, optimizer, LR scheduler, RNG states of every process (torch.save)
    trainer_state.json  step, data position (samples consumed), metrics history, the config it was made with

The folder is written under a temporary name and renamed into place (`staging_dir`), so a process killed
at any instant leaves either the previous checkpoint or the new one, never a torn one. `publish_dir`
swaps through `.checkpoint.old`; a kill between its two renames leaves only that folder, which
:func:`load_checkpoint` falls back to.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compactlm.manifest import atomic_write_json, staging_dir

CHECKPOINT = "checkpoint"
STATE = "state.pt"
TRAINER_STATE = "trainer_state.json"


def rng_state() -> dict[str, Any]:
    """Every random-number generator the training step can touch, as tensors and plain Python values."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(out_dir: Path, state: dict[str, Any], trainer_state: dict[str, Any]) -> Path:
    """Write `state` (tensors) and `trainer_state` (JSON) as the new latest checkpoint; returns its folder."""
    final = Path(out_dir) / CHECKPOINT
    with staging_dir(final) as tmp:
        torch.save(state, tmp / STATE)
        _fsync_file(tmp / STATE)
        atomic_write_json(tmp / TRAINER_STATE, trainer_state)
    return final


def find_checkpoint(out_dir: Path) -> Path | None:
    """The latest complete checkpoint folder in `out_dir`, if any."""
    for name in (CHECKPOINT, f".{CHECKPOINT}.old"):
        folder = Path(out_dir) / name
        if (folder / STATE).is_file() and (folder / TRAINER_STATE).is_file():
            return folder
    return None


def load_checkpoint(out_dir: Path, map_location: str = "cpu") -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(state, trainer_state) of the latest checkpoint in `out_dir`, or None when there is none."""
    folder = find_checkpoint(out_dir)
    if folder is None:
        return None
    trainer_state = json.loads((folder / TRAINER_STATE).read_text())
    # mmap: every process of a large run reads the file without holding a private copy in RAM.
    state = torch.load(folder / STATE, map_location=map_location, weights_only=True, mmap=True)
    return state, trainer_state


def remove_stale_temporaries(out_dir: Path, names: tuple[str, ...] = (CHECKPOINT, "student")) -> None:
    """Delete half-written `.<name>.<random>.tmp` folders (staging_dir's, of the checkpoint and the exported student)
    left by a killed process."""
    for name in names:
        for p in Path(out_dir).glob(f".{name}.*tmp*"):
            shutil.rmtree(p, ignore_errors=True)
