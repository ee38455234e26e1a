"""Process groups and model wrapping for multi-process distillation (torchrun: DDP or FSDP2).

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; with WORLD_SIZE > 1 we join a process group (gloo on CPU,
NCCL on CUDA). Under DDP every process holds the whole student and teacher; under FSDP2 both are
sharded per decoder layer (`fully_shard`), the teacher as its own group so its frozen weights never
mix with the student's gradients.
"""

from __future__ import annotations

import inspect
import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel as DDP

from compactlm.arch import adapter_for, decoder_layers

TEACHER_PREFIX = "_teacher_model."


@dataclass
class DistEnv:
    """Where this process stands: rank, world size and its torch device."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"
    owns_group: bool = False
    """True when this module created the process group (and so destroys it)."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def shutdown(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def init_distributed(device: str) -> DistEnv:
    """Join the torchrun process group when WORLD_SIZE > 1; `device` is "cpu" or "cuda"."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    env = DistEnv(rank=rank, world=world, local_rank=local_rank, device=device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
        env.owns_group = True
    return env


def all_reduce_sum(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def broadcast_object(obj, env: DistEnv):
    """`obj` as rank 0 has it, on every rank."""
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_object(obj, env: DistEnv) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if not env.distributed:
        return [obj]
    out = [None] * env.world
    dist.all_gather_object(out, obj)
    return out


def shard_fsdp2(model: nn.Module) -> None:
    """`fully_shard` every decoder layer of a `*ForCausalLM`, then the model itself."""
    for layer in decoder_layers(model, adapter_for(model.config.model_type)):
        fully_shard(layer)
    fully_shard(model)


def _ddp(module: nn.Module, env: DistEnv) -> nn.Module:
    """DDP without per-forward buffer broadcasts (the only buffers are RoPE tables, equal on every rank)."""
    ids = [env.local_rank] if env.device.startswith("cuda") else None
    # torch 2.13 renamed broadcast_buffers (deprecated) to forward_sync_buffers.
    if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters:
        return DDP(module, device_ids=ids, forward_sync_buffers=False)
    return DDP(module, device_ids=ids, broadcast_buffers=False)


def wrap_distillation_model(dm: nn.Module, strategy: str, env: DistEnv) -> nn.Module:
    """Wrap a ModelOpt `DistillationModel` (student with its teacher inside) for `strategy`.

    Returns the module to call forward on. For world size 1 it is `dm` itself.
    DDP: the teacher's parameters and buffers are excluded from DDP's initial broadcast (they are
    frozen and loaded identically on every rank). FSDP2: student layers, teacher layers, the teacher,
    then the root are sharded bottom-up; parameters move to the process's device.
    """
    if not env.distributed:
        return dm
    if strategy == "ddp":
        frozen = [n for n, _ in dm.named_parameters() if n.startswith(TEACHER_PREFIX)]
        frozen += [n for n, _ in dm.named_buffers() if n.startswith(TEACHER_PREFIX)]
        DDP._set_params_and_buffers_to_ignore_for_model(dm, frozen)
        return _ddp(dm, env)

    teacher = dm.teacher_model
    for layer in decoder_layers(dm, adapter_for(dm.config.model_type)):
        fully_shard(layer)
    shard_fsdp2(teacher)
    fully_shard(dm)
    return dm


def wrap_student(student: nn.Module, strategy: str, env: DistEnv) -> nn.Module:
    """Wrap a plain student (teacher-cache training) for `strategy`; world size 1 returns it as is."""
    if not env.distributed:
        return student
    if strategy == "ddp":
        return _ddp(student, env)
    shard_fsdp2(student)
    return student


def no_sync(wrapped: nn.Module, sync: bool):
    """Skip DDP's gradient all-reduce on accumulation micro-batches (FSDP2 reduce-scatters every one)."""
    if sync or not hasattr(wrapped, "no_sync"):
        return nullcontext()
    return wrapped.no_sync()


def unwrap(wrapped: nn.Module) -> nn.Module:
    return getattr(wrapped, "module", wrapped) if type(wrapped).__name__ == "DistributedDataParallel" else wrapped
