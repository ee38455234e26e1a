"""The shared part of a run's typed configuration: the sections no single stage owns (cluster, engine, plan,
recipe), the run-name rule, and the helpers every stage's schema uses to refuse bad values.

Each stage's own section is a dataclass in its package's `schema.py`; the root that holds them all is
`compactlm.run_config.CompactLMConfig`, built from the stage registry. The dataclasses ARE the schema: defaults live
there, and `__post_init__` rejects bad values with a message naming the override key (`cluster.nodes=0 must be an
integer >= 1`); checks that need two sections or the file system live in each stage's `checks.py`. This module
imports neither Hydra nor torch nor any stage package, so stage code and the launcher share it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

from compactlm import stages
from compactlm.errors import ConfigError

__all__ = [
    "ConfigError",
    "check_run_name",
    "hub_id_like",
]  # ConfigError re-exported: most callers import it with the schemas


def _choice(key: str, value: Any, allowed: tuple[str, ...] | list[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of: {', '.join(allowed)}")


def _positive(key: str, value: Optional[int], minimum: int = 1) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}={value!r} must be an integer >= {minimum}")
    if value < minimum:
        raise ConfigError(f"{key}={value} must be an integer >= {minimum}")


RUN_NAME_MAX_CHARS = 100
_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_RUN_NAME_RULE = (
    f"a run name is a folder name of at most {RUN_NAME_MAX_CHARS} characters A-Z a-z 0-9 . _ -, "
    "starting with a letter or digit"
)


def check_run_name(value: str, key: str = "run_name") -> None:
    """Refuse a run name that is not a safe folder name under runs_root (`..` would write outside it, a stage's
    clean step would then delete files there); the one rule for the launcher and the run operations."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}={value!r} is empty; {_RUN_NAME_RULE}")
    if len(value) > RUN_NAME_MAX_CHARS:
        raise ConfigError(f"{key}={value[:40]!r}... is {len(value)} characters long; {_RUN_NAME_RULE}")
    if not _RUN_NAME.fullmatch(value):
        bad = next((c for c in value if not (c.isascii() and (c.isalnum() or c in "._-"))), value[0])
        raise ConfigError(f"{key}={value!r} is not allowed (character {bad!r}); {_RUN_NAME_RULE}")


# ------------------------------------------------------------------------------------------- model names
_HUB_ID = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)?")


def hub_id_like(path: str) -> bool:
    """True when `path` has the form of a Hugging Face Hub id: `name` or `org/name` of A-Z a-z 0-9 . _ -."""
    return bool(_HUB_ID.fullmatch(path)) and not any(part in (".", "..") for part in path.split("/"))


# --------------------------------------------------------------------------------------------- cluster
EXECUTORS = ("local", "slurm", "dgxc", "lepton")
TUNNELS = ("local", "ssh")
MAX_GPUS_PER_NODE = 8
# Lepton resource shapes offered on DGX Cloud Lepton for the GPUs we target (gpu.<count>x<gpu>), plus CPU shapes.
LEPTON_SHAPES = tuple(f"gpu.{n}x{g}" for g in ("h200", "h100-sxm", "b200") for n in (1, 2, 4, 8)) + (
    "cpu.small",
    "cpu.medium",
    "cpu.large",
)
_SLURM_TIME = re.compile(r"^(\d+-)?\d{1,2}(:\d{2}){0,2}$")


@dataclass
class SlurmOptions:
    """cluster.executor=slurm: sbatch options (one job per stage, chained with afterok)."""

    account: Optional[str] = None
    """Slurm account charged for the jobs (required)."""
    partition: Optional[str] = None
    """Partition; None: the cluster's default."""
    time: str = "04:00:00"
    """Time limit per stage job ([D-]HH:MM:SS)."""
    tunnel: str = "local"
    """local: submit from a login node of the cluster; ssh: submit from elsewhere through SSH."""
    host: Optional[str] = None
    """Login node for tunnel=ssh."""
    user: Optional[str] = None
    """SSH user for tunnel=ssh (None: $USER)."""
    identity: Optional[str] = None
    """Path of the SSH private key for tunnel=ssh (a path, never the key; None: ssh-agent / ~/.ssh)."""
    job_dir: Optional[str] = None
    """Where NeMo-Run puts packaged code, sbatch scripts and logs on the cluster (shared file system).
    None: <run_dir>/nemo_run (tunnel=local only)."""
    max_retries: int = 3
    """A stage that exits non-zero (preempted, time limit) is requeued up to this many times and resumes."""
    signal_before_limit: int = 120
    """Seconds before the time limit at which Slurm sends SIGUSR1; the stage checkpoints and is requeued (0: off)."""
    exclusive: bool = False
    """Request whole nodes."""
    mem: Optional[str] = None
    """Memory per node (e.g. 0 for all of it, 200G)."""
    cpus_per_task: Optional[int] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    setup_lines: list[str] = field(default_factory=list)
    """Shell lines run in the job before the stage (e.g. 'source /opt/venv/bin/activate'); not with containers."""
    srun_args: list[str] = field(default_factory=list)
    """Extra srun flags (e.g. --mpi=pmix)."""

    def check(self) -> None:
        if not self.account:
            raise ConfigError(
                "cluster.slurm.account is required for cluster.executor=slurm "
                "(the Slurm account to charge, e.g. cluster.slurm.account=my_project)"
            )
        if not _SLURM_TIME.match(self.time):
            raise ConfigError(
                f"cluster.slurm.time={self.time!r} is not a Slurm time limit; use [D-]HH:MM:SS, e.g. 04:00:00"
            )
        _choice("cluster.slurm.tunnel", self.tunnel, TUNNELS)
        if self.tunnel == "ssh":
            if not self.host:
                raise ConfigError("cluster.slurm.host is required for cluster.slurm.tunnel=ssh (the login node)")
            if not self.job_dir:
                raise ConfigError(
                    "cluster.slurm.job_dir is required for cluster.slurm.tunnel=ssh "
                    "(a folder on the cluster's shared file system)"
                )
        _positive("cluster.slurm.max_retries", self.max_retries, 0)
        _positive("cluster.slurm.signal_before_limit", self.signal_before_limit, 0)
        _positive("cluster.slurm.cpus_per_task", self.cpus_per_task)


@dataclass
class PVC:
    """A Kubernetes persistent volume claim mounted into every DGX Cloud (Run:ai) pod."""

    claim_name: Optional[str] = None
    """Name of an existing PVC of the Run:ai project (required)."""
    path: Optional[str] = None
    """Mount path inside the container (required), e.g. /workspace."""


@dataclass
class DGXCOptions:
    """cluster.executor=dgxc: DGX Cloud (Run:ai) workloads through its REST API, one per stage."""

    base_url: Optional[str] = None
    """Run:ai API root, e.g. https://<tenant>.run.ai/api/v1 (required)."""
    kube_apiserver_url: Optional[str] = None
    """Kubernetes API of the cluster (NeMo-Run asks for it; nothing compactlm does uses it)."""
    project_name: Optional[str] = None
    """Run:ai project the workloads run in (required)."""
    pvcs: list[PVC] = field(default_factory=list)
    """Volumes mounted in every pod; cluster.runs_root, cluster.cache_dir and pvc_nemo_run_dir must be on one."""
    pvc_nemo_run_dir: Optional[str] = None
    """Folder on a PVC where NeMo-Run puts each stage's job folder (run config, scripts, logs) (required)."""
    client_id_env: str = "RUNAI_CLIENT_ID"
    """Environment variable holding the Run:ai application's client id (credentials never go in the config)."""
    client_secret_env: str = "RUNAI_CLIENT_SECRET"
    """Environment variable holding the Run:ai application's client secret."""
    poll_seconds: float = 10.0
    """Seconds between status polls of the short-lived workspace that copies a job folder onto the PVC."""

    def check(self) -> None:
        for key in ("base_url", "project_name", "pvc_nemo_run_dir"):
            if not getattr(self, key):
                raise ConfigError(f"cluster.dgxc.{key} is required for cluster.executor=dgxc")
        if not self.base_url.startswith(("http://", "https://")) or not self.base_url.rstrip("/").endswith("/api/v1"):
            raise ConfigError(
                f"cluster.dgxc.base_url={self.base_url!r} must be an http(s) URL ending in /api/v1, "
                "e.g. https://<tenant>.run.ai/api/v1"
            )
        if not self.pvcs:
            raise ConfigError(
                "cluster.dgxc.pvcs is empty; mount at least the PVC holding cluster.dgxc.pvc_nemo_run_dir, "
                "e.g. cluster.dgxc.pvcs='[{claim_name: <pvc>, path: /workspace}]'"
            )
        for i, pvc in enumerate(self.pvcs):
            for key in ("claim_name", "path"):
                if not getattr(pvc, key):
                    raise ConfigError(
                        f"cluster.dgxc.pvcs.{i}.{key} is required (the PVC's name in the Run:ai project "
                        f"and its mount path), e.g. cluster.dgxc.pvcs.{i}.{key}="
                        + ("my-pvc" if key == "claim_name" else "/workspace")
                    )
            if not pvc.path.startswith("/"):
                raise ConfigError(f"cluster.dgxc.pvcs.{i}.path={pvc.path!r} must be an absolute path in the container")
        _on_mount("cluster.dgxc.pvc_nemo_run_dir", self.pvc_nemo_run_dir, self.mount_paths(), "cluster.dgxc.pvcs")
        for key in ("client_id_env", "client_secret_env"):
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", getattr(self, key)):
                raise ConfigError(
                    f"cluster.dgxc.{key}={getattr(self, key)!r} must be the NAME of an environment "
                    "variable (export the value; never put it in the config)"
                )
        if self.poll_seconds <= 0:
            raise ConfigError(f"cluster.dgxc.poll_seconds={self.poll_seconds} must be > 0")

    def mount_paths(self) -> list[str]:
        return [p.path for p in self.pvcs]


def _on_mount(key: str, path: Optional[str], mounts: list[str], mounts_key: str) -> None:
    """`path` must lie on one of the mounted volumes, else the pods cannot see it."""
    if path is None:
        return
    norm = os.path.normpath(path)
    if not path.startswith("/") or not any(
        norm == os.path.normpath(m) or norm.startswith(os.path.normpath(m).rstrip("/") + "/") for m in mounts
    ):
        raise ConfigError(
            f"{key}={path!r} is not on a mounted volume ({mounts_key} mount paths: "
            f"{', '.join(mounts) or 'none'}); the pods could not see it"
        )


@dataclass
class LeptonMount:
    """A storage volume mounted into every DGX Cloud Lepton replica."""

    path: str = MISSING
    """Path on the storage (e.g. /shared/compactlm)."""
    mount_path: str = MISSING
    """Path inside the container."""
    source: str = "node-nfs:lepton-shared-fs"
    """Lepton storage source (the job spec's 'from')."""


@dataclass
class LeptonOptions:
    """cluster.executor=lepton: DGX Cloud Lepton batch jobs (leptonai's own login: `lep login`)."""

    resource_shape: str = "gpu.8xh200"
    """Lepton resource shape per replica (gpu.<n>x<gpu>)."""
    node_group: Optional[str] = None
    """Node group (dedicated capacity) to run in (required)."""
    mounts: list[LeptonMount] = field(default_factory=list)
    """Storage mounted in every replica; the run folder and code must be on one of them."""
    nemo_run_dir: Optional[str] = None
    """Folder on a mount where NeMo-Run stores the packaged code and job files (required)."""
    shared_memory_size: int = 65536
    """/dev/shm size in MiB (NCCL and data loaders need a large one)."""
    image_pull_secrets: list[str] = field(default_factory=list)
    """Lepton secrets used to pull a private container image (names, not values)."""
    poll_seconds: float = 5.0
    """Seconds between status polls of the short-lived job that copies a job folder onto the storage."""

    def check(self) -> None:
        _choice("cluster.lepton.resource_shape", self.resource_shape, LEPTON_SHAPES)
        if self.resource_shape.startswith("cpu."):
            raise ConfigError(
                f"cluster.lepton.resource_shape={self.resource_shape}: the stages need GPUs; "
                f"choose one of: {', '.join(s for s in LEPTON_SHAPES if s.startswith('gpu.'))}"
            )
        for key in ("node_group", "nemo_run_dir"):
            if not getattr(self, key):
                raise ConfigError(
                    f"cluster.lepton.{key} is required for cluster.executor=lepton"
                    + (
                        " (the name of your dedicated node group, e.g. cluster.lepton.node_group=h200-pool)"
                        if key == "node_group"
                        else ""
                    )
                )
        if not self.mounts:
            raise ConfigError("cluster.lepton.mounts is empty; mount the storage holding cluster.lepton.nemo_run_dir")
        for i, m in enumerate(self.mounts):
            if not m.mount_path.startswith("/"):
                raise ConfigError(f"cluster.lepton.mounts.{i}.mount_path={m.mount_path!r} must be an absolute path")
        _on_mount("cluster.lepton.nemo_run_dir", self.nemo_run_dir, self.mount_paths(), "cluster.lepton.mounts")
        _positive("cluster.lepton.shared_memory_size", self.shared_memory_size)
        if self.poll_seconds <= 0:
            raise ConfigError(f"cluster.lepton.poll_seconds={self.poll_seconds} must be > 0")

    def mount_paths(self) -> list[str]:
        return [m.mount_path for m in self.mounts]

    def gpus(self) -> int:
        """GPUs per replica implied by the resource shape (0 for CPU shapes)."""
        m = re.match(r"gpu\.(\d+)x", self.resource_shape)
        return int(m.group(1)) if m else 0


# GPUs the plan knows (memory and bf16 dense peak: compactlm.launch.plan.DEVICES)
GPU_NAMES = ("h100", "h200")


@dataclass
class ClusterConfig:
    """Where the stages run: this machine, a Slurm cluster, DGX Cloud (Run:ai) or DGX Cloud Lepton."""

    name: str = MISSING
    executor: str = "local"
    """NeMo-Run executor: local, slurm, dgxc (DGX Cloud Run:ai) or lepton (DGX Cloud Lepton)."""
    nodes: int = 1
    """Nodes the multi-node stages (distill) use; every other stage runs on one node."""
    gpus_per_node: int = 0
    """GPUs per node (0 runs on CPU); distill runs one process per GPU with torchrun."""
    gpu: Optional[str] = None
    """GPU model of the nodes, for the plan's memory per GPU and hours: h100 (H100 SXM 80 GB) or h200 (H200 SXM
    141 GB); None: h100 where gpus_per_node > 0 (compactlm.launch.plan.DEVICES)."""
    stage_nodes: dict[str, int] = field(default_factory=dict)
    """Per-stage node count overriding the default (distill: all nodes, others: 1), e.g. +cluster.stage_nodes.distill=1."""
    container_image: Optional[str] = None
    """Training image for every stage but deploy (containers/train.Dockerfile); None: no container (Slurm only)."""
    deploy_image: Optional[str] = None
    """TensorRT-LLM image for the deploy stage (containers/deploy.Dockerfile)."""
    container_mounts: list[str] = field(default_factory=list)
    """src:dst mounts (Slurm/pyxis); the run folder and cache are mounted automatically."""
    runs_root: Optional[str] = None
    """runs_root on the cluster's shared file system (None: the root runs_root)."""
    cache_dir: Optional[str] = None
    """cache_dir on the cluster's shared file system (None: the root cache_dir)."""
    detach: bool = False
    """Return after submitting (follow with `launch.py status/logs`); False waits and prints the summary."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment variables for every stage (never put credentials here)."""
    slurm: SlurmOptions = field(default_factory=SlurmOptions)
    dgxc: DGXCOptions = field(default_factory=DGXCOptions)
    lepton: LeptonOptions = field(default_factory=LeptonOptions)

    def __post_init__(self) -> None:
        _choice("cluster.executor", self.executor, EXECUTORS)
        _positive("cluster.nodes", self.nodes)
        _positive("cluster.gpus_per_node", self.gpus_per_node, 0)
        if self.gpu is not None:
            _choice("cluster.gpu", self.gpu, GPU_NAMES)
        if self.gpus_per_node > MAX_GPUS_PER_NODE:
            raise ConfigError(
                f"cluster.gpus_per_node={self.gpus_per_node} exceeds {MAX_GPUS_PER_NODE}, the most GPUs "
                "one node has (DGX H100/H200/B200); use more cluster.nodes instead"
            )
        for stage, n in self.stage_nodes.items():
            _positive(f"cluster.stage_nodes.{stage}", n)
            if n > self.nodes:
                raise ConfigError(
                    f"cluster.stage_nodes.{stage}={n} asks more nodes than the cluster has (cluster.nodes={self.nodes})"
                )
        for key in self.env:
            if _looks_secret(key):
                raise ConfigError(
                    f"cluster.env.{key}: credentials must not be in the config (it is written to the "
                    "run folder); export them in the environment or use the provider's login"
                )
        if self.executor == "local":
            if self.nodes != 1:
                raise ConfigError(f"cluster.nodes={self.nodes} with cluster.executor=local: this machine is one node")
            return
        getattr(self, self.executor).check()
        if self.executor == "lepton":
            shape_gpus = self.lepton.gpus()
            if self.gpus_per_node != shape_gpus:
                raise ConfigError(
                    f"cluster.gpus_per_node={self.gpus_per_node} does not match "
                    f"cluster.lepton.resource_shape={self.lepton.resource_shape} ({shape_gpus} GPUs per replica)"
                )
        if self.executor in ("dgxc", "lepton"):
            if not self.container_image:
                raise ConfigError(
                    f"cluster.container_image is required for cluster.executor={self.executor} "
                    "(the training image, see containers/README.md)"
                )
            for key in ("container_image", "deploy_image"):
                image = getattr(self, key)
                if image and ("<" in image or ">" in image):
                    raise ConfigError(
                        f"cluster.{key}={image!r} is a placeholder: build and push "
                        f"containers/{'train' if key == 'container_image' else 'deploy'}.Dockerfile "
                        f"(containers/README.md), then set cluster.{key}=<your registry>/<image>:<tag>"
                    )
            opts = getattr(self, self.executor)
            mounts_key = "cluster.dgxc.pvcs" if self.executor == "dgxc" else "cluster.lepton.mounts"
            _on_mount("cluster.runs_root", self.runs_root, opts.mount_paths(), mounts_key)
            _on_mount("cluster.cache_dir", self.cache_dir, opts.mount_paths(), mounts_key)

    def is_remote(self) -> bool:
        """True when the stages read and write a file system that the submitting machine does not see."""
        return self.executor in ("dgxc", "lepton") or (self.executor == "slurm" and self.slurm.tunnel == "ssh")

    def nodes_for(self, stage: str) -> int:
        """Nodes each task of `stage` runs on (every instance of an instanced stage alike)."""
        return self.stage_nodes.get(stage, self.nodes if stages.get(stage).multi_node else 1)


def _looks_secret(key: str) -> bool:
    k = key.upper()
    return any(w in k for w in ("SECRET", "TOKEN", "PASSWORD", "API_KEY", "APIKEY", "CREDENTIAL")) or k.endswith("_KEY")


# ---------------------------------------------------------------------------------------------- engine
ENGINES = ("torch",)
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class EngineConfig:
    """How models are loaded and run: engine=torch uses transformers modeling code and PyTorch."""

    name: str = MISSING
    kind: str = "torch"
    device: str = "auto"
    """auto: cuda when available, else cpu."""
    dtype: str = "auto"
    """auto: bfloat16 where the hardware computes it natively (CUDA with bf16; CPUs with AMX-BF16 or AVX512-BF16),
    else float32. Frozen models are loaded in it; a trained student keeps float32 weights under autocast
    (compactlm.model.precision)."""
    threads: Optional[int] = None
    """torch.set_num_threads on CPU (None: PyTorch's default)."""

    def __post_init__(self) -> None:
        _choice("engine.kind", self.kind, ENGINES)
        _choice("engine.device", self.device, DEVICES)
        _choice("engine.dtype", self.dtype, DTYPES)
        _positive("engine.threads", self.threads)


# ------------------------------------------------------------------------------------------------ plan
@dataclass
class PlanConfig:
    """The plan printed before submission (compactlm.launch.plan): memory per GPU, disk, FLOPs and hours."""

    mfu: float = 0.40
    """Model FLOPs utilisation assumed for the hours: achieved / peak bf16 dense FLOP/s. 0.40 is the low end of
    what Megatron-Core publishes for GPT models on H100 (about 0.40-0.47); transformers modeling code under
    FSDP2 rarely does better."""
    check: bool = True
    """Refuse, before anything is submitted, a distillation that does not fit the memory of one GPU and a teacher
    cache larger than the free space of its folder; false: print the plan and submit anyway."""

    def __post_init__(self) -> None:
        if not 0 < self.mfu <= 1:
            raise ConfigError(
                f"plan.mfu={self.mfu} must be in (0, 1]: a fraction of the GPU's peak bf16 FLOP/s (0.40 = 40%)"
            )


# ---------------------------------------------------------------------------------------------- recipe
@dataclass
class RecipeConfig:
    """An ordered list of stages; each runs as `python -m compactlm.run <stage>` on the compute node."""

    name: str = MISSING
    description: str = ""
    stages: list[str] = field(default_factory=list)
    """Stage names in order; each depends on every stage before it. Empty: the recipe runs in the launcher."""
