"""What one stage runs as, wherever it runs: its processes and GPUs, its image, its environment, its command
line and the input folders a container must see. Plain functions of the config; no NeMo-Run objects."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from compactlm.config import TRAIN_STAGES, CompactLMConfig
from compactlm.launch.records import REPO
from compactlm.pipeline import split_task

# Every stage prints progress as it goes; Python must not hold it back in a pipe.
BASE_ENV = {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
# torchrun forwards only SIGTERM/SIGINT/SIGHUP/SIGQUIT to its workers by default; Slurm's warning signal
# before the time limit is SIGUSR1, which must reach the workers so that they checkpoint.
TORCHRUN_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
# What the cluster executors package and run from: the library, the stage entry points and the configs.
PACKAGED = ("src", "recipes", "conf", "launch.py", "pyproject.toml")
# Inside containers NeMo-Run mounts the job folder at /nemo_run and runs from /nemo_run/code.
CODE_DIR = "/nemo_run/code"
CPU_STAGES = ("model", "data", "release")  # release: copies, hashes and (with repo_id) uploads
# training stages whose process count comes from another stage's section: a candidate distills as distill does
TRAIN_SECTION = {"candidate": "distill"}
# DGX Cloud and Lepton copy each job folder onto the cluster through the scheduler's API (base64 in a busybox
# command, a few KB per call), so only the run's config travels; the code is the one containers/*.Dockerfile
# installs here (pip install -e), and a code change there means rebuilding the image.
CLOUD_EXECUTORS = ("dgxc", "lepton")
IMAGE_CODE_DIR = "/opt/compactlm"


def stage_processes(conf: CompactLMConfig, task: str) -> int:
    """Processes per node for a task: the training stages (distill, sft, dpo, grpo, each search candidate's
    short distillation) are data-parallel."""
    stage = split_task(task)[0]
    if stage not in TRAIN_STAGES:
        return 1
    return getattr(conf, TRAIN_SECTION.get(stage, stage)).nproc_per_node or max(conf.cluster.gpus_per_node, 1)


def stage_gpus(conf: CompactLMConfig, task: str) -> int:
    """GPUs per node a task asks for (0 on CPU clusters and for the CPU-only stages)."""
    stage = split_task(task)[0]
    if conf.cluster.gpus_per_node == 0 or stage in CPU_STAGES:
        return 0
    return conf.cluster.gpus_per_node if stage in TRAIN_STAGES else 1


def stage_image(conf: CompactLMConfig, task: str) -> str | None:
    return conf.cluster.deploy_image if split_task(task)[0] == "deploy" else conf.cluster.container_image


def stage_env(conf: CompactLMConfig, remote: bool = False) -> dict[str, str]:
    """Environment of every stage process; `remote`: on a cluster, running from the packaged code."""
    env = {**BASE_ENV, "TORCHELASTIC_SIGNALS_TO_HANDLE": TORCHRUN_SIGNALS}
    if remote:
        if conf.cluster.executor not in CLOUD_EXECUTORS:  # on DGX Cloud / Lepton the image's install is used
            # NeMo-Run runs the job from its code folder; /nemo_run is rewritten to the job folder without containers.
            env["PYTHONPATH"] = f"{CODE_DIR}/src"
    else:
        env["PYTHONPATH"] = str(REPO / "src")
        # `python` (and torchrun's workers) must be the interpreter running the launcher, e.g. its venv.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**env, **conf.cluster.env}


def stage_args(conf: CompactLMConfig, task: str, config_path: Path) -> tuple[str, list[str]]:
    """(script, args) of a task: absolute paths here, relative to the packaged code on a cluster; an instance of
    an instanced stage is named on the command line (`candidate=exp_010`)."""
    stage, instance = split_task(task)
    extra = [f"{stage}={instance}"] if instance else []
    if conf.cluster.executor == "local":
        return str(REPO / "recipes" / f"{stage}.py"), [f"config={config_path}", *extra]
    if conf.cluster.executor in CLOUD_EXECUTORS:
        return f"{IMAGE_CODE_DIR}/recipes/{stage}.py", [f"config={CODE_DIR}/{config_path.name}", *extra]
    return f"recipes/{stage}.py", [f"config={config_path.name}", *extra]


def input_folders(conf: CompactLMConfig) -> list[str]:
    """Absolute folders the stages read inputs from: a local model, the data files, the lm-eval task text."""
    paths = [conf.model.path] if conf.model.is_local() else []
    if "data" in conf.recipe.stages and conf.data.reads_files():
        for pattern in conf.data.paths:  # the folder above the first wildcard
            parts = Path(pattern).parts
            fixed = next((i for i, part in enumerate(parts) if any(c in part for c in "*?[")), len(parts) - 1)
            paths.append(str(Path(*parts[:fixed])))
    if "evaluate" in conf.recipe.stages and conf.evaluate.task_text:
        paths.append(conf.evaluate.task_text)
    return [p for p in paths if p and p.startswith("/")]


def container_mounts(conf: CompactLMConfig) -> list[str]:
    """User mounts plus the run folder and the model cache, which every stage reads or writes, and the
    folders of local inputs (model, data, task text) where the container does not see them already."""
    mounts = list(conf.cluster.container_mounts)
    for path in (str(Path(conf.run_dir).parent), conf.cache_dir, *input_folders(conf)):
        inside = [m.split(":")[1] if ":" in m else m for m in mounts]
        if not any(path == dest or path.startswith(dest.rstrip("/") + "/") for dest in inside):
            mounts.append(f"{path}:{path}")
    return mounts
