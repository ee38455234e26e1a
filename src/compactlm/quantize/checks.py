"""The quantize stage's launch-time checks (torch-free): every `quantize.exclude` pattern matches a module of the
model that will be quantized."""

from __future__ import annotations

import fnmatch
from typing import Any

from compactlm.arch import adapter_for
from compactlm.config import ConfigError


def check(conf, shape: dict[str, Any]) -> None:
    """`conf` is the run's CompactLMConfig; the model quantized is the pruned one when the recipe prunes."""
    if not conf.quantize.exclude:
        return
    layers = shape.get("num_hidden_layers")
    if "prune" in conf.recipe.stages:
        layers = conf.prune.export_config.num_layers or layers
    check_exclude_patterns(conf.quantize.exclude, shape.get("model_type"), layers)


def module_names(model_type: str, num_layers: int) -> list[str]:
    """`named_modules()` names of a `*ForCausalLM` of the adapter table, derived without building it."""
    a = adapter_for(model_type)
    root = f"{a.backbone}.{a.layers}"
    names = [a.backbone, f"{a.backbone}.{a.embed}", root, f"{a.backbone}.{a.final_norm}", a.lm_head]
    for i in range(num_layers):
        layer = f"{root}.{i}"
        names += [
            layer,
            f"{layer}.{a.attn}",
            f"{layer}.{a.mlp}",
            f"{layer}.{a.input_norm}",
            f"{layer}.{a.post_attn_norm}",
        ]
        names += [f"{layer}.{a.attn}.{p}" for p in (a.q_proj, a.k_proj, a.v_proj, a.o_proj, *a.qk_norm)]
        names += [f"{layer}.{a.mlp}.{p}" for p in (a.gate_proj, a.up_proj, a.down_proj)]
    return names


def check_exclude_patterns(patterns: list[str], model_type: str | None, num_layers: int | None) -> None:
    """Every `quantize.exclude` pattern must match a module of the model that will be quantized."""
    if model_type is None or num_layers is None:
        return  # sizes unknown until the model is loaded: the quantize stage checks on the real modules
    names = module_names(model_type, num_layers)
    for p in patterns:
        if not any(fnmatch.fnmatchcase(n, p) for n in names):
            raise ConfigError(
                f"quantize.exclude: pattern {p!r} matches no module of the {num_layers}-layer {model_type} model "
                f"to quantize; names look like 'model.layers.0.self_attn.q_proj', 'model.layers.{num_layers - 1}.mlp', 'lm_head'"
            )
