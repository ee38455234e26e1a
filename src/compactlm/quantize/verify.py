"""Check a ModelOpt unified checkpoint without transformers: layout, and weights dequantized by hand.

Plain transformers silently drops the FP8 scales of these checkpoints (docs/architecture.md, Measured facts), so loading one with
`from_pretrained` proves nothing. Here the safetensors are read directly and every quantized weight is
rebuilt from its codes and scales, following the layout ModelOpt 0.47 writes and TensorRT-LLM reads:

- FP8 (quant_algo "FP8"): `weight` float8_e4m3fn [out, in], `weight_scale` float32 (one per tensor, or one
  per output channel), `input_scale` float32 scalar;  w = weight × weight_scale.
- NVFP4 ("NVFP4", group_size 16): `weight` uint8 [out, in/2] holding two E2M1 codes per byte (element 2j
  in the low nibble, 2j+1 in the high nibble), `weight_scale` float8_e4m3fn [out, in/16] (one per block of
  16 inputs), `weight_scale_2` float32 scalar, `input_scale` float32 scalar;
  w = e2m1 × weight_scale[block] × weight_scale_2.
- INT8 SmoothQuant ("W8A8_SQ_PER_CHANNEL"): `weight` int8 [out, in], `weight_scale` float32 [out],
  `pre_quant_scale` float32 [in] multiplying the activation; effective w = weight × weight_scale × pre_quant_scale.
- INT4 AWQ ("W4A16_AWQ", group_size 128): `weight` uint8 [out/2, in], two signed 4-bit codes per byte along
  the OUTPUT dimension (row 2i low nibble, row 2i+1 high nibble), `weight_scale` [out, in/128].
  The exporter folds AWQ's pre_quant_scale into the layernorm feeding q/k/v and gate/up; :func:`compare`
  undoes that fold (W · diag(γ_export / γ_reference)) and checks those norms through the linears they feed.

The KV cache, when quantized, adds `k_proj.k_scale` and `v_proj.v_scale` (float32 scalars) per layer.
"""

from __future__ import annotations

import fnmatch
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import torch

from compactlm.evaluate.quality import quality
from compactlm.model.tensorfile import TensorFile
from compactlm.quantize.formats import FORMATS, check_forward_support, format_of

# Relative error bound ‖w_deq − w‖ / ‖w‖ per tensor, by stored format.
#   fp8 (e4m3, per-tensor amax/448 scale): 3 mantissa bits, so round-to-nearest errs by at most half an ulp,
#       2^-4 of the value, for every element in the normal range (|w| ≥ amax·2^-6/448); elements below it
#       err by at most 2^-10·scale absolutely, negligible in the norm unless amax/rms > 2^10. The bound is
#       therefore 2^-4 = 0.0625 (typical measured: ~0.02-0.03). A scale off by ×2 gives 1.0.
#   nvfp4 (E2M1 grid {0, .5, 1, 1.5, 2, 3, 4, 6}·s per 16 elements, s = amax/6 stored in e4m3): the grid
#       step relative to the value is at most 1/5 above 0.5·s and the block scale adds ≤ 2^-4; small elements
#       err more relatively but weigh little in the norm. For Gaussian-like weights the per-tensor error is
#       ~0.09-0.10; 0.15 leaves margin and still catches a wrong scale (×2: ≥ 0.9) or a swapped nibble
#       order (uncorrelated values: ~1.4).
#   int8_sq (per-channel, step amax_row/127): uniform rounding noise gives (amax/rms)/(127·√12) ≈ (amax/rms)/440,
#       ≤ 0.03 for amax/rms ≤ 13; SmoothQuant's column scaling raises amax/rms, hence 0.05.
#   int4_awq (blocks of 128, step amax/7): (amax/rms)/(7·√12) ≈ 0.11 for Gaussian blocks (amax/rms ≈ 2.7); 0.25.
#   high precision: one rounding to the stored dtype, half an ulp: bf16 2^-8, fp16 2^-11, fp32 exact.
BOUNDS: dict[str, float] = {
    "fp8": 2.0**-4,
    "nvfp4": 0.15,
    "int8_sq": 0.05,
    "int4_awq": 0.25,
    "bfloat16": 2.0**-8,
    "float16": 2.0**-11,
    "float32": 1e-6,
}
SCALE_SUFFIXES = ("weight_scale", "weight_scale_2", "input_scale", "pre_quant_scale", "k_scale", "v_scale")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


class LayoutError(ValueError):
    """An exported folder that TensorRT-LLM would reject or misread; the message lists every problem."""


# --------------------------------------------------------------------------------------------- reading
class Checkpoint:
    """Lazy tensor access to the safetensors of a folder (sharded or not), one tensor at a time."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        index = self.folder / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(p.name for p in self.folder.glob("*.safetensors"))
        if not files:
            raise LayoutError(f"{self.folder} holds no *.safetensors file")
        self.files = files
        self._handles = {}
        self.where: dict[str, str] = {}
        for name in files:
            path = self.folder / name
            if not path.is_file():
                raise LayoutError(f"{self.folder}: shard {name} named in model.safetensors.index.json is missing")
            self._handles[name] = TensorFile(path)  # plain reads: what was read is not kept resident
            for key in self._handles[name].keys():
                self.where[key] = name

    def __del__(self) -> None:  # the files are closed with the object
        for handle in getattr(self, "_handles", {}).values():
            handle.close()

    def __contains__(self, key: str) -> bool:
        return key in self.where

    def keys(self) -> list[str]:
        return sorted(self.where)

    def get(self, key: str):
        return self._handles[self.where[key]].get(key)

    def dtype(self, key: str) -> str:
        """safetensors dtype code: F32, BF16, F16, F8_E4M3, U8, I8."""
        return self._handles[self.where[key]].dtype(key)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._handles[self.where[key]].shape(key)


# -------------------------------------------------------------------------------------- dequantization
def e2m1_to_float(codes):
    """FP4 E2M1 codes (uint8 0..15: sign bit 3, exponent bits 2-1 with bias 1, mantissa bit 0) -> float32.

    Exponent 0 is subnormal (0 or 0.5); otherwise 2^(e-1)·(1 + m/2): 1, 1.5, 2, 3, 4, 6.
    """
    c = codes.to(torch.int32)
    sign, exp, man = (c >> 3) & 1, (c >> 1) & 3, (c & 1).to(torch.float32)
    mag = torch.where(exp == 0, 0.5 * man, torch.pow(2.0, (exp - 1).to(torch.float32)) * (1.0 + 0.5 * man))
    return torch.where(sign == 1, -mag, mag)


def unpack_fp4(packed):
    """uint8 [..., k] -> E2M1 codes [..., 2k]: element 2j from the low nibble, 2j+1 from the high nibble
    (the order ModelOpt's NVFP4 packing writes and TensorRT-LLM's kernels read)."""
    low, high = packed & 0x0F, packed >> 4
    return torch.stack((low, high), dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def dequantize_fp8(weight, weight_scale):
    """float8_e4m3fn [out, in] × (scalar | [out] | [out, 1]) float32 scale -> float32 [out, in]."""
    scale = weight_scale.float()
    if scale.numel() == 1:
        return weight.float() * scale.reshape(())
    if scale.numel() == weight.shape[0]:
        return weight.float() * scale.reshape(-1, 1)
    raise LayoutError(
        f"FP8 weight_scale of shape {tuple(scale.shape)} fits neither per-tensor nor "
        f"per-channel scaling of a weight {tuple(weight.shape)}"
    )


def dequantize_nvfp4(weight, weight_scale, weight_scale_2, group_size: int = 16):
    """uint8 [out, in/2] codes, float8_e4m3fn [out, in/group] block scales, float32 scalar -> float32 [out, in]."""
    values = e2m1_to_float(unpack_fp4(weight))
    out, n = values.shape
    blocks = n // group_size
    scales = weight_scale.float()[:, :blocks]  # kernels may pad the scale matrix; the checkpoint does not
    w = values.reshape(out, blocks, group_size) * scales.unsqueeze(-1) * weight_scale_2.float().reshape(())
    return w.reshape(out, n)


def dequantize_int8(weight, weight_scale):
    """int8 [out, in] × float32 [out] per-channel scale -> float32 [out, in]."""
    scale = weight_scale.float()
    return weight.float() * (scale.reshape(()) if scale.numel() == 1 else scale.reshape(-1, 1))


def dequantize_int4_awq(weight, weight_scale):
    """uint8 [out/2, in] (two signed 4-bit codes per byte along the output dim) × [out, in/block] -> [out, in]."""
    low, high = (weight & 0x0F).to(torch.int8), (weight >> 4).to(torch.int8)
    codes = torch.stack((low, high), dim=1).reshape(weight.shape[0] * 2, weight.shape[1])
    codes = torch.where(codes >= 8, codes - 16, codes).float()
    scale = weight_scale.float()
    block = codes.shape[1] // scale.shape[1]
    return codes * scale.repeat_interleave(block, dim=1)[:, : codes.shape[1]]


_DTYPE_NAMES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float32"}


def storedformat_of(ckpt: Checkpoint, key: str) -> str:
    """How tensor `key` is stored: fp8, nvfp4, int8_sq, int4_awq, or a high-precision dtype name."""
    prefix = key[: -len(".weight")] if key.endswith(".weight") else None
    dt = ckpt.dtype(key)
    if prefix is None or f"{prefix}.weight_scale" not in ckpt:
        if dt in _DTYPE_NAMES:
            return _DTYPE_NAMES[dt]
        return f"unknown:{dt}"
    scale_dt = ckpt.dtype(f"{prefix}.weight_scale")
    if dt == "F8_E4M3":
        return "fp8"
    if dt == "U8" and scale_dt == "F8_E4M3" and f"{prefix}.weight_scale_2" in ckpt:
        return "nvfp4"
    if dt == "I8":
        return "int8_sq"
    if dt == "U8":
        return "int4_awq"
    return f"unknown:{dt}"


def dequantize(ckpt: Checkpoint, key: str, group_size: Optional[int] = None):
    """(format, float32 tensor) of checkpoint tensor `key`, with `pre_quant_scale` applied when present."""
    fmt = storedformat_of(ckpt, key)
    if fmt.startswith("unknown"):
        raise LayoutError(f"{key}: cannot dequantize a {fmt.split(':')[1]} tensor")
    if fmt in _DTYPE_NAMES.values():
        return fmt, ckpt.get(key).float()
    prefix = key[: -len(".weight")]
    w, s = ckpt.get(key), ckpt.get(f"{prefix}.weight_scale")
    if fmt == "fp8":
        out = dequantize_fp8(w, s)
    elif fmt == "nvfp4":
        out = dequantize_nvfp4(w, s, ckpt.get(f"{prefix}.weight_scale_2"), group_size or 16)
    elif fmt == "int8_sq":
        out = dequantize_int8(w, s)
    else:
        out = dequantize_int4_awq(w, s)
    if f"{prefix}.pre_quant_scale" in ckpt:  # y = (x ⊙ pqs) Wᵀ, so the effective weight is W·diag(pqs)
        out = out * ckpt.get(f"{prefix}.pre_quant_scale").float().reshape(1, -1)
    return fmt, out


# --------------------------------------------------------------------------------------------- compare
def _reference_getter(reference):
    if isinstance(reference, (str, Path)):
        ref = Checkpoint(reference)
        return ref.keys(), lambda k: ref.get(k)
    return sorted(reference), lambda k: reference[k]


def compare(
    exported_dir: str | Path,
    reference_state_dict: Mapping[str, Any] | str | Path,
    bounds: Optional[Mapping[str, float]] = None,
) -> dict[str, Any]:
    """Dequantize every tensor of the export and compare it with the high-precision reference.

    Args:
        exported_dir: a ModelOpt unified checkpoint folder.
        reference_state_dict: name -> tensor of the unquantized model (`model.state_dict()` taken BEFORE
            quantize: SmoothQuant and AWQ rescale weights in place), or a Hugging Face folder of it.
        bounds: per-format relative error bounds overriding :data:`BOUNDS`.
    Returns:
        {"passed": bool, "rows": [{"name", "format", "max_abs_err", "rel_err" (‖Δ‖/‖w‖), "bound", "ok",
        "note"}], "max_rel_err": {format: worst rel_err}, "failures": [names]}. Reference tensors missing
        from the export are failures, except an lm_head tied to the embedding (the export drops the alias).
    """
    limits = {**BOUNDS, **(bounds or {})}
    ckpt = Checkpoint(exported_dir)
    hf_cfg = (
        json.loads((Path(exported_dir) / "config.json").read_text())
        if (Path(exported_dir) / "config.json").is_file()
        else {}
    )
    group = _quant_section(Path(exported_dir)).get("group_size")
    ref_keys, ref_get = _reference_getter(reference_state_dict)
    folds = _awq_layernorm_folds(ckpt, set(ref_keys), ref_get)
    rows = []
    for key in ref_keys:
        ref = ref_get(key)
        if not torch.is_floating_point(ref) or key.endswith(SCALE_SUFFIXES) or "_quantizer." in key:
            continue  # quantizer buffers of an already-quantized model are not weights
        row = {
            "name": key,
            "format": "missing",
            "max_abs_err": math.nan,
            "rel_err": math.nan,
            "bound": math.nan,
            "ok": False,
            "note": "",
        }
        if key not in ckpt:
            if key == "lm_head.weight" and hf_cfg.get("tie_word_embeddings", False):
                continue
            row["note"] = "not in the export"
            rows.append(row)
            continue
        if key in folds.values():
            row.update(
                format="folded", ok=True, note="holds AWQ's pre_quant_scale; checked through the linears it feeds"
            )
            rows.append(row)
            continue
        fmt, deq = dequantize(ckpt, key, group)
        if key in folds:
            norm_key = folds[key]
            deq = deq * (ckpt.get(norm_key).float() / _nonzero(ref_get(norm_key).float())).reshape(1, -1)
        row["format"], row["bound"] = fmt, limits.get(fmt, math.nan)
        ref = ref.detach().float().cpu()
        if tuple(deq.shape) != tuple(ref.shape):
            row["note"] = f"shape {tuple(deq.shape)} != reference {tuple(ref.shape)}"
            rows.append(row)
            continue
        delta = deq - ref
        norm = ref.norm().item()
        row["max_abs_err"] = delta.abs().max().item() if delta.numel() else 0.0
        row["rel_err"] = delta.norm().item() / norm if norm else (0.0 if row["max_abs_err"] == 0 else math.inf)
        row["ok"] = bool(row["rel_err"] <= row["bound"])
        rows.append(row)
    worst: dict[str, float] = {}
    for r in rows:
        if not math.isnan(r["rel_err"]):
            worst[r["format"]] = max(worst.get(r["format"], 0.0), r["rel_err"])
    failures = [r["name"] for r in rows if not r["ok"]]
    return {"passed": not failures and bool(rows), "rows": rows, "max_rel_err": worst, "failures": failures}


# For AWQ the exporter multiplies pre_quant_scale into the norm feeding the linears (llama-family names).
_NORM_FEEDS = {
    "input_layernorm": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "post_attention_layernorm": ("mlp.gate_proj", "mlp.up_proj"),
}


def _nonzero(t):
    return torch.where(t == 0, torch.ones_like(t), t)


def _awq_layernorm_folds(ckpt: Checkpoint, ref_keys: set[str], ref_get) -> dict[str, str]:
    """linear weight -> norm weight holding its folded AWQ scale (int4_awq linears without pre_quant_scale).

    The effective linear weight is then W_deq · diag(γ_export / γ_reference); a wrong folded scale shows up as
    an error of every linear fed by that norm.
    """
    out = {}
    for key in ckpt.keys():
        if not key.endswith(".weight") or storedformat_of(ckpt, key) != "int4_awq":
            continue
        prefix = key[: -len(".weight")]
        if f"{prefix}.pre_quant_scale" in ckpt:
            continue
        for norm, linears in _NORM_FEEDS.items():
            for lin in linears:
                if prefix.endswith("." + lin):
                    norm_key = prefix[: -len(lin)] + norm + ".weight"
                    if norm_key in ckpt and norm_key in ref_keys:
                        out[key] = norm_key
    return out


# ---------------------------------------------------------------------------------------------- layout
def _quant_section(folder: Path) -> dict[str, Any]:
    p = folder / "hf_quant_config.json"
    if not p.is_file():
        return {}
    try:
        return json.loads(p.read_text()).get("quantization") or {}
    except json.JSONDecodeError:
        return {}


def expected_linear_shapes(hf_config: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """Logical [out, in] of the llama-family projections (llama, mistral, qwen2, qwen3) from config.json."""
    try:
        hidden, heads = hf_config["hidden_size"], hf_config["num_attention_heads"]
        inter = hf_config["intermediate_size"]
    except KeyError:
        return {}
    kv = hf_config.get("num_key_value_heads") or heads
    hd = hf_config.get("head_dim") or hidden // heads
    return {
        "self_attn.q_proj": (heads * hd, hidden),
        "self_attn.k_proj": (kv * hd, hidden),
        "self_attn.v_proj": (kv * hd, hidden),
        "self_attn.o_proj": (hidden, heads * hd),
        "mlp.gate_proj": (inter, hidden),
        "mlp.up_proj": (inter, hidden),
        "mlp.down_proj": (hidden, inter),
    }


def _logical_shape(ckpt: Checkpoint, key: str, fmt: str) -> tuple[int, ...]:
    shape = ckpt.shape(key)
    if fmt == "nvfp4":
        return (shape[0], shape[1] * 2)
    if fmt == "int4_awq":
        return (shape[0] * 2, shape[1])
    return shape


def _check_scales(ckpt: Checkpoint, prefix: str, fmt: str, group: Optional[int], problems: list[str]) -> None:
    w = f"{prefix}.weight"
    out, n = _logical_shape(ckpt, w, fmt)

    def need(suffix: str, dtypes: tuple[str, ...], numel: Optional[tuple[int, ...]] = None, shape=None):
        k = f"{prefix}.{suffix}"
        if k not in ckpt:
            problems.append(f"{k} is missing")
            return
        if ckpt.dtype(k) not in dtypes:
            problems.append(f"{k} is {ckpt.dtype(k)}, expected {'/'.join(dtypes)}")
        size = math.prod(ckpt.shape(k))
        if numel is not None and size not in numel:
            problems.append(f"{k} has {size} elements {ckpt.shape(k)}, expected {' or '.join(map(str, numel))}")
        if shape is not None and ckpt.shape(k) != shape:
            problems.append(f"{k} has shape {ckpt.shape(k)}, expected {shape}")

    if fmt == "fp8":
        need("weight_scale", ("F32",), numel=(1, out))
        need("input_scale", ("F32",), numel=(1,))
    elif fmt == "nvfp4":
        g = group or 16
        if n % g:
            problems.append(f"{w}: input dim {n} is not a multiple of group_size {g}")
        need("weight_scale", ("F8_E4M3",), shape=(out, n // g))
        need("weight_scale_2", ("F32",), numel=(1,))
        need("input_scale", ("F32",), numel=(1,))
    elif fmt == "int8_sq":
        need("weight_scale", ("F32",), numel=(out,))
        need("input_scale", ("F32",), numel=(1,))
    elif fmt == "int4_awq":
        g = group or 128
        need("weight_scale", ("F32", "BF16", "F16"), shape=(out, n // g))


def check_layout(
    exported_dir: str | Path, fmt: str, kv_cache_fp8: Optional[bool] = None, require_tokenizer: bool = True
) -> dict[str, Any]:
    """Check what TensorRT-LLM reads from a ModelOpt unified checkpoint; raise LayoutError listing problems.

    - files: config.json, hf_quant_config.json, safetensors (every shard of the index), tokenizer;
    - hf_quant_config.json: producer {name: modelopt, version}, quantization.quant_algo of `fmt`,
      kv_cache_quant_algo ("FP8" iff `kv_cache_fp8`; not checked when None), group_size (16 for NVFP4,
      the AWQ block for INT4), exclude_modules (a list of module-name patterns);
    - config.json quantization_config: quant_method modelopt, the same quant_algo, `ignore` equal to
      exclude_modules, kv_cache_scheme consistent with kv_cache_quant_algo;
    - tensors: every quantized weight in the format's dtype and shape with its scales (see the module
      docstring), logical shapes equal to config.json's sizes, no quantized module matched by
      exclude_modules (it would be loaded as bf16) and every high-precision 2-D weight matched by one
      (it would be loaded as quantized); with an FP8 KV cache, k_scale and v_scale in every layer.
    Returns a summary: quant_algo, kv_cache_quant_algo, group_size, exclude_modules, quantized (count per
    format), high_precision (module names), files.
    """
    f = format_of(fmt)
    folder = Path(exported_dir)
    problems: list[str] = []
    for name in ("config.json", "hf_quant_config.json"):
        if not (folder / name).is_file():
            problems.append(f"{name} is missing")
    if require_tokenizer and not any((folder / t).is_file() for t in TOKENIZER_FILES):
        problems.append(f"no tokenizer ({' or '.join(TOKENIZER_FILES)})")
    if require_tokenizer and not (folder / "tokenizer_config.json").is_file():
        problems.append("tokenizer_config.json is missing")
    if problems:
        raise LayoutError(f"{folder} is not a complete unified checkpoint: " + "; ".join(problems))

    hq = json.loads((folder / "hf_quant_config.json").read_text())
    hf_cfg = json.loads((folder / "config.json").read_text())
    producer = hq.get("producer") or {}
    if producer.get("name") != "modelopt" or not producer.get("version"):
        problems.append(f"hf_quant_config.json producer={producer!r}, expected name 'modelopt' and a version")
    q = hq.get("quantization")
    if not isinstance(q, dict):
        raise LayoutError(f"{folder}/hf_quant_config.json has no 'quantization' object")
    if q.get("quant_algo") != f.quant_algo:
        problems.append(f"quantization.quant_algo={q.get('quant_algo')!r}, expected {f.quant_algo!r} for {fmt}")
    kv_algo = q.get("kv_cache_quant_algo")
    if "kv_cache_quant_algo" not in q:
        problems.append("quantization.kv_cache_quant_algo is missing (null when the KV cache is not quantized)")
    elif kv_cache_fp8 is not None and kv_algo != ("FP8" if kv_cache_fp8 else None):
        problems.append(f"quantization.kv_cache_quant_algo={kv_algo!r}, expected {'FP8' if kv_cache_fp8 else None!r}")
    group = q.get("group_size")
    if f.group_size is not None and fmt == "nvfp4" and group != f.group_size:
        problems.append(f"quantization.group_size={group!r}, expected {f.group_size} for NVFP4")
    if fmt == "int4_awq" and not isinstance(group, int):
        problems.append(f"quantization.group_size={group!r}, expected the AWQ block size")
    exclude = q.get("exclude_modules")
    if not isinstance(exclude, list) or not all(isinstance(e, str) for e in exclude):
        problems.append(f"quantization.exclude_modules={exclude!r} is not a list of module names")
        exclude = []

    qc = hf_cfg.get("quantization_config")
    if not isinstance(qc, dict):
        problems.append("config.json has no quantization_config")
    else:
        if not str(qc.get("quant_method", "")).startswith("modelopt"):
            problems.append(
                f"config.json quantization_config.quant_method={qc.get('quant_method')!r}, expected 'modelopt'"
            )
        if qc.get("quant_algo") != f.quant_algo:
            problems.append(
                f"config.json quantization_config.quant_algo={qc.get('quant_algo')!r}, expected {f.quant_algo!r}"
            )
        if set(qc.get("ignore") or []) != set(exclude):
            problems.append(
                f"config.json quantization_config.ignore={qc.get('ignore')!r} differs from "
                f"hf_quant_config exclude_modules={exclude!r}"
            )
        scheme = qc.get("kv_cache_scheme")
        fp8_scheme = isinstance(scheme, dict) and scheme.get("type") == "float" and scheme.get("num_bits") == 8
        inline_kv = "FP8" if fp8_scheme else None
        if kv_algo in (None, "FP8") and inline_kv != kv_algo:
            problems.append(
                f"config.json quantization_config.kv_cache_scheme={scheme!r} disagrees with "
                f"kv_cache_quant_algo={kv_algo!r}"
            )

    ckpt = Checkpoint(folder)
    shapes = expected_linear_shapes(hf_cfg)
    quantized: dict[str, int] = {}
    high_precision: list[str] = []
    for key in ckpt.keys():
        if not key.endswith(".weight"):
            continue
        prefix = key[: -len(".weight")]
        sfmt = storedformat_of(ckpt, key)
        excluded = any(fnmatch.fnmatchcase(prefix, p) for p in exclude)
        if sfmt in FORMATS:
            quantized[sfmt] = quantized.get(sfmt, 0) + 1
            if sfmt != fmt:
                problems.append(f"{key} is stored as {sfmt} in a {fmt} checkpoint")
            if excluded:
                problems.append(
                    f"{prefix} is quantized but matches exclude_modules (it would be loaded as high precision)"
                )
            _check_scales(ckpt, prefix, sfmt, group, problems)
            logical = _logical_shape(ckpt, key, sfmt)
        elif sfmt in _DTYPE_NAMES.values():
            logical = ckpt.shape(key)
            if len(logical) == 2:
                high_precision.append(prefix)
                if not excluded:
                    problems.append(f"{prefix} is {sfmt} but not in exclude_modules (it would be loaded as {fmt})")
        else:
            problems.append(f"{key} has an unexpected dtype {ckpt.dtype(key)}")
            continue
        for suffix, want in shapes.items():
            if prefix.endswith("." + suffix) and tuple(logical) != want:
                problems.append(f"{key} has logical shape {tuple(logical)}, config.json implies {want}")
    if not quantized:
        problems.append("no quantized weight found")
    if kv_algo == "FP8":
        layers = hf_cfg.get("num_hidden_layers")
        for suffix in ("k_scale", "v_scale"):
            found = [k for k in ckpt.keys() if k.endswith("." + suffix)]
            bad = [k for k in found if ckpt.dtype(k) != "F32" or math.prod(ckpt.shape(k)) != 1]
            if layers is not None and len(found) != layers:
                problems.append(f"{len(found)} {suffix} tensors for {layers} layers (kv_cache_quant_algo=FP8)")
            if bad:
                problems.append(f"{suffix} must be float32 scalars: {bad[:3]}")
    if problems:
        shown = problems[:25] + ([f"... {len(problems) - 25} more"] if len(problems) > 25 else [])
        raise LayoutError(f"{folder} does not have the {fmt} layout TensorRT-LLM expects:\n  - " + "\n  - ".join(shown))
    return {
        "quant_algo": q["quant_algo"],
        "kv_cache_quant_algo": kv_algo,
        "group_size": group,
        "exclude_modules": exclude,
        "quantized": quantized,
        "high_precision": high_precision,
        "files": sorted(p.name for p in folder.iterdir()),
    }


# ------------------------------------------------------------------------------------------ evaluation
def fake_quant_quality(
    quantized, sequences, fmt: str, batch_size: int, device: str, reference=None, progress: bool = True
) -> dict[str, dict[str, float]]:
    """Perplexity of the fake-quantized model (before export) with :func:`compactlm.evaluate.quality`.

    With `reference` (the unquantized model), also its perplexity and the quantized model's KL to it and
    top-1 agreement. Raises ConfigError where the format's forward cannot run on `device` (nvfp4 on CPU).
    Returns label -> metrics for "quantized" (and "reference").
    """
    check_forward_support(fmt, device)
    models = {"quantized": quantized}
    if reference is not None:
        models = {"reference": reference, **models}
    return quality(
        models, "reference" if reference is not None else "quantized", sequences, batch_size, device, progress=progress
    )
