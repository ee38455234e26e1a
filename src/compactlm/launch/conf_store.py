"""Registers the dataclass schemas in Hydra's ConfigStore (launcher side only: stage code never imports Hydra)."""

from __future__ import annotations

from hydra.core.config_store import ConfigStore

from compactlm import stages
from compactlm.run_config import SHARED_SECTIONS, CompactLMConfig


def groups() -> dict[str, type]:
    """Hydra config group -> its schema: the shared groups and the stage sections the registry marks as groups."""
    return {
        **SHARED_SECTIONS,
        **{s: stages.load(stages.sections()[s]) for s in stages.group_sections()},
    }


def register_configs() -> None:
    """Store the root schema as `compactlm_schema` and each group's as `<group>/base_<group>`."""
    cs = ConfigStore.instance()
    cs.store(name="compactlm_schema", node=CompactLMConfig)
    for group, schema in groups().items():
        cs.store(group=group, name=f"base_{group}", node=schema)
