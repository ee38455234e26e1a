"""Minitron activation importance on Hugging Face decoders, scored like ModelOpt's `mcore_minitron`.

Forward passes only. Hooks reduce every activation they see to a small per-channel statistic at once,
so nothing larger than one batch's activations is ever alive. The rules (ModelOpt 0.47,
`prune/plugins/mcore_minitron.py` and `importance_hooks/base_hooks.py::L2NormHook`):

* aggregation of an activation `a` of shape [batch, seq, channels] (HF is batch-first; Megatron is
  seq-first, hence its `mean(dim=0)`): per sample the mean over the sequence of |a|, squared, summed
  over ALL calibration samples; the square root is taken once at the end — one L2 norm over samples;
* hidden channels: the outputs of `input_layernorm` and `post_attention_layernorm` of every layer (the
  layernorms ModelOpt reads from TE's fused LayerNorm-Linear modules; it does not hook the embedding or
  the final norm), each aggregated as above, then the per-norm L2 norms are SUMMED over norms;
* FFN neurons: the input of `down_proj` (act(gate) * up), per layer;
* attention heads: the input of `o_proj`, per channel as above, viewed [heads, head_dim] and reduced
  with an L2 norm over head_dim; heads are later ranked within their KV group;
* depth (block influence): per layer, Σ over batches of mean over all tokens of 1 − cos(input, output).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor
from tqdm.auto import tqdm

from compactlm.arch import Adapter, decoder_layers
from compactlm.manifest import atomic_file

DEPTH_METHODS = ("block_influence", "lm_loss")


@dataclass
class ImportanceScores:
    """Importance of every prunable unit of one model; higher is more important. All fp32, on CPU."""

    hidden: Tensor
    """[hidden_size] Σ over layernorms of the per-norm L2 norm of post-norm activations."""
    ffn: Tensor
    """[num_layers, intermediate_size] L2 norm of the `down_proj` input, per layer."""
    heads: Tensor
    """[num_layers, num_attention_heads] per-head L2 norm of the per-channel `o_proj` input norms."""
    depth: Tensor
    """[num_layers] block influence: Σ over batches of mean over tokens of 1 − cos(layer input, layer output)."""
    num_samples: int
    """Calibration sequences the scores were accumulated over."""
    depth_lm_loss: Optional[dict[int, float]] = None
    """block start -> mean LM loss with layers [start, start + block_size) skipped (lm_loss depth method)."""
    depth_lm_loss_block_size: Optional[int] = None
    """Number of contiguous layers skipped per entry of `depth_lm_loss`."""
    extra: dict[str, float] = field(default_factory=dict)
    """Scalar side results (e.g. `lm_loss_full`, the loss with no layer skipped)."""

    @property
    def num_layers(self) -> int:
        return int(self.depth.numel())

    def save(self, path: str | Path) -> Path:
        """Write the scores as one safetensors file (tensors + JSON metadata), atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {
            k: getattr(self, k).detach().to("cpu", torch.float32).contiguous()
            for k in ("hidden", "ffn", "heads", "depth")
        }
        meta = {
            "num_samples": str(self.num_samples),
            "depth_lm_loss": json.dumps(
                None if self.depth_lm_loss is None else {str(k): v for k, v in self.depth_lm_loss.items()}
            ),
            "depth_lm_loss_block_size": json.dumps(self.depth_lm_loss_block_size),
            "extra": json.dumps(self.extra),
        }
        with atomic_file(path) as tmp:
            save_file(tensors, tmp, metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ImportanceScores:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        lm = json.loads(meta.get("depth_lm_loss", "null"))
        return cls(
            hidden=tensors["hidden"],
            ffn=tensors["ffn"],
            heads=tensors["heads"],
            depth=tensors["depth"],
            num_samples=int(meta.get("num_samples", 0)),
            depth_lm_loss=None if lm is None else {int(k): float(v) for k, v in lm.items()},
            depth_lm_loss_block_size=json.loads(meta.get("depth_lm_loss_block_size", "null")),
            extra=json.loads(meta.get("extra", "{}")),
        )


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _sq_mean_abs(a: Tensor) -> Tensor:
    """[batch, seq, channels] -> [channels]: Σ over samples of (mean over seq of |a|)^2, in fp32."""
    if a.dim() == 2:  # [tokens, channels]: no batch dimension, treat as one sample (as ModelOpt does)
        a = a.unsqueeze(0)
    # |a| is exact in any dtype, so bf16/fp16 inputs are summed with fp32 accumulation from a half-size
    # temporary instead of an fp32 copy. For fp32, plain abs().sum() is ~8x faster on CPU than
    # vector_norm(ord=1) or sum(dtype=float32) over a middle dimension (measured).
    if a.dtype == torch.float32:
        m = a.abs().sum(dim=1)
    else:
        m = a.abs().sum(dim=1, dtype=torch.float32)
    m.div_(a.shape[1])  # [batch, channels]: mean over the sequence
    return m.square_().sum(dim=0)


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


@torch.no_grad()
def collect_importance(model, adapter: Adapter, batches: Iterable[Tensor], progress: bool = True) -> ImportanceScores:
    """Run `batches` through the decoder with hooks and return Minitron importance scores.

    Args:
        model: a `*ForCausalLM` (Llama, Mistral, Qwen2, Qwen3), any device and dtype; statistics are fp32.
        adapter: the architecture's attribute names (:func:`compactlm.arch.adapter_for`).
        batches: iterable of LongTensor input_ids [B, T] (packed sequences, no padding); consumed once.
        progress: show a tqdm bar over batches.

    Only the backbone runs (no lm_head: the logits are not needed), with `use_cache=False`.
    """
    cfg = model.config
    layers = decoder_layers(model, adapter)
    L, H = len(layers), cfg.hidden_size
    n_heads, hd = cfg.num_attention_heads, _head_dim(cfg)
    inter = getattr(getattr(layers[0], adapter.mlp), adapter.down_proj).in_features
    dev = _device(model)
    # Running sums of squared per-sample means, one row per hooked module; sqrt only at the end.
    hid_sq = torch.zeros(L, 2, H, device=dev)
    ffn_sq = torch.zeros(L, inter, device=dev)
    attn_sq = torch.zeros(L, n_heads * hd, device=dev)
    depth = torch.zeros(L, device=dev)  # kept on device: no .item() sync per layer per batch

    # Hooks must return None: a returned tensor would replace the module's output (or input).
    def norm_hook(acc: Tensor):
        def hook(mod, args, out):
            acc.add_(_sq_mean_abs(out))

        return hook

    def input_hook(acc: Tensor):
        def hook(mod, args):
            acc.add_(_sq_mean_abs(args[0]))

        return hook

    def depth_hook(i: int):
        def hook(mod, args, kwargs, out):
            x_in = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            x_out = out[0] if isinstance(out, tuple) else out
            cos = F.cosine_similarity(x_in.float(), x_out.float(), dim=-1)  # [B, T]
            depth[i] += 1.0 - cos.mean()

        return hook

    handles = []
    try:
        for i, layer in enumerate(layers):
            attn, mlp = getattr(layer, adapter.attn), getattr(layer, adapter.mlp)
            handles += [
                getattr(layer, adapter.input_norm).register_forward_hook(norm_hook(hid_sq[i, 0])),
                getattr(layer, adapter.post_attn_norm).register_forward_hook(norm_hook(hid_sq[i, 1])),
                getattr(mlp, adapter.down_proj).register_forward_pre_hook(input_hook(ffn_sq[i])),
                getattr(attn, adapter.o_proj).register_forward_pre_hook(input_hook(attn_sq[i])),
                layer.register_forward_hook(depth_hook(i), with_kwargs=True),
            ]
        backbone = getattr(model, adapter.backbone)
        was_training = model.training
        model.eval()
        n = 0
        try:
            for ids in tqdm(batches, desc="importance", unit="batch", disable=not progress):
                ids = ids.to(dev)
                backbone(input_ids=ids, use_cache=False)
                n += ids.shape[0]
        finally:
            model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    if n == 0:
        raise ValueError("collect_importance got no calibration batches")

    hidden = hid_sq.sqrt().sum(dim=(0, 1))  # L2 over samples per norm, then summed over norms
    heads = torch.linalg.vector_norm(attn_sq.sqrt().view(L, n_heads, hd), ord=2, dim=-1)
    return ImportanceScores(
        hidden=hidden.cpu(),
        ffn=ffn_sq.sqrt().cpu(),
        heads=heads.cpu(),
        depth=depth.cpu(),
        num_samples=n,
    )


@contextmanager
def skipped_layers(model, adapter: Adapter, keep: list[int]) -> Iterator[None]:
    """Temporarily run `model` with only the layers `keep` (original indices, ascending); restores everything.

    Only valid with `use_cache=False`: kept layers still carry their original `layer_idx`.
    """
    backbone = getattr(model, adapter.backbone)
    cfg = model.config
    full = getattr(backbone, adapter.layers)
    saved_n, saved_types = cfg.num_hidden_layers, getattr(cfg, "layer_types", None)
    try:
        setattr(backbone, adapter.layers, torch.nn.ModuleList([full[i] for i in keep]))
        cfg.num_hidden_layers = len(keep)
        if isinstance(saved_types, (list, tuple)):
            # Qwen2/3 pick each layer's attention mask by position in config.layer_types.
            cfg.layer_types = [saved_types[i] for i in keep]
        yield
    finally:
        setattr(backbone, adapter.layers, full)
        cfg.num_hidden_layers = saved_n
        if isinstance(saved_types, (list, tuple)):
            cfg.layer_types = saved_types


@torch.no_grad()
def _mean_lm_loss(model, batches: list[Tensor], dev, bar) -> float:
    total, tokens = 0.0, 0
    for ids in batches:
        ids = ids.to(dev)
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        n = ids.shape[0] * (ids.shape[1] - 1)  # tokens with a next-token target
        total += float(loss) * n
        tokens += n
        bar.update(1)
    return total / tokens


@torch.no_grad()
def lm_loss_block_scores(
    model,
    adapter: Adapter,
    batches: Iterable[Tensor],
    block_size: int,
    progress: bool = True,
) -> dict[int, float]:
    """Minitron's depth alternative: mean LM loss with each contiguous block of `block_size` layers skipped.

    Args:
        batches: LongTensor input_ids [B, T] (T >= 2); read once per block, so it is materialized as a list.
        block_size: layers skipped together; 1 <= block_size < num_layers.

    Returns: {block start: mean next-token cross-entropy (nats/token)} for starts 0 .. L - block_size.
    The model is restored afterwards (layers, config.num_hidden_layers, config.layer_types).
    """
    L = len(decoder_layers(model, adapter))
    if not 1 <= block_size < L:
        raise ValueError(f"block_size={block_size} must be between 1 and num_layers-1={L - 1}")
    batches = list(batches)
    if not batches:
        raise ValueError("lm_loss_block_scores got no batches")
    dev = _device(model)
    was_training = model.training
    model.eval()
    starts = range(L - block_size + 1)
    out: dict[int, float] = {}
    try:
        with tqdm(total=len(starts) * len(batches), desc="lm_loss blocks", unit="batch", disable=not progress) as bar:
            for s in starts:
                keep = [i for i in range(L) if not s <= i < s + block_size]
                with skipped_layers(model, adapter, keep):
                    out[s] = _mean_lm_loss(model, batches, dev, bar)
    finally:
        model.train(was_training)
    return out


def select_layers(scores: ImportanceScores, num_layers: int, method: str = "block_influence") -> list[int]:
    """Indices (original order) of the `num_layers` layers to keep.

    block_influence: keep the highest `scores.depth` (need not be contiguous; ties keep the earlier layer,
    like ModelOpt's stable sort). lm_loss: drop the contiguous block of L - num_layers layers whose
    removal gave the lowest loss in `scores.depth_lm_loss` (computed with that block size).
    """
    L = scores.num_layers
    if not 1 <= num_layers <= L:
        raise ValueError(f"num_layers={num_layers} must be between 1 and the model's {L}")
    if num_layers == L:
        return list(range(L))
    if method == "block_influence":
        order = torch.argsort(scores.depth.float(), descending=True, stable=True)
        return sorted(order[:num_layers].tolist())
    if method == "lm_loss":
        drop = L - num_layers
        if scores.depth_lm_loss is None or scores.depth_lm_loss_block_size != drop:
            raise ValueError(
                f"depth_method=lm_loss needs block scores for blocks of {drop} layers "
                f"(have block size {scores.depth_lm_loss_block_size}); run lm_loss_block_scores(..., block_size={drop})"
            )
        start = min(scores.depth_lm_loss, key=lambda s: (scores.depth_lm_loss[s], s))
        return [i for i in range(L) if not start <= i < start + drop]
    raise ValueError(f"depth method {method!r} is not allowed; choose one of: {', '.join(DEPTH_METHODS)}")


def add_lm_loss_scores(
    scores: ImportanceScores, model, adapter: Adapter, batches: Iterable[Tensor], block_size: int, progress: bool = True
) -> ImportanceScores:
    """Fill `scores.depth_lm_loss` (and `extra["lm_loss_full"]`, the loss with no layer skipped); returns `scores`."""
    batches = list(batches)
    scores.depth_lm_loss = lm_loss_block_scores(model, adapter, batches, block_size, progress=progress)
    scores.depth_lm_loss_block_size = block_size
    with torch.no_grad(), tqdm(total=len(batches), desc="lm_loss full", unit="batch", disable=not progress) as bar:
        was_training = model.training
        model.eval()
        try:
            full = _mean_lm_loss(model, batches, _device(model), bar)
        finally:
            model.train(was_training)
    scores.extra["lm_loss_full"] = full
    return scores
