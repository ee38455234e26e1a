"""Parameter accounting by instantiating the real architecture on the meta device (no weights, no formula).

A hand-written formula drifts the moment an architecture adds a bias or a norm; building the actual
transformers module on `torch.device("meta")` costs milliseconds and counts exactly what a checkpoint holds.
"""

from __future__ import annotations

import copy
from typing import Any

from compactlm.errors import ConfigError
from compactlm.model.loading import count_parameters
from compactlm.model.schema import ModelConfig
from compactlm.prune.schema import EXPORT_TO_HF, PruneConfig
from compactlm.results import Architecture


def architecture(hf) -> Architecture:
    """The sizes of a transformers config under the names used in reports and prune presets."""
    return Architecture(
        model_type=hf.model_type,
        hidden_size=hf.hidden_size,
        ffn_hidden_size=hf.intermediate_size,
        num_layers=hf.num_hidden_layers,
        num_attention_heads=hf.num_attention_heads,
        num_key_value_heads=hf.num_key_value_heads,
        vocab_size=hf.vocab_size,
    )


def hf_config_from_shape(shape: dict[str, Any]):
    """A transformers `PretrainedConfig` of `shape["model_type"]` with the given sizes."""
    from transformers import AutoConfig  # imports torch (seconds): not at launcher import time

    kw = dict(shape)
    model_type = kw.pop("model_type")
    if model_type == "mistral":
        kw.setdefault("sliding_window", None)
    return AutoConfig.for_model(model_type, **kw)


def pruned_hf_config(hf_config, export_config: dict[str, int]):
    """Copy of `hf_config` with the export_config sizes applied; head_dim is pinned so it never changes.

    `export_config` keys are ModelOpt's (`hidden_size`, `ffn_hidden_size`, `num_attention_heads`,
    `num_layers`); absent keys keep the original size.
    """
    new = copy.deepcopy(hf_config)
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads
    new.head_dim = head_dim
    for key, value in export_config.items():
        setattr(new, EXPORT_TO_HF[key], int(value))
    if "num_layers" in export_config and getattr(new, "layer_types", None):
        new.layer_types = list(new.layer_types)[: int(export_config["num_layers"])]
    return new


def count_on_meta(hf_config) -> dict[str, int]:
    """Total, embedding and without-lm_head parameter counts of `hf_config`, built on the meta device."""
    import torch  # heavy: the launcher imports this module, and builds models only for recipe=params
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    return count_parameters(model)


COUNTED_SHAPE = (
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
)
"""The `model.shape` keys that parameter counts need when the model has no local config.json (transformers'
defaults for a missing one would count another model)."""


def model_hf_config(model: ModelConfig, local_config: dict[str, Any] | None = None):
    """The teacher's config: its local config.json when there is one, else the shape from its YAML; ConfigError
    when neither gives its sizes (a Hub id with model=local: nothing is downloaded to count parameters)."""
    if local_config is not None:
        from transformers import AutoConfig  # imports torch (seconds): not at launcher import time

        return AutoConfig.for_model(**local_config)
    shape = model.shape.known()
    missing = [k for k in COUNTED_SHAPE if k not in shape]
    if missing:
        raise ConfigError(
            f"model.path={model.path!r} is no local folder with a config.json and model.shape lacks "
            f"{', '.join(missing)}: counting parameters needs the model's sizes; give a local folder, set "
            f"model.shape.<key>=... for each, or pick a model preset with its shape (conf/model/)"
        )
    return hf_config_from_shape(shape)


def param_table(model: ModelConfig, presets: list[PruneConfig], local_config: dict | None = None) -> list[dict]:
    """One row for the model and one per preset: sizes, counts and the change relative to the model."""
    base = model_hf_config(model, local_config)
    base_counts = count_on_meta(base)
    rows = [_row(model.name, base, base_counts, base_counts)]
    for preset in presets:
        cfg = pruned_hf_config(base, preset.export_config.known())
        rows.append(_row(preset.name, cfg, count_on_meta(cfg), base_counts))
    return rows


def _row(name: str, cfg, counts: dict[str, int], base: dict[str, int]) -> dict:
    return {
        "name": name,
        "hidden_size": cfg.hidden_size,
        "ffn_hidden_size": cfg.intermediate_size,
        "num_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        **counts,
        # Relative to the model without its output layer, the convention of the Minitron reports
        # (Bielik-11B-v3 11.04B -> EXP_010 7.35B, -33.4%).
        "change": counts["without_lm_head"] / base["without_lm_head"] - 1.0,
    }


def format_table(rows: list[dict]) -> str:
    """Fixed-width text table of :func:`param_table` rows (counts in billions or millions)."""
    unit, div = ("B", 1e9) if rows[0]["total"] >= 1e9 else ("M", 1e6)
    head = (
        f"{'name':<16}{'hidden':>8}{'ffn':>8}{'layers':>8}{'heads':>7}"
        f"{'total':>11}{'embedding':>11}{'no lm_head':>12}{'change*':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['name']:<16}{r['hidden_size']:>8}{r['ffn_hidden_size']:>8}{r['num_layers']:>8}"
            f"{r['num_attention_heads']:>7}{r['total'] / div:>10.3f}{unit}{r['embedding'] / div:>10.3f}{unit}"
            f"{r['without_lm_head'] / div:>11.3f}{unit}{r['change'] * 100:>8.1f}%"
        )
    lines.append("* change of the parameter count without lm_head, relative to the first row")
    return "\n".join(lines)
