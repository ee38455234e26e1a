"""One vocabulary for the training knobs that distill, sft, dpo and grpo share (litgpt's `TrainArgs` idea).

`DistillConfig` and the align stages' configs (compactlm.config) inherit :class:`TrainingOptions`, so the same
knob has the same key in every training section: `distill.micro_batch_size`, `sft.micro_batch_size`,
`grpo.save_every`. A subclass sets `section` (the config key it lives under, for messages) and may list the keys
it renamed in `renamed`: each old key stays declared as an Optional field defaulting to None (Hydra's structured
configs refuse undeclared keys) and :meth:`TrainingOptions.__post_init__` moves its value onto the new key with
one deprecation line. Ground floor: imports only the stdlib and compactlm.errors (no torch, no Hydra).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

from compactlm.errors import ConfigError

_ANNOUNCED: set[str] = set()  # old keys already announced by this process


def announce_renamed(old_key: str, new_key: str) -> None:
    """Print one line to stderr saying `old_key` is deprecated in favour of `new_key`, once per process.

    The launcher converts the config (and prints this) once per run; the config it writes for the stages holds
    only the new keys, so the processes of a multi-node stage do not repeat it."""
    if old_key in _ANNOUNCED:
        return
    _ANNOUNCED.add(old_key)
    print(
        f"compactlm: {old_key} is deprecated, use {new_key} (the old key is read until the next release)",
        file=sys.stderr,
        flush=True,
    )


def _whole(key: str, value: Any, minimum: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}={value!r} must be an integer >= {minimum}")


@dataclass
class TrainingOptions:
    """Training knobs shared by every training stage (distill, sft, dpo, grpo); each stage's config inherits them
    and may change their defaults."""

    section: ClassVar[str] = "train"
    """The config key of the section (distill, sft, ...): error and deprecation messages name `<section>.<key>`."""
    renamed: ClassVar[dict[str, str]] = {}
    """Deprecated key -> its new name, for the old keys a subclass still declares (Optional, default None)."""

    lr: float = 1e-4
    """Peak learning rate (reached after the warm-up, then cosine decay)."""
    min_lr: float = 0.0
    """The cosine decay ends at this learning rate (0: decays to zero)."""
    warmup_steps: Optional[int] = None
    """Linear warm-up, in optimizer steps; when set it wins over warmup_ratio."""
    warmup_ratio: float = 0.0
    """Linear warm-up as a fraction of the optimizer steps, rounded down; used when warmup_steps is None."""
    max_steps: Optional[int] = None
    """Optimizer steps (distill: None derives them from distill.max_tokens)."""
    micro_batch_size: int = 4
    """Sequences (examples) per process per forward/backward."""
    global_batch_size: Optional[int] = None
    """Sequences (examples) per optimizer step over all processes, = micro_batch_size × gradient accumulation ×
    processes: the same value trains the same way on 1 or 16 GPUs (accumulation fills the gap). None: one
    micro-batch per process per step (no accumulation)."""
    weight_decay: float = 0.0
    """AdamW weight decay of the weight matrices (biases and norms get none)."""
    grad_clip: float = 1.0
    """Max global gradient norm (0 disables clipping)."""
    save_every: int = 8
    """Write a resumable checkpoint every N optimizer steps (also on SIGTERM/SIGUSR1)."""
    nproc_per_node: Optional[int] = None
    """Processes per node (torchrun) for this stage; None: one per GPU (cluster.gpus_per_node), 1 on CPU."""

    def __post_init__(self) -> None:
        self._take_renamed()
        s = self.section
        for key in ("max_steps", "micro_batch_size", "save_every", "nproc_per_node"):
            _whole(f"{s}.{key}", getattr(self, key), 1)
        _whole(f"{s}.warmup_steps", self.warmup_steps, 0)
        _whole(f"{s}.global_batch_size", self.global_batch_size, 1)
        if self.global_batch_size is not None and self.global_batch_size % self.micro_batch_size:
            raise ConfigError(
                f"{s}.global_batch_size={self.global_batch_size} is not a multiple of "
                f"{s}.micro_batch_size={self.micro_batch_size}"
            )
        if not self.lr > 0:
            raise ConfigError(f"{s}.lr={self.lr} must be > 0 (the peak learning rate, e.g. 3e-4)")
        if not 0 <= self.min_lr <= self.lr:
            raise ConfigError(f"{s}.min_lr={self.min_lr} must be between 0 and {s}.lr={self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"{s}.warmup_ratio={self.warmup_ratio} must be in [0, 1)")
        if not self.weight_decay >= 0:
            raise ConfigError(f"{s}.weight_decay={self.weight_decay} must be >= 0")
        if not self.grad_clip >= 0:
            raise ConfigError(f"{s}.grad_clip={self.grad_clip} must be >= 0 (0 disables clipping)")

    def accumulation(self, world: int) -> int:
        """Micro-batches per process per optimizer step, so that global_batch_size = micro × accumulation × world
        (`world` processes); ConfigError when global_batch_size does not divide so."""
        if self.global_batch_size is None:
            return 1
        s, per_step = self.section, self.micro_batch_size * world
        if self.global_batch_size % per_step:
            raise ConfigError(
                f"{s}.global_batch_size={self.global_batch_size} is not a multiple of {s}.micro_batch_size="
                f"{self.micro_batch_size} × {world} processes; choose a global batch divisible by {per_step} "
                "or a smaller micro batch"
            )
        return self.global_batch_size // per_step

    def warmup(self, steps: int) -> int:
        """Warm-up steps of a run of `steps` optimizer steps: warmup_steps, else floor(warmup_ratio × steps)."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        return math.floor(self.warmup_ratio * steps)

    def _take_renamed(self) -> None:
        """Move each deprecated key's value onto its new key (one deprecation line); refuse two different values."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for old, new in self.renamed.items():
            value = getattr(self, old)
            if value is None:
                continue
            current = getattr(self, new)
            if current != defaults[new] and current != value:
                s = self.section
                raise ConfigError(
                    f"{s}.{old}={value!r} and {s}.{new}={current!r} disagree: {s}.{old} is the deprecated name of "
                    f"{s}.{new}; set only {s}.{new}"
                )
            setattr(self, new, value)
            setattr(self, old, None)  # the resolved config carries the new key only
            announce_renamed(f"{self.section}.{old}", f"{self.section}.{new}")
