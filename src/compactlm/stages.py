"""The one table of stages: what each stage is, where its parts live and how it runs. Every per-stage list of the
project (the runner's stage classes, the result classes, the model labels, the Hydra groups, the training and
CPU-only stages, the search's order, the report's plots) is derived from it.

Entries name their parts by dotted strings (`"compactlm.prune.stage:PruneStage"`), so this module imports nothing
of compactlm but the errors and no torch: both sides read it, and each imports only the parts it uses
(:func:`load`).

A stage defined outside compactlm registers itself with one call, `register(StageSpec(...))`, in a module that
`COMPACTLM_STAGES` names (comma-separated module names, importable on PYTHONPATH). Both the launcher and every
stage process read that variable before they build the run's config schema (which has one section per stage),
and the launcher hands it to every stage it starts.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Any

from compactlm.errors import ConfigError

EXTRA_ENV = "COMPACTLM_STAGES"
"""Environment variable naming modules (comma-separated) that register stages defined outside compactlm."""


@dataclass(frozen=True)
class StageSpec:
    """One stage. Dotted strings are `module:attribute` (or a module) and are imported only where used."""

    name: str
    """The stage's name in recipes (`recipe.stages`), folders (`<run_dir>/<name>/`) and manifests; no dash."""
    package: str
    """The package holding its parts: `stage.py` (the stage class), `schema.py` (its config and result
    dataclasses), `checks.py` and `report.py` where it has launch-time checks or report rows."""
    stage: str
    """Its class (the `compactlm.pipeline.Stage` protocol), `module:Class`, in `<package>.stage`."""
    result: str
    """Its result dataclass, `module:Class`: stored in its manifest, read back by the report, status and later
    stages."""
    section: str | None = None
    """The config section (attribute of the root config) holding its settings; several stages may share one."""
    config: str | None = None
    """The dataclass of `section`, `module:Class`: the schema Hydra checks the YAML and command line against."""
    group: bool = False
    """`section` is a Hydra config group (conf/<section>/*.yaml) that every run must pick (no default)."""
    trains: bool = False
    """Data-parallel under torchrun: one process per GPU (`<train_section>.nproc_per_node` overrides)."""
    train_section: str | None = None
    """Section whose `nproc_per_node` sets its processes, when not its own (a candidate distills as distill does)."""
    multi_node: bool = False
    """Uses every node of the cluster by default (`cluster.stage_nodes.<name>` overrides)."""
    cpu_only: bool = False
    """Asks for no GPU, even on a GPU cluster."""
    image: str = "container_image"
    """The `cluster.` key naming its container image (deploy runs in TensorRT-LLM's)."""
    modelopt: bool = False
    """Imports ModelOpt (the plan adds its host memory)."""
    instanced_by: str | None = None
    """Config section whose `names()` lists its instances: the stage runs as one task per instance."""
    needs: tuple[str, ...] = ()
    """Stages that must come before it in a recipe (it reads their outputs); checked before anything runs."""
    search_step: int | None = None
    """Its place in a candidate search (importance, teacher_cache, candidate, ranking run in this order)."""
    model_label: str | None = None
    """The label of the model it writes (`teacher`, `pruned`, ...): later stages find the run's models by label,
    in registry order."""
    model_output: str = "checkpoint"
    """The output key of that model's folder."""
    student: bool = False
    """Its model is a high-precision student (the latest one is what gguf and bench measure)."""
    checks: str | None = None
    """Its launch-time checks, `module:function(conf, shape)`, run by the launcher's one validator when the recipe
    runs the stage; raise ConfigError."""
    report: str | None = None
    """Its report section, `module:function(conf, results) -> list[Block]`; `results` (compactlm.results.RunResults)
    maps task -> typed result, and its `tasks` give each task's state."""
    summary: str | None = None
    """Its lines in the launcher's terminal summary, `module:function(conf, results) -> list[str]`."""
    plots: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    """(file in its folder, caption) of the plots the report embeds."""
    plan: str | None = None
    """Its model of memory, disk and FLOPs for the plan printed before submission,
    `module:function(ctx, teacher, student) -> (memory, disk, flops)` (compactlm.launch.plan); None: the plan
    estimates only its runtime."""


_BUILTIN: tuple[StageSpec, ...] = (
    StageSpec(
        name="model",
        plan="compactlm.launch.plan:plan_model",
        package="compactlm.model",
        stage="compactlm.model.stage:ModelStage",
        result="compactlm.model.schema:ModelResult",
        section="model",
        config="compactlm.model.schema:ModelConfig",
        group=True,
        cpu_only=True,
        model_label="teacher",
    ),
    StageSpec(
        name="data",
        plan="compactlm.launch.plan:plan_data",
        package="compactlm.data",
        stage="compactlm.data.stage:DataStage",
        result="compactlm.data.schema:DataResult",
        section="data",
        config="compactlm.data.schema:DataConfig",
        group=True,
        cpu_only=True,
        checks="compactlm.data.checks:check",
    ),
    StageSpec(
        name="importance",
        plan="compactlm.launch.plan:plan_importance",
        package="compactlm.prune",
        stage="compactlm.prune.stage:ImportanceStage",
        result="compactlm.prune.schema:ImportanceResult",
        section="importance",
        config="compactlm.prune.schema:ImportanceConfig",
        search_step=0,
        plots=(("depth.png", "Per-layer depth importance"), ("width.png", "Per-layer width importance")),
    ),
    StageSpec(
        name="prune",
        plan="compactlm.launch.plan:plan_prune",
        package="compactlm.prune",
        stage="compactlm.prune.stage:PruneStage",
        result="compactlm.prune.schema:PruneResult",
        section="prune",
        config="compactlm.prune.schema:PruneConfig",
        group=True,
        model_label="pruned",
        student=True,
        checks="compactlm.prune.checks:check",
    ),
    StageSpec(
        name="teacher_cache",
        plan="compactlm.launch.plan:plan_teacher_cache",
        package="compactlm.search",
        stage="compactlm.search.stage:TeacherCacheStage",
        result="compactlm.search.schema:TeacherCacheResult",
        section="search",
        config="compactlm.search.schema:SearchConfig",
        modelopt=True,
        search_step=1,
    ),
    StageSpec(
        name="candidate",
        package="compactlm.search",
        stage="compactlm.search.stage:CandidateStage",
        report="compactlm.search.report:report",
        summary="compactlm.search.report:summary",
        result="compactlm.search.schema:CandidateResult",
        section="search",
        config="compactlm.search.schema:SearchConfig",
        trains=True,
        train_section="distill",
        modelopt=True,
        instanced_by="search",
        search_step=2,
    ),
    StageSpec(
        name="ranking",
        package="compactlm.search",
        stage="compactlm.search.stage:RankingStage",
        report="compactlm.search.report:report",
        summary="compactlm.search.report:summary",
        result="compactlm.search.schema:RankingResult",
        section="search",
        config="compactlm.search.schema:SearchConfig",
        search_step=3,
        model_label="pruned",
        student=True,
        plots=(
            (
                "pareto.png",
                "Candidate search: parameters (without lm_head) vs validation loss after the short "
                "distillation (filled) and pruned only (hollow); Pareto front, and the chosen "
                "candidate as a star",
            ),
            (
                "search_curves.png",
                "Candidate search: validation loss and KL to the teacher per step of each candidate's short "
                "distillation",
            ),
        ),
    ),
    StageSpec(
        name="distill",
        package="compactlm.distill",
        stage="compactlm.distill.stage:DistillStage",
        result="compactlm.distill.schema:DistillResult",
        section="distill",
        config="compactlm.distill.schema:DistillConfig",
        trains=True,
        multi_node=True,
        modelopt=True,
        model_label="distilled",
        student=True,
        plots=(("loss_curve.png", "Distillation loss and validation curves"),),
    ),
    StageSpec(
        name="align_data",
        package="compactlm.align",
        stage="compactlm.align.stage:AlignDataStage",
        result="compactlm.align.schema:AlignDataResult",
        section="align_data",
        config="compactlm.align.schema:AlignDataConfig",
        group=True,
        checks="compactlm.align.checks:check_sources",
    ),
    StageSpec(
        name="sft",
        package="compactlm.align",
        stage="compactlm.align.stage:SFTStage",
        result="compactlm.align.schema:SFTResult",
        section="sft",
        config="compactlm.align.schema:SFTConfig",
        trains=True,
        multi_node=True,
        needs=("align_data",),
        model_label="sft",
        student=True,
        checks="compactlm.align.checks:check_trainer",
        plots=(("curves.png", "SFT: loss on the answer tokens and token accuracy per step"),),
        report="compactlm.align.report:report",
        summary="compactlm.align.report:summary",
    ),
    StageSpec(
        name="dpo",
        package="compactlm.align",
        stage="compactlm.align.stage:DPOStage",
        result="compactlm.align.schema:DPOResult",
        section="dpo",
        config="compactlm.align.schema:DPOConfig",
        trains=True,
        multi_node=True,
        needs=("align_data",),
        model_label="dpo",
        student=True,
        checks="compactlm.align.checks:check_trainer",
        plots=(("curves.png", "DPO: loss, reward margin and reward accuracy per step (training batches)"),),
        report="compactlm.align.report:report",
        summary="compactlm.align.report:summary",
    ),
    StageSpec(
        name="grpo",
        package="compactlm.align",
        stage="compactlm.align.stage:GRPOStage",
        result="compactlm.align.schema:GRPOResult",
        section="grpo",
        config="compactlm.align.schema:GRPOConfig",
        trains=True,
        multi_node=True,
        needs=("align_data",),
        model_label="grpo",
        student=True,
        checks="compactlm.align.checks:check_grpo",
        plots=(("curves.png", "GRPO: mean reward of the sampled completions and their length per step"),),
        report="compactlm.align.report:report",
        summary="compactlm.align.report:summary",
    ),
    StageSpec(
        name="quantize",
        plan="compactlm.launch.plan:plan_quantize",
        package="compactlm.quantize",
        stage="compactlm.quantize.stage:QuantizeStage",
        result="compactlm.quantize.schema:QuantizeResult",
        section="quantize",
        config="compactlm.quantize.schema:QuantizeConfig",
        group=True,
        modelopt=True,
        model_label="quantized",
        model_output="export",
        checks="compactlm.quantize.checks:check",
        report="compactlm.quantize.report:report",
        summary="compactlm.quantize.report:summary",
    ),
    StageSpec(
        name="gguf",
        plan="compactlm.launch.plan:plan_gguf",
        package="compactlm.gguf",
        stage="compactlm.gguf.stage:GGUFStage",
        result="compactlm.gguf.schema:GGUFResult",
        section="gguf",
        config="compactlm.gguf.schema:GGUFConfig",
        checks="compactlm.gguf.checks:check",
        report="compactlm.quantize.report:report",
        summary="compactlm.quantize.report:summary",
    ),
    StageSpec(
        name="evaluate",
        plan="compactlm.launch.plan:plan_evaluate",
        package="compactlm.evaluate",
        stage="compactlm.evaluate.stage:EvaluateStage",
        result="compactlm.evaluate.schema:EvaluateResult",
        section="evaluate",
        config="compactlm.evaluate.schema:EvaluateConfig",
        checks="compactlm.evaluate.checks:check",
        report="compactlm.evaluate.report:report",
        summary="compactlm.evaluate.report:summary",
    ),
    StageSpec(
        name="deploy",
        package="compactlm.deploy",
        stage="compactlm.deploy.stage:DeployStage",
        result="compactlm.deploy.schema:DeployResult",
        section="deploy",
        config="compactlm.deploy.schema:DeployConfig",
        image="deploy_image",
        checks="compactlm.deploy.checks:check",
    ),
    StageSpec(
        name="bench",
        plan="compactlm.launch.plan:plan_bench",
        package="compactlm.bench",
        stage="compactlm.bench.stage:BenchStage",
        result="compactlm.bench.schema:BenchResult",
        section="bench",
        config="compactlm.bench.schema:BenchConfig",
        report="compactlm.bench.report:report",
        summary="compactlm.bench.report:summary",
    ),
    StageSpec(
        name="release",
        package="compactlm.release",
        stage="compactlm.release.stage:ReleaseStage",
        result="compactlm.release.schema:ReleaseResult",
        section="release",
        config="compactlm.release.schema:ReleaseConfig",
        cpu_only=True,  # copies, hashes and (with release.repo_id) uploads: no GPU
        checks="compactlm.release.checks:check",
    ),
)

_REGISTRY: dict[str, StageSpec] = {s.name: s for s in _BUILTIN}
_loaded_extra: set[str] = set()


def register(spec: StageSpec) -> StageSpec:
    """Add a stage after the built-in ones (a stage defined outside compactlm); refuses a name already taken or
    one that cannot be a task name."""
    if spec.name in _REGISTRY:
        if _REGISTRY[spec.name] == spec:
            return spec  # the same module imported twice
        raise ConfigError(f"stage {spec.name!r} is registered already ({_REGISTRY[spec.name].stage})")
    if not spec.name.isidentifier() or "-" in spec.name:
        raise ConfigError(f"stage name {spec.name!r} must be a Python identifier (it names folders and tasks)")
    _REGISTRY[spec.name] = spec
    return spec


def load_extra() -> None:
    """Import the modules `COMPACTLM_STAGES` names (once each), which register their stages."""
    for module in filter(None, (m.strip() for m in os.environ.get(EXTRA_ENV, "").split(","))):
        if module in _loaded_extra:
            continue
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ConfigError(f"{EXTRA_ENV}={os.environ[EXTRA_ENV]!r}: cannot import {module!r} ({e})") from None
        _loaded_extra.add(module)


def specs() -> tuple[StageSpec, ...]:
    """Every stage, built-in ones first in pipeline order, then the registered ones."""
    load_extra()
    return tuple(_REGISTRY.values())


def names() -> tuple[str, ...]:
    return tuple(s.name for s in specs())


def get(name: str) -> StageSpec:
    """The stage `name`, or a ConfigError listing the known ones."""
    load_extra()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"stage {name!r} is not one of {', '.join(_REGISTRY)}") from None


def load(dotted: str) -> Any:
    """The object a dotted `module:attribute` string names (a module for a plain `module`)."""
    module, _, attr = dotted.partition(":")
    obj = importlib.import_module(module)
    return getattr(obj, attr) if attr else obj


def sections() -> dict[str, str]:
    """Config section -> its dataclass (dotted), in registry order; stages sharing a section name one class."""
    out: dict[str, str] = {}
    for s in specs():
        if s.section is None or s.config is None:
            continue
        if out.setdefault(s.section, s.config) != s.config:
            raise ConfigError(f"stage {s.name!r}: section {s.section!r} already has the schema {out[s.section]}")
    return out


def group_sections() -> tuple[str, ...]:
    """Sections that are Hydra config groups every run picks (conf/<section>/*.yaml)."""
    return tuple(dict.fromkeys(s.section for s in specs() if s.group and s.section))


def where(**flags: Any) -> tuple[str, ...]:
    """Names of the stages whose fields equal `flags`: `where(trains=True)`."""
    return tuple(s.name for s in specs() if all(getattr(s, k) == v for k, v in flags.items()))


def model_labels() -> dict[str, str]:
    """Stage -> label of the model it writes, in pipeline order."""
    return {s.name: s.model_label for s in specs() if s.model_label}


def student_labels() -> tuple[str, ...]:
    """The labels of the high-precision students, latest first."""
    return tuple(dict.fromkeys(s.model_label for s in reversed(specs()) if s.student and s.model_label))


def search_order() -> tuple[str, ...]:
    """The stages of a candidate search, in the order a recipe must run them."""
    steps = sorted((s.search_step, s.name) for s in specs() if s.search_step is not None)
    return tuple(name for _, name in steps)
