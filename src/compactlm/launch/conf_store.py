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


_STORED: tuple | None = None  # what the ConfigStore holds now: the registered stages and the recipe files read


def register_configs() -> None:
    """Store the root schema as `compactlm_schema` and each group's as `<group>/base_<group>`.

    Storing converts every schema to an OmegaConf node (a third of a compose's time), so it is done again only
    when the registry's stages or a recipe file changed since the last call in this process."""
    global _STORED
    recipes = sorted(RECIPES_DIR.glob("*.yaml"))
    stored = (tuple(stages.names()), tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in recipes))
    if stored == _STORED:
        return
    cs = ConfigStore.instance()
    cs.store(name="compactlm_schema", node=CompactLMConfig)
    for group, schema in groups().items():
        cs.store(group=group, name=f"base_{group}", node=schema)
    for path in recipes:
        store_recipe(cs, path)
    _STORED = stored


def store_recipe(cs: ConfigStore, path: Path) -> None:
    """`recipes/<name>.yaml` as option `<name>` of the `recipe` group, under the package its `# @package` header
    names (read by Hydra's own header parser, as it reads a group file under conf/)."""
    text = path.read_text()
    package = ConfigSource._get_header_dict(text)["package"]
    cs.store(group="recipe", name=path.stem, node=OmegaConf.create(text), package=package)
