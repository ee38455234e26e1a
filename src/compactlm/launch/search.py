"""The launcher's side of a candidate search: which architectures, checked and counted before anything runs.

`search.candidates` names prune presets; `search.target_params` asks compactlm to enumerate them. Either way the
result lands in `search.resolved` of the run's config.yaml, with each candidate's parameter count from the meta
device, so the stages on the cluster, `dryrun=true` and the report all see the same list.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from compactlm.config import ConfigError
from compactlm.launch.records import REPO
from compactlm.model.loading import read_hf_config
from compactlm.model.params import count_on_meta, model_hf_config
from compactlm.prune.checks import check_export
from compactlm.prune.schema import PruneConfig
from compactlm.run_config import CompactLMConfig
from compactlm.search.space import enumerate_candidates, preset_candidate
from compactlm.stages import search_order


def prune_presets(model_name: str) -> list[PruneConfig]:
    """Every preset of conf/prune/ made for `model_name` (or for any model), as PruneConfig."""
    out = []
    for path in sorted(glob.glob(str(REPO / "conf" / "prune" / "*.yaml"))):
        raw = OmegaConf.load(path)
        raw.pop("defaults", None)
        preset = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(PruneConfig), raw))
        if preset.model in (None, model_name):
            out.append(preset)
    return out


def check_search_recipe(stages: list[str]) -> None:
    """The search stages in their order: importance, teacher_cache, candidate, ranking (and no prune stage)."""
    order = search_order()
    if not any(s in stages for s in order[1:]):
        return
    missing = [s for s in order if s not in stages]
    at = [stages.index(s) for s in order if s in stages]
    if missing or at != sorted(at):
        raise ConfigError(
            f"recipe.stages={stages}: a search runs {' -> '.join(order)} in this order"
            + (f" (missing: {', '.join(missing)})" if missing else "")
        )
    if "prune" in stages:
        raise ConfigError(
            f"recipe.stages={stages} has both prune and a search: the ranking's winner is the pruned "
            "model; drop prune (recipe=search_distill) or the search stages (recipe=prune_distill)"
        )


def resolve_search(conf: CompactLMConfig, shape: dict[str, Any]) -> None:
    """Fill `conf.search.resolved` from `search.candidates` (presets; they win over a target) or
    `search.target_params` (enumeration), counting every candidate on the meta device; ConfigError names the key
    at fault."""
    s = conf.search
    if "candidate" not in conf.recipe.stages:
        return
    if not s.candidates and s.target_params is None:
        raise ConfigError(
            f"recipe={conf.recipe.name} needs search.candidates=[<preset>, ...] (presets of conf/prune/) "
            "or search.target_params=<fraction or count> (enumerated around it); both are unset"
        )
    local = (
        read_hf_config(Path(conf.model.path).expanduser())
        if conf.model.is_local() and Path(conf.model.path).expanduser().is_dir()
        else None
    )
    base = model_hf_config(conf.model, local)
    teacher = count_on_meta(base)["without_lm_head"]
    if s.candidates:
        presets = {p.name: p for p in prune_presets(conf.model.name)}
        resolved = []
        for name in s.candidates:
            if name not in presets:
                raise ConfigError(
                    f"search.candidates: {name!r} is not a prune preset for model={conf.model.name}; "
                    f"presets: {', '.join(presets) or 'none'} (conf/prune/*.yaml)"
                )
            export = presets[name].export_config.known()
            check_export(
                export, shape, f"search.candidates.{name} (conf/prune/{name}.yaml export_config)", conf.model.name
            )
            resolved.append(preset_candidate(name, export, base, teacher))
        s.resolved = resolved
    else:
        s.resolved = enumerate_candidates(base, s)


def format_candidates(conf: CompactLMConfig) -> str:
    """The resolved candidates as a text table (dryrun, launch banner): sizes, parameters and change."""
    s, shape = conf.search, conf.model.shape
    rows = [
        (
            c.name,
            c.kind,
            {
                **{
                    "num_layers": shape.num_hidden_layers,
                    "hidden_size": shape.hidden_size,
                    "ffn_hidden_size": shape.intermediate_size,
                    "num_attention_heads": shape.num_attention_heads,
                },
                **c.export_config.known(),
            },
            c.params,
            c.change,
        )
        for c in s.resolved
    ]
    big = max((r[3] for r in rows), default=0) >= 1e9
    unit, div = ("B", 1e9) if big else ("M", 1e6)
    head = f"{'candidate':<22}{'kind':<8}{'layers':>7}{'hidden':>8}{'ffn':>7}{'heads':>6}{'params*':>10}{'change':>8}"
    lines = [head, "-" * len(head)]
    for name, kind, sizes, params, change in rows:
        lines.append(
            f"{name:<22}{kind:<8}{_size(sizes['num_layers']):>7}{_size(sizes['hidden_size']):>8}"
            f"{_size(sizes['ffn_hidden_size']):>7}{_size(sizes['num_attention_heads']):>6}"
            f"{params / div:>9.2f}{unit}{change * 100:>7.1f}%"
        )
    lines.append("* parameters without lm_head (meta device); change relative to the teacher's")
    return "\n".join(lines)


def _size(value) -> str:
    return "-" if value is None else str(value)
