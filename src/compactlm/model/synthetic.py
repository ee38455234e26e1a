"""Random-weight checkpoints in Llama-3 proportions, written shard by shard (for benchmarks/scale.py and tests).

A checkpoint here is a plain Hugging Face Llama folder, as released checkpoints are: bf16 safetensors in several
shards with `model.safetensors.index.json`, untied embeddings, GQA with 128-dim heads, FFN ≈ 3.5 × hidden,
RoPE θ 500000. Each tensor is drawn from its own seeded generator (seed, tensor name) and the shard it belongs to
is written as soon as it is full, so making a 7B-shaped checkpoint holds one shard (plus one float32 tensor
while it is drawn), never the model. The tokenizer is copied from a folder the caller gives (the demo model's,
SmolLM2's byte-level BPE, vocab 49152), so that data and GGUF stages see a real tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from compactlm.manifest import atomic_write_text, staging_dir


@dataclass(frozen=True)
class Shape:
    """Sizes of one Llama-3-proportioned decoder."""

    hidden: int
    ffn: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int = 49152
    head_dim: int = 128

    def params(self) -> int:
        """Parameters, untied (embedding and lm_head counted separately), norms included."""
        attn = 2 * self.hidden * self.heads * self.head_dim + 2 * self.hidden * self.kv_heads * self.head_dim
        layer = attn + 3 * self.hidden * self.ffn + 2 * self.hidden
        return 2 * self.vocab * self.hidden + self.layers * layer + self.hidden


# name -> shape. Heads are 128-dim; 8 KV heads from 1.5B up (Llama-3's 8B and 3B), heads/2 below, where a
# 512- or 1024-wide model has only 4 or 8 heads. FFN = 3.5 × hidden; depth chosen for the parameter count.
SHAPES: dict[str, Shape] = {
    "135m": Shape(hidden=512, ffn=1792, layers=24, heads=4, kv_heads=2),
    "0.5b": Shape(hidden=1024, ffn=3584, layers=28, heads=8, kv_heads=4),
    "1.5b": Shape(hidden=2048, ffn=7168, layers=24, heads=16, kv_heads=8),
    "3b": Shape(hidden=3072, ffn=10752, layers=22, heads=24, kv_heads=8),
    "7b": Shape(hidden=4096, ffn=14336, layers=32, heads=32, kv_heads=8),
}


def tensor_shapes(s: Shape) -> dict[str, tuple[int, ...]]:
    """HF Llama tensor name -> shape, in the order transformers writes them (embedding first, lm_head last)."""
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (s.vocab, s.hidden)}
    q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    for i in range(s.layers):
        p = f"model.layers.{i}."
        out.update(
            {
                p + "input_layernorm.weight": (s.hidden,),
                p + "post_attention_layernorm.weight": (s.hidden,),
                p + "self_attn.q_proj.weight": (q, s.hidden),
                p + "self_attn.k_proj.weight": (kv, s.hidden),
                p + "self_attn.v_proj.weight": (kv, s.hidden),
                p + "self_attn.o_proj.weight": (s.hidden, q),
                p + "mlp.gate_proj.weight": (s.ffn, s.hidden),
                p + "mlp.up_proj.weight": (s.ffn, s.hidden),
                p + "mlp.down_proj.weight": (s.hidden, s.ffn),
            }
        )
    out["model.norm.weight"] = (s.hidden,)
    out["lm_head.weight"] = (s.vocab, s.hidden)
    return out


def random_tensor(name: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """bf16 tensor for `name`: norms are ones, matrices N(0, 0.02²) from a generator seeded by (seed, name), so a
    tensor does not depend on which shard it lands in or on the tensors before it."""
    if len(shape) == 1:
        return torch.ones(shape, dtype=torch.bfloat16)
    g = torch.Generator().manual_seed(seed * 1_000_003 + int(hashlib.sha256(name.encode()).hexdigest()[:12], 16))
    return torch.empty(shape, dtype=torch.float32).normal_(0.0, 0.02, generator=g).to(torch.bfloat16)


def hf_config(s: Shape, tokenizer_config: dict) -> dict:
    """config.json of a LlamaForCausalLM of shape `s`; bos/eos ids come from the tokenizer's model config."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "torch_dtype": "bfloat16",
        "hidden_size": s.hidden,
        "intermediate_size": s.ffn,
        "num_hidden_layers": s.layers,
        "num_attention_heads": s.heads,
        "num_key_value_heads": s.kv_heads,
        "head_dim": s.head_dim,
        "vocab_size": s.vocab,
        "tie_word_embeddings": False,
        "max_position_embeddings": 8192,
        "rope_theta": 500000.0,
        "rms_norm_eps": 1e-5,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "bos_token_id": tokenizer_config.get("bos_token_id"),
        "eos_token_id": tokenizer_config.get("eos_token_id"),
    }


def write_checkpoint(s: Shape, out_dir: str | Path, tokenizer_dir: str | Path, seed: int = 0, shards: int = 4) -> Path:
    """Write a random checkpoint of shape `s` to `out_dir` (atomically): about `shards` bf16 safetensors files
    of ~equal size, `model.safetensors.index.json`, config.json, and the tokenizer files of `tokenizer_dir`
    (whose config.json, when it has one, gives the bos/eos ids). Returns `out_dir`.

    Peak memory: one shard (~params × 2 bytes / `shards`) plus the float32 draw of the largest tensor.
    """
    out_dir, tokenizer_dir = Path(out_dir), Path(tokenizer_dir)
    names = tensor_shapes(s)
    total_bytes = sum(2 * math.prod(shape) for shape in names.values())
    groups: list[list[str]] = [[] for _ in range(shards)]
    start = 0
    for name, shape in names.items():  # a tensor goes to the shard its first byte falls in
        groups[min(shards - 1, start * shards // total_bytes)].append(name)
        start += 2 * math.prod(shape)
    groups = [g for g in groups if g]
    src_cfg = tokenizer_dir / "config.json"
    tok_model_cfg = json.loads(src_cfg.read_text()) if src_cfg.is_file() else {}
    with staging_dir(out_dir) as tmp:
        weight_map, total = {}, 0
        for k, group in enumerate(groups, 1):
            file = f"model-{k:05d}-of-{len(groups):05d}.safetensors"
            shard = {n: random_tensor(n, names[n], seed) for n in group}
            save_file(shard, str(tmp / file), metadata={"format": "pt"})
            total += sum(t.numel() * 2 for t in shard.values())
            weight_map.update({n: file for n in group})
            del shard  # one shard in memory at a time
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        atomic_write_text(tmp / "model.safetensors.index.json", json.dumps(index, indent=2) + "\n")
        atomic_write_text(tmp / "config.json", json.dumps(hf_config(s, tok_model_cfg), indent=2) + "\n")
        for f in tokenizer_dir.iterdir():
            if f.is_file() and (
                f.name.startswith(("tokenizer", "special_tokens")) or f.name in ("vocab.json", "merges.txt")
            ):
                shutil.copy2(f, tmp / f.name)
    return out_dir
