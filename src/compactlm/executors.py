"""`cluster=` -> NeMo-Run executors, one per stage. Plain objects, separate from the tasks they run.

Resources per stage: model and data run on one node without GPUs; importance, prune, quantize, evaluate
and bench on one GPU; distill on every node of the cluster with one torchrun process per GPU; deploy on
one GPU in the TensorRT-LLM image. `cluster.stage_nodes` overrides the node count of any stage.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from compactlm.config import CompactLMConfig
from compactlm.lmeval import POLISH_TEXT
from compactlm.pipeline import CONFIG_FILE

REPO = Path(__file__).resolve().parents[2]
# Every stage prints progress as it goes; Python must not hold it back in a pipe.
BASE_ENV = {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
# torchrun forwards only SIGTERM/SIGINT/SIGHUP/SIGQUIT to its workers by default; Slurm's warning signal
# before the time limit is SIGUSR1, which must reach the workers so that they checkpoint.
TORCHRUN_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
# What the cluster executors package and run from: the library, the stage entry points and the configs.
PACKAGED = ("src", "recipes", "conf", "launch.py", "pyproject.toml")
# Inside containers NeMo-Run mounts the job folder at /nemo_run and runs from /nemo_run/code.
CODE_DIR = "/nemo_run/code"
CPU_STAGES = ("model", "data")
# DGX Cloud and Lepton copy each job folder onto the cluster through the scheduler's API (base64 in a busybox
# command, a few KB per call), so only the run's config travels; the code is the one containers/*.Dockerfile
# installs here (pip install -e), and a code change there means rebuilding the image.
CLOUD_EXECUTORS = ("dgxc", "lepton")
IMAGE_CODE_DIR = "/opt/compactlm"
# Where the stages of a cluster that does not see this machine's files find the Polish sample the default
# lm-eval task is built from: on Slurm it travels in the job's code folder (the stages' working directory),
# on DGX Cloud and Lepton it is in the image (containers/train.Dockerfile copies it there).
SHIPPED_TASK_TEXT = POLISH_TEXT.name
IMAGE_TASK_TEXT = f"{IMAGE_CODE_DIR}/data/{POLISH_TEXT.name}"


def stage_processes(conf: CompactLMConfig, stage: str) -> int:
    """Processes per node for `stage`: distillation is the only data-parallel stage."""
    if stage != "distill":
        return 1
    return conf.distill.nproc_per_node or max(conf.cluster.gpus_per_node, 1)


def stage_gpus(conf: CompactLMConfig, stage: str) -> int:
    """GPUs per node `stage` asks for (0 on CPU clusters and for the CPU-only stages)."""
    if conf.cluster.gpus_per_node == 0 or stage in CPU_STAGES:
        return 0
    return conf.cluster.gpus_per_node if stage == "distill" else 1


def stage_image(conf: CompactLMConfig, stage: str) -> str | None:
    return conf.cluster.deploy_image if stage == "deploy" else conf.cluster.container_image


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


def stage_args(conf: CompactLMConfig, stage: str, config_path: Path) -> tuple[str, list[str]]:
    """(script, args) of a stage task: absolute paths here, relative to the packaged code on a cluster."""
    if conf.cluster.executor == "local":
        return str(REPO / "recipes" / f"{stage}.py"), ["--config", str(config_path)]
    if conf.cluster.executor in CLOUD_EXECUTORS:
        return f"{IMAGE_CODE_DIR}/recipes/{stage}.py", ["--config", f"{CODE_DIR}/{config_path.name}"]
    return f"recipes/{stage}.py", ["--config", config_path.name]


def remote_task_text(conf: CompactLMConfig) -> str:
    """`evaluate.task_text` of the Polish sample on a cluster that does not see this machine's files."""
    return IMAGE_TASK_TEXT if conf.cluster.executor in CLOUD_EXECUTORS else SHIPPED_TASK_TEXT


def packager(conf: CompactLMConfig, run, local_dir: Path):
    """The code as it is on disk (not only what is committed) plus the run's resolved config.

    The config lands at the root of the job's code folder, where `stage_args` points the stage.
    """
    if conf.cluster.executor == "local":
        return run.Packager()
    if conf.cluster.executor in CLOUD_EXECUTORS:  # the code is in the image (IMAGE_CODE_DIR)
        return run.PatternPackager(include_pattern=[str(local_dir / CONFIG_FILE)], relative_path=[str(local_dir)])
    patterns = [str(REPO / p) for p in PACKAGED] + [str(local_dir / CONFIG_FILE)]
    relative = [str(REPO)] * len(PACKAGED) + [str(local_dir)]
    if conf.evaluate.task_text == SHIPPED_TASK_TEXT:
        patterns.append(str(POLISH_TEXT))
        relative.append(str(POLISH_TEXT.parent))
    return run.PatternPackager(include_pattern=patterns, relative_path=relative)


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


def make_executor(conf: CompactLMConfig, run, stage: str, local_dir: Path):
    """The executor for `stage` on `conf.cluster`; `run` is the imported nemo_run module."""
    builder = {"local": _local, "slurm": _slurm, "dgxc": _dgxc, "lepton": _lepton}[conf.cluster.executor]
    executor = builder(conf, run, stage, local_dir)
    if stage_processes(conf, stage) > 1 or conf.cluster.nodes_for(stage) > 1:
        executor.launcher = "torchrun"
    return executor


def _local(conf, run, stage, local_dir):
    return run.LocalExecutor(ntasks_per_node=stage_processes(conf, stage), packager=packager(conf, run, local_dir),
                             env_vars=stage_env(conf))


def _slurm(conf, run, stage, local_dir):
    c, s = conf.cluster, conf.cluster.slurm
    if s.tunnel == "ssh":
        tunnel = run.SSHTunnel(host=s.host, user=s.user or os.environ.get("USER", ""), job_dir=s.job_dir,
                               identity=s.identity)
    else:
        tunnel = run.LocalTunnel(job_dir=s.job_dir or "")
    image = stage_image(conf, stage)
    gpus = stage_gpus(conf, stage)
    executor = run.SlurmExecutor(
        account=s.account, partition=s.partition, time=s.time, nodes=c.nodes_for(stage),
        ntasks_per_node=stage_processes(conf, stage), gpus_per_node=gpus or None,
        cpus_per_task=s.cpus_per_task, mem=s.mem, qos=s.qos, constraint=s.constraint,
        exclusive=True if s.exclusive else None,
        signal=f"USR1@{s.signal_before_limit}" if s.signal_before_limit else None,
        container_image=image, container_mounts=container_mounts(conf) if image else [],
        setup_lines="\n".join(s.setup_lines) or None, srun_args=list(s.srun_args) or None,
        job_name_prefix="compactlm-", env_vars=stage_env(conf, remote=True), tunnel=tunnel,
        packager=packager(conf, run, local_dir),
        # a stage that failed for good cancels the stages waiting on it (afterok); without this they stay
        # PENDING (DependencyNeverSatisfied) forever and the launcher, which waits for every job, with them
        additional_parameters={"kill_on_invalid_dep": "yes"},
    )
    executor.retries = s.max_retries
    return executor


def _dgxc(conf, run, stage, local_dir):
    from compactlm.cloud import dgxc_executor

    return dgxc_executor(conf, run, stage, packager(conf, run, local_dir))


def _lepton(conf, run, stage, local_dir):
    from compactlm.cloud import lepton_executor

    return lepton_executor(conf, run, stage, packager(conf, run, local_dir))


def check_credentials(conf: CompactLMConfig) -> None:
    """Before anything is written or submitted: the credentials a cluster needs are in the environment (only
    their variable names are in the config)."""
    from compactlm.config import ConfigError

    if conf.cluster.executor != "dgxc":
        return  # Lepton: leptonai's own login (`lep login` or LEPTON_WORKSPACE_ID/_TOKEN) answers at submission
    d = conf.cluster.dgxc
    missing = [name for name in (d.client_id_env, d.client_secret_env) if not os.environ.get(name)]
    if missing:
        raise ConfigError(f"cluster=dgxc needs the Run:ai application's client id and secret in the environment: "
                          f"export {' and '.join('$' + m for m in missing)} (cluster.dgxc.client_id_env / "
                          "client_secret_env name the variables; the values never go in the config)")


def describe_executor(conf: CompactLMConfig) -> str:
    """What `dryrun=true` prints about where the tasks run (the generated scripts or specs follow it)."""
    c = conf.cluster
    where = {
        "local": "NeMo-Run LocalExecutor: stages run one after another on this machine",
        "slurm": f"NeMo-Run SlurmExecutor: one sbatch job per stage, chained with afterok "
                 f"(account {c.slurm.account}, partition {c.slurm.partition or 'default'}, tunnel {c.slurm.tunnel})",
        "dgxc": f"NeMo-Run DGXCloudExecutor: one Run:ai workload per stage, each submitted after the one before "
                f"succeeded ({c.dgxc.base_url}, project {c.dgxc.project_name}; credentials from "
                f"${c.dgxc.client_id_env} and ${c.dgxc.client_secret_env}; code from the image's {IMAGE_CODE_DIR})",
        "lepton": f"NeMo-Run LeptonExecutor: one DGX Cloud Lepton job per stage, each submitted after the one before "
                  f"succeeded (node group {c.lepton.node_group}, shape {c.lepton.resource_shape}; credentials from "
                  f"`lep login` or $LEPTON_WORKSPACE_ID/$LEPTON_WORKSPACE_TOKEN; code from the image's {IMAGE_CODE_DIR})",
    }[c.executor]
    env = " ".join(f"{k}={v}" for k, v in stage_env(conf, remote=c.executor != "local").items() if k != "PATH")
    lines = [f"{where} (cluster={c.name})", f"  env: {env}"]
    for stage in conf.recipe.stages:
        nodes, nproc, gpus = c.nodes_for(stage), stage_processes(conf, stage), stage_gpus(conf, stage)
        launch = f"torchrun {nodes} node(s) x {nproc} process(es)" if nodes > 1 or nproc > 1 else "python"
        image = stage_image(conf, stage) if c.executor != "local" else None
        lines.append(f"  {stage:<10} {launch}, {gpus} GPU(s)/node" + (f", image {image}" if image else ""))
    return "\n".join(lines)


def render_submission(conf: CompactLMConfig, local_dir: Path) -> list[tuple[str, str]]:
    """(stage, what would be submitted) for `dryrun=true`: command lines, sbatch scripts or job specs.

    Rendered by NeMo-Run's own dry run in a temporary folder, so the text is what a real submission
    writes; nothing is contacted and the run folder is not touched.
    """
    import contextlib
    import copy
    import io
    import tempfile

    from compactlm.launcher import build_experiment, resolved_yaml

    if conf.cluster.executor == "local":
        lines = []
        for stage in conf.recipe.stages:
            path, args = stage_args(conf, stage, local_dir / CONFIG_FILE)
            lines.append((stage, " ".join(["python", path, *args])))
        return lines
    saved, stdin = os.environ.get("NEMORUN_HOME"), sys.stdin
    sys.stdin = io.StringIO()  # NeMo-Run's shell calls (invoke) must not wait on, or read, our stdin
    conf = copy.deepcopy(conf)
    out = []
    # NeMo-Run's console chatter (entering experiment, launcher notes) is not part of the answer.
    with tempfile.TemporaryDirectory(prefix="compactlm-dryrun-") as tmp, contextlib.redirect_stdout(io.StringIO()):
        tmp_dir = Path(tmp) / conf.run_name
        tmp_dir.mkdir()
        (tmp_dir / CONFIG_FILE).write_text(resolved_yaml(conf))
        try:
            exp = build_experiment(conf, tmp_dir)
            with exp:
                exp.dryrun(log=False, delete_exp_dir=False)
                for stage, job in zip(conf.recipe.stages, exp.jobs):
                    out.append((stage, _rendered(conf, job).replace(str(tmp_dir), str(local_dir))))
        finally:
            sys.stdin = stdin
            if saved is None:
                os.environ.pop("NEMORUN_HOME", None)
            else:
                os.environ["NEMORUN_HOME"] = saved
    return out


def _rendered(conf: CompactLMConfig, job) -> str:
    if conf.cluster.executor == "slurm":
        return Path(job.executor.experiment_dir, f"{job.executor.job_name}_sbatch.sh").read_text()
    from compactlm.cloud import rendered_spec

    return rendered_spec(conf, job)
