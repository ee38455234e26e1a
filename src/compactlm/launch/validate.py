"""Checks across config groups, run by the launcher before anything is written or submitted.

Single-group checks live in the dataclasses' `__post_init__`; here are the ones that need two groups
(a prune preset against the model's sizes) or the file system (a local model folder, a data file).
No torch: it runs on the submit side.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from compactlm.align.data import budgets as align_budgets
from compactlm.align.data import check_sources as check_align_sources
from compactlm.arch import adapter_for
from compactlm.config import ALIGN_KINDS, GGUF_MODEL_TYPES, TEXT_TASKS, CompactLMConfig, ConfigError, ModelShape
from compactlm.data.splits import check_sources, check_utf8_text
from compactlm.deploy.trtllm import WHERE_IT_RUNS, tensorrt_llm_available
from compactlm.evaluate.lmeval import TASK_DIR, unknown_tasks
from compactlm.gguf.convert import check_source
from compactlm.gguf.llamacpp import from_folder
from compactlm.launch.search import check_export, check_search_recipe
from compactlm.model.loading import check_hub_model, check_model_folder
from compactlm.quantize.formats import check_deploy_support
from compactlm.release.checks import check_release
from compactlm.rewards import check_paths as check_reward_paths


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


def check_seq_len(conf: CompactLMConfig, shape: dict[str, Any]) -> None:
    """Packed sequences must fit the model's context."""
    most = shape.get("max_position_embeddings")
    if most is not None and conf.data.seq_len > most:
        raise ConfigError(
            f"data.seq_len={conf.data.seq_len} exceeds the model's max_position_embeddings={most} "
            f"({conf.model.name}); use data.seq_len<={most}"
        )


def check_tasks(conf: CompactLMConfig) -> None:
    """Every `evaluate.tasks` name is a project task or one lm_eval knows (offline), with a "did you mean"."""
    unknown = unknown_tasks(list(conf.evaluate.tasks))
    if unknown:
        name, close = next(iter(unknown.items()))
        hint = f"did you mean {close!r}? " if close else ""
        raise ConfigError(
            f"evaluate.tasks contains {name!r}, which is neither a project task ({', '.join(TEXT_TASKS)}; "
            f"{TASK_DIR}) nor an lm-eval task or group; {hint}"
            f"lm_eval --tasks list shows them all"
        )


def validate(conf: CompactLMConfig, known_stages: tuple[str, ...]) -> dict[str, Any]:
    """Raise ConfigError on anything that cannot work; return the model shape used for the checks."""
    check_run_dir(conf)
    for stage in conf.recipe.stages:
        if stage not in known_stages:
            raise ConfigError(f"recipe.stages contains {stage!r}; known stages: {', '.join(known_stages)}")
    for stage in conf.force_stages:
        if stage.partition("-")[0] not in conf.recipe.stages:  # a stage, or one instance of it (candidate-L18)
            raise ConfigError(
                f"force_stages contains {stage!r}, which recipe={conf.recipe.name} does not run; "
                f"its stages: {', '.join(conf.recipe.stages)}"
            )
    shape = model_shape(conf)
    if "data" in conf.recipe.stages:
        check_seq_len(conf, shape)
    if "prune" in conf.recipe.stages:
        check_prune(conf, shape)
    check_search_recipe(conf.recipe.stages)
    if "data" in conf.recipe.stages and not conf.cluster.is_remote():
        check_sources(conf.data)
    if "quantize" in conf.recipe.stages and conf.quantize.exclude:
        layers = shape.get("num_hidden_layers")
        if "prune" in conf.recipe.stages:
            layers = conf.prune.export_config.num_layers or layers
        check_exclude_patterns(conf.quantize.exclude, shape.get("model_type"), layers)
    if "deploy" in conf.recipe.stages:
        check_deploy(conf)
    if "gguf" in conf.recipe.stages:
        check_gguf(conf, shape)
    check_align(conf, shape)
    check_release(conf)
    if "evaluate" in conf.recipe.stages:
        check_tasks(conf)
        if not conf.cluster.is_remote():
            check_task_text(conf)
    m = conf.model
    if "model" in conf.recipe.stages and m.source == "hf" and not m.is_local() and conf.cluster.executor == "local":
        check_hub_model(m)  # last: it may ask the Hub, and every cheaper mistake should be named first
    return shape


def check_task_text(conf: CompactLMConfig) -> None:
    """The lm-eval tasks built from `evaluate.task_text` need UTF-8 .txt files there, on the machine that runs the
    evaluate stage (heldout_continuation needs nothing: it is built from the run's own held-out documents)."""
    e = conf.evaluate
    folder_tasks = e.folder_tasks()
    if not folder_tasks:
        return
    files = sorted(Path(e.task_text).expanduser().rglob("*.txt"))
    if not files:
        raise ConfigError(
            f"evaluate.tasks={list(e.tasks)} builds {folder_tasks[0]} from .txt files, but "
            f"evaluate.task_text={e.task_text!r} has none: point it at a folder of .txt files, or use "
            "evaluate.tasks=[heldout_continuation] (built from the run's own held-out documents)"
        )
    for path in files:
        check_utf8_text(path, "evaluate.task_text")


def check_gguf(conf: CompactLMConfig, shape: dict[str, Any]) -> None:
    """The gguf stage converts only what llama.cpp's converter handles, and a GGUF carries its tokenizer."""
    model_type = shape.get("model_type")
    if model_type is not None and model_type not in GGUF_MODEL_TYPES:
        raise ConfigError(
            f"recipe={conf.recipe.name} has a gguf stage, but model={conf.model.name} is {model_type!r}; "
            f"GGUF export converts model types {', '.join(GGUF_MODEL_TYPES)} (or drop gguf from "
            "recipe.stages)"
        )
    m = conf.model
    if m.source == "hf" and m.is_local() and Path(m.path).expanduser().exists():
        check_source(Path(m.path).expanduser(), key=f"model.path={m.path!r} (recipe={conf.recipe.name} exports GGUF)")
    if conf.gguf.llama_cpp and not conf.cluster.is_remote():
        from_folder(conf.gguf.llama_cpp)


def check_align(conf: CompactLMConfig, shape: dict[str, Any]) -> None:
    """The alignment stages' token budgets against the model's context, their example files (every line, as the
    stages read them, each field against its budget) and the GRPO reward functions, before anything is submitted."""
    stages = conf.recipe.stages
    most = shape.get("max_position_embeddings")
    for kind in ALIGN_KINDS:
        n = getattr(conf, kind).max_length
        if kind in stages and most is not None and n > most:
            raise ConfigError(
                f"{kind}.max_length={n} exceeds the model's max_position_embeddings={most} "
                f"({conf.model.name}); use {kind}.max_length<={most}"
            )
    if "align_data" in stages and not conf.cluster.is_remote():
        check_align_sources(
            {k: getattr(conf.align_data, k) for k in ALIGN_KINDS}, align_budgets(conf.sft, conf.dpo, conf.grpo)
        )
    if any(s in stages for s in ALIGN_KINDS) and "align_data" not in stages:
        raise ConfigError(
            f"recipe.stages={stages}: the sft, dpo and grpo stages read the align_data stage's "
            "examples; add align_data before them"
        )
    if "grpo" in stages:
        check_reward_paths(list(conf.grpo.rewards))


def check_deploy(conf: CompactLMConfig) -> None:
    """The deploy stage needs TensorRT-LLM where it runs, and a GPU that can serve the quantized format."""
    c = conf.cluster
    if c.executor == "local" and tensorrt_llm_available() is None:
        raise ConfigError(
            f"recipe={conf.recipe.name} has a deploy stage but cluster=local has no TensorRT-LLM: "
            f"{WHERE_IT_RUNS} (cluster.deploy_image), or pick a recipe without deploy"
        )
    if c.executor != "local" and not c.deploy_image:
        raise ConfigError(
            f"recipe={conf.recipe.name} has a deploy stage: set cluster.deploy_image to NVIDIA's "
            "TensorRT-LLM image (see containers/README.md)"
        )
    if c.executor == "lepton" and "quantize" in conf.recipe.stages:
        gpu = c.lepton.resource_shape.split("x", 1)[1].split("-")[0]
        check_deploy_support(
            conf.quantize.format, gpu, key=f"cluster.lepton.resource_shape={c.lepton.resource_shape}: GPU"
        )


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


def check_prune(conf: CompactLMConfig, shape: dict[str, Any]) -> None:
    p = conf.prune
    if p.model is not None and p.model != conf.model.name:
        raise ConfigError(
            f"prune={p.name} is a preset for model={p.model}, not model={conf.model.name}; "
            f"pick a preset made for {conf.model.name} or set prune.model=null"
        )
    check_export(p.export_config.known(), shape, "prune.export_config", conf.model.name)
