"""The quantize stage's schema: QuantizeConfig and QuantizeResult.

Torch-free: the launcher and the registry's root config read it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from compactlm.config import ConfigError, _choice, _positive
from compactlm.quantize.formats import check_deploy_support

QUANT_FORMATS = ("fp8", "nvfp4", "int8_sq", "int4_awq")
QUANT_EXPORT_DTYPES = ("bfloat16", "float16")


@dataclass
class QuantizeConfig:
    """Post-training quantization with ModelOpt and export to the unified HF checkpoint TensorRT-LLM loads."""

    name: str = "fp8"
    """Preset name (conf/quantize/<name>.yaml)."""
    format: str = "fp8"
    """fp8 (W8A8 FP8, per-tensor), nvfp4 (W4A4, 16-element FP8-scaled blocks), int8_sq or int4_awq."""
    kv_cache_fp8: bool = True
    """Also calibrate FP8 scales for the KV cache (kv_cache_quant_algo=FP8)."""
    exclude: list[str] = field(default_factory=list)
    """fnmatch patterns of module names kept in high precision, on top of ModelOpt's own (lm_head, embeddings)."""
    calibration_sequences: Optional[int] = None
    """Use at most this many sequences of the calibration split (None: all)."""
    batch_size: int = 4
    """Sequences per calibration forward."""
    export_dtype: str = "bfloat16"
    """dtype of the tensors left in high precision in the export (bfloat16 or float16)."""
    deploy_gpu: Optional[str] = None
    """GPU the checkpoint will be served on (h100, h200, b200, sm_90, ...); checked against the format."""
    evaluate: bool = True
    """Measure the fake-quantized model's perplexity before export where its forward runs (not nvfp4 on CPU)."""

    def __post_init__(self) -> None:
        _choice("quantize.format", self.format, QUANT_FORMATS)
        _choice("quantize.export_dtype", self.export_dtype, QUANT_EXPORT_DTYPES)
        _positive("quantize.batch_size", self.batch_size)
        _positive("quantize.calibration_sequences", self.calibration_sequences)
        for p in self.exclude:
            if not isinstance(p, str) or not p.strip():
                raise ConfigError(f"quantize.exclude: {p!r} is not a module name pattern (e.g. 'model.layers.0.*')")
        if self.deploy_gpu is not None:
            check_deploy_support(self.format, self.deploy_gpu)


@dataclass
class QuantizeResult:
    """quantize stage: ModelOpt PTQ, the unified-checkpoint export and its verification."""

    format: str
    kv_cache_fp8: bool
    exclude: list[str]
    source_stage: str
    source: str
    export: dict[str, Any]
    """Sizes of the export (safetensors_bytes, ratio_to_bf16, ...), from quantize.ptq.export."""
    layout: dict[str, Any]
    """What TensorRT-LLM reads, as checked by quantize.verify.check_layout."""
    verify: dict[str, Any]
    """Dequantized export vs source weights (passed, max_rel_err, rows), from quantize.verify.compare."""
    quality: Optional[dict[str, dict[str, Any]]] = None
    """{"reference": ..., "quantized": ...} perplexities of the fake-quantized model, where its forward runs."""
    calibration_seconds: Optional[float] = None
    """Wall time of ModelOpt's calibration (the forwards over the calibration split and inserting the quantizers)."""

    def summary(self) -> str:
        ppl = f", ppl {self.quality['quantized']['perplexity']:.3f}" if self.quality else ""
        return f"{self.format} of {self.source_stage}, {self.export['safetensors_bytes'] / 2**20:.1f} MiB{ppl}"
