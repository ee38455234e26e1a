"""`cluster=` -> a NeMo-Run executor. Plain objects, separate from the tasks they run."""

from __future__ import annotations

from pathlib import Path

from compactlm.config import CompactLMConfig

# Every stage prints progress as it goes; Python must not hold it back in a pipe.
BASE_ENV = {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}


def stage_env(conf: CompactLMConfig) -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1])
    return {**BASE_ENV, "PYTHONPATH": src, **conf.cluster.env}


def make_executor(conf: CompactLMConfig, run):
    """The executor for `conf.cluster`; `run` is the imported nemo_run module."""
    if conf.cluster.executor == "local":
        return run.LocalExecutor(ntasks_per_node=1, packager=run.Packager(), env_vars=stage_env(conf))
    raise ValueError(f"cluster.executor={conf.cluster.executor!r} has no executor")  # rejected by ClusterConfig


def describe_executor(conf: CompactLMConfig) -> str:
    """What `dryrun=true` prints about where the tasks would run."""
    c = conf.cluster
    env = " ".join(f"{k}={v}" for k, v in stage_env(conf).items())
    return f"NeMo-Run LocalExecutor (cluster={c.name}): stages run one after another on this machine\n  env: {env}"
