"""The distill stage's schema: DistillConfig (the shared training knobs of compactlm.train_options plus its own) and DistillResult.

Torch-free: the launcher and the registry's root config read it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from compactlm.config import ConfigError, _choice, _positive
from compactlm.train_options import TrainingOptions

DISTILL_STRATEGIES = ("ddp", "fsdp2")


@dataclass
class DistillConfig(TrainingOptions):
    """Logit distillation of the pruned student from the teacher (Minitron: forward KL, no CE term). The training
    knobs (lr, min_lr, warm-up, max_steps, micro_batch_size, weight_decay, grad_clip, save_every, nproc_per_node)
    are compactlm.train_options.TrainingOptions, shared with sft, dpo and grpo."""

    section: ClassVar[str] = "distill"
    renamed: ClassVar[dict[str, str]] = {"checkpoint_every": "save_every"}

    lr: float = 5e-4
    """Peak learning rate (the demo's short budget needs more than the 1e-4 typical of long runs)."""
    min_lr: float = 5e-5
    """Cosine decay ends at this learning rate."""
    warmup_steps: Optional[int] = 4
    """Linear warm-up, in optimizer steps; when set it wins over distill.warmup_ratio."""
    weight_decay: float = 0.01
    """AdamW weight decay of the weight matrices (biases and norms get none)."""
    temperature: float = 1.0
    """Softmax temperature of the KL term; the loss is scaled by T^2."""
    lm_loss_weight: float = 0.0
    """Weight of the next-token cross-entropy added to the KL (0: logit-only, as in the report)."""
    global_batch_size: int = 8
    """Sequences per optimizer step over all processes (see TrainingOptions); distill needs it set: its sampler
    deals each step's batch out to the processes, so a resume on another number of GPUs sees the same data."""
    max_tokens: Optional[int] = 114_688
    """Training-token budget, used when max_steps is None (the default, 56 steps of 8 x 256 tokens, fits the
    CPU demo's ~12 minutes in bf16; a real compression such as Bielik's needs billions: set it per run)."""
    eval_every: int = 8
    """Validate (student perplexity, KL to teacher) every N steps."""
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
    checkpoint_every: Optional[int] = None
    """Deprecated name of distill.save_every (read until the next release)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _choice("distill.strategy", self.strategy, DISTILL_STRATEGIES)
        for k in ("topk", "eval_every"):
            _positive(f"distill.{k}", getattr(self, k))
        _positive("distill.max_tokens", self.max_tokens)
        if self.max_steps is None and self.max_tokens is None:
            raise ConfigError("distill.max_steps and distill.max_tokens are both null; set one budget")
        if self.temperature <= 0:
            raise ConfigError(f"distill.temperature={self.temperature} must be > 0")
        if self.lm_loss_weight < 0:
            raise ConfigError(f"distill.lm_loss_weight={self.lm_loss_weight} must be >= 0")


@dataclass
class DistillResult:
    """distill stage: training summary of the student."""

    steps: int
    tokens: int
    val_ppl: float
    val_kl: float
    """KL(teacher ‖ student) per token at T=1 on the validation split."""
    val_kl_source: str
    resumed_from_step: int
    world_size: int
    strategy: str
    wall_s: float
    train_loss: Optional[float] = None
    train_kl: Optional[float] = None
    tokens_per_s: Optional[float] = None
    student_dir: Optional[str] = None

    def summary(self) -> str:
        return f"{self.steps} steps, val ppl {self.val_ppl:.3f}, val KL {self.val_kl:.4f}"
