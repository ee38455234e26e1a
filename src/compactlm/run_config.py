"""The root of a run's configuration, `CompactLMConfig`: the sections every stage shares (recipe, cluster, engine,
plan), one section per stage as the stage registry (`compactlm.stages`) lists them, and the run's own settings.

It is built from the registry, so a stage adds its section by its registry entry alone; it sits above the stage
schemas (it imports them through the registry's dotted names), and nothing below it imports it. Hydra sees a plain
dataclass: the same type checks, unknown-key errors and `--help` as a hand-written one.
"""

# no `from __future__ import annotations`: make_dataclass below reads these annotations as types
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from compactlm import stages
from compactlm.config import ClusterConfig, EngineConfig, PlanConfig, RecipeConfig, check_run_name

SHARED_SECTIONS: dict[str, type] = {"recipe": RecipeConfig, "cluster": ClusterConfig, "engine": EngineConfig}
"""Sections that are no stage's own and are Hydra groups every run picks (conf/<section>/*.yaml)."""


@dataclass
class RunSettings:
    """The run's own settings, after the sections (the fields of `CompactLMConfig` past the last section)."""

    plan: PlanConfig = field(default_factory=PlanConfig)
    run_name: str = "${recipe.name}_${model.name}"
    """Folder name of the run under runs_root; the same name resumes the same run."""
    runs_root: str = "runs"
    run_dir: str = "${runs_root}/${run_name}"
    """Where every stage writes `<run_dir>/<stage>/`; made absolute by the launcher."""
    cache_dir: str = "${oc.env:COMPACTLM_CACHE,'~/.cache/compactlm'}"
    """Materialized models (e.g. the GGUF demo model saved as safetensors) live here."""
    seed: int = 1234
    dryrun: bool = False
    """Print the resolved config and what would be submitted, then exit."""
    prepare_only: bool = False
    """Write the run folder (config.yaml, launch.json) and stop: for hand submission with launchers/slurm/."""
    force: bool = False
    """Re-run every stage even when its manifest matches."""
    force_stages: list[str] = field(default_factory=list)
    """Re-run only these stages (and, because their outputs change, everything after them)."""


def _post_init(self: Any) -> None:
    check_run_name(self.run_name)


def build() -> type:
    """`CompactLMConfig` for the stages registered now: a group section (`StageSpec.group`) has no default (the
    YAML's defaults list picks one), every other section defaults to its schema's defaults."""
    group = set(stages.group_sections())
    fields: list[tuple[str, type, Any]] = [(k, cls, field(default=MISSING)) for k, cls in SHARED_SECTIONS.items()]
    for section, dotted in stages.sections().items():
        cls = stages.load(dotted)
        default = field(default=MISSING) if section in group else field(default_factory=cls)
        fields.append((section, cls, default))
    for f in dataclasses.fields(RunSettings):
        fields.append((f.name, f.type, field(default=f.default, default_factory=f.default_factory)))
    root = dataclasses.make_dataclass("CompactLMConfig", fields, namespace={"__post_init__": _post_init})
    root.__module__ = __name__
    root.__doc__ = "Everything one run needs; composed by Hydra, converted once with `OmegaConf.to_object`."
    return root


CompactLMConfig = build()
