"""`cluster=` -> NeMo-Run executors, one per stage, and the experiment that chains them. Plain objects,
separate from the tasks they run.

Resources per stage (resources.py): model and data run on one node without GPUs; importance, prune, quantize,
evaluate and bench on one GPU; distill on every node of the cluster with one torchrun process per GPU; deploy on
one GPU in the TensorRT-LLM image. `cluster.stage_nodes` overrides the node count of any stage.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import sys
import tempfile
from pathlib import Path

import nemo_run as run

from compactlm.config import ConfigError
from compactlm.launch.cloud import SlurmJobExecutor, dgxc_executor, lepton_executor, rendered_spec, use_home
from compactlm.launch.records import CONFIG_FILE, REPO, nemorun_home, resolved_yaml
from compactlm.launch.resources import (
    CLOUD_EXECUTORS,
    IMAGE_CODE_DIR,
    PACKAGED,
    STAGE_MODULE,
    container_mounts,
    stage_args,
    stage_env,
    stage_gpus,
    stage_image,
    stage_processes,
)
from compactlm.launch.shell import shell_quote
from compactlm.manifest import atomic_write_text
from compactlm.pipeline import CONFIG_ERROR, Task, run_tasks
from compactlm.run_config import CompactLMConfig


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
    return run.PatternPackager(include_pattern=patterns, relative_path=relative)


def make_executor(conf: CompactLMConfig, run, task: Task, local_dir: Path):
    """The executor for `task` on `conf.cluster`; `run` is the imported nemo_run module."""
    builder = {"local": _local, "slurm": _slurm, "dgxc": _dgxc, "lepton": _lepton}[conf.cluster.executor]
    executor = builder(conf, run, task, local_dir)
    if stage_processes(conf, task) > 1 or conf.cluster.nodes_for(task.stage) > 1:
        executor.launcher = "torchrun"
    return executor


def _local(conf, run, task, local_dir):
    return run.LocalExecutor(
        ntasks_per_node=stage_processes(conf, task), packager=packager(conf, run, local_dir), env_vars=stage_env(conf)
    )


def _slurm(conf, run, task, local_dir):
    c, s = conf.cluster, conf.cluster.slurm
    if s.tunnel == "ssh":
        tunnel = run.SSHTunnel(
            host=s.host, user=s.user or os.environ.get("USER", ""), job_dir=s.job_dir, identity=s.identity
        )
    else:
        tunnel = run.LocalTunnel(job_dir=s.job_dir or "")
    image = stage_image(conf, task)
    gpus = stage_gpus(conf, task)
    # NeMo-Run pastes the image, the mounts and the srun arguments into the srun line as they are: hand them over as
    # shell words (shell.check_shell_values refused what pyxis cannot read); the #SBATCH values it quotes itself.
    executor = SlurmJobExecutor(
        account=s.account,
        partition=s.partition,
        time=s.time,
        nodes=c.nodes_for(task.stage),
        ntasks_per_node=stage_processes(conf, task),
        gpus_per_node=gpus or None,
        cpus_per_task=s.cpus_per_task,
        mem=s.mem,
        qos=s.qos,
        constraint=s.constraint,
        exclusive=True if s.exclusive else None,
        signal=f"USR1@{s.signal_before_limit}" if s.signal_before_limit else None,
        container_image=shell_quote(image) if image else None,
        container_mounts=[shell_quote(m) for m in container_mounts(conf)] if image else [],
        setup_lines="\n".join(s.setup_lines) or None,
        srun_args=[shell_quote(a) for a in s.srun_args] or None,
        job_name_prefix="compactlm-",
        tunnel=tunnel,
        stage_env={
            **stage_env(conf, remote=True),
            "COMPACTLM_NO_REQUEUE": f"{task.folder(conf.run_dir)}/{CONFIG_ERROR}",
        },
        packager=packager(conf, run, local_dir),
        # a stage that failed for good cancels the stages waiting on it (afterok); without this they stay
        # PENDING (DependencyNeverSatisfied) forever and the launcher, which waits for every job, with them
        additional_parameters={"kill_on_invalid_dep": "yes"},
    )
    executor.retries = s.max_retries
    return executor


def _dgxc(conf, run, task, local_dir):
    return dgxc_executor(conf, run, task, packager(conf, run, local_dir))


def _lepton(conf, run, task, local_dir):
    return lepton_executor(conf, run, task, packager(conf, run, local_dir))


def check_credentials(conf: CompactLMConfig) -> None:
    """Before anything is written or submitted: the credentials a cluster needs are in the environment (only
    their variable names are in the config)."""
    if conf.cluster.executor != "dgxc":
        return  # Lepton: leptonai's own login (`lep login` or LEPTON_WORKSPACE_ID/_TOKEN) answers at submission
    d = conf.cluster.dgxc
    missing = [name for name in (d.client_id_env, d.client_secret_env) if not os.environ.get(name)]
    if missing:
        raise ConfigError(
            f"cluster=dgxc needs the Run:ai application's client id and secret in the environment: "
            f"export {' and '.join('$' + m for m in missing)} (cluster.dgxc.client_id_env / "
            "client_secret_env name the variables; the values never go in the config)"
        )


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
    env = stage_env(conf, remote=c.executor != "local")
    env = " ".join(f"{k}={shell_quote(v)}" for k, v in env.items() if k != "PATH")
    lines = [f"{where} (cluster={c.name})", f"  env: {env}"]
    for task in run_tasks(conf):
        nodes, nproc, gpus = c.nodes_for(task.stage), stage_processes(conf, task), stage_gpus(conf, task)
        launch = f"torchrun {nodes} node(s) x {nproc} process(es)" if nodes > 1 or nproc > 1 else "python"
        image = stage_image(conf, task) if c.executor != "local" else None
        lines.append(f"  {task.name:<10} {launch}, {gpus} GPU(s)/node" + (f", image {image}" if image else ""))
    return "\n".join(lines)


def render_submission(conf: CompactLMConfig, local_dir: Path) -> list[tuple[str, str]]:
    """(stage, what would be submitted) for `dryrun=true`: command lines, sbatch scripts or job specs.

    Rendered by NeMo-Run's own dry run in a temporary folder, so the text is what a real submission
    writes; nothing is contacted and the run folder is not touched.
    """
    if conf.cluster.executor == "local":
        lines = []
        for task in run_tasks(conf):
            args = stage_args(conf, task, local_dir / CONFIG_FILE)
            lines.append((task.name, " ".join(map(shell_quote, ["python", "-m", STAGE_MODULE, *args]))))
        return lines
    saved, stdin = os.environ.get("NEMORUN_HOME"), sys.stdin
    sys.stdin = io.StringIO()  # NeMo-Run's shell calls (invoke) must not wait on, or read, our stdin
    conf = copy.deepcopy(conf)
    out = []
    # NeMo-Run's console chatter (entering experiment, launcher notes) is not part of the answer.
    with tempfile.TemporaryDirectory(prefix="compactlm-dryrun-") as tmp, contextlib.redirect_stdout(io.StringIO()):
        tmp_dir = Path(tmp) / conf.run_name
        tmp_dir.mkdir()
        atomic_write_text(tmp_dir / CONFIG_FILE, resolved_yaml(conf))
        try:
            exp = build_experiment(conf, tmp_dir)
            with exp:
                exp.dryrun(log=False, delete_exp_dir=False)
                for task, job in zip(run_tasks(conf), exp.jobs):
                    out.append((task.name, _rendered(conf, job).replace(str(tmp_dir), str(local_dir))))
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
    return rendered_spec(conf, job)


def build_experiment(conf: CompactLMConfig, local_dir: Path):
    """A NeMo-Run Experiment with one `run.Script` task per task of the run (`run_tasks`), each run as
    `python -m compactlm.run <stage> ...` and depending on the tasks in its `depends_on` (every task of the stage
    before), so the search candidates depend only on the shared stages and run side by side where the executor
    can (Slurm: one job each; the clouds: submitted together). On this machine `search.parallel` bounds how many
    run at once: an instance i also waits for instance i - parallel of the same stage."""
    use_home(nemorun_home(local_dir))
    exp = run.Experiment(conf.run_name, log_level="WARN")
    with exp:
        job_ids: dict[Task, str] = {}
        for task in run_tasks(conf):
            after = [job_ids[dep] for dep in task.depends_on]
            siblings = [t for t in job_ids if t.stage == task.stage]  # earlier instances of the same stage
            if conf.cluster.executor == "local" and task.instance is not None and len(siblings) >= conf.search.parallel:
                after.append(job_ids[siblings[len(siblings) - conf.search.parallel]])
            script = run.Script(
                path=STAGE_MODULE, m=True, entrypoint="python", args=stage_args(conf, task, local_dir / CONFIG_FILE)
            )
            job_ids[task] = exp.add(
                script,
                executor=make_executor(conf, run, task, local_dir),
                name=task.name,
                tail_logs=not conf.cluster.detach,
                dependencies=after or None,
            )
    return exp
