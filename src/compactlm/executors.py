"""`cluster=` -> NeMo-Run executors, one per stage. Plain objects, separate from the tasks they run."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from compactlm.config import CompactLMConfig

# Every stage prints progress as it goes; Python must not hold it back in a pipe.
BASE_ENV = {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}


def stage_processes(conf: CompactLMConfig, stage: str) -> int:
    """Processes per node for `stage`: distillation is the only data-parallel stage."""
    return conf.distill.nproc_per_node if stage == "distill" else 1


def stage_env(conf: CompactLMConfig) -> dict[str, str]:
    env = {**BASE_ENV, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    if conf.cluster.executor == "local":
        # `python` (and torchrun's workers) must be the interpreter running the launcher, e.g. its venv.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**env, **conf.cluster.env}


def make_executor(conf: CompactLMConfig, run, stage: str):
    """The executor for `stage` on `conf.cluster`; `run` is the imported nemo_run module."""
    nproc = stage_processes(conf, stage)
    if conf.cluster.executor == "local":
        executor = run.LocalExecutor(ntasks_per_node=nproc, packager=run.Packager(), env_vars=stage_env(conf))
    else:  # rejected earlier by ClusterConfig.__post_init__
        raise ValueError(f"cluster.executor={conf.cluster.executor!r} has no executor")
    if nproc > 1:
        executor.launcher = "torchrun"
    return executor


def describe_executor(conf: CompactLMConfig) -> str:
    """What `dryrun=true` prints about where the tasks would run."""
    c = conf.cluster
    env = " ".join(f"{k}={v}" for k, v in stage_env(conf).items() if k != "PATH")
    lines = [f"NeMo-Run LocalExecutor (cluster={c.name}): stages run one after another on this machine", f"  env: {env}"]
    for stage in conf.recipe.stages:
        if stage_processes(conf, stage) > 1:
            lines.append(f"  {stage}: torchrun --nproc-per-node {stage_processes(conf, stage)}")
    return "\n".join(lines)
