"""The bench stage's schema: BenchConfig and BenchResult.

Torch-free: the launcher and the registry's root config read it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from compactlm.config import ConfigError, _positive
from compactlm.results import ParamCounts


@dataclass
class BenchConfig:
    """Inference speed of the teacher vs the final student (transformers generate, or the deploy stage's trtllm-bench)."""

    batch_sizes: list[int] = field(default_factory=lambda: [1, 8])
    """Concurrent sequences per measurement: 1 is the single-user latency the Bielik report quotes."""
    prompt_tokens: int = 64
    new_tokens: int = 32
    """Generated tokens per sequence (exactly this many: EOS cannot stop a run early)."""
    repeats: int = 2
    """Timed runs per measurement; the fastest is reported (the stable statistic on a shared machine)."""
    static_cache: Optional[bool] = None
    """transformers' static KV cache; None: on CUDA (where decoding is compiled), not on CPU."""

    def __post_init__(self) -> None:
        if not self.batch_sizes:
            raise ConfigError("bench.batch_sizes is empty; e.g. bench.batch_sizes=[1,8]")
        for b in self.batch_sizes:
            _positive("bench.batch_sizes", b)
        for k in ("prompt_tokens", "new_tokens", "repeats"):
            _positive(f"bench.{k}", getattr(self, k))


@dataclass
class BenchRun:
    """Teacher vs student at one batch size (or concurrency)."""

    batch_size: int
    models: dict[str, dict[str, Any]]
    """label -> speed figures (output_tokens_per_s, ttft_ms, tpot_ms, peak_memory_bytes, ...)."""
    compare: dict[str, Optional[float]]
    """tokens_per_s_ratio, decode_speedup, ideal_speedup, ... (compactlm.bench.speed.compare)."""


@dataclass
class BenchResult:
    """bench stage: speed of the teacher vs the final student."""

    source: str
    student: str
    params: dict[str, ParamCounts]
    runs: list[BenchRun]
    device: Optional[str] = None
    dtype: Optional[str] = None
    threads: Optional[int] = None

    def summary(self) -> str:
        return (
            ", ".join(f"batch {r.batch_size}: {r.compare.get('tokens_per_s_ratio') or 0:.2f}x tok/s" for r in self.runs)
            + f" ({self.student} vs teacher)"
        )
