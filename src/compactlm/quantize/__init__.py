"""Post-training quantization (ModelOpt FP8 / NVFP4 / INT8-SQ / INT4-AWQ), export for TensorRT-LLM, verification.

    model = quantize(model, calib, "fp8", kv_cache_fp8=True, exclude=["*lm_head*"], batch_size=4, device="cpu")
    metrics = fake_quant_quality(model, validation, "fp8", 8, "cpu", reference=teacher)   # before export
    sizes = export(model, tokenizer, out_dir)                    # consumes the model
    check_layout(out_dir, "fp8", kv_cache_fp8=True)              # raises LayoutError
    report = compare(out_dir, reference_state_dict)              # report["passed"], report["rows"]

Submodules import torch and modelopt inside functions; attributes load on first access, so
`import compactlm.quantize` stays cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "FORMATS": "ptq",
    "QuantizeSpec": "ptq",
    "quantize": "ptq",
    "quantize_from_spec": "ptq",
    "build_quant_cfg": "ptq",
    "check_exclude": "ptq",
    "check_deploy_support": "ptq",
    "check_forward_support": "ptq",
    "forward_supported": "ptq",
    "parse_sm": "ptq",
    "export": "ptq",
    "BOUNDS": "verify",
    "LayoutError": "verify",
    "Checkpoint": "verify",
    "check_layout": "verify",
    "compare": "verify",
    "dequantize": "verify",
    "fake_quant_quality": "verify",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
