"""What one stage runs as, wherever it runs: its processes and GPUs, its image, its environment, its command
line and the input folders a container must see. Plain functions of the config; no NeMo-Run objects."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from compactlm import stages
from compactlm.launch.records import REPO
from compactlm.pipeline import Task
from compactlm.run_config import CompactLMConfig

# Every stage prints progress as it goes; Python must not hold it back in a pipe.
BASE_ENV = {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
# torchrun forwards only SIGTERM/SIGINT/SIGHUP/SIGQUIT to its workers by default; Slurm's warning signal
# before the time limit is SIGUSR1, which must reach the workers so that they checkpoint.
TORCHRUN_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
# What the cluster executors package and run from: the library, the stage entry points and the configs.
PACKAGED = ("src", "recipes", "conf", "launch.py", "pyproject.toml")
# Every stage runs as this module, named by the task: `python -m compactlm.run distill config=...` (compactlm/run.py).
STAGE_MODULE = "compactlm.run"
# Inside containers NeMo-Run mounts the job folder at /nemo_run and runs from /nemo_run/code.
CODE_DIR = "/nemo_run/code"
# DGX Cloud and Lepton copy each job folder onto the cluster through the scheduler's API (base64 in a busybox
# command, a few KB per call), so only the run's config travels; the code is the one containers/*.Dockerfile
# installs here (pip install -e), and a code change there means rebuilding the image.
CLOUD_EXECUTORS = ("dgxc", "lepton")
IMAGE_CODE_DIR = "/opt/compactlm"


def stage_processes(conf: CompactLMConfig, task: Task) -> int:
    """Processes per node for a task: the training stages (distill, sft, dpo, grpo, each search candidate's
    short distillation) are data-parallel."""
    spec = stages.get(task.stage)
    if not spec.trains:
        return 1
    section = spec.train_section or spec.section  # a candidate distills as distill does
    return getattr(conf, section).nproc_per_node or max(conf.cluster.gpus_per_node, 1)


def stage_gpus(conf: CompactLMConfig, task: Task) -> int:
    """GPUs per node a task asks for (0 on CPU clusters and for the CPU-only stages)."""
    spec = stages.get(task.stage)
    if conf.cluster.gpus_per_node == 0 or spec.cpu_only:
        return 0
    return conf.cluster.gpus_per_node if spec.trains else 1


def stage_image(conf: CompactLMConfig, task: Task) -> str | None:
    return getattr(conf.cluster, stages.get(task.stage).image)


def stage_env(conf: CompactLMConfig, remote: bool = False) -> dict[str, str]:
    """Environment of every stage process; `remote`: on a cluster, running from the packaged code."""
    env = {**BASE_ENV, "TORCHELASTIC_SIGNALS_TO_HANDLE": TORCHRUN_SIGNALS}
    if os.environ.get(stages.EXTRA_ENV):  # stages registered from outside compactlm: every stage process loads them
        env[stages.EXTRA_ENV] = os.environ[stages.EXTRA_ENV]
    if remote:
        if conf.cluster.executor not in CLOUD_EXECUTORS:  # on DGX Cloud / Lepton the image's install is used
            # NeMo-Run runs the job from its code folder; /nemo_run is rewritten to the job folder without containers.
            env["PYTHONPATH"] = f"{CODE_DIR}/src"
    else:
        # compactlm from this checkout, then what the launcher's own PYTHONPATH finds (a registered stage's package)
        paths = [str(REPO / "src"), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(filter(None, paths)))
        # `python` (and torchrun's workers) must be the interpreter running the launcher, e.g. its venv.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**env, **conf.cluster.env}


def stage_args(conf: CompactLMConfig, task: Task, config_path: Path) -> list[str]:
    """Arguments of `python -m compactlm.run` (STAGE_MODULE) for a task: the stage, then its config file (an
    absolute path here, relative to the packaged code on a cluster); an instance of an instanced stage is named
    on the command line (`candidate=exp_010`). A stage registered from outside compactlm runs the same way."""
    extra = [f"{task.stage}={task.instance}"] if task.instance is not None else []
    if conf.cluster.executor == "local":
        config = str(config_path)
    elif conf.cluster.executor in CLOUD_EXECUTORS:
        config = f"{CODE_DIR}/{config_path.name}"
    else:
        config = config_path.name
    return [task.stage, f"config={config}", *extra]


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
