"""`cluster=dgxc` (DGX Cloud, NVIDIA Run:ai) and `cluster=dgx_h200` (DGX Cloud Lepton): NeMo-Run's executors, fixed.

Every change compactlm makes to NeMo-Run lives in this module, and it is written against NeMo-Run 0.11.1:
importing it with another version stops with a message (NEMO_RUN_VERSION) instead of running patches on code
they were not written for.

NeMo-Run 0.11.1's `DGXCloudExecutor` and `LeptonExecutor` are used as they are, through two subclasses that fix
what a compactlm run needs:

- Credentials never enter anything NeMo-Run writes. `DGXCloudExecutor` keeps `client_secret` as a field, so it
  lands in `configs/<task>_executor.yaml`, `_TASKS`, `.dgx_jobs.json`, the copy of the job folder on the PVC and
  the dry-run text. `RunAIExecutor` holds only the NAMES of two environment variables and reads them each time
  it asks for a token (submission and every status poll). Lepton credentials stay with leptonai (`lep login` or
  LEPTON_WORKSPACE_ID / LEPTON_WORKSPACE_TOKEN), as in NeMo-Run.
- Each stage runs its own command. NeMo-Run renders every DGX task's script into one shared
  `<experiment_dir>/torchrun_job.sh`, so every task ran the last task's command; here each task renders into
  its own job folder.
- A stage is submitted only after the one before it succeeded (NeMo-Run waits for it, then submits the next
  stage whatever its outcome); a stage that is not submitted reports CANCELLED.
- `cancel` suspends the Run:ai workload (POST .../suspend; NeMo-Run sent GET, which the API does not define),
  and the job's shell script keeps the stage's exit status (`set -o pipefail` in front of NeMo-Run's `| tee`).
- Values reach the scripts quoted (`compactlm.launch.shell.shell_quote`): NeMo-Run writes `export K=<value>` and
  (Slurm) the whole srun line verbatim; `SlurmJobExecutor` keeps the stage environment, which NeMo-Run would
  macro-substitute in place, and the sbatch and DGX Cloud scripts are rendered with the values quoted.
- Lepton's launch script sets torchrun's rendezvous (NODE_RANK, MASTER_ADDR, MASTER_PORT) from the job's
  environment itself, as leptonai/scripts' `lepton_env_to_pytorch.sh` does, instead of downloading that
  script from GitHub at run time.

What travels with each stage is its job folder: the run's config.yaml (as `code/config.yaml`) and NeMo-Run's
scripts, a few KB that one busybox workload copies onto the cluster's storage. The compactlm code is the one
installed in the container image (containers/train.Dockerfile, `/opt/compactlm`): shipping the working tree
through the APIs' 10,000-character command arguments would take one Run:ai workload per file.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import sys
import time
import types
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import nemo_run.core.execution.lepton as nemo_lepton
import requests
from leptonai.api.v1.types.common import Metadata
from leptonai.api.v1.types.dedicated_node_group import DedicatedNodeGroup, Node
from leptonai.api.v1.types.job import LeptonJobState
from nemo_run.config import get_nemorun_home, set_nemorun_home
from nemo_run.core.execution.dgxcloud import DGXCloudExecutor, DGXCloudRequest, DGXCloudState
from nemo_run.core.execution.lepton import LeptonExecutor
from nemo_run.core.execution.slurm import SlurmBatchRequest, SlurmExecutor
from nemo_run.run.experiment import Experiment
from nemo_run.run.torchx_backend.schedulers import api as schedulers_api
from nemo_run.run.torchx_backend.schedulers import dgxcloud as dgx_scheduler
from nemo_run.run.torchx_backend.schedulers import lepton as lepton_scheduler
from nemo_run.run.torchx_backend.schedulers import local as local_scheduler
from nemo_run.run.torchx_backend.schedulers import slurm as slurm_scheduler

from compactlm.launch.records import CONFIG_FILE
from compactlm.launch.resources import stage_env, stage_gpus, stage_image, stage_processes
from compactlm.launch.shell import shell_quote
from compactlm.manifest import atomic_write_text
from compactlm.pipeline import Task
from compactlm.run_config import CompactLMConfig

log = logging.getLogger(__name__)
NEMO_RUN_VERSION = "0.11.1"
if importlib.metadata.version("nemo_run") != NEMO_RUN_VERSION:
    raise ImportError(
        f"compactlm's NeMo-Run fixes (compactlm.launch.cloud) are written for nemo_run=={NEMO_RUN_VERSION}, "
        f"but {importlib.metadata.version('nemo_run')} is installed: pip install nemo-run=={NEMO_RUN_VERSION}"
    )
# Job id recorded for a stage that was not submitted because the stage before it did not succeed.
NOT_SUBMITTED = "not-submitted-"
# Where the NeMo-Run scheduler keeps the per-task script: the task's own job folder (see RunAIExecutor.assign).
TORCHRUN_SCRIPT = "torchrun_job.sh"
# Tokens are short-lived: a failed request is retried a few times, then the stage reports it.
TOKEN_ATTEMPTS = 3
HTTP_TIMEOUT = 60


def k8s_name(name: str) -> str:
    """Workload/job names must be DNS labels; Run:ai and Lepton accept up to 34 characters here."""
    return name.replace("_", "-").replace(".", "-").lower()[:34]


def _say(message: str) -> None:
    print(f"compactlm: {message}", file=sys.stderr, flush=True)


def _recorded_job_id(records: str, experiment_id: str, stage: str) -> Optional[str]:
    """The scheduler's job id of `stage` in this experiment, from NeMo-Run's job records (.dgx_jobs.json ...)."""
    if not os.path.isfile(records):
        return None
    with open(records) as f:
        try:
            data = json.load(f)
        except ValueError:
            return None
    prefix = f"{experiment_id}___{stage}___"
    for app_id, info in data.items():
        if app_id.startswith(prefix):
            return (info.get("job_id") if isinstance(info, dict) else None) or app_id.split("___")[-1]
    return None


# ------------------------------------------------------------------------------------------ DGX Cloud (Run:ai)
@dataclass(kw_only=True)
class RunAIExecutor(DGXCloudExecutor):
    """NeMo-Run's `DGXCloudExecutor` without credentials in it (see the module docstring for the other fixes)."""

    client_id: str = ""
    """Unused: the value is read from the environment variable `client_id_env` when a token is needed."""
    client_secret: str = ""
    """Unused: the value is read from the environment variable `client_secret_env` when a token is needed."""
    client_id_env: str = "RUNAI_CLIENT_ID"
    client_secret_env: str = "RUNAI_CLIENT_SECRET"
    after: str = ""
    """Task id of the stage that must have succeeded before this one is submitted ('' for the first)."""
    poll_seconds: float = 10.0
    """Seconds between status polls of the data-mover workspace."""

    def assign(self, exp_id: str, exp_dir: str, task_id: str, task_dir: str):
        super().assign(exp_id, exp_dir, task_id, task_dir)
        # NeMo-Run's scheduler writes each task's script to `experiment_dir/torchrun_job.sh` at dry run and runs
        # that path at launch: one shared file, so every task ran the command of the task rendered last. The
        # task's own folder (which exists by then: the task's configs are written there first) keeps them apart.
        self.experiment_dir = self.job_dir

    def get_auth_token(self) -> Optional[str]:
        client_id, secret = os.environ.get(self.client_id_env), os.environ.get(self.client_secret_env)
        if not client_id or not secret:
            log.error("$%s and $%s must be set to get a Run:ai token", self.client_id_env, self.client_secret_env)
            return None
        payload = {"grantType": "client_credentials", "clientId": client_id, "clientSecret": secret}
        for attempt in range(TOKEN_ATTEMPTS):
            try:
                reply = requests.post(
                    f"{self.base_url}/token", json=payload, headers=self._default_headers(), timeout=HTTP_TIMEOUT
                )
            except requests.RequestException as e:
                log.warning("Run:ai token request failed (%s), attempt %d", type(e).__name__, attempt + 1)
                time.sleep(min(2.0 * (attempt + 1), 10))
                continue
            if reply.ok:
                return reply.json().get("accessToken")
            log.error(
                "Run:ai refused the credentials in $%s/$%s: HTTP %d",
                self.client_id_env,
                self.client_secret_env,
                reply.status_code,
            )
            return None
        return None

    def launch_script(self, cmd: list[str]) -> str:
        """The workload's command file: NeMo-Run's, with the stage's exit status kept through `| tee`."""
        d = self.pvc_job_dir
        q = shell_quote
        return (
            f"\nset -o pipefail\nln -s {q(d + '/')} /nemo_run\ncd /nemo_run/code\nmkdir -p {q(d + '/logs')}\n"
            f"{' '.join(map(q, cmd))} 2>&1 | tee -a {q(d + '/log_')}$HOSTNAME.out {q(d + '/log-allranks_0.out')}\n"
        )

    def workload(self, name: str, project_id: str, cluster_id: str) -> tuple[str, dict]:
        """(kind, body) of the POST /workloads/<kind> request: a training on one node, distributed on several."""
        spec = {
            "command": f"/bin/bash {shell_quote(self.pvc_job_dir + '/launch_script.sh')}",
            "image": self.container_image,
            "compute": {"gpuDevicesRequest": self.gpus_per_node, "largeShmRequest": True},
            "storage": {"pvc": self.pvcs},
            "environmentVariables": [{"name": k, "value": v} for k, v in self.env_vars.items()],
            **self.custom_spec,
        }
        kind = "trainings"
        if self.nodes > 1:
            kind = "distributed"
            spec.update(
                distributedFramework=self.distributed_framework,
                minReplicas=self.nodes,
                maxReplicas=self.nodes,
                numWorkers=self.nodes,
            )
        body = {
            "name": k8s_name(name),
            "useGivenNameAsPrefix": True,
            "projectId": project_id,
            "clusterId": cluster_id,
            "spec": spec,
        }
        return kind, body

    def launch(self, name: str, cmd: list[str]) -> tuple[str, str]:
        name = k8s_name(name)
        blocked = self._blocked_by()
        if blocked:
            _say(f"stage {self.job_name!r} not submitted: stage {self.after!r} ended {blocked}")
            return NOT_SUBMITTED + name, DGXCloudState.STOPPED.value
        token = self.get_auth_token()
        if not token:
            raise RuntimeError(
                f"no Run:ai token from {self.base_url}/token: check ${self.client_id_env} and ${self.client_secret_env}"
            )
        project_id, cluster_id = self.get_project_and_cluster_id(token)
        if not project_id or not cluster_id:
            raise RuntimeError(
                f"Run:ai project {self.project_name!r} not found at {self.base_url} (cluster.dgxc.project_name)"
            )
        # cmd is ["bash", "<job_dir>/torchrun_job.sh"]: the same file, seen from the pods.
        cmd = [c.replace(self.job_dir, self.pvc_job_dir) for c in cmd]
        atomic_write_text(Path(self.job_dir, "launch_script.sh"), self.launch_script(cmd))
        if not self.launched_from_cluster:
            self.move_data(token, project_id, cluster_id, sleep=self.poll_seconds)
        kind, body = self.workload(name, project_id, cluster_id)
        reply = requests.post(
            f"{self.base_url}/workloads/{kind}",
            json=body,
            headers=self._default_headers(token=token),
            timeout=HTTP_TIMEOUT,
        )
        if reply.status_code not in (200, 202):
            raise RuntimeError(
                f"Run:ai refused the {kind} workload of stage {self.job_name!r}: "
                f"HTTP {reply.status_code} {reply.text[:500]}"
            )
        data = reply.json()
        return data["workloadId"], data.get("actualPhase", DGXCloudState.CREATING.value)

    def _blocked_by(self) -> Optional[str]:
        """The state of a task of the previous stage that did not succeed, else None."""
        return _blocker(
            self.after, self._any_status, DGXCloudState.COMPLETED, dgx_scheduler.DGX_JOB_DIRS, self.experiment_id
        )

    def _any_status(self, job_id: str) -> Optional[DGXCloudState]:
        """The phase of a workload of any kind (GET /workloads/<id>); `status` asks the endpoint of this
        executor's own kind, which differs from the previous stage's when their node counts differ."""
        if job_id.startswith(NOT_SUBMITTED):
            return DGXCloudState.STOPPED
        token = self.get_auth_token()
        if not token:
            return None
        reply = requests.get(
            f"{self.base_url}/workloads/{job_id}", headers=self._default_headers(token=token), timeout=HTTP_TIMEOUT
        )
        phase = reply.json().get("phase") if reply.ok else None
        return DGXCloudState(phase) if phase in DGXCloudState._value2member_map_ else None

    def status(self, job_id: str) -> Optional[DGXCloudState]:
        if job_id.startswith(NOT_SUBMITTED):
            return DGXCloudState.STOPPED
        return super().status(job_id)

    def cancel(self, job_id: str):
        """Suspend the workload (Run:ai: POST /workloads/<kind>/<id>/suspend); it then reports Stopped."""
        if job_id.startswith(NOT_SUBMITTED):
            return
        token = self.get_auth_token()
        if not token:
            raise RuntimeError(
                f"cannot cancel {job_id}: no Run:ai token (check ${self.client_id_env} and ${self.client_secret_env})"
            )
        kind = "distributed" if self.nodes > 1 else "trainings"
        reply = requests.post(
            f"{self.base_url}/workloads/{kind}/{job_id}/suspend",
            headers=self._default_headers(token=token),
            timeout=HTTP_TIMEOUT,
        )
        if not reply.ok:
            raise RuntimeError(f"Run:ai did not suspend workload {job_id}: HTTP {reply.status_code} {reply.text[:300]}")
        log.info("suspended Run:ai workload %s", job_id)

    def fetch_logs(
        self, job_id: str, stream: bool, stderr: Optional[bool] = None, stdout: Optional[bool] = None
    ) -> Iterable[str]:
        # NeMo-Run's version polls until the workload ends and then tails files this machine cannot see.
        return [
            f"Run:ai workload {job_id}: its logs are in the Run:ai UI and in log_*.out of the stage's job "
            f"folder on the PVC (under {self.pvc_nemo_run_dir})"
        ]


# ---------------------------------------------------------------------------------------- DGX Cloud Lepton
# leptonai/scripts lepton_env_to_pytorch.sh (what NeMo-Run downloads at run time), inlined: torchrun's
# node rank and rendezvous address from the variables Lepton sets in every replica.
LEPTON_RENDEZVOUS = (
    "export MASTER_ADDR=${LEPTON_JOB_NAME}-0.${LEPTON_JOB_NAME}-job-svc.ws-${LEPTON_WORKSPACE_ID}.svc.cluster.local\n"
    "export MASTER_PORT=29400\n"
    "export NODE_RANK=${LEPTON_JOB_WORKER_INDEX}\n"
)


@dataclass(kw_only=True)
class LeptonJobExecutor(LeptonExecutor):
    """NeMo-Run's `LeptonExecutor`, with stage gating and no download in the launch script."""

    after: str = ""
    """Task id of the stage that must have succeeded before this one is submitted ('' for the first)."""
    poll_seconds: float = 5.0
    """Seconds between status polls of the data-mover job."""

    def launch_script(self, cmd: list[str]) -> str:
        pre = "".join(f"{c}\n" for c in self.pre_launch_commands)
        # `cmd` is NeMo-Run's rendered command (torchrun's arguments already quoted, its $NODE_RANK... left to expand)
        return (
            f"\n{pre}{LEPTON_RENDEZVOUS}ln -s {shell_quote(self.lepton_job_dir + '/')} /nemo_run\n"
            f"cd /nemo_run/code\n{' '.join(cmd)}\n"
        )

    def launch(self, name: str, cmd: list[str]) -> tuple[str, str]:
        self._validate_mounts()
        name = k8s_name(name)
        blocked = self._blocked_by()
        if blocked:
            _say(f"stage {self.job_name!r} not submitted: stage {self.after!r} ended {blocked}")
            return NOT_SUBMITTED + name, LeptonJobState.Stopped
        atomic_write_text(Path(self.job_dir, "launch_script.sh"), self.launch_script(cmd))
        self.move_data(poll_interval=self.poll_seconds)
        job = self.create_lepton_job(name)
        if not job or not job.metadata.id_:
            raise RuntimeError(f"DGX Cloud Lepton did not create the job of stage {self.job_name!r}")
        return job.metadata.id_, self.status(job.metadata.id_)

    def _blocked_by(self) -> Optional[str]:
        return _blocker(
            self.after, self.status, LeptonJobState.Completed, lepton_scheduler.LEPTON_JOB_DIRS, self.experiment_id
        )

    def status(self, job_id: str) -> Optional[LeptonJobState]:
        if job_id.startswith(NOT_SUBMITTED):
            return LeptonJobState.Stopped
        return super().status(job_id)

    def cancel(self, job_id: str):
        if not job_id.startswith(NOT_SUBMITTED):
            super().cancel(job_id)


# ------------------------------------------------------------------------------------------------ builders
# NeMo-Run's sbatch template requeues a job on ANY non-zero exit. A stage that stopped on a configuration error
# leaves CONFIG_ERROR in its folder (compactlm.pipeline), named by $COMPACTLM_NO_REQUEUE: requeueing it would only
# fail again, max_retries times. Preemption, the time limit and node failures still requeue.
_REQUEUE = '''    if [ "$TORCHX_MAX_RETRIES" -gt "${SLURM_RESTART_COUNT:-0}" ]; then
        scontrol requeue "$SLURM_JOB_ID"'''
_REQUEUE_UNLESS_CONFIG_ERROR = '''    if [ -n "${COMPACTLM_NO_REQUEUE:-}" ] && [ -f "$COMPACTLM_NO_REQUEUE" ]; then
        echo "configuration error ($COMPACTLM_NO_REQUEUE): not requeued"
    elif [ "$TORCHX_MAX_RETRIES" -gt "${SLURM_RESTART_COUNT:-0}" ]; then
        scontrol requeue "$SLURM_JOB_ID"'''
_materialize = SlurmBatchRequest.materialize


@dataclass(kw_only=True)
class SlurmJobExecutor(SlurmExecutor):
    """NeMo-Run's `SlurmExecutor`, whose sbatch script carries every value compactlm gives it quoted.

    NeMo-Run 0.11.1 pastes `export K=<value>`, the container image, the mounts and the srun arguments into the
    script as they are (its srun line means to quote, but its `noquote` type is plain `str`, so nothing is), and it
    substitutes its `$`-macros in `env_vars` in place each time it renders (`$$` becomes `$`). compactlm hands it
    the image, mounts and srun arguments already quoted (`executors._slurm`) and keeps the environment here; the
    script is rendered with the environment quoted (`_materialize_sbatch`)."""

    stage_env: dict[str, str] = field(default_factory=dict)
    """The stage's environment exactly as compactlm sets it (NeMo-Run's own `env_vars` stays empty)."""


def _materialize_sbatch(self) -> str:
    """NeMo-Run's sbatch script with the environment quoted by `shell_quote` and no requeue after a configuration
    error (see _REQUEUE_UNLESS_CONFIG_ERROR)."""
    ex = self.executor
    saved = ex.env_vars, self.extra_env
    env = ex.stage_env if isinstance(ex, SlurmJobExecutor) else ex.env_vars
    # NeMo-Run writes `export {KEY}={value}` verbatim: hand it the values as shell words, for this rendering only
    ex.env_vars = {k: shell_quote(v) for k, v in env.items()}
    self.extra_env = {k: shell_quote(v) for k, v in self.extra_env.items()}  # NeMo-Run's own (LOGLEVEL=INFO)
    try:
        text = _materialize(self)
    finally:
        ex.env_vars, self.extra_env = saved
    if _REQUEUE not in text:
        raise RuntimeError(
            "NeMo-Run's sbatch template changed: compactlm's no-requeue-on-configuration-error fix "
            f"(compactlm.launch.cloud) no longer applies; it is written for nemo_run=={NEMO_RUN_VERSION}"
        )
    return text.replace(_REQUEUE, _REQUEUE_UNLESS_CONFIG_ERROR)


SlurmBatchRequest.materialize = _materialize_sbatch
_materialize_dgxc = DGXCloudRequest.materialize


def _materialize_dgxc_quoted(self) -> str:
    """NeMo-Run's DGX Cloud entry script (torchrun_job.sh), whose `export {KEY}={value}` lines it writes verbatim,
    rendered with the values quoted by `shell_quote`."""
    ex = self.executor
    saved = ex.env_vars, self.extra_env
    ex.env_vars = {k: shell_quote(v) for k, v in ex.env_vars.items()}
    self.extra_env = {k: shell_quote(v) for k, v in self.extra_env.items()}
    try:
        return _materialize_dgxc(self)
    finally:
        ex.env_vars, self.extra_env = saved


DGXCloudRequest.materialize = _materialize_dgxc_quoted


def use_home(home: str | Path) -> None:
    """Make NeMo-Run keep its records under `home` (a run folder's nemorun/) from now on in this process.

    NeMo-Run reads NEMORUN_HOME once, and its scheduler modules fix their job-record files from it when they are
    first imported; compactlm imports NeMo-Run before it knows the run folder, so every such path is re-pointed.
    """
    home = str(home)
    os.environ["NEMORUN_HOME"] = home
    set_nemorun_home(home)
    local_scheduler.LOCAL_JOB_DIRS = os.path.join(home, ".local_jobs.json")
    slurm_scheduler.SLURM_JOB_DIRS = os.path.join(home, ".slurm_jobs")
    register()


def register() -> None:
    """Make NeMo-Run accept the subclasses (it looks executors up by exact class) and point its job records
    at the current NEMORUN_HOME (its scheduler modules fix those paths when first imported)."""
    tables = ("_PARALLEL_SUPPORTED_EXECUTORS", "_DETACH_SUPPORTED_EXECUTORS")
    for cls, scheduler, extra in (
        (RunAIExecutor, "dgx_cloud", ()),
        (LeptonJobExecutor, "lepton", ()),
        (SlurmJobExecutor, "slurm_tunnel", ("_DEPENDENCY_SUPPORTED_EXECUTORS",)),
    ):
        schedulers_api.EXECUTOR_MAPPING[cls] = scheduler
        for table in (*tables, *extra):
            if cls not in getattr(Experiment, table):
                setattr(Experiment, table, (*getattr(Experiment, table), cls))
    home = get_nemorun_home()
    dgx_scheduler.DGX_JOB_DIRS = os.path.join(home, ".dgx_jobs.json")
    lepton_scheduler.LEPTON_JOB_DIRS = os.path.join(home, ".lepton_jobs.json")


def _blocker(after: str, state_of, completed, job_dirs: str, experiment_id: str) -> Optional[str]:
    """ "<state> (<task>)" for the first of the comma-separated tasks `after` whose job did not complete, else None."""
    for task in filter(None, after.split(",")):
        job_id = _recorded_job_id(job_dirs, experiment_id, task)
        state = state_of(job_id) if job_id else None
        if state != completed:
            return f"{state.value if state else 'without a known state'} ({task})"
    return None


def _previous(task: Task) -> str:
    """The tasks (comma-separated names) that must have succeeded before `task` is submitted: its `depends_on`."""
    return ",".join(dep.name for dep in task.depends_on)


def dgxc_executor(conf: CompactLMConfig, run, task: Task, packager) -> RunAIExecutor:
    """The Run:ai executor of `task`: its nodes, GPUs per node, image, PVCs and environment."""
    register()
    c, d = conf.cluster, conf.cluster.dgxc
    return RunAIExecutor(
        base_url=d.base_url.rstrip("/"),
        kube_apiserver_url=d.kube_apiserver_url or "",
        project_name=d.project_name,
        container_image=stage_image(conf, task),
        pvc_nemo_run_dir=d.pvc_nemo_run_dir,
        pvcs=[{"claimName": p.claim_name, "path": p.path, "existingPvc": True, "readOnly": False} for p in d.pvcs],
        nodes=c.nodes_for(task.stage),
        gpus_per_node=stage_gpus(conf, task),
        nprocs_per_node=stage_processes(conf, task),
        env_vars=stage_env(conf, remote=True),
        client_id_env=d.client_id_env,
        client_secret_env=d.client_secret_env,
        after=_previous(task),
        poll_seconds=d.poll_seconds,
        packager=packager,
    )


def lepton_shape(conf: CompactLMConfig, task: Task) -> str:
    """The stage's resource shape: the cluster's GPU with as many GPUs as the stage uses (at least one: Lepton's
    CPU shapes are too small to hold the model the CPU-only stages load)."""
    gpu = conf.cluster.lepton.resource_shape.split("x", 1)[1]
    return f"gpu.{max(stage_gpus(conf, task), 1)}x{gpu}"


def lepton_executor(conf: CompactLMConfig, run, task: Task, packager) -> LeptonJobExecutor:
    """The DGX Cloud Lepton executor of `task`: replicas, resource shape, node group, mounts and environment."""
    register()
    c, lp = conf.cluster, conf.cluster.lepton
    return LeptonJobExecutor(
        container_image=stage_image(conf, task),
        nemo_run_dir=lp.nemo_run_dir,
        nodes=c.nodes_for(task.stage),
        gpus_per_node=stage_gpus(conf, task),
        nprocs_per_node=stage_processes(conf, task),
        resource_shape=lepton_shape(conf, task),
        node_group=lp.node_group,
        mounts=[{"path": m.path, "mount_path": m.mount_path, "from": m.source} for m in lp.mounts],
        shared_memory_size=lp.shared_memory_size,
        image_pull_secrets=list(lp.image_pull_secrets),
        env_vars=stage_env(conf, remote=True),
        after=_previous(task),
        poll_seconds=lp.poll_seconds,
        packager=packager,
    )


# ------------------------------------------------------------------------------------------ dry-run text
def rendered_spec(conf: CompactLMConfig, job) -> str:
    """What submitting `job` (a NeMo-Run Job after `Experiment.dryrun`) sends, rendered without any network:
    the Run:ai workload request or the Lepton job spec as JSON, and the scripts the job folder carries."""
    if conf.cluster.executor == "dgxc":
        return _rendered_runai(conf, job)
    return _rendered_lepton(conf, job)


def _carried(executor, scripts: list[str]) -> str:
    files = sorted(
        {
            f"code/{CONFIG_FILE}",
            *scripts,
            *(str(p.relative_to(executor.job_dir)) for p in Path(executor.job_dir).rglob("*") if p.is_file()),
        }
    )
    return ", ".join(files)


def _rendered_runai(conf: CompactLMConfig, job) -> str:
    ex: RunAIExecutor = job.executor
    d = conf.cluster.dgxc
    script = Path(ex.job_dir, TORCHRUN_SCRIPT).read_text()
    launch = ex.launch_script(["bash", f"{ex.pvc_job_dir}/{TORCHRUN_SCRIPT}"])
    kind, body = ex.workload(job.id, f"<id of Run:ai project {d.project_name}>", "<its cluster id>")
    return "\n".join(
        [
            f"# 1. POST {ex.base_url}/token with ${d.client_id_env} / ${d.client_secret_env}, "
            f"GET {ex.base_url}/org-unit/projects (project {d.project_name})",
            f"# 2. a busybox workspace (POST {ex.base_url}/workloads/workspaces) copies the job folder to "
            f"{ex.pvc_job_dir}: {_carried(ex, ['launch_script.sh', TORCHRUN_SCRIPT])}",
            f"# 3. POST {ex.base_url}/workloads/{kind}" + (f"  (after stage {ex.after} succeeded)" if ex.after else ""),
            json.dumps(body, indent=2),
            f"# {ex.pvc_job_dir}/launch_script.sh",
            launch.strip(),
            f"# {ex.pvc_job_dir}/{TORCHRUN_SCRIPT}",
            script.strip(),
        ]
    )


class _OfflineLepton:
    """Stands in for leptonai's APIClient at dry run: answers the node-group look-ups with placeholders and
    keeps the job instead of POSTing it."""

    def __init__(self, node_group: str):
        group_id = f"<id of node group {node_group}>"
        self.created = []
        self.nodegroup = types.SimpleNamespace(
            list_all=lambda: [DedicatedNodeGroup(metadata=Metadata(id=group_id, name=node_group), spec={}, status={})],
            list_nodes=lambda _group: [
                Node(metadata=Metadata(id=f"<nodes of {node_group}>"), spec={"unschedulable": False}, status=None)
            ],
        )
        self.job = types.SimpleNamespace(create=lambda job: self.created.append(job) or job)


@contextlib.contextmanager
def _offline_lepton(node_group: str):
    saved = nemo_lepton.APIClient
    client = _OfflineLepton(node_group)
    nemo_lepton.APIClient = lambda: client
    try:
        yield client
    finally:
        nemo_lepton.APIClient = saved


def _rendered_lepton(conf: CompactLMConfig, job) -> str:
    ex: LeptonJobExecutor = job.executor
    with _offline_lepton(ex.node_group):
        spec = ex.create_lepton_job(k8s_name(job.id)).model_dump(exclude_none=True, by_alias=True)
    launch = ex.launch_script(job._dryrun_info.request.cmd)
    return "\n".join(
        [
            f"# 1. a busybox job (cpu.small, node group {ex.node_group}, same mounts) copies the job folder to "
            f"{ex.lepton_job_dir}: {_carried(ex, ['launch_script.sh'])}",
            "# 2. POST <workspace>/jobs"
            + (f"  (after stage {ex.after} succeeded)" if ex.after else "")
            + f"; the node group id and its node ids are looked up by name ({ex.node_group}) at submission",
            json.dumps(spec, indent=2),
            f"# {ex.lepton_job_dir}/launch_script.sh",
            launch.strip(),
        ]
    )
