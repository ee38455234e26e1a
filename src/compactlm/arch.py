"""The adapter table: where each supported architecture keeps its layers, norms and projections.

Every stage that needs to reach inside a Hugging Face decoder (importance hooks, slicing, parameter
accounting) goes through :func:`adapter_for` instead of hard-coding attribute paths, so adding an
architecture is one row here.
"""

from __future__ import annotations

from dataclasses import dataclass

from compactlm.errors import ConfigError


@dataclass(frozen=True)
class Adapter:
    """Attribute names of one decoder-only architecture (all relative to the `*ForCausalLM` module)."""

    model_type: str
    """`config.model_type` as written in config.json."""
    backbone: str = "model"
    """Attribute of the causal-LM wrapper holding the decoder (embeddings, layers, final norm)."""
    embed: str = "embed_tokens"
    layers: str = "layers"
    final_norm: str = "norm"
    lm_head: str = "lm_head"
    attn: str = "self_attn"
    mlp: str = "mlp"
    input_norm: str = "input_layernorm"
    post_attn_norm: str = "post_attention_layernorm"
    q_proj: str = "q_proj"
    k_proj: str = "k_proj"
    v_proj: str = "v_proj"
    o_proj: str = "o_proj"
    gate_proj: str = "gate_proj"
    up_proj: str = "up_proj"
    down_proj: str = "down_proj"
    qk_norm: tuple[str, ...] = ()
    """Per-head RMSNorms on queries/keys (Qwen3); they act on head_dim, which pruning never changes."""
    attn_bias: bool = False
    """Whether q/k/v projections carry a bias (Qwen2)."""


ADAPTERS: dict[str, Adapter] = {
    "llama": Adapter("llama"),
    "mistral": Adapter("mistral"),
    "qwen2": Adapter("qwen2", attn_bias=True),
    "qwen3": Adapter("qwen3", qk_norm=("q_norm", "k_norm")),
}

SUPPORTED = tuple(sorted(ADAPTERS))


def adapter_for(model_type: str, key: str = "model.architecture") -> Adapter:
    """Return the adapter for `model_type`; the error names `key` and the supported values."""
    try:
        return ADAPTERS[model_type]
    except KeyError:
        raise ConfigError(
            f"{key}={model_type!r} is not a supported architecture; supported: {', '.join(SUPPORTED)}"
        ) from None


def decoder_layers(model, adapter: Adapter):
    """The `nn.ModuleList` of decoder layers of a `*ForCausalLM` model."""
    return getattr(getattr(model, adapter.backbone), adapter.layers)


def forward_blocks(model, adapter: Adapter) -> list:
    """The modules a `*ForCausalLM` forward runs through, in order, that own parameters: the embedding, each
    decoder layer, the final norm and the output layer (a module of its own that shares the embedding's weight when the
    two are tied)."""
    backbone = getattr(model, adapter.backbone)
    return [
        getattr(backbone, adapter.embed),
        *getattr(backbone, adapter.layers),
        getattr(backbone, adapter.final_norm),
        model.get_output_embeddings(),
    ]
