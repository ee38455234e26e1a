"""Which floating-point precision a stage computes in, chosen from what the hardware does natively.

`engine.dtype=auto` picks bfloat16 where the hardware multiplies bfloat16 natively and float32 elsewhere:

- CUDA: `torch.cuda.is_bf16_supported()` (Ampere and newer);
- CPU: the `amx_bf16` or `avx512_bf16` instruction-set flag, read from the CPU itself (/proc/cpuinfo on
  Linux) — not guessed from a model or machine name. PyTorch's oneDNN kernels use them for bf16 matmuls:
  measured 3.1× float32 on a 2-core AVX512-BF16 EPYC and 7.3× on an AMX Xeon (docs/architecture.md).

In bfloat16, models that are only run (teacher, evaluation, benchmark, importance, calibration) are loaded
with bfloat16 weights; a model that is trained (the distilled student) keeps float32 master weights and
optimizer state, and its forward and backward run under `torch.autocast(dtype=bfloat16)`. Every model
call is made inside `Precision.autocast()`, so operations autocast keeps in float32 (softmax, norms, losses)
stay there. `engine.dtype=float32` is the exact behaviour of a run without this choice.
"""

from __future__ import annotations

import platform
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compactlm.config import EngineConfig

CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
"""CPU flags (as Linux names them) of instructions that compute bfloat16 dot products natively."""


def cpu_bf16_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, ...]:
    """The CPU_BF16_FLAGS this CPU reports; () when it reports none or the platform has no /proc/cpuinfo."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return ()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            present = set(line.split(":", 1)[-1].split())
            return tuple(f for f in CPU_BF16_FLAGS if f in present)
    return ()


@dataclass(frozen=True)
class Precision:
    """The resolved `engine.dtype` of one process: what to load frozen models in and what to autocast to."""

    device: str
    compute: str
    """bfloat16, float16 or float32: the dtype of matmuls."""
    reason: str
    """Why, in words: which setting and which hardware feature decided it."""

    @property
    def autocast_dtype(self):
        import torch  # heavy: the launcher imports compactlm.model.loading, which imports this module

        return None if self.compute == "float32" else getattr(torch, self.compute)

    @property
    def frozen_dtype(self):
        """Weights of a model that is only run (never trained): the compute dtype."""
        import torch  # heavy: see autocast_dtype

        return getattr(torch, self.compute)

    def autocast(self):
        """Context in which every model forward (and the student's backward) runs."""
        import torch  # heavy: see autocast_dtype

        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.split(":")[0], dtype=self.autocast_dtype)

    def record(self) -> dict[str, Any]:
        """What the manifest stores: device, compute dtype, whether autocast is on, and why."""
        return {
            "device": self.device,
            "compute": self.compute,
            "autocast": self.autocast_dtype is not None,
            "reason": self.reason,
        }

    def __str__(self) -> str:
        return f"{self.compute} on {self.device} ({self.reason})"


def resolve_precision(engine: EngineConfig, device: str, cpu_flags: tuple[str, ...] | None = None) -> Precision:
    """The Precision `engine.dtype` means on `device`; `cpu_flags` overrides the CPU's own (tests)."""
    import torch  # heavy: see Precision.autocast_dtype

    kind = device.split(":")[0]
    if engine.dtype != "auto":
        return Precision(device, engine.dtype, f"engine.dtype={engine.dtype}")
    if kind == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision(device, "bfloat16", f"engine.dtype=auto: {torch.cuda.get_device_name()} supports bf16")
        return Precision(device, "float32", "engine.dtype=auto: this GPU has no native bf16")
    flags = cpu_bf16_flags() if cpu_flags is None else cpu_flags
    if flags:
        return Precision(device, "bfloat16", f"engine.dtype=auto: CPU has {'+'.join(flags)}")
    return Precision(
        device, "float32", f"engine.dtype=auto: CPU ({platform.machine()}) reports no {' or '.join(CPU_BF16_FLAGS)}"
    )
