"""A saved config.json that transformers 4.x and transformers 5 read with the same RoPE settings.

transformers 5 keeps a model's RoPE settings in one dict, `rope_parameters` ({"rope_type", "rope_theta", and the
scaling keys: "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings", ...}), and its
`save_pretrained` writes only that. transformers 4.x, still in many serving images, reads the top-level
`rope_theta` and `rope_scaling` ({"rope_type", "factor", ...}, or null for plain RoPE) and ignores
`rope_parameters`: a Llama-3.1 checkpoint (rope_theta 500000, llama3 scaling) saved by transformers 5 loads there
with rope_theta 10000 and no scaling, a different model, without an error.

:func:`write_both_rope_layouts` runs on every checkpoint compactlm writes, right after `save_pretrained`, and adds
4.x's keys with the values of `rope_parameters`. Both layouts then agree, which matters in transformers 5 as well:
when config.json has both, it takes `rope_scaling` (plus the top-level `rope_theta`) over `rope_parameters`
(`RotaryEmbeddingConfigMixin.convert_rope_params_to_dict`). llama.cpp's converter reads `rope_parameters` first,
`rope_scaling` otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from compactlm.manifest import atomic_write_text

# Keys transformers 5 moved into rope_parameters that transformers 4.x reads at the top level of config.json.
TOP_LEVEL_4X = ("rope_theta", "partial_rotary_factor")


def with_both_rope_layouts(cfg: dict[str, Any]) -> dict[str, Any]:
    """`cfg` (config.json as a dict) with transformers 4.x's `rope_theta`/`rope_scaling` (and
    `partial_rotary_factor` when set) taken from transformers 5's `rope_parameters`.

    A config without `rope_parameters` is returned unchanged: it was written in 4.x's layout, which transformers 5
    reads too. Per-layer-type RoPE (`rope_parameters` = {"full_attention": {...}, "sliding_attention": {...}},
    Gemma-style) has no 4.x form and raises ValueError; compactlm's families (llama, mistral, qwen2, qwen3) use one.
    """
    params = cfg.get("rope_parameters")
    if params is None:
        return cfg
    if not isinstance(params, dict) or "rope_theta" not in params:
        raise ValueError(
            f"config.json rope_parameters={params!r}: expected one dict with rope_type and rope_theta "
            "(per-layer-type RoPE has no transformers 4.x layout)"
        )
    out = {**cfg, **{k: params[k] for k in TOP_LEVEL_4X if k in params}}
    scaling = {k: v for k, v in params.items() if k not in TOP_LEVEL_4X}
    out["rope_scaling"] = None if scaling.get("rope_type", "default") == "default" else scaling
    return out


def write_both_rope_layouts(folder: str | Path) -> None:
    """Rewrite `folder`/config.json in place with both RoPE layouts (:func:`with_both_rope_layouts`), formatted as
    transformers writes it (indent 2, sorted keys)."""
    path = Path(folder) / "config.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    atomic_write_text(path, json.dumps(with_both_rope_layouts(cfg), indent=2, sort_keys=True) + "\n")
