"""Quantization formats: the ModelOpt recipe of each, how the export names it, and where it runs and serves.

No torch, no ModelOpt: config validation and the launcher read these tables before anything runs.
Facts measured with nvidia-modelopt 0.47.0: the fake-quantized forward of fp8, int8_sq and int4_awq runs on
CPU and CUDA, nvfp4's asserts CUDA tensors; TensorRT-LLM serves FP8 from Ada/Hopper (sm_89), NVFP4 from
Blackwell (sm_100), INT8 SmoothQuant and INT4-AWQ from Ampere (sm_80).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

from compactlm.errors import ConfigError


@dataclass(frozen=True)
class Format:
    """One quantization format: the ModelOpt recipe, how the export names it, where it runs."""

    name: str
    modelopt_cfg: str
    """Attribute of `modelopt.torch.quantization` holding the recipe."""
    quant_algo: str
    """`quantization.quant_algo` in the exported hf_quant_config.json."""
    min_sm: int
    """Lowest compute capability (major*10 + minor) that serves it in TensorRT-LLM."""
    needs: str
    """The GPU generation `min_sm` stands for, for messages."""
    forward_devices: tuple[str, ...]
    """Device types on which ModelOpt's fake-quantized forward runs."""
    group_size: Optional[int] = None
    """Elements per weight scale along the input dimension (block formats)."""


FORMATS: dict[str, Format] = {
    "fp8": Format("fp8", "FP8_DEFAULT_CFG", "FP8", 89, "Ada or Hopper (sm_89) or later", ("cpu", "cuda")),
    "nvfp4": Format("nvfp4", "NVFP4_DEFAULT_CFG", "NVFP4", 100, "Blackwell (sm_100) or later", ("cuda",), 16),
    "int8_sq": Format(
        "int8_sq", "INT8_SMOOTHQUANT_CFG", "W8A8_SQ_PER_CHANNEL", 80, "Ampere (sm_80) or later", ("cpu", "cuda")
    ),
    "int4_awq": Format("int4_awq", "INT4_AWQ_CFG", "W4A16_AWQ", 80, "Ampere (sm_80) or later", ("cpu", "cuda"), 128),
}
EXPORT_DTYPES = ("bfloat16", "float16")

# Compute capability (major*10 + minor) of GPUs a checkpoint is commonly served on.
GPU_SM: dict[str, int] = {
    "v100": 70,
    "t4": 75,
    "a100": 80,
    "a800": 80,
    "a30": 80,
    "a10": 86,
    "a10g": 86,
    "a40": 86,
    "a6000": 86,
    "rtx 3090": 86,
    "l4": 89,
    "l40": 89,
    "l40s": 89,
    "rtx 4090": 89,
    "rtx 6000 ada": 89,
    "h100": 90,
    "h800": 90,
    "h200": 90,
    "h20": 90,
    "gh200": 90,
    "b100": 100,
    "b200": 100,
    "gb200": 100,
    "b300": 103,
    "gb300": 103,
    "rtx 5090": 120,
    "rtx pro 6000": 120,
    "gb10": 121,
}


def format_of(fmt: str, key: str = "quantize.format") -> Format:
    if fmt not in FORMATS:
        raise ConfigError(f"{key}={fmt!r} is not allowed; choose one of: {', '.join(FORMATS)}")
    return FORMATS[fmt]


def parse_sm(gpu: Any, key: str = "quantize.deploy_gpu") -> tuple[int, str]:
    """(compute capability as major*10+minor, label) of a GPU given by name or capability.

    Accepts 90, "sm_90", "sm90a", "9.0", (9, 0) (as `torch.cuda.get_device_capability()` returns),
    and names as `torch.cuda.get_device_name()` or cluster names spell them: "NVIDIA H100 80GB HBM3",
    "h200", "dgx_b200".
    """
    if isinstance(gpu, tuple) and len(gpu) == 2:
        return int(gpu[0]) * 10 + int(gpu[1]), f"sm_{gpu[0]}{gpu[1]}"
    if isinstance(gpu, int) and not isinstance(gpu, bool):
        return gpu, f"sm_{gpu}"
    text = str(gpu).strip().lower()
    m = re.fullmatch(r"(?:sm_?)?(\d{2,3})[af]?", text)
    if m:
        return int(m.group(1)), f"sm_{m.group(1)}"
    m = re.fullmatch(r"(\d{1,2})\.(\d)", text)
    if m:
        sm = int(m.group(1)) * 10 + int(m.group(2))
        return sm, f"sm_{sm}"
    words = re.sub(r"[_\-/]+", " ", text)
    for name in sorted(GPU_SM, key=len, reverse=True):  # "gb200" before "b200", "l40s" before "l4"
        if re.search(r"(?<![a-z0-9])" + re.escape(name) + r"(?![0-9])", words):
            return GPU_SM[name], name.upper()
    raise ConfigError(
        f"{key}={gpu!r} is not a GPU compactlm knows; give a name ({', '.join(sorted(GPU_SM))}) "
        f"or a compute capability (sm_90, 9.0)"
    )


def check_deploy_support(fmt: str, gpu_name_or_sm: Any, key: str = "quantize.deploy_gpu") -> int:
    """Raise ConfigError when TensorRT-LLM cannot serve `fmt` on that GPU; returns the GPU's sm.

    `check_deploy_support("fp8", "H100")` returns 90; `check_deploy_support("nvfp4", "H200")` raises
    (NVFP4 needs Blackwell, sm_100 or later; the message suggests fp8). The GPU is anything :func:`parse_sm` reads.
    """
    f = format_of(fmt)
    sm, label = parse_sm(gpu_name_or_sm, key)
    if sm < f.min_sm:
        hint = ""
        if fmt == "nvfp4" and sm >= FORMATS["fp8"].min_sm:
            hint = "; serve quantize.format=fp8 on this GPU (NVFP4 checkpoints need B200/GB200-class GPUs)"
        elif fmt == "fp8" and sm >= FORMATS["int8_sq"].min_sm:
            hint = "; use quantize.format=int8_sq or int4_awq on this GPU"
        raise ConfigError(
            f"quantize.format={fmt} cannot be served on {key}={gpu_name_or_sm!r} ({label}, sm_{sm}): "
            f"{f.quant_algo} needs {f.needs}{hint}"
        )
    return sm


def forward_supported(fmt: str, device: str) -> bool:
    """Whether ModelOpt's fake-quantized forward of `fmt` runs on `device` ("cpu", "cuda", "cuda:1")."""
    return str(device).split(":")[0] in format_of(fmt).forward_devices


def check_forward_support(fmt: str, device: str) -> None:
    """Raise ConfigError when the fake-quantized model cannot run a forward pass on `device`."""
    if not forward_supported(fmt, device):
        raise ConfigError(
            f"quantize.format={fmt}: the fake-quantized forward needs "
            f"{' or '.join(format_of(fmt).forward_devices)}, not {device!r} (ModelOpt's NVFP4 kernels assert CUDA "
            f"tensors); calibration and export still work here, evaluate the quantized model on a GPU"
        )
