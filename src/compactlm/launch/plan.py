"""The plan of a run, printed before anything is submitted: per stage, its processes, memory per GPU (host RAM for
a stage on CPU) broken down, disk written, FLOPs and hours; and the refusals of what cannot fit.

Submit side, no torch: it builds no model. Parameter counts come from the sizes and the architecture table
(`count_from_shape`), equal to `model.params.count_on_meta` of the built module (the tests compare them for every
architecture), so that the plan, made at every launch, costs no transformers import (the meta count made a dry run
seconds slower: 61.7 s against 33.8 s for `launch.py dryrun=true` on the loaded 2-core development machine).

Memory, in bytes, per process (= per GPU under torchrun), from what each stage's code holds at once:

- distill (`distill/train.py`): the student's float32 master weights, float32 gradients and AdamW's two float32
  states (16 bytes a parameter), the teacher in the compute dtype (bf16: 2 bytes), DDP's gradient buckets (a
  second float32 copy of the gradients), or under FSDP2 all of these divided by the world size plus the layers
  FSDP2 gathers (the root module's embedding and output layer, the current and the prefetched layer, one layer's
  unsharded gradient; the teacher's likewise); the activations the student keeps for its backward pass; the
  logits; the KL's float32 slices (`distill/losses.py`).
- Activations were measured on transformers' Llama layer with `torch.autograd.graph.saved_tensors_hooks` (every
  tensor saved for backward, counted once): per token and decoder layer, under bf16 autocast
  26·h + 4·a + 4·k + 8·f + 4·heads bytes plus a bf16 copy of the layer's weights (autocast's cast, kept for the
  backward), in float32 24·h + 8·a + 8·k + 16·f + 4·heads, with h the hidden size, a = heads × head_dim,
  k = KV heads × head_dim, f the FFN width (tests/launch/test_plan.py checks the formula against the hooks). With
  activation checkpointing a layer keeps only its float32 input (4·h) and one layer is recomputed at a time.
- Runtime: on a GPU, an allowance for the CUDA context, cuBLAS workspaces and NCCL buffers (not measured here);
  on a CPU, the resident memory of a bare `import torch, transformers` process, measured here.

FLOPs per token are `bench/flops.py`'s (PaLM's convention); hours = FLOPs / (GPUs × peak × `plan.mfu`).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from pydoc_data.topics import topics as pydoc_topics
from typing import Any

from compactlm import stages
from compactlm.arch import adapter_for
from compactlm.bench.flops import forward_flops_per_token
from compactlm.config import ConfigError
from compactlm.distill import CHUNK_ELEMENTS
from compactlm.distill.schema import DistillConfig
from compactlm.launch.resources import stage_gpus, stage_processes
from compactlm.model.precision import cpu_bf16_flags
from compactlm.pipeline import Task, run_tasks
from compactlm.prune.schema import EXPORT_TO_HF
from compactlm.run_config import CompactLMConfig

GiB = 2**30


@dataclass(frozen=True)
class Device:
    """One GPU model: its memory and peak dense bf16 matmul rate (without sparsity), from NVIDIA's datasheet."""

    name: str
    memory: int
    """Bytes of GPU memory (the datasheet's GB, 10^9 bytes: below what CUDA reports, so the plan errs safe)."""
    bf16_flops: float
    """Peak dense bf16 FLOP/s (the datasheets print the figure with sparsity, twice this)."""
    source: str


DEVICES = {
    "h100": Device(
        "H100 SXM 80 GB",
        80 * 10**9,
        989e12,
        "NVIDIA H100 Tensor Core GPU datasheet: H100 SXM, BF16 Tensor Core 1,979 TFLOPS with sparsity",
    ),
    "h200": Device(
        "H200 SXM 141 GB",
        141 * 10**9,
        989e12,
        "NVIDIA H200 Tensor Core GPU datasheet: H200 SXM, BF16 Tensor Core 1,979 TFLOPS with sparsity",
    ),
}
DEFAULT_GPU = "h100"
PRUNE_SHARD_BYTES = 1 << 30
"""The streamed prune's output shard size (compactlm.prune.slicing.SHARD_BYTES; that module imports torch)."""

GPU_RUNTIME = 2 * GiB
"""Per GPU: CUDA context, cuBLAS workspaces, NCCL buffers and allocator slack; an allowance, not a measurement."""
HOST_RUNTIME = 520 * 2**20
"""Peak RSS of `python -c "import torch, transformers"` on the development machine (torch 2.13 CPU, transformers
5.14): 519.5 MiB, measured with resource.getrusage (ru_maxrss) twice."""
MODELOPT_RUNTIME = 128 * 2**20
"""What `import modelopt.torch.distill` adds to that (648 MiB in all, same measurement): distill and quantize."""

KL_SLICE_TEMPORARIES = 8
"""Float32 [slice, vocab] tensors alive at once in one slice of the KL and its gradient (losses._kl_rows: the two
upcasts, two log-softmaxes, the pointwise KL, and autograd's gradients of them)."""

QUANT_BITS = {"fp8": 8.0, "int8_sq": 8.0, "nvfp4": 4.5, "int4_awq": 4.125}
"""Bits per quantized weight in the export: FP8 and INT8 one byte; NVFP4 4 bits + an FP8 scale per 16 weights;
INT4-AWQ 4 bits + an fp16 scale per 128 weights."""
GGUF_BITS = {
    "f32": 32,
    "f16": 16,
    "bf16": 16,
    "q8_0": 8.5,
    "q6_k": 6.5625,
    "q5_k": 5.5,
    "q5_0": 5.5,
    "q5_1": 6.0,
    "q4_k": 4.5,
    "q4_0": 4.5,
    "q4_1": 5.0,
    "iq4_nl": 4.5,
    "iq4_xs": 4.25,
    "q3_k": 3.4375,
    "q2_k": 2.625,
}
"""Bits per weight of llama.cpp's block formats (ggml block bytes × 8 / block weights, e.g. Q8_0: 34 bytes per 32).
The _S/_M/_L mixes are counted as their base type; llama.cpp keeps a few tensors of a _M mix at a wider type."""


# ------------------------------------------------------------------------------------------------ sizes
@dataclass(frozen=True)
class ModelSizes:
    """Parameter counts and the sizes the memory and FLOP formulas need."""

    hf: dict[str, Any]
    """config.json-style sizes (hidden_size, intermediate_size, ...), for `bench.flops`."""
    total: int
    without_lm_head: int
    layer: int
    """Parameters of one decoder layer."""
    root: int
    """Parameters outside the decoder layers (embedding, final norm, output layer)."""

    @property
    def layers(self) -> int:
        return self.hf["num_hidden_layers"]


NEEDED = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


def count_from_shape(shape: dict[str, Any]) -> ModelSizes:
    """Parameter counts of a `shape` (config.json sizes) from the architecture table (`compactlm.arch`): per layer
    the q/k/v/o projections (with Qwen2's q/k/v biases), the gated MLP's three matrices, two RMSNorms (and Qwen3's
    q/k norms on head_dim); outside, the embedding, the final norm and an untied output layer.

    The same numbers as `model.params.count_on_meta` of the built transformers module (tests/launch/test_plan.py
    compares them for every architecture of the table, pruned and not), without importing transformers here:
    the plan is made at every launch, on the submit side, which builds no model."""
    adapter = adapter_for(shape["model_type"])
    h, f, heads, vocab = (shape[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads", "vocab_size"))
    kv = shape.get("num_key_value_heads") or heads
    head_dim = shape.get("head_dim") or h // heads
    q, k = heads * head_dim, kv * head_dim
    layer = h * q + 2 * h * k + q * h + 3 * h * f + 2 * h + len(adapter.qk_norm) * head_dim
    if adapter.attn_bias:
        layer += q + 2 * k
    head = 0 if shape.get("tie_word_embeddings") else vocab * h
    root = vocab * h + h + head
    layers = shape["num_hidden_layers"]
    hf = {key: shape[key] for key in NEEDED if key != "model_type"}
    hf.update(num_key_value_heads=kv, head_dim=head_dim)
    return ModelSizes(
        hf=hf, total=root + layers * layer, without_lm_head=root - head + layers * layer, layer=layer, root=root
    )


def model_sizes(shape: dict[str, Any], export: dict[str, int] | None = None) -> ModelSizes | None:
    """Sizes of the model of `shape`, pruned to ModelOpt `export` sizes when given (head_dim kept, as
    `model.params.pruned_hf_config` keeps it); None when `shape` lacks one of NEEDED (a hub model whose YAML has
    no `model.shape`)."""
    if any(shape.get(k) is None for k in NEEDED):
        return None
    merged = dict(shape, head_dim=shape.get("head_dim") or shape["hidden_size"] // shape["num_attention_heads"])
    for key, value in (export or {}).items():
        if value is not None:
            merged[EXPORT_TO_HF[key]] = int(value)
    return count_from_shape(merged)


# ------------------------------------------------------------------------------------------------ plan
@dataclass
class StagePlan:
    """What one task (a stage, or one instance of it) needs."""

    stage: str
    """Task name: the stage, or `candidate-<name>`."""
    processes: int
    """Processes in all (nodes × processes per node)."""
    nodes: int
    gpus_per_node: int
    """GPUs per node the task uses (0: it runs on CPU, and `memory` is host RAM of one process)."""
    memory: dict[str, int] = field(default_factory=dict)
    """Named bytes per process (per GPU on a GPU) that add up to `memory_total`."""
    disk: dict[str, int] = field(default_factory=dict)
    """Named bytes the task writes."""
    flops: float | None = None
    hours: float | None = None
    """Wall hours at the device's peak × plan.mfu; None on CPU (no peak table) or without FLOPs."""
    notes: list[str] = field(default_factory=list)
    task: Task | None = field(default=None, repr=False, compare=False)
    """The task this plan is for (set by `plan_task`)."""

    @property
    def memory_total(self) -> int:
        return sum(self.memory.values())

    @property
    def on_gpu(self) -> bool:
        return self.gpus_per_node > 0


@dataclass
class RunPlan:
    stages: list[StagePlan]
    device: Device | None
    """The GPU of the cluster; None on CPU."""
    mfu: float
    compute: str
    """bfloat16 or float32: the compute dtype of the stages."""
    teacher: ModelSizes | None
    student: ModelSizes | None
    student_label: str
    """Where the student's sizes come from (prune=exp_010, the largest search candidate, ...)."""
    shape: dict[str, Any] = field(default_factory=dict)
    """The teacher's sizes the plan was made from (`launch.validate.model_shape`)."""
    stored_bytes: int = 2
    """Bytes per weight of the teacher checkpoint the model stage leaves (its config.json dtype)."""
    largest_file: int | None = None
    """Bytes of the teacher checkpoint's largest safetensors file; None: the whole checkpoint in one file."""
    notes: list[str] = field(default_factory=list)

    def stage(self, name: str) -> StagePlan:
        return next(s for s in self.stages if s.stage == name)


def plan_run(conf: CompactLMConfig, shape: dict[str, Any]) -> RunPlan:
    """The plan of `conf`'s tasks; `shape` is the teacher's sizes as `launch.validate.model_shape` returns them."""
    teacher = model_sizes(shape)
    student, label = _student(conf, shape, teacher)
    device = gpu_device(conf)
    compute = compute_dtype(conf)
    stored, largest = checkpoint_layout(conf)
    plan = RunPlan(
        stages=[],
        device=device,
        mfu=conf.plan.mfu,
        compute=compute,
        teacher=teacher,
        student=student,
        student_label=label,
        shape=shape,
        stored_bytes=stored,
        largest_file=largest,
    )
    if teacher is None:
        plan.notes.append(
            f"model={conf.model.name} has no sizes here (model.shape.* in its YAML, or a local folder): "
            "memory, disk and FLOPs are not estimated"
        )
    if device is not None and conf.cluster.gpu is None:
        plan.notes.append(f"cluster.gpu is unset: {device.name} assumed (cluster.gpu=h100|h200)")
    for task in run_tasks(conf):
        plan.stages.append(plan_task(conf, task, shape, plan))
    return plan


HUB_SHARD_BYTES = 5 * 10**9
"""Largest safetensors file assumed for a hub checkpoint (transformers' long-time `max_shard_size` default, "5GB",
which most released checkpoints are split at); a local folder's files are measured instead."""
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def checkpoint_layout(conf: CompactLMConfig) -> tuple[int, int | None]:
    """(bytes per stored weight, bytes of the largest safetensors file or None for one file) of the checkpoint the
    model stage leaves: a packaged GGUF is dequantized into one float32 file; a local folder says its dtype in
    config.json and its files are measured; a hub checkpoint is assumed bf16 in HUB_SHARD_BYTES files."""
    m = conf.model
    if m.source == "gguf_package":
        return 4, None
    folder = Path(m.path).expanduser() if m.is_local() else None
    if folder is None or not folder.is_dir():
        return 2, HUB_SHARD_BYTES
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cfg = {}
    stored = DTYPE_BYTES.get(cfg.get("dtype") or cfg.get("torch_dtype"), 2)
    sizes = [f.stat().st_size for f in folder.glob("*.safetensors")]
    return stored, (max(sizes) if len(sizes) > 1 else None)


def gpu_device(conf: CompactLMConfig) -> Device | None:
    return DEVICES[conf.cluster.gpu or DEFAULT_GPU] if conf.cluster.gpus_per_node > 0 else None


def compute_dtype(conf: CompactLMConfig) -> str:
    """The dtype `model.precision` will resolve on the nodes: engine.dtype, else bf16 on GPUs and on CPUs with
    native bf16 (read from this CPU for cluster=local), else float32."""
    if conf.engine.dtype != "auto":
        return conf.engine.dtype
    if conf.cluster.gpus_per_node > 0 or conf.engine.device == "cuda":
        return "bfloat16"
    if conf.cluster.executor == "local":
        return "bfloat16" if cpu_bf16_flags() else "float32"
    return "bfloat16"


def _student(conf: CompactLMConfig, shape: dict[str, Any], teacher: ModelSizes | None):
    stages = conf.recipe.stages
    if teacher is None:
        return None, "unknown"
    if "prune" in stages:
        return model_sizes(shape, conf.prune.export_config.known()), f"prune={conf.prune.name}"
    if conf.search.resolved:
        biggest = max(conf.search.resolved, key=lambda c: c.params)
        return (
            model_sizes(shape, biggest.export_config.known()),
            f"the largest search candidate ({biggest.name}) until the ranking picks one",
        )
    return teacher, f"model={conf.model.name}"


def plan_task(conf: CompactLMConfig, task: Task, shape: dict[str, Any], plan: RunPlan) -> StagePlan:
    stage, instance = task.stage, task.instance
    nodes = conf.cluster.nodes_for(stage)
    gpus = stage_gpus(conf, task)
    per_node = stage_processes(conf, task) if stages.get(stage).trains else 1
    sp = StagePlan(stage=task.name, processes=nodes * per_node, nodes=nodes, gpus_per_node=gpus, task=task)
    if plan.teacher is None:
        return sp
    cbytes = 2 if plan.compute in ("bfloat16", "float16") else 4
    on_gpu = gpus > 0
    ctx = _Ctx(conf, plan, cbytes, on_gpu, world=nodes * per_node)
    if stage in ("distill", "candidate"):
        student = plan.student
        cfg = conf.distill
        if stage == "candidate":
            cand = next(c for c in conf.search.resolved if c.name == instance)
            student = model_sizes(shape, cand.export_config.known())
            # a candidate distills from the shared teacher cache for search.distill_tokens (search/stage.py)
            cfg = dataclasses.replace(cfg, teacher_cache=True, max_steps=None, max_tokens=conf.search.distill_tokens)
        sp.memory, sp.disk, sp.flops, sp.notes = distill_plan(ctx, cfg, plan.teacher, student, stage == "candidate")
    elif stages.get(stage).plan:  # the stage's model of its memory, disk and FLOPs (StageSpec.plan)
        sp.memory, sp.disk, sp.flops = stages.load(stages.get(stage).plan)(ctx, plan.teacher, plan.student)
    elif stage != "ranking":  # ranking reads results only; the alignment stages and deploy are not modelled yet
        sp.notes.append(f"{stage}: only the runtime is estimated (its models are not modelled by the plan)")
    sp.memory["runtime"] = (
        GPU_RUNTIME if on_gpu else HOST_RUNTIME + (MODELOPT_RUNTIME if stages.get(stage).modelopt else 0)
    )
    if on_gpu and sp.flops is not None:
        sp.hours = sp.flops / (ctx.world_gpus(task) * plan.device.bf16_flops * plan.mfu) / 3600
    return sp


@dataclass
class _Ctx:
    conf: CompactLMConfig
    plan: RunPlan
    cbytes: int
    """Bytes per value of the compute dtype."""
    on_gpu: bool
    world: int

    @property
    def seq(self) -> int:
        return self.conf.data.seq_len

    def world_gpus(self, task: Task) -> int:
        return self.conf.cluster.nodes_for(task.stage) * stage_gpus(self.conf, task)


# ------------------------------------------------------------------------------------------ activations
def layer_activation_bytes(hf: dict[str, Any], cbytes: int) -> int:
    """Bytes a decoder layer saves for its backward pass per token (see the module docstring; measured on
    transformers' Llama layer), without autocast's weight copies."""
    h, f, heads = hf["hidden_size"], hf["intermediate_size"], hf["num_attention_heads"]
    a = heads * hf["head_dim"]
    k = hf["num_key_value_heads"] * hf["head_dim"]
    if cbytes == 2:
        return 26 * h + 4 * a + 4 * k + 8 * f + 4 * heads
    return 24 * h + 8 * a + 8 * k + 16 * f + 4 * heads


def student_activations(s: ModelSizes, tokens: int, cbytes: int, checkpointing: bool) -> dict[str, int]:
    """Activations a trained model keeps for one micro-batch of `tokens` tokens, and autocast's weight copies.

    Without checkpointing every layer keeps its saved tensors (plus one layer's worth of gradients while the
    backward pass runs through it); with checkpointing every layer keeps its float32 input and one layer at a time
    is recomputed. Outside the layers: about 12·h bytes per token (final norm, the output layer's input)."""
    per_layer = tokens * layer_activation_bytes(s.hf, cbytes)
    h = s.hf["hidden_size"]
    out = {}
    if checkpointing:
        out["activations (layer inputs, checkpointed)"] = s.layers * tokens * 4 * h
        out["activations (one layer recomputed + its backward)"] = 2 * per_layer
    else:
        out["activations (every layer, for backward)"] = (s.layers + 1) * per_layer
    out["activations (final norm, output layer input)"] = tokens * 12 * h
    if cbytes == 2:  # autocast keeps the bf16 cast of each weight it used until the backward pass
        kept_layers = 1 if checkpointing else s.layers
        out["bf16 weight copies (autocast)"] = 2 * (kept_layers * s.layer + s.hf["vocab_size"] * h)
    return out


def forward_working_set(s: ModelSizes, tokens: int, cbytes: int) -> int:
    """A no-grad forward's largest live tensors in one layer: the residual stream, q/k/v and the MLP's three."""
    hf = s.hf
    a = hf["num_attention_heads"] * hf["head_dim"]
    k = hf["num_key_value_heads"] * hf["head_dim"]
    return tokens * cbytes * (2 * hf["hidden_size"] + a + 2 * k + 3 * hf["intermediate_size"])


# ------------------------------------------------------------------------------------------------ distill
def distill_plan(ctx: _Ctx, cfg: DistillConfig, teacher: ModelSizes, student: ModelSizes, candidate: bool = False):
    """(memory, disk, flops, notes) of one distillation process: the student trained, the teacher run or cached
    (a search `candidate` reads the teacher_cache stage's cache: it neither builds nor writes one)."""
    c, seq, world = ctx.cbytes, ctx.seq, ctx.world
    fsdp = cfg.strategy == "fsdp2" and world > 1
    shard = world if fsdp else 1
    tokens = cfg.micro_batch_size * seq
    vocab = student.hf["vocab_size"]
    n = student.total
    mem = {
        "student weights (fp32)": 4 * n // shard,
        "gradients (fp32)": 4 * n // shard,
        "AdamW states (2 × fp32)": 8 * n // shard,
    }
    if cfg.strategy == "ddp" and world > 1:
        mem["DDP gradient buckets (fp32)"] = 4 * n
    if not cfg.teacher_cache:
        mem[f"teacher weights ({_dtype(c)})"] = c * teacher.total // shard
    if fsdp:
        gathered = 4 * (student.root + 3 * student.layer)  # root + current + prefetched layer, one layer's gradient
        if not cfg.teacher_cache:
            gathered += c * (teacher.root + 2 * teacher.layer)
        mem["FSDP2 gathered (root, 2 layers, 1 layer's gradient)"] = gathered
    mem.update(student_activations(student, tokens, c, cfg.activation_checkpointing))
    logits = 2 if cfg.teacher_cache else 3  # student logits and their gradient (+ the teacher's)
    mem[f"logits [micro_batch, seq, vocab] ({logits} × {_dtype(c)})"] = logits * c * tokens * vocab
    if cfg.teacher_cache:
        mem["teacher cache rows (top-k)"] = tokens * (cfg.topk * 6 + 4)
    else:
        mem["teacher forward (one layer, no grad)"] = forward_working_set(teacher, tokens, c)
    mem["KL slices (fp32)"] = KL_SLICE_TEMPORARIES * 4 * min(CHUNK_ELEMENTS, tokens * vocab)

    steps = _steps(cfg, seq)
    trained = steps * cfg.global_batch_size * seq
    per_token = 3 * forward_flops_per_token(student.hf, seq)
    if cfg.activation_checkpointing:
        per_token += forward_flops_per_token(student.hf, seq)  # the recomputed forward
    flops = trained * per_token
    if cfg.teacher_cache and not candidate:
        flops += cache_tokens(ctx.conf, cfg) * forward_flops_per_token(teacher.hf, seq)
    elif not cfg.teacher_cache:
        flops += trained * forward_flops_per_token(teacher.hf, seq)
    disk = {
        "checkpoint (fp32 weights + AdamW; 2 while one is written)": 2 * 12 * n,
        f"student export ({_dtype(c)})": c * n,
    }
    if cfg.teacher_cache and not candidate:
        disk["teacher top-k cache"] = teacher_cache_bytes(ctx.conf, cfg)
    if candidate:  # each candidate prunes its own student first (prune/stage.py prune_checkpoint)
        disk[f"pruned checkpoint ({_dtype(c)})"] = c * n
    notes = [
        f"{steps} steps × {cfg.global_batch_size} × {seq} tokens, micro-batch {cfg.micro_batch_size}, "
        f"strategy {cfg.strategy if world > 1 else 'single process'}"
        f"{', activation checkpointing' if cfg.activation_checkpointing else ''}"
    ]
    return mem, disk, flops, notes


def _steps(cfg: DistillConfig, seq: int) -> int:
    """distill/train.py's total_steps, without importing torch."""
    if cfg.max_steps is not None:
        return cfg.max_steps
    return max(1, math.ceil(cfg.max_tokens / (cfg.global_batch_size * seq)))


def cache_tokens(conf: CompactLMConfig, cfg: DistillConfig, ranking: bool = False) -> int:
    """Tokens the teacher cache covers, and the validation split: a distillation's cache covers the train split
    (data.max_train_sequences, else assumed to be the sequences the distillation reads, each once); the search's
    only the ranking's sequences (search/stage.py ranking_rows)."""
    reads = _steps(cfg, conf.data.seq_len) * cfg.global_batch_size
    train = conf.data.max_train_sequences or reads
    if ranking:
        train = min(train, reads)
    return (train + conf.data.validation_sequences) * conf.data.seq_len


def teacher_cache_bytes(conf: CompactLMConfig, cfg: DistillConfig, ranking: bool = False) -> int:
    """distill/cache.py's layout: per token k float16 log-probs, k int32 ids and one float32 tail."""
    return cache_tokens(conf, cfg, ranking) * (cfg.topk * (2 + 4) + 4)


def _dtype(cbytes: int) -> str:
    return "bf16" if cbytes == 2 else "fp32"


# ------------------------------------------------------------------------------------------ other stages
def plan_model(ctx: _Ctx, t: ModelSizes, s: ModelSizes | None):
    """model: a packaged GGUF is dequantized to float32 and saved once; a hub model is downloaded (bf16)."""
    m = ctx.conf.model
    if m.source == "gguf_package":
        return {"teacher dequantized (fp32)": 4 * t.total}, {"teacher safetensors (fp32, cache_dir)": 4 * t.total}, None
    if m.is_local():
        return {}, {}, None
    return {}, {"teacher download (bf16, Hugging Face cache)": 2 * t.total}, None


def data_held(d, tokens: int) -> dict[str, int]:
    """What the data stage holds for `tokens` tokens of splits (d: the DataConfig); the splits themselves go to their
    files as they are packed (data/splits.py NpyRows)."""
    if d.reads_files():
        # data/splits.py FileDocuments: local files are indexed (24 bytes a document) and their shuffled order kept
        # (a Python list, ~36 bytes a document); each document is read back when it is tokenized. ~60 bytes a
        # document is ~0.6 bytes per token for documents of 100 tokens or more
        return {"document index and shuffled order (~60 bytes a document of >= 100 tokens)": int(0.6 * tokens)}
    if d.kind == "pydoc":  # the bundled text, held whole (ASCII: one byte a character)
        return {"the bundled pydoc text": sum(len(t) for t in pydoc_topics.values())}
    # data.kind=hf holds the dataset's text column to shuffle it: ~4 bytes per token for ASCII text (Python keeps
    # text with characters beyond Latin-1, Polish for one, at 2 bytes a character)
    return {"source text (the dataset's text column, ~4 bytes per token)": 4 * tokens}


def plan_data(ctx: _Ctx, t: ModelSizes, s: ModelSizes | None):
    d = ctx.conf.data
    train = d.max_train_sequences or _steps(ctx.conf.distill, d.seq_len) * ctx.conf.distill.global_batch_size
    tokens = (train + d.validation_sequences + d.calibration_sequences) * d.seq_len
    return data_held(d, tokens), {"train/validation/calibration splits (int32)": 4 * tokens}, None


def plan_importance(ctx: _Ctx, t: ModelSizes, s: ModelSizes | None):
    """importance (prune/stage.py): a 16-bit checkpoint on a float32 machine stays 16-bit, and each block (the
    embedding, a decoder layer, the final norm) is upcast to float32 only while it runs."""
    imp = ctx.conf.importance
    tokens = imp.batch_size * ctx.seq
    calib = (imp.max_sequences or ctx.conf.data.calibration_sequences) * ctx.seq
    held = min(ctx.cbytes, ctx.plan.stored_bytes)
    mem = {f"teacher weights ({_dtype(held)})": held * t.total}
    if held < ctx.cbytes:
        embed = t.hf["vocab_size"] * t.hf["hidden_size"]
        mem["one block upcast (fp32)"] = ctx.cbytes * max(t.layer, embed)
    mem.update(
        {
            "forward (one layer, no grad)": forward_working_set(t, tokens, ctx.cbytes),
            f"logits ({_dtype(ctx.cbytes)})": ctx.cbytes * tokens * t.hf["vocab_size"],
        }
    )
    return mem, {}, calib * forward_flops_per_token(t.hf, ctx.seq)


def plan_prune(ctx: _Ctx, t: ModelSizes, s: ModelSizes | None):
    """prune (prune/slicing.py stream_prune): the teacher is never built; one source safetensors file is
    memory-mapped at a time (its pages resident once read) and the output is written in shards of at most
    SHARD_BYTES, held while safetensors serializes them (1.5x: measured 1.2-1.4x by benchmarks/scale.py)."""
    stored = ctx.plan.stored_bytes
    out = stored * (s or t).total
    mem = {
        "largest source safetensors file (memory-mapped)": ctx.plan.largest_file or stored * t.total,
        "output shard + its serialization": int(1.5 * min(PRUNE_SHARD_BYTES, out)),
    }
    if ctx.conf.prune.depth_method == "lm_loss":  # the only path that builds the teacher, for its forwards
        mem[f"teacher weights ({_dtype(ctx.cbytes)}), lm_loss depth method"] = ctx.cbytes * t.total
    return mem, {f"pruned checkpoint ({_dtype(stored)})": out}, None


def _source_bytes(ctx: _Ctx) -> int:
    """Bytes per value the quantize stage (and gguf's hf_check) holds its source in: a model trained in this run is
    saved in the compute dtype; the teacher and a pruned checkpoint keep the teacher's stored dtype, held as stored
    where that is narrower than the compute dtype (a bf16 checkpoint on a float32 CPU)."""
    recipe = ctx.conf.recipe.stages
    latest = [st for st in stages.model_labels() if st in recipe and st not in ("quantize", "ranking")]
    trained = bool(latest) and latest[-1] not in ("model", "prune")
    return ctx.cbytes if trained else min(ctx.cbytes, ctx.plan.stored_bytes)


def plan_quantize(ctx: _Ctx, t: ModelSizes, s: ModelSizes | None):
    """quantize (quantize/stage.py): the source is held as :func:`_source_bytes` says (in the process's own memory,
    not mapped), each block upcast to the compute dtype only while it runs. The peak is the calibration: the export
    then converts each weight in place, freeing the high-precision one, and serializes one safetensors shard of at
    most 2 GB (compactlm.quantize.ptq.EXPORT_SHARD_BYTES) at a time, less than the weights it freed."""
    s = s or t
    q = ctx.conf.quantize
    c = ctx.cbytes
    held = _source_bytes(ctx)
    tokens = q.batch_size * ctx.seq
    mem = {f"model ({_dtype(held)})": held * s.total}
    if held < c:
        mem["one block upcast (fp32)"] = c * max(s.layer, s.hf["vocab_size"] * s.hf["hidden_size"])
    if q.evaluate:
        mem[f"reference copy ({_dtype(held)})"] = held * s.total
    mem["calibration forward"] = forward_working_set(s, tokens, c) + 4 * tokens * s.hf["vocab_size"]
    embed = s.root  # embedding and output layer stay in quantize.export_dtype
    export = int((s.total - embed) * QUANT_BITS[q.format] / 8) + 2 * embed
    calib = (q.calibration_sequences or ctx.conf.data.calibration_sequences) * ctx.seq
    return mem, {f"{q.format} export": export}, calib * forward_flops_per_token(s.hf, ctx.seq)


def plan_gguf(ctx: _Ctx, t: ModelSizes, s: ModelSizes | None):
    g = ctx.conf.gguf
    s = s or t
    mem = {}
    if g.hf_check:  # gguf/stage.py hf_check: the student as held (computing in fp32) and one dequantized file (fp32)
        tokens = ctx.conf.evaluate.batch_size * ctx.seq
        held = _source_bytes(ctx)
        mem = {
            f"student ({_dtype(held)})": held * s.total,
            "one dequantized file (fp32)": 4 * s.total,
            "logits of both (fp32)": 2 * 4 * tokens * s.hf["vocab_size"],
        }
        if held < 4:
            mem["one block upcast (fp32)"] = 4 * max(s.layer, s.hf["vocab_size"] * s.hf["hidden_size"])
    disk = {f"student {g.outtype}": _gguf_bytes(s.total, g.outtype)}
    for typ in g.types:
        if typ != g.outtype:
            disk[f"student {typ}"] = _gguf_bytes(s.total, typ)
    if g.teacher:
        disk[f"teacher {g.outtype}"] = _gguf_bytes(t.total, g.outtype)
    return mem, disk, None


def _gguf_bytes(params: int, typ: str) -> int:
    base = typ.removesuffix("_m").removesuffix("_s").removesuffix("_l")
    return int(params * GGUF_BITS.get(base, GGUF_BITS.get(typ, 16)) / 8)


def _evaluated(ctx: _Ctx, t: ModelSizes, s: ModelSizes | None) -> list[ModelSizes]:
    """The models the evaluate stage loads together: the teacher and each later model of the run."""
    recipe = ctx.conf.recipe.stages
    later = [st for st in stages.model_labels() if st in recipe and st != "model"]
    return [t] + [s or t] * len(later)


def plan_evaluate(ctx: _Ctx, t: ModelSizes, s: ModelSizes | None):
    e = ctx.conf.evaluate
    c = ctx.cbytes
    models = _evaluated(ctx, t, s)
    tokens = e.batch_size * ctx.seq
    mem = {
        f"{len(models)} models resident ({_dtype(c)})": sum(c * m.total for m in models),
        "logits (teacher + one model, fp32)": 2 * 4 * tokens * t.hf["vocab_size"],
    }
    val = (e.max_sequences or ctx.conf.data.validation_sequences) * ctx.seq
    return mem, {}, val * sum(forward_flops_per_token(m.hf, ctx.seq) for m in models)


def plan_bench(ctx: _Ctx, t: ModelSizes, s: ModelSizes | None):
    return {f"one model at a time ({_dtype(ctx.cbytes)})": ctx.cbytes * max(t.total, (s or t).total)}, {}, None


def plan_teacher_cache(ctx: _Ctx, t: ModelSizes, s: ModelSizes | None):
    cfg = dataclasses.replace(
        ctx.conf.distill, teacher_cache=True, max_steps=None, max_tokens=ctx.conf.search.distill_tokens
    )
    tokens = cfg.micro_batch_size * ctx.seq
    c = ctx.cbytes
    mem = {
        f"teacher weights ({_dtype(c)})": c * t.total,
        "forward (one layer, no grad)": forward_working_set(t, tokens, c),
        f"logits ({_dtype(c)})": c * tokens * t.hf["vocab_size"],
        "top-k slices (fp32)": 3 * 4 * min(CHUNK_ELEMENTS, tokens * t.hf["vocab_size"]),
    }
    return (
        mem,
        {"teacher top-k cache": teacher_cache_bytes(ctx.conf, cfg, ranking=True)},
        cache_tokens(ctx.conf, cfg, ranking=True) * forward_flops_per_token(t.hf, ctx.seq),
    )


# ------------------------------------------------------------------------------------------------ checks
def check_plan(plan: RunPlan, conf: CompactLMConfig) -> None:
    """Raise ConfigError (one line, the keys to change) for a distillation that does not fit one GPU and for a
    teacher cache larger than the free space of its folder, where that folder is on this machine."""
    if not conf.plan.check:
        return
    for sp in plan.stages:
        if (
            sp.task.stage in ("distill", "candidate")
            and sp.on_gpu
            and plan.device
            and sp.memory_total > plan.device.memory
        ):
            raise ConfigError(_no_fit(plan, conf, sp))
    _check_cache_space(plan, conf)


def _no_fit(plan: RunPlan, conf: CompactLMConfig, sp: StagePlan) -> str:
    d = conf.distill
    now = (
        f"distill.strategy={d.strategy} distill.micro_batch_size={d.micro_batch_size} "
        f"distill.activation_checkpointing={str(d.activation_checkpointing).lower()} cluster.nodes={conf.cluster.nodes}"
    )
    fixes = [f"{' '.join(keys)} ({_gib(m)})" for keys, m in _remedies(plan, conf, sp)]
    return (
        f"{sp.stage} needs {_gib(sp.memory_total)} per GPU, more than one {plan.device.name} holds, with {now} "
        f"on {sp.nodes}×{sp.gpus_per_node} GPUs (data.seq_len={conf.data.seq_len}): "
        + (
            f"it fits with {' or '.join(fixes)}"
            if fixes
            else "change distill.strategy, distill.micro_batch_size, distill.activation_checkpointing or cluster.nodes"
        )
        + "; python launch.py ... dryrun=true prints the plan"
    )


def _changes(conf: CompactLMConfig, sp: StagePlan) -> list[tuple[str, Any]]:
    """The single changes the refusal may propose: (key=value, function of the config to the changed config)."""
    d, c = conf.distill, conf.cluster
    out = []
    if d.strategy != "fsdp2" and sp.processes > 1:
        out.append(
            (
                "distill.strategy=fsdp2",
                lambda x: dataclasses.replace(x, distill=dataclasses.replace(x.distill, strategy="fsdp2")),
            )
        )
    if not d.activation_checkpointing:
        out.append(
            (
                "distill.activation_checkpointing=true",
                lambda x: dataclasses.replace(x, distill=dataclasses.replace(x.distill, activation_checkpointing=True)),
            )
        )
    if d.micro_batch_size > 1:
        out.append(
            (
                "distill.micro_batch_size=1",
                lambda x: dataclasses.replace(x, distill=dataclasses.replace(x.distill, micro_batch_size=1)),
            )
        )
    if sp.task.stage == "distill" and c.executor != "local" and "distill" not in c.stage_nodes:
        out.append(
            (
                f"cluster.nodes={2 * c.nodes}",
                lambda x: dataclasses.replace(x, cluster=dataclasses.replace(x.cluster, nodes=2 * x.cluster.nodes)),
            )
        )
    return out


def _remedies(plan: RunPlan, conf: CompactLMConfig, sp: StagePlan) -> list[tuple[list[str], int]]:
    """The fewest changes of `_changes` that make `sp` fit (every set of that size that does), each with its
    memory per GPU then."""
    changes = _changes(conf, sp)
    for size in range(1, len(changes) + 1):
        fits = []
        for combo in itertools.combinations(changes, size):
            other = conf
            for _, change in combo:
                other = change(other)
            m = plan_task(other, sp.task, plan.shape, plan).memory_total
            if m <= plan.device.memory:
                fits.append(([key for key, _ in combo], m))
        if fits:
            return fits
    return []


def _check_cache_space(plan: RunPlan, conf: CompactLMConfig) -> None:
    """A teacher cache written on this machine (cluster=local, or a Slurm login node's runs_root) must fit the free
    space of the nearest existing folder above where it goes."""
    if conf.cluster.is_remote():
        return
    for sp in plan.stages:
        size = sp.disk.get("teacher top-k cache")
        if not size:
            continue
        folder = (
            Path(conf.run_dir).expanduser() / sp.stage / ("cache" if sp.stage == "teacher_cache" else "teacher_cache")
        )
        parent = next(p for p in (folder, *folder.parents) if p.exists())
        free = shutil.disk_usage(parent).free
        if size > free:
            key = "search.distill_tokens" if sp.stage == "teacher_cache" else "distill.max_steps/distill.max_tokens"
            raise ConfigError(
                f"the teacher cache of {sp.stage} needs {_gb(size)} but {parent} has {_gb(free)} free: "
                f"lower distill.topk={conf.distill.topk}, data.max_train_sequences or {key}, or set "
                f"runs_root to a folder with more space"
            )


# ------------------------------------------------------------------------------------------------ printing
def _gib(n: float) -> str:
    return f"{n / GiB:.1f} GiB"


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _count_str(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def format_plan(plan: RunPlan) -> str:
    """The plan as text: a header (models, device, MFU), one row per task and its breakdown beneath."""
    lines = []
    if plan.teacher is not None:
        lines.append(
            f"teacher {_count_str(plan.teacher.total)} parameters, student {_count_str(plan.student.total)} "
            f"({plan.student_label}); compute dtype {plan.compute}"
        )
    if plan.device is not None:
        lines.append(
            f"GPU {plan.device.name}: {plan.device.bf16_flops / 1e12:.0f} TFLOP/s bf16 dense "
            f"({plan.device.source}); hours at MFU {plan.mfu:.2f} (plan.mfu)"
        )
    else:
        lines.append("CPU: memory is the peak resident memory of one stage process; no hours (no CPU peak table)")
    lines += [f"note: {n}" for n in plan.notes]
    where = "memory/GPU" if plan.device is not None else "memory"
    head = f"{'stage':<22}{'procs':>6}  {'nodes×GPUs':<11}{where:>12}{'disk':>11}{'FLOPs':>10}{'hours':>8}"
    lines += [head, "-" * len(head)]
    for sp in plan.stages:
        place = f"{sp.nodes}×{sp.gpus_per_node}" if sp.on_gpu else f"{sp.nodes}×CPU"
        mem = _gib(sp.memory_total) + ("" if sp.on_gpu or plan.device is None else " host")
        flops = f"{sp.flops:.2e}" if sp.flops else "-"
        hours = f"{sp.hours:.2f}" if sp.hours is not None else "-"
        lines.append(
            f"{sp.stage:<22}{sp.processes:>6}  {place:<11}{mem:>12}{_gb(sum(sp.disk.values())):>11}"
            f"{flops:>10}{hours:>8}"
        )
        if sp.memory:
            lines.append("    memory: " + ", ".join(f"{k} {v / GiB:.2f}" for k, v in sp.memory.items()) + " GiB")
        if sp.disk:
            lines.append("    disk: " + ", ".join(f"{k} {_gb(v)}" for k, v in sp.disk.items()))
        lines += [f"    {n}" for n in sp.notes]
    total = [sp.hours for sp in plan.stages if sp.hours is not None]
    if total:
        lines.append(f"hours in all (stages with FLOPs, at MFU {plan.mfu:.2f}): {sum(total):.1f}")
    return "\n".join(lines)
