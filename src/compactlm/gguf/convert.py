"""Hugging Face checkpoint -> GGUF (llama.cpp's own converter), GGUF -> quantized GGUF (llama.cpp's own
quantizer), and the check that a GGUF file is the model it was made from.

Every file is written under a temporary name and renamed into place when the tool succeeded, so a
half-written GGUF never carries the final name. :func:`inspect` reads a file back with the `gguf`
package (metadata, tensors, bits per weight); :func:`check_against_source` compares it with the source
folder's config.json, safetensors headers and tokenizer, and raises :class:`GGUFMismatch` naming what
disagrees. That includes RoPE: the file must rotate each head's pairs at the frequencies transformers computes
for the checkpoint (rope_theta, and llama3 scaling, which llama.cpp carries as a generated `rope_freqs` tensor).
"""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from compactlm.errors import ConfigError
from compactlm.gguf.llamacpp import LlamaCpp
from compactlm.manifest import open_nofollow

# Hugging Face architectures llama.cpp's converter handles and compactlm prunes (config.json "architectures").
CONVERTIBLE = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
# GGUF tensor (without "blk.N.") -> (HF config key of its first dimension, of its second); ne order as GGUF stores it.
_SHAPES = {
    "token_embd.weight": ("hidden", "vocab"),
    "attn_q.weight": ("hidden", "q"),
    "attn_k.weight": ("hidden", "kv"),
    "attn_v.weight": ("hidden", "kv"),
    "attn_output.weight": ("q", "hidden"),
    "ffn_gate.weight": ("hidden", "ffn"),
    "ffn_up.weight": ("hidden", "ffn"),
    "ffn_down.weight": ("ffn", "hidden"),
}
# Tensors llama.cpp's converter generates that are no weights of the checkpoint, so the weight count leaves them
# out (from `generate_extra_tensors` of the converter classes of CONVERTIBLE, llama.cpp of llama-cpp-python 0.3.36):
# - rope_freqs.weight: LlamaModel (LlamaForCausalLM and MistralForCausalLM) writes it when rope_type is "llama3"
#   (Llama-3.1, Llama-3.2): [head_dim / 2] float32, one divisor per rotary pair, applied by llama.cpp to that pair's
#   frequency freq_base^(-2i/head_dim). :func:`rope_problems` checks its values. Qwen2 and Qwen3 generate none.
GENERATED = ("rope_freqs.weight",)
ROPE_FREQS = "rope_freqs.weight"
# RoPE types whose frequencies :func:`rope_problems` compares (llama.cpp writes other scalings, e.g. yarn, as
# metadata that it does not check).
ROPE_TYPES_CHECKED = ("default", "llama3")


class GGUFMismatch(RuntimeError):
    """A GGUF file whose metadata or tensors disagree with the checkpoint it was converted from."""


def check_source(folder: Path, key: str = "gguf") -> dict[str, Any]:
    """The source's config.json, refused (ConfigError) when llama.cpp cannot convert it or it has no tokenizer."""
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise ConfigError(f"{key}: {folder} has no config.json (a Hugging Face checkpoint folder was expected)")
    cfg = json.loads(cfg_file.read_text())
    archs = cfg.get("architectures") or []
    if not any(a in CONVERTIBLE for a in archs):
        raise ConfigError(
            f"{key}: {folder} is {archs or 'an unnamed architecture'}; GGUF export converts {', '.join(CONVERTIBLE)}"
        )
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise ConfigError(
            f"{key}: {folder} has no tokenizer ({' or '.join(TOKENIZER_FILES)}); a GGUF carries its "
            "tokenizer, so the checkpoint must have one (save it with tokenizer.save_pretrained)"
        )
    return cfg


def _atomic_tool(cmd: list[str], final: Path, log_file: Path, env: dict[str, str] | None = None) -> None:
    """Run a tool that writes `final` through a temporary sibling; rename only when it succeeded."""
    tmp = final.with_name(f".{final.name}.tmp")
    tmp.unlink(missing_ok=True)
    cmd = [str(tmp) if c == "{out}" else c for c in cmd]
    with open_nofollow(log_file, "a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    if proc.returncode or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-12:])
        raise RuntimeError(
            f"{Path(cmd[0]).name if cmd[0] != sys.executable else Path(cmd[1]).name} failed "
            f"(exit {proc.returncode}) making {final.name}; see {log_file}:\n{tail}"
        )
    os.replace(tmp, final)


def convert(llama: LlamaCpp, source: Path, out: Path, outtype: str, log_file: Path) -> Path:
    """`convert_hf_to_gguf.py source --outtype outtype` into `out` (its own gguf-py, this Python)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("NO_LOCAL_GGUF", None)
    start = log_file.stat().st_size if log_file.is_file() else 0
    try:
        _atomic_tool(
            [sys.executable, str(llama.converter), str(source), "--outtype", outtype, "--outfile", "{out}"],
            out,
            log_file,
            env,
        )
    except RuntimeError:
        with open(log_file, errors="replace") as fh:
            fh.seek(start)
            if "BPE pre-tokenizer was not recognized" in fh.read():
                raise ConfigError(
                    f"gguf: llama.cpp's converter ({llama.version}) does not know the tokenizer of {source} "
                    "(it recognises tokenizers by a fingerprint of their pre-tokenizer, and this one is "
                    "not among them); GGUF export needs a tokenizer llama.cpp supports, or run without "
                    "the gguf stage (recipe.stages=[...] without gguf)"
                ) from None
        raise
    return out


def quantize(llama: LlamaCpp, source: Path, out: Path, qtype: str, threads: int, log_file: Path) -> Path:
    """`llama-quantize source out QTYPE threads` (llama.cpp's own quantizer, type by its name)."""
    _atomic_tool([str(llama.tool("llama-quantize")), str(source), "{out}", qtype.upper(), str(threads)], out, log_file)
    return out


def _field(reader, key: str) -> Any:
    f = reader.fields.get(key)
    return None if f is None else f.contents()


def inspect(path: Path) -> dict[str, Any]:
    """Metadata and tensor summary of a GGUF file, read back with the `gguf` package."""
    from gguf import GGUFReader  # heavy (numpy memmap of the whole file): only where a GGUF is read

    reader = GGUFReader(str(path))
    arch = _field(reader, "general.architecture")
    meta = {
        k: _field(reader, f"{arch}.{k}")
        for k in (
            "block_count",
            "embedding_length",
            "feed_forward_length",
            "attention.head_count",
            "attention.head_count_kv",
            "attention.key_length",
            "context_length",
            "rope.freq_base",
            "rope.dimension_count",
        )
    }
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    rope_freqs = next((t for t in reader.tensors if t.name == ROPE_FREQS), None)
    elements = sum(int(t.n_elements) for t in reader.tensors)
    nbytes = sum(int(t.n_bytes) for t in reader.tensors)
    return {
        "architecture": arch,
        "file_type": _field(reader, "general.file_type"),
        "metadata": meta,
        "vocab": len(tokens.data) if tokens is not None else 0,
        "tokenizer_model": _field(reader, "tokenizer.ggml.model"),
        "chat_template": _field(reader, "tokenizer.chat_template"),
        "tensors": {t.name: [int(x) for x in t.shape] for t in reader.tensors},
        "rope_freqs": None if rope_freqs is None else [float(x) for x in rope_freqs.data.reshape(-1)],
        "tensor_types": dict(Counter(t.tensor_type.name for t in reader.tensors)),
        "elements": elements,
        "bits_per_weight": nbytes * 8 / elements if elements else 0.0,
        "size_bytes": path.stat().st_size,
    }


def safetensors_shapes(folder: Path) -> dict[str, list[int]]:
    """Tensor name -> shape of a safetensors checkpoint, from the file headers (nothing loaded)."""
    shapes = {}
    for f in sorted(folder.glob("*.safetensors")):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        shapes.update({name: info["shape"] for name, info in header.items() if name != "__metadata__"})
    return shapes


def safetensors_elements(folder: Path) -> int:
    """Number of stored tensor elements of a safetensors checkpoint (a tied output layer is stored once)."""
    return sum(math.prod(shape) for shape in safetensors_shapes(folder).values())


def expected_sizes(cfg: dict[str, Any]) -> dict[str, int]:
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    return {
        "hidden": cfg["hidden_size"],
        "ffn": cfg["intermediate_size"],
        "vocab": cfg["vocab_size"],
        "q": heads * head_dim,
        "kv": kv * head_dim,
        "layers": cfg["num_hidden_layers"],
        "heads": heads,
        "kv_heads": kv,
    }


def chat_template(folder: Path) -> str | None:
    """The checkpoint's chat template: chat_template.jinja (transformers 5) or tokenizer_config.json's."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    tok_cfg = folder / "tokenizer_config.json"
    template = json.loads(tok_cfg.read_text(encoding="utf-8")).get("chat_template") if tok_cfg.is_file() else None
    return template if isinstance(template, str) else None


def check_against_source(info: dict[str, Any], source: Path, name: str) -> None:
    """Raise GGUFMismatch when `info` (from :func:`inspect`) is not the architecture of checkpoint `source`."""
    cfg = json.loads((source / "config.json").read_text())
    size = expected_sizes(cfg)
    meta = info["metadata"]
    problems = []
    for key, want in (
        ("block_count", size["layers"]),
        ("embedding_length", size["hidden"]),
        ("feed_forward_length", size["ffn"]),
        ("attention.head_count", size["heads"]),
        ("attention.head_count_kv", size["kv_heads"]),
    ):
        if meta.get(key) != want:
            problems.append(f"{info['architecture']}.{key} is {meta.get(key)}, the source has {want}")
    head_dim = size["q"] // size["heads"]
    if meta.get("attention.key_length") not in (None, head_dim):  # written where head_dim is given explicitly
        problems.append(
            f"{info['architecture']}.attention.key_length is {meta['attention.key_length']}, the "
            f"source's head_dim is {head_dim}"
        )
    if info["vocab"] != size["vocab"]:
        problems.append(f"the tokenizer has {info['vocab']} tokens, the source's vocab_size is {size['vocab']}")
    blocks = {int(n.split(".")[1]) for n in info["tensors"] if n.startswith("blk.")}
    if blocks != set(range(size["layers"])):
        problems.append(
            f"tensors exist for blocks {sorted(blocks)[:3]}...{sorted(blocks)[-1:]} ({len(blocks)}), "
            f"the source has {size['layers']} layers"
        )
    for tensor, shape in info["tensors"].items():
        short = tensor.split(".", 2)[-1] if tensor.startswith("blk.") else tensor
        dims = _SHAPES.get(short)
        if dims and shape[:2] != [size[dims[0]], size[dims[1]]]:
            problems.append(f"{tensor} has shape {shape}, the source implies {[size[dims[0]], size[dims[1]]]}")
    problems += rope_problems(info, source)
    stored = safetensors_elements(source)
    weights = info["elements"] - sum(math.prod(info["tensors"][t]) for t in GENERATED if t in info["tensors"])
    if stored and weights != stored:
        generated = [t for t in GENERATED if t in info["tensors"]]
        problems.append(
            f"{weights:,} weights in the GGUF{f' (besides the generated {generated})' if generated else ''}"
            f", {stored:,} in the source's safetensors"
        )
    template = chat_template(source)
    if isinstance(template, str) and info["chat_template"] != template:
        problems.append("the source's chat template was not carried over")
    if problems:
        raise GGUFMismatch(f"{name} does not match {source}: " + "; ".join(problems[:6]))


def rope_problems(info: dict[str, Any], source: Path) -> list[str]:
    """Where the file's RoPE differs from what transformers runs for checkpoint `source` (empty: none).

    llama.cpp rotates pair i of a head by position × freq_base^(-2i/d) / rope_freqs[i] (d = rope.dimension_count,
    rope_freqs[i] = 1 without the tensor); transformers by position × inv_freq[i], computed from the config's
    `rope_parameters` by its own RoPE functions. Both are compared per pair (relative tolerance 1e-4: float32 on
    both sides). RoPE types other than ROPE_TYPES_CHECKED are compared on freq_base alone.
    """
    import torch  # heavy: only where a file is checked (the launcher imports this module for check_source)
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cfg = AutoConfig.from_pretrained(source)
    params = cfg.rope_parameters
    meta, name = info["metadata"], info["architecture"]
    theta, rope_type = float(params["rope_theta"]), params.get("rope_type", "default")
    base = meta.get("rope.freq_base") or 10000.0  # llama.cpp's default when the file has none
    if not math.isclose(base, theta, rel_tol=1e-6):
        return [f"{name}.rope.freq_base is {base:g}, the source's rope_theta is {theta:g}"]
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    dim = meta.get("rope.dimension_count") or head_dim
    if dim != head_dim:
        return [f"{name}.rope.dimension_count is {dim}, the source's head_dim is {head_dim}"]
    factors = info["rope_freqs"]
    if factors is not None and len(factors) != dim // 2:
        return [f"{ROPE_FREQS} has {len(factors)} values, rope.dimension_count {dim} implies {dim // 2}"]
    if rope_type not in ROPE_TYPES_CHECKED:
        return []
    if rope_type == "llama3" and factors is None:
        return [f"the file has no {ROPE_FREQS}, so llama.cpp would run without the source's llama3 RoPE scaling"]
    if rope_type == "default" and factors is not None:
        return [f"the file has {ROPE_FREQS}, the source has no RoPE scaling"]
    if rope_type == "default":
        want = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).double() / dim))
    else:
        want = ROPE_INIT_FUNCTIONS[rope_type](cfg, "cpu")[0].double()
    have = base ** (-torch.arange(0, dim, 2, dtype=torch.int64).double() / dim)
    if factors is not None:
        have = have / torch.tensor(factors, dtype=torch.float64)
    err = ((have - want).abs() / want).max().item()
    if err > 1e-4:
        return [f"RoPE frequencies differ from the source's {rope_type} RoPE by up to {err:.2%} (relative)"]
    return []


def param_counts(folder: Path) -> dict[str, int]:
    """`compactlm.model.loading.count_parameters`'s dict for a checkpoint folder, from config.json and the
    safetensors headers (nothing loaded): a tied output layer is stored once and counted once."""
    cfg = json.loads((folder / "config.json").read_text())
    shapes = safetensors_shapes(folder)
    total = sum(math.prod(shape) for shape in shapes.values())
    embedding = cfg["vocab_size"] * cfg["hidden_size"]
    tied = not any(name.endswith("lm_head.weight") for name in shapes)
    return {"total": total, "embedding": embedding, "without_lm_head": total if tied else total - embedding}


def load_dequantized(path: Path, device: str = "cpu", source: Path | None = None):
    """A GGUF file as a float32 transformers model (transformers' GGUF loader dequantizes every tensor).

    transformers' loader rebuilds the config from the file's metadata, but ignores llama.cpp's `rope_freqs` (llama3
    RoPE scaling: the model would run with plain RoPE) and leaves Qwen3's head_dim at its default 128. With
    `source`, the checkpoint the file was made from (and was verified against, :func:`check_against_source`), the
    file's RoPE is checked against the source's (:func:`rope_problems`) and the source's RoPE settings and head_dim
    are used. A file with `rope_freqs` needs `source`. GGUFMismatch when the check fails or `source` is missing.
    """
    import torch  # heavy: only where a file is loaded back
    from transformers import AutoConfig, AutoModelForCausalLM

    info = inspect(path)
    if info["rope_freqs"] is not None and source is None:
        raise GGUFMismatch(
            f"{path.name} has {ROPE_FREQS}, which transformers' GGUF loader ignores; pass the source "
            "checkpoint to load it with the source's RoPE settings"
        )
    config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    if source is not None:
        problems = rope_problems(info, source)
        if problems:
            raise GGUFMismatch(f"{path.name} does not match {source}: " + "; ".join(problems))
        src = AutoConfig.from_pretrained(source)
        config.rope_parameters = src.rope_parameters
        config.head_dim = getattr(src, "head_dim", None) or src.hidden_size // src.num_attention_heads
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, config=config, dtype=torch.float32)
    return model.to(device).eval()
