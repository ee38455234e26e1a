"""Post-training quantization with NVIDIA ModelOpt and export to its unified Hugging Face checkpoint.

    spec = QuantizeSpec(format="fp8", kv_cache_fp8=True, exclude=["model.layers.0.*"])
    model = quantize_from_spec(model, load_split(data_dir, "calibration"), spec, device)  # fake-quant model
    sizes = export(model, tokenizer, out_dir)        # ModelOpt unified checkpoint, published atomically

The exported folder is what TensorRT-LLM loads directly (LLM API, `trtllm-serve`): safetensors with quantized
weights and scales, `hf_quant_config.json` and `config.json["quantization_config"]`.

Which format runs where (facts measured with nvidia-modelopt 0.47.0, see docs/architecture.md, Measured facts):
- the fake-quantized forward of fp8, int8_sq and int4_awq runs on CPU and CUDA; nvfp4's asserts CUDA
  tensors, so on CPU an nvfp4 model can be calibrated and exported but not evaluated;
- serving: FP8 needs Ada/Hopper or later (sm_89+), NVFP4 needs Blackwell (sm_100+); H100/H200 are sm_90,
  so they serve FP8, not NVFP4. INT8 SmoothQuant and INT4-AWQ need Ampere (sm_80+).

The format tables (which format runs and serves where) are in :mod:`compactlm.quantize.formats`.
"""

from __future__ import annotations

import copy
import fnmatch
import json
from pathlib import Path
from typing import Any

import modelopt.torch.quantization as mtq
import numpy as np
import torch
from modelopt.torch.export import export_hf_checkpoint
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from compactlm.config import ConfigError
from compactlm.manifest import atomic_write_text, staging_dir
from compactlm.model.config_layouts import write_both_rope_layouts
from compactlm.model.loading import computing_in
from compactlm.quantize.formats import EXPORT_DTYPES, format_of
from compactlm.quantize.schema import QuantizeConfig as QuantizeSpec  # the name kept for library users


# ---------------------------------------------------------------------------------------------- exclude
def check_exclude(model, patterns: list[str]) -> dict[str, list[str]]:
    """Every pattern must match at least one module name; returns pattern -> matched module names.

    Patterns are fnmatch-style and matched against `model.named_modules()` names, e.g. "*lm_head*",
    "model.layers.0.*", "model.layers.*.mlp.down_proj". Raises ConfigError naming `quantize.exclude`.
    """
    names = [n for n, _ in model.named_modules() if n]
    out = {}
    for p in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, p)]
        if not hits:
            example = ", ".join(repr(n) for n in ([n for n in names if n.count(".") == 4][:3] or names[:3]))
            raise ConfigError(
                f"quantize.exclude: pattern {p!r} matches no module of {type(model).__name__}; "
                f"module names look like {example}, 'lm_head'"
            )
        out[p] = hits
    return out


def excluded_weight_modules(model, patterns: list[str]) -> list[str]:
    """Names of modules owning a weight that a pattern matches, directly or through an ancestor."""
    matched = {n for hits in check_exclude(model, patterns).values() for n in hits}
    out = []
    for name, module in model.named_modules():
        if "weight" not in getattr(module, "_parameters", {}):
            continue
        parts = name.split(".")
        if any(".".join(parts[:i]) in matched for i in range(1, len(parts) + 1)):
            out.append(name)
    return out


# --------------------------------------------------------------------------------------------- quantize
def build_quant_cfg(fmt: str, kv_cache_fp8: bool, excluded_modules: list[str] = ()) -> dict[str, Any]:
    """A deep copy of ModelOpt's recipe for `fmt`, plus FP8 KV-cache entries and exclusions.

    Exclusions disable the weight/input/output quantizers of each named module; the KV-cache
    quantizers (attention `k_bmm_quantizer`/`v_bmm_quantizer`) stay on, because TensorRT-LLM keeps one
    KV-cache dtype for all layers and needs a k/v scale in every layer.
    """
    cfg = copy.deepcopy(getattr(mtq, format_of(fmt).modelopt_cfg))
    entries = list(cfg.get("quant_cfg") or [{"quantizer_name": "*", "enable": False}])
    if kv_cache_fp8:
        entries += copy.deepcopy(mtq.FP8_KV_CFG["quant_cfg"])
    # later entries win, so exclusions go last; "*_quantizer" under a weight-owning leaf module only
    # reaches its weight/input/output quantizers
    entries += [{"quantizer_name": f"{name}.*_quantizer", "enable": False} for name in excluded_modules]
    cfg["quant_cfg"] = entries
    cfg.setdefault("algorithm", "max")
    return cfg


def calibration_loop(sequences: np.ndarray, batch_size: int, device: str, progress: bool = True, compute_dtype=None):
    """A ModelOpt `forward_loop(model)` over int token ids [num_sequences, seq_len], in batches.

    compute_dtype: where the model is held narrower (a bf16 checkpoint on a float32 CPU), each block runs in
    this dtype (:func:`compactlm.model.loading.computing_in`); the hooks go on the model ModelOpt passes in,
    after it has swapped in its quantized modules.
    """

    def forward_loop(model) -> None:
        starts = range(0, len(sequences), batch_size)
        with torch.no_grad(), computing_in(compute_dtype, model):
            for s in tqdm(starts, desc="[quantize] calibrating", unit="batch", disable=not progress, mininterval=2):
                ids = torch.from_numpy(np.array(sequences[s : s + batch_size], dtype=np.int64)).to(device)
                model(input_ids=ids, use_cache=False)

    return forward_loop


def quantize(
    model,
    calib_sequences: np.ndarray,
    fmt: str,
    kv_cache_fp8: bool,
    exclude: list[str],
    batch_size: int,
    device: str,
    progress: bool = True,
    compute_dtype=None,
):
    """Calibrate and insert ModelOpt quantizers into `model` in place; returns the fake-quantized model.

    Args:
        model: a `*ForCausalLM` in eval mode on `device` (bf16 on GPU, fp32 on CPU).
        calib_sequences: int token ids [num_sequences, seq_len] (the data stage's calibration split).
        fmt: "fp8" | "nvfp4" | "int8_sq" | "int4_awq" (ModelOpt's FP8_DEFAULT_CFG, NVFP4_DEFAULT_CFG,
            INT8_SMOOTHQUANT_CFG, INT4_AWQ_CFG).
        kv_cache_fp8: also calibrate FP8 scales of the attention K and V (ModelOpt's FP8_KV_CFG).
        exclude: fnmatch patterns of module names kept in high precision (see :func:`check_exclude`),
            in addition to the recipe's own exclusions (lm_head, embeddings, MoE routers).
        compute_dtype: the dtype the forward runs in when the model is held narrower (None: as held). A bf16
            model calibrated with float32 computes the float32 model's statistics exactly, holding half the bytes;
            SmoothQuant and AWQ write their rescaled weights back in the held dtype, as on a GPU.
    The result runs fake-quantized where :func:`forward_supported` says so; :func:`export` consumes it.
    """
    format_of(fmt)
    if batch_size < 1:
        raise ConfigError(f"quantize.batch_size={batch_size} must be an integer >= 1")
    calib = np.asarray(calib_sequences) if not isinstance(calib_sequences, np.ndarray) else calib_sequences
    if calib.ndim != 2 or len(calib) == 0 or not np.issubdtype(calib.dtype, np.integer):
        raise ValueError(
            f"calibration sequences must be a non-empty int array [n, seq_len], got {calib.dtype} {calib.shape}"
        )
    vocab = getattr(model.config, "vocab_size", None)
    if vocab is not None and int(calib.max()) >= vocab:
        raise ValueError(
            f"calibration token id {int(calib.max())} >= the model's vocab_size {vocab}: "
            f"the calibration split was tokenized for another model"
        )
    cfg = build_quant_cfg(fmt, kv_cache_fp8, excluded_weight_modules(model, exclude))
    if not getattr(model.config, "architectures", None):
        model.config.architectures = [type(model).__name__]  # the exporter reads it (config-built models lack it)
    return mtq.quantize(model, cfg, calibration_loop(calib, batch_size, device, progress, compute_dtype))


def quantize_from_spec(model, calib_sequences: np.ndarray, spec: QuantizeSpec, device: str, progress: bool = True):
    """:func:`quantize` with the settings of a `QuantizeSpec` (or the `QuantizeConfig` that replaces it)."""
    calib = calib_sequences[: spec.calibration_sequences] if spec.calibration_sequences else calib_sequences
    return quantize(model, calib, spec.format, spec.kv_cache_fp8, list(spec.exclude), spec.batch_size, device, progress)


# ----------------------------------------------------------------------------------------------- export
def _param_count(model) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def _cast_high_precision(folder: Path, dtype) -> None:
    """Rewrite float32 weight tensors as `dtype`; scales (`*_scale`, `*_scale_2`) keep their dtype.

    ModelOpt exports unquantized layers in the dtype the model was loaded in; a model calibrated in fp32
    on CPU would otherwise ship fp32 embeddings and norms where TensorRT-LLM expects bf16/fp16.
    """
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            keys = list(f.keys())
            todo = [
                k
                for k in keys
                if not k.endswith("scale")
                and not k.endswith("scale_2")
                and f.get_slice(k).get_dtype() in ("F32", "F64")
            ]
            if not todo:
                continue
            tensors = {k: f.get_tensor(k) for k in keys}
        for k in todo:
            tensors[k] = tensors[k].to(dtype)
        save_file(tensors, str(path), metadata={**meta, "format": "pt"})  # write-ok: in export()'s fresh staging folder
    index = folder / "model.safetensors.index.json"
    if index.is_file():  # shard sizes changed; loaders only read weight_map, keep total_size honest
        idx = json.loads(index.read_text())
        idx.setdefault("metadata", {})["total_size"] = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
        atomic_write_text(index, json.dumps(idx, indent=2) + "\n")
    cfg_path = folder / "config.json"
    if cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text())
        name = str(dtype).replace("torch.", "")
        cfg["dtype"] = name
        if "torch_dtype" in cfg:
            cfg["torch_dtype"] = name
        atomic_write_text(cfg_path, json.dumps(cfg, indent=2, sort_keys=True) + "\n")


EXPORT_SHARD_BYTES = 2 * 10**9
"""The export's largest safetensors shard: safetensors serializes a whole shard in memory before writing it."""


def export(
    model,
    tokenizer,
    out_dir: str | Path,
    dtype: str = "bfloat16",
    compute_dtype=None,
    max_shard_size: int = EXPORT_SHARD_BYTES,
) -> dict[str, Any]:
    """Write the ModelOpt unified HF checkpoint of a quantized model to `out_dir`, atomically.

    `modelopt.torch.export.export_hf_checkpoint` writes into a temporary sibling folder, float32 tensors
    left in high precision are cast to `dtype`, the tokenizer is saved next to them, and the folder is
    renamed into place (an older `out_dir` is replaced). The export converts the model's weights in
    place: measure the fake-quantized model before calling this, and do not use it afterwards.

    compute_dtype: the dtype the weights are quantized from (default: the model's). ModelOpt upcasts one
    weight at a time to it, so a bf16-held model quantized with float32 gives the float32 model's export.
    max_shard_size: bytes of the largest safetensors shard, which bounds the export's extra memory.

    Returns:
        {"safetensors_bytes": bytes of all *.safetensors, "parameters": unique parameter count,
         "bf16_bytes": 2 × parameters, "ratio_to_bf16": safetensors_bytes / bf16_bytes, "files": [...]}.
    """
    if dtype not in EXPORT_DTYPES:
        raise ConfigError(f"quantize.export_dtype={dtype!r} is not allowed; choose one of: {', '.join(EXPORT_DTYPES)}")
    out_dir = Path(out_dir)
    params = _param_count(model)
    if not getattr(model.config, "architectures", None):
        model.config.architectures = [type(model).__name__]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with staging_dir(out_dir) as tmp:
        # quantize from the weights in the compute dtype (fp32 on CPU): passing bf16 here would round twice
        compute_dtype = compute_dtype or next(model.parameters()).dtype
        with torch.inference_mode():
            export_hf_checkpoint(model, dtype=compute_dtype, export_dir=tmp, max_shard_size=max_shard_size)
        _cast_high_precision(tmp, getattr(torch, dtype))
        write_both_rope_layouts(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    size = sum(p.stat().st_size for p in out_dir.glob("*.safetensors"))
    return {
        "safetensors_bytes": size,
        "parameters": params,
        "bf16_bytes": 2 * params,
        "ratio_to_bf16": size / (2 * params),
        "files": sorted(p.name for p in out_dir.iterdir()),
    }
