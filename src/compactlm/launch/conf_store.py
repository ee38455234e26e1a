"""Registers the dataclass schemas in Hydra's ConfigStore, and the recipes a user picks (`recipes/*.yaml`, the
`recipe` config group) beside them (launcher side only: stage code never imports Hydra)."""

from __future__ import annotations

from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.plugins.config_source import ConfigSource
from omegaconf import OmegaConf

from compactlm import stages
from compactlm.launch.records import REPO
from compactlm.run_config import SHARED_SECTIONS, CompactLMConfig

# The recipes a user picks (`python launch.py recipe=prune_distill`) live at the top of the repository, apart from
# conf/'s building blocks; Hydra's `recipe` group reads them from here through the ConfigStore.
RECIPES_DIR = REPO / "recipes"


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
    for path in sorted(RECIPES_DIR.glob("*.yaml")):
        store_recipe(cs, path)


def store_recipe(cs: ConfigStore, path: Path) -> None:
    """`recipes/<name>.yaml` as option `<name>` of the `recipe` group, under the package its `# @package` header
    names (read by Hydra's own header parser, as it reads a group file under conf/)."""
    text = path.read_text()
    package = ConfigSource._get_header_dict(text)["package"]
    cs.store(group="recipe", name=path.stem, node=OmegaConf.create(text), package=package)
