"""Checks across config groups, run by the launcher before anything is written or submitted.

Single-group checks live in the dataclasses' `__post_init__`; the ones that need two groups (a prune preset
against the model's sizes) or the file system (a data file) live beside each stage, in `<package>/checks.py`, and
run here through the stage registry for the stages the recipe runs. Here: the recipe's shape (known stages, each
after the stages it reads, a search in its order) and the teacher. No torch: it runs on the submit side.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from compactlm.config import ConfigError
from compactlm.launch.resources import stage_processes
from compactlm.launch.search import check_search_recipe
from compactlm.model.loading import check_hub_model, check_model_folder
from compactlm.model.schema import ModelShape
from compactlm.pipeline import run_tasks
from compactlm.run_config import CompactLMConfig
from compactlm.stages import get, load, specs


def to_config(cfg) -> CompactLMConfig:
    """The one `OmegaConf.to_object` of a run; OmegaConf's errors are re-raised naming the key."""
    try:
        return OmegaConf.to_object(cfg)
    except MissingMandatoryValue as e:
        raise ConfigError(
            f"{e.full_key} is required but was not set (??? in the YAML); set it on the command line"
        ) from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"{getattr(e, 'full_key', '') or 'config'}: {e.msg if hasattr(e, 'msg') else e}") from None


def model_shape(conf: CompactLMConfig) -> dict[str, Any]:
    """The teacher's sizes: config.json of a local folder wins over the YAML's `model.shape`. A local folder is
    checked as the model stage will load it (:func:`compactlm.model.loading.check_model_folder`)."""
    shape = conf.model.shape.known()
    m = conf.model
    if m.source == "hf" and m.is_local():
        folder = Path(m.path).expanduser()
        if conf.cluster.is_remote() and not folder.exists():
            return shape  # a path on the cluster's storage: the YAML's model.shape is what can be checked here
        if not folder.exists():
            raise ConfigError(f"model.path={m.path!r} does not exist (a local Hugging Face folder was expected)")
        local = check_model_folder(folder)
        names = [f for f in ModelShape.__dataclass_fields__ if f in local]
        shape.update({k: local[k] for k in names})
    return shape


def check_run_dir(conf: CompactLMConfig) -> None:
    """`run_dir` is always `<runs_root>/<run_name>`: a run elsewhere would be invisible to `launch.py list/status`."""
    expected = f"{conf.runs_root}/{conf.run_name}"
    if os.path.normpath(os.path.expanduser(conf.run_dir)) != os.path.normpath(os.path.expanduser(expected)):
        raise ConfigError(
            f"run_dir={conf.run_dir!r} is not runs_root/run_name ({expected!r}): launch.py list/status "
            f"would not find the run; set the folder with runs_root=<parent folder> and "
            f"run_name=<folder name> instead of run_dir"
        )


def check_needs(recipe: list[str]) -> None:
    """Every stage comes after the stages it reads (`StageSpec.needs`)."""
    for need in dict.fromkeys(n for s in specs() if s.name in recipe for n in s.needs):
        late = [s.name for s in specs() if need in s.needs and s.name in recipe]
        if need not in recipe or recipe.index(need) > min(recipe.index(s) for s in late):
            raise ConfigError(
                f"recipe.stages={recipe}: {', '.join(late)} read(s) the {need} stage's outputs; add {need} before them"
            )


def check_force_stages(conf: CompactLMConfig) -> None:
    """Each `force_stages` entry is a stage of the recipe (all its tasks) or one task of the run (`candidate-L18`):
    checked once the search candidates are resolved, so that an instance's name is known."""
    tasks = [t.name for t in run_tasks(conf)]
    for name in conf.force_stages:
        if name not in conf.recipe.stages and name not in tasks:
            raise ConfigError(
                f"force_stages contains {name!r}, which recipe={conf.recipe.name} does not run; "
                f"its stages: {', '.join(tasks)}"
            )


def validate(conf: CompactLMConfig, known_stages: tuple[str, ...]) -> dict[str, Any]:
    """Raise ConfigError on anything that cannot work; return the model shape used for the checks."""
    check_run_dir(conf)
    for stage in conf.recipe.stages:
        if stage not in known_stages:
            raise ConfigError(f"recipe.stages contains {stage!r}; known stages: {', '.join(known_stages)}")
    for stage in conf.force_stages:
        if stage in known_stages and stage not in conf.recipe.stages:  # a task name is checked by check_force_stages
            raise ConfigError(
                f"force_stages contains {stage!r}, which recipe={conf.recipe.name} does not run; "
                f"its stages: {', '.join(conf.recipe.stages)}"
            )
    shape = model_shape(conf)
    check_needs(conf.recipe.stages)
    check_search_recipe(conf.recipe.stages)
    for dotted in dict.fromkeys(s.checks for s in specs() if s.checks and s.name in conf.recipe.stages):
        load(dotted)(conf, shape)  # each stage's own checks (<package>/checks.py), in pipeline order
    check_global_batches(conf)
    m = conf.model
    if "model" in conf.recipe.stages and m.source == "hf" and not m.is_local() and conf.cluster.executor == "local":
        check_hub_model(m)  # last: it may ask the Hub, and every cheaper mistake should be named first
    return shape


def check_global_batches(conf: CompactLMConfig) -> None:
    """Each training task's global batch divides over its processes (nodes × processes per node), checked here
    rather than by the stage once its job has waited in the queue."""
    for task in run_tasks(conf):
        spec = get(task.stage)
        if spec.trains:
            world = conf.cluster.nodes_for(task.stage) * stage_processes(conf, task)
            getattr(conf, spec.train_section or spec.section).accumulation(world)
