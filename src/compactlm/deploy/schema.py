"""The deploy stage's schema: DeployConfig and DeployResult.

Torch-free: the launcher and the registry's root config read it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from compactlm.config import ConfigError, _positive

DEPLOY_BACKENDS = ("pytorch", "tensorrt")
DEPLOY_KV_CACHE_DTYPES = ("auto", "fp8")


@dataclass
class DeployConfig:
    """How the deploy stage serves and benchmarks each checkpoint with TensorRT-LLM."""

    backend: str = "pytorch"
    """pytorch: the HF folder is loaded directly (TensorRT-LLM's default); tensorrt: the legacy engine
    (`trtllm-bench build`), only in TensorRT-LLM 1.2.0-1.3.0rc20."""
    concurrency: list[int] = field(default_factory=lambda: [1])
    """Requests in flight during `trtllm-bench throughput`, one run per value (1: per-user latency)."""
    input_len: int = 512
    """Prompt tokens per request of the synthetic dataset (token-norm-dist, stdev 0)."""
    output_len: int = 256
    """Generated tokens per request (EOS ignored, so every request generates exactly this many)."""
    num_requests: int = 32
    """Requests per benchmark run (and in the dataset)."""
    max_batch_size: Optional[int] = None
    """Runtime batch-size cap; None lets trtllm-bench choose from its tuning heuristics."""
    tp_size: int = 1
    """Tensor-parallel GPUs per model."""
    kv_cache_dtype: str = "auto"
    """auto: as the checkpoint says (hf_quant_config.json kv_cache_quant_algo, else the model dtype); fp8."""
    streaming: bool = True
    """Stream tokens in the throughput runs; needed for TTFT and TPOT (the latency run always streams)."""
    latency: bool = True
    """Also run `trtllm-bench latency` (one request at a time, batch 1)."""

    def __post_init__(self) -> None:
        if self.backend not in DEPLOY_BACKENDS:
            raise ConfigError(
                f"deploy.backend={self.backend!r} is not allowed; choose one of: {', '.join(DEPLOY_BACKENDS)}"
            )
        if self.kv_cache_dtype not in DEPLOY_KV_CACHE_DTYPES:
            raise ConfigError(
                f"deploy.kv_cache_dtype={self.kv_cache_dtype!r} is not allowed; "
                f"choose one of: {', '.join(DEPLOY_KV_CACHE_DTYPES)}"
            )
        for key in ("input_len", "output_len", "num_requests", "tp_size"):
            _positive(f"deploy.{key}", getattr(self, key))
        _positive("deploy.max_batch_size", self.max_batch_size)
        conc = list(self.concurrency) if isinstance(self.concurrency, (list, tuple)) else None
        if not conc:
            raise ConfigError(
                f"deploy.concurrency={self.concurrency!r} must be a non-empty list of integers >= 1, e.g. [1, 8]"
            )
        for c in conc:
            _positive("deploy.concurrency", c)
        if len(set(conc)) != len(conc):
            raise ConfigError(f"deploy.concurrency={conc} lists a value twice; each value is one benchmark run")
        self.concurrency = conc
        if self.num_requests < max(conc):
            raise ConfigError(
                f"deploy.num_requests={self.num_requests} is below the largest "
                f"deploy.concurrency={max(conc)}: that concurrency would never be reached"
            )
        if self.max_batch_size is not None and self.max_batch_size < max(conc):
            raise ConfigError(
                f"deploy.max_batch_size={self.max_batch_size} is below the largest "
                f"deploy.concurrency={max(conc)}: requests beyond the batch would only queue"
            )
        if self.backend == "tensorrt" and self.kv_cache_dtype != "auto":
            raise ConfigError(
                f"deploy.kv_cache_dtype={self.kv_cache_dtype} is not allowed with "
                "deploy.backend=tensorrt: the engine's KV-cache dtype is fixed at build from the "
                "checkpoint's hf_quant_config.json; use deploy.kv_cache_dtype=auto (or "
                "quantize.kv_cache_fp8=true) or deploy.backend=pytorch"
            )


@dataclass
class DeployResult:
    """deploy stage: TensorRT-LLM checks and trtllm-bench figures per model."""

    models: dict[str, dict[str, Any]]

    def summary(self) -> str:
        return "served: " + ", ".join(self.models)
