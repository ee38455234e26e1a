"""Structured slicing of Hugging Face decoders to a Minitron `export_config`, in place.

Every dimension keeps its top-k units by importance in their ORIGINAL order (sorted indices through
`index_select`), so an export_config equal to the model's own sizes returns the same function. ModelOpt
instead permutes units by importance before trimming; both give the same function because
attention heads, FFN neurons and hidden channels are permutation-symmetric.

What each export_config key slices:
* hidden_size: embedding columns, every RMSNorm over hidden (input/post-attention/final), q/k/v and
  gate/up input columns, o_proj and down_proj output rows, lm_head columns (tied: the shared matrix).
  RMSNorm then averages over fewer channels; like ModelOpt, weights are not rescaled for that.
* ffn_hidden_size: gate/up output rows (+ biases), down_proj input columns, per layer.
* num_attention_heads: q_proj output rows (+ bias) and o_proj input columns, head by head; KV heads are
  kept (ModelOpt no longer prunes query groups), every KV group keeps the same number of query heads,
  chosen by score within the group. Qwen3's q_norm/k_norm act on head_dim, which never changes.
* num_layers: the kept layers (see `importance.select_layers`), renumbered (`layer_idx`, `layer_types`).
"""

from __future__ import annotations

import copy
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from compactlm.arch import Adapter, adapter_for, decoder_layers
from compactlm.config import ConfigError
from compactlm.manifest import atomic_write_text, staging_dir
from compactlm.model.config_layouts import write_both_rope_layouts
from compactlm.prune.importance import ImportanceScores, select_layers
from compactlm.prune.schema import EXPORT_KEYS, EXPORT_TO_HF


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def validate_export_config(export_config: dict[str, Any], hf_config) -> None:
    """Raise ConfigError (naming `prune.export_config.<key>`) unless `export_config` can prune `hf_config`.

    Keys: hidden_size, ffn_hidden_size, num_attention_heads, num_layers; None means unchanged.
    """
    for key, value in export_config.items():
        name = f"prune.export_config.{key}"
        if key not in EXPORT_KEYS:
            raise ConfigError(f"{name} is not a known size; allowed keys: {', '.join(EXPORT_KEYS)}")
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}={value!r} must be an integer >= 1")
        if value < 1:
            raise ConfigError(f"{name}={value} must be an integer >= 1")
        have = getattr(hf_config, EXPORT_TO_HF[key])
        if value > have:
            raise ConfigError(f"{name}={value} exceeds the model's {have}")
    heads = export_config.get("num_attention_heads")
    kv = getattr(hf_config, "num_key_value_heads", None) or hf_config.num_attention_heads
    if heads is not None and heads % kv:
        raise ConfigError(
            f"prune.export_config.num_attention_heads={heads} is not divisible by the model's "
            f"num_key_value_heads={kv}: KV heads are kept and every KV group keeps the same number of query heads"
        )


def top_k_sorted(scores: Tensor, k: int) -> Tensor:
    """Indices of the `k` highest `scores` [n], ascending (original order); ties keep the lower index."""
    order = torch.argsort(scores.float(), descending=True, stable=True)
    return order[:k].sort().values


def top_heads_per_group(scores: Tensor, num_kv_heads: int, k_total: int) -> Tensor:
    """Indices of `k_total` query heads, the best `k_total / num_kv_heads` of each KV group, ascending.

    scores: [num_attention_heads]; query head h belongs to KV group h // (num_attention_heads / num_kv_heads)
    (HF `repeat_kv` layout).
    """
    n = scores.numel()
    per_group, keep = n // num_kv_heads, k_total // num_kv_heads
    order = torch.argsort(scores.float().view(num_kv_heads, per_group), dim=1, descending=True, stable=True)
    picked = order[:, :keep] + torch.arange(0, n, per_group)[:, None]
    return picked.flatten().sort().values


def _slice_param(module: nn.Module, name: str, dim: int, idx: Tensor) -> None:
    p = getattr(module, name, None)
    if p is None:  # no bias
        return
    new = p.detach().index_select(dim, idx.to(p.device)).contiguous()
    setattr(module, name, nn.Parameter(new, requires_grad=p.requires_grad))


def _slice_linear(lin: nn.Linear, out_idx: Optional[Tensor] = None, in_idx: Optional[Tensor] = None) -> None:
    if out_idx is not None:
        _slice_param(lin, "weight", 0, out_idx)
        _slice_param(lin, "bias", 0, out_idx)
        lin.out_features = out_idx.numel()
    if in_idx is not None:
        _slice_param(lin, "weight", 1, in_idx)
        lin.in_features = in_idx.numel()


def _channel_index(heads: Tensor, head_dim: int) -> Tensor:
    """Head indices [k] -> their channel indices [k * head_dim] in a [heads * head_dim] projection."""
    return (heads[:, None] * head_dim + torch.arange(head_dim)[None, :]).flatten()


def _drop_layers(model, adapter: Adapter, keep: list[int]) -> None:
    backbone = getattr(model, adapter.backbone)
    layers = getattr(backbone, adapter.layers)
    new = nn.ModuleList([layers[i] for i in keep])
    setattr(backbone, adapter.layers, new)
    for new_idx, layer in enumerate(new):
        # KV caches are indexed by layer_idx: it must be the layer's new position.
        for m in layer.modules():
            if hasattr(m, "layer_idx"):
                m.layer_idx = new_idx
    cfg = model.config
    types = getattr(cfg, "layer_types", None)
    if isinstance(types, (list, tuple)):
        cfg.layer_types = [types[i] for i in keep]
    cfg.num_hidden_layers = len(keep)


def _check_scores(scores: ImportanceScores, cfg, num_layers: int) -> None:
    want = {
        "hidden": (cfg.hidden_size,),
        "ffn": (num_layers, cfg.intermediate_size),
        "heads": (num_layers, cfg.num_attention_heads),
        "depth": (num_layers,),
    }
    for name, shape in want.items():
        got = tuple(getattr(scores, name).shape)
        if got != shape:
            raise ValueError(
                f"importance scores `{name}` have shape {got} but this model needs {shape}; "
                "were they collected on a different model?"
            )


@torch.no_grad()
def prune_model(
    model,
    adapter: Adapter,
    scores: ImportanceScores,
    export_config: dict[str, Any],
    depth_method: str = "block_influence",
):
    """Slice `model` in place to the sizes in `export_config` and return it.

    Args:
        model: the `*ForCausalLM` the `scores` were collected on (unpruned).
        scores: from :func:`compactlm.prune.importance.collect_importance`.
        export_config: any subset of hidden_size, ffn_hidden_size, num_attention_heads, num_layers;
            a missing key (or None) keeps that size.
        depth_method: block_influence or lm_loss (see :func:`select_layers`).

    The config gets the new hidden_size / intermediate_size / num_attention_heads / num_hidden_layers
    and an explicit, unchanged head_dim (hidden_size need no longer equal heads * head_dim).
    """
    cfg = model.config
    export_config = {k: v for k, v in export_config.items() if v is not None}
    validate_export_config(export_config, cfg)
    layers = decoder_layers(model, adapter)
    L = len(layers)
    _check_scores(scores, cfg, L)
    backbone = getattr(model, adapter.backbone)
    embed, lm_head = getattr(backbone, adapter.embed), getattr(model, adapter.lm_head)
    tied = lm_head.weight is embed.weight
    head_dim = _head_dim(cfg)
    kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads

    keep_layers = list(range(L))
    n_layers = export_config.get("num_layers", L)
    if n_layers < L:
        keep_layers = select_layers(scores, n_layers, depth_method)
        _drop_layers(model, adapter, keep_layers)
        layers = decoder_layers(model, adapter)

    ffn = export_config.get("ffn_hidden_size", cfg.intermediate_size)
    if ffn < cfg.intermediate_size:
        for orig, layer in zip(keep_layers, layers):
            mlp = getattr(layer, adapter.mlp)
            idx = top_k_sorted(scores.ffn[orig], ffn)
            _slice_linear(getattr(mlp, adapter.gate_proj), out_idx=idx)
            _slice_linear(getattr(mlp, adapter.up_proj), out_idx=idx)
            _slice_linear(getattr(mlp, adapter.down_proj), in_idx=idx)
            if hasattr(mlp, "intermediate_size"):
                mlp.intermediate_size = ffn
        cfg.intermediate_size = ffn

    heads = export_config.get("num_attention_heads", cfg.num_attention_heads)
    if heads < cfg.num_attention_heads:
        for orig, layer in zip(keep_layers, layers):
            attn = getattr(layer, adapter.attn)
            ch = _channel_index(top_heads_per_group(scores.heads[orig], kv, heads), head_dim)
            _slice_linear(getattr(attn, adapter.q_proj), out_idx=ch)
            _slice_linear(getattr(attn, adapter.o_proj), in_idx=ch)
            # eager/sdpa attention repeat each KV head this many times
            attn.num_key_value_groups = heads // kv
            if hasattr(attn, "num_heads"):
                attn.num_heads = heads
        cfg.num_attention_heads = heads

    hidden = export_config.get("hidden_size", cfg.hidden_size)
    if hidden < cfg.hidden_size:
        idx = top_k_sorted(scores.hidden, hidden)
        _slice_param(embed, "weight", 1, idx)
        embed.embedding_dim = hidden
        for layer in layers:
            attn, mlp = getattr(layer, adapter.attn), getattr(layer, adapter.mlp)
            for norm in (adapter.input_norm, adapter.post_attn_norm):
                _slice_param(getattr(layer, norm), "weight", 0, idx)
                _slice_param(getattr(layer, norm), "bias", 0, idx)
            for proj in (adapter.q_proj, adapter.k_proj, adapter.v_proj):
                _slice_linear(getattr(attn, proj), in_idx=idx)
            _slice_linear(getattr(attn, adapter.o_proj), out_idx=idx)
            for proj in (adapter.gate_proj, adapter.up_proj):
                _slice_linear(getattr(mlp, proj), in_idx=idx)
            _slice_linear(getattr(mlp, adapter.down_proj), out_idx=idx)
            for m in (layer, mlp):
                if hasattr(m, "hidden_size"):
                    m.hidden_size = hidden
        final = getattr(backbone, adapter.final_norm)
        _slice_param(final, "weight", 0, idx)
        _slice_param(final, "bias", 0, idx)
        if tied:
            lm_head.weight = embed.weight
        else:
            _slice_param(lm_head, "weight", 1, idx)
        lm_head.in_features = hidden
        cfg.hidden_size = hidden

    # Pin head_dim: HF would otherwise derive it as hidden_size // num_attention_heads on reload.
    cfg.head_dim = head_dim
    return model


def save_pruned(model, tokenizer, out_dir: str | Path) -> Path:
    """Save `model` (safetensors, with its config) and `tokenizer` to `out_dir` atomically; returns `out_dir`.

    Written into a temporary sibling folder first, then moved into place, so `out_dir` is never half-written.
    """
    out_dir = Path(out_dir)
    with staging_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        write_both_rope_layouts(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return out_dir


# ------------------------------------------------------------------------------------------ streamed
# The same slicing, done tensor by tensor on the checkpoint's safetensors files instead of on a loaded model:
# the teacher is never built, so a prune holds one source shard (memory-mapped) and one output shard at a time,
# in the checkpoint's own dtype, whatever the size of the model (a 7B-shaped bf16 checkpoint prunes in ~3 GiB).
SHARD_BYTES = 1 << 30
"""Largest output shard: safetensors' `save_file` serializes a shard in memory, so this bounds the peak."""


@dataclass(frozen=True)
class PruneIndices:
    """Which units survive, as sorted index tensors over the ORIGINAL model (None: that size is unchanged)."""

    layers: list[int]
    """Kept layers, original numbering, ascending; their new numbers are their positions here."""
    hidden: Optional[Tensor]
    ffn: dict[int, Tensor]
    """Original layer -> kept FFN neurons [ffn_hidden_size] (empty when the FFN is not pruned)."""
    head_channels: dict[int, Tensor]
    """Original layer -> kept q_proj rows / o_proj columns [heads * head_dim] (empty when heads are not pruned)."""


def prune_indices(
    cfg, scores: ImportanceScores, export_config: dict[str, Any], depth_method: str = "block_influence"
) -> PruneIndices:
    """The units :func:`prune_model` keeps, computed from the HF config alone (no model)."""
    export_config = {k: v for k, v in export_config.items() if v is not None}
    validate_export_config(export_config, cfg)
    L = cfg.num_hidden_layers
    _check_scores(scores, cfg, L)
    n_layers = export_config.get("num_layers", L)
    layers = select_layers(scores, n_layers, depth_method) if n_layers < L else list(range(L))
    ffn = export_config.get("ffn_hidden_size", cfg.intermediate_size)
    heads = export_config.get("num_attention_heads", cfg.num_attention_heads)
    hidden = export_config.get("hidden_size", cfg.hidden_size)
    kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    return PruneIndices(
        layers=layers,
        hidden=top_k_sorted(scores.hidden, hidden) if hidden < cfg.hidden_size else None,
        ffn={i: top_k_sorted(scores.ffn[i], ffn) for i in layers} if ffn < cfg.intermediate_size else {},
        head_channels={
            i: _channel_index(top_heads_per_group(scores.heads[i], kv, heads), _head_dim(cfg)) for i in layers
        }
        if heads < cfg.num_attention_heads
        else {},
    )


def pruned_config(cfg, export_config: dict[str, Any], layers: list[int]):
    """Copy of HF config `cfg` with the sizes of `export_config`, as :func:`prune_model` leaves `model.config`."""
    new = copy.deepcopy(cfg)
    export_config = {k: v for k, v in export_config.items() if v is not None}
    new.head_dim = _head_dim(cfg)
    for key, value in export_config.items():
        setattr(new, EXPORT_TO_HF[key], int(value))
    types = getattr(cfg, "layer_types", None)
    if isinstance(types, (list, tuple)):
        new.layer_types = [types[i] for i in layers]
    new.num_hidden_layers = len(layers)
    return new


def tensor_rule(name: str, adapter: Adapter, idx: PruneIndices, tied: bool) -> Optional[tuple[str, list]]:
    """Where tensor `name` of the original checkpoint goes: (new name, [(dim, kept indices), ...]), or None when
    the pruned model has no such tensor (a dropped layer, a tied lm_head). Raises ValueError for a tensor the
    adapter does not describe, rather than copying it unsliced."""
    h = idx.hidden
    top = f"{adapter.backbone}."
    if name == f"{adapter.lm_head}.weight":
        return None if tied else (name, [(1, h)])
    if name == f"{top}{adapter.embed}.weight":
        return name, [(1, h)]
    if name in (f"{top}{adapter.final_norm}.weight", f"{top}{adapter.final_norm}.bias"):
        return name, [(0, h)]
    prefix = f"{top}{adapter.layers}."
    if not name.startswith(prefix):
        raise ValueError(f"tensor {name!r} is not part of a {adapter.model_type} decoder that compactlm can prune")
    number, _, rest = name[len(prefix) :].partition(".")
    layer = int(number)
    if layer not in idx.layers:
        return None
    new = f"{prefix}{idx.layers.index(layer)}.{rest}"
    module, _, param = rest.rpartition(".")
    ffn, ch = idx.ffn.get(layer), idx.head_channels.get(layer)
    a, m = adapter.attn, adapter.mlp
    weight = param == "weight"
    rules = {
        adapter.input_norm: [(0, h)],
        adapter.post_attn_norm: [(0, h)],
        f"{a}.{adapter.q_proj}": [(0, ch), (1, h)] if weight else [(0, ch)],
        f"{a}.{adapter.k_proj}": [(1, h)] if weight else [],
        f"{a}.{adapter.v_proj}": [(1, h)] if weight else [],
        f"{a}.{adapter.o_proj}": [(0, h), (1, ch)] if weight else [(0, h)],
        f"{m}.{adapter.gate_proj}": [(0, ffn), (1, h)] if weight else [(0, ffn)],
        f"{m}.{adapter.up_proj}": [(0, ffn), (1, h)] if weight else [(0, ffn)],
        f"{m}.{adapter.down_proj}": [(0, h), (1, ffn)] if weight else [(0, h)],
        **{f"{a}.{n}": [] for n in adapter.qk_norm},  # act on head_dim, which never changes
    }
    if module not in rules or param not in ("weight", "bias"):
        raise ValueError(f"tensor {name!r} is not part of a {adapter.model_type} decoder that compactlm can prune")
    return new, rules[module]


def checkpoint_files(folder: Path) -> list[Path]:
    """The safetensors files of a HF folder: model.safetensors, or the shards its index lists (sorted)."""
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    weight_map = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    return [folder / f for f in sorted(set(weight_map.values()))]


@torch.no_grad()
def stream_prune(
    folder: str | Path,
    scores: ImportanceScores,
    export_config: dict[str, Any],
    out_dir: str | Path,
    depth_method: str = "block_influence",
    tokenizer=None,
    shard_bytes: int = SHARD_BYTES,
) -> dict:
    """Prune the checkpoint in `folder` to `export_config` without loading it as a model; returns
    {"before": counts, "after": counts, "kept_layers": [...], "config": the new HF config}.

    Writes exactly the tensors :func:`prune_model` + :func:`save_pruned` write (bitwise, same names), in the
    checkpoint's own dtype, into `out_dir` (atomically): `model.safetensors`, or shards of at most
    `shard_bytes` plus `model.safetensors.index.json`. Each source file is memory-mapped (`safe_open`) and
    released before the next; counts are {"total", "embedding", "without_lm_head"} as in `count_parameters`.
    """
    from transformers import AutoConfig, GenerationConfig  # heavy (seconds to import); only this function needs it

    folder, out_dir = Path(folder), Path(out_dir)
    cfg = AutoConfig.from_pretrained(folder)
    adapter = adapter_for(cfg.model_type)
    idx = prune_indices(cfg, scores, export_config, depth_method)
    new_cfg = pruned_config(cfg, export_config, idx.layers)
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    embed, head = f"{adapter.backbone}.{adapter.embed}.weight", f"{adapter.lm_head}.weight"
    before, after = _Counts(), _Counts()
    with staging_dir(out_dir) as tmp:
        shards: list[dict[str, Tensor]] = [{}]
        pending = 0

        def flush() -> None:
            nonlocal pending
            if shards[-1]:
                save_file(shards[-1], str(tmp / f"part-{len(shards):05d}.safetensors"), metadata={"format": "pt"})
                shards[-1] = {}  # freed before the next shard fills
                shards.append({})
                pending = 0

        for path in checkpoint_files(folder):
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    t = f.get_tensor(name)
                    if not (tied and name == head):  # a tied head stored twice is one parameter
                        before.add(name, t.numel(), embed, head)
                    rule = tensor_rule(name, adapter, idx, tied)
                    if rule is None:
                        continue
                    new_name, cuts = rule
                    for dim, keep in cuts:
                        if keep is not None:
                            t = t.index_select(dim, keep)
                    t = t.contiguous()
                    after.add(new_name, t.numel(), embed, head)
                    nbytes = t.numel() * t.element_size()
                    if pending and pending + nbytes > shard_bytes:
                        flush()
                    shards[-1][new_name], pending = t, pending + nbytes
                    del t
            # leaving `with` unmaps the file: the next shard's pages replace this one's
        flush()
        _name_shards(tmp, len(shards) - 1)
        new_cfg.architectures = cfg.architectures
        new_cfg.save_pretrained(tmp)
        write_both_rope_layouts(tmp)
        gen = folder / "generation_config.json"
        if gen.is_file():
            shutil.copy2(gen, tmp / gen.name)
        else:
            GenerationConfig.from_model_config(new_cfg).save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return {"before": before.asdict(), "after": after.asdict(), "kept_layers": idx.layers, "config": new_cfg}


@dataclass
class _Counts:
    total: int = 0
    embedding: int = 0
    head: int = 0

    def add(self, name: str, n: int, embed: str, head: Optional[str]) -> None:
        self.total += n
        self.embedding += n if name == embed else 0
        self.head += n if name == head else 0

    def asdict(self) -> dict[str, int]:
        return {"total": self.total, "embedding": self.embedding, "without_lm_head": self.total - self.head}


def _name_shards(folder: Path, n: int) -> None:
    """Rename `part-0000k.safetensors` to transformers' names (`model.safetensors`, or `model-0000k-of-0000n`
    plus `model.safetensors.index.json`) once their number is known."""
    if n == 1:
        (folder / "part-00001.safetensors").rename(folder / "model.safetensors")
        return
    weight_map, total = {}, 0
    for k in range(1, n + 1):
        final = f"model-{k:05d}-of-{n:05d}.safetensors"
        (folder / f"part-{k:05d}.safetensors").rename(folder / final)
        with safe_open(str(folder / final), framework="pt") as f:
            for name in f.keys():
                weight_map[name] = final
                sl = f.get_slice(name)
                total += math.prod(sl.get_shape()) * _DTYPE_BYTES[sl.get_dtype()]
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    atomic_write_text(folder / "model.safetensors.index.json", json.dumps(index, indent=2) + "\n")


_DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}
