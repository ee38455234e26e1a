"""The prune stage's launch-time checks, and the check of an export_config against the model that a search's
candidates share (torch-free)."""

from __future__ import annotations

from typing import Any

from compactlm.config import ConfigError
from compactlm.prune.schema import EXPORT_TO_HF


def check_export(export: dict[str, int], shape: dict[str, Any], key: str, model_name: str) -> None:
    """An export_config fits the model: no size above the model's, query heads a multiple of the KV heads."""
    if not export:
        raise ConfigError(f"{key} is empty; set at least one of " + ", ".join(f"{key}.{k}" for k in EXPORT_TO_HF))
    for k, value in export.items():
        have = shape.get(EXPORT_TO_HF[k])
        if have is not None and value > have:
            raise ConfigError(f"{key}.{k}={value} exceeds the model's {have} ({model_name})")
    hidden = export.get("hidden_size", shape.get("hidden_size"))
    query = export.get("num_attention_heads", shape.get("num_attention_heads"))
    if hidden and query and hidden % query:
        raise ConfigError(
            f"{key}: hidden_size {hidden} is not a multiple of num_attention_heads {query}; transformers "
            "refuses to save such a model (choose a hidden size or head count that divide)"
        )
    heads, kv = export.get("num_attention_heads"), shape.get("num_key_value_heads")
    if heads is not None and kv and heads % kv:
        raise ConfigError(
            f"{key}.num_attention_heads={heads} is not divisible by the model's num_key_value_heads="
            f"{kv}: every KV group must keep the same number of query heads"
        )


def check(conf, shape: dict[str, Any]) -> None:
    """The preset is made for this model and its sizes fit it. `conf` is the run's CompactLMConfig."""
    p = conf.prune
    if p.model is not None and p.model != conf.model.name:
        raise ConfigError(
            f"prune={p.name} is a preset for model={p.model}, not model={conf.model.name}; "
            f"pick a preset made for {conf.model.name} or set prune.model=null"
        )
    check_export(p.export_config.known(), shape, "prune.export_config", conf.model.name)
