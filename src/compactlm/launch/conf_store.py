"""Registers the dataclass schemas in Hydra's ConfigStore (launcher side only: stage code never imports Hydra)."""

from __future__ import annotations

from hydra.core.config_store import ConfigStore

from compactlm.config import (
    AlignDataConfig,
    ClusterConfig,
    CompactLMConfig,
    DataConfig,
    EngineConfig,
    ModelConfig,
    PruneConfig,
    QuantizeConfig,
    RecipeConfig,
)

GROUPS = {
    "model": ModelConfig,
    "data": DataConfig,
    "prune": PruneConfig,
    "cluster": ClusterConfig,
    "engine": EngineConfig,
    "quantize": QuantizeConfig,
    "recipe": RecipeConfig,
    "align_data": AlignDataConfig,
}


def register_configs() -> None:
    """Store the root schema as `compactlm_schema` and each group's as `<group>/base_<group>`."""
    cs = ConfigStore.instance()
    cs.store(name="compactlm_schema", node=CompactLMConfig)
    for group, schema in GROUPS.items():
        cs.store(group=group, name=f"base_{group}", node=schema)
