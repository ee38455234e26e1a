"""The alignment stages' schema (align_data, sft, dpo, grpo): where the examples come from (AlignDataConfig), the trainers' settings (TrainerOptions and its SFT/DPO/GRPO subclasses) and the results.

Torch-free: the launcher and the registry's root config read it."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import ClassVar, Optional

from omegaconf import MISSING

from compactlm.config import ConfigError, _choice, _positive
from compactlm.train_options import TrainingOptions, announce_renamed

# After distillation, as the Bielik-Minitron report did: SFT -> DPO-Positive -> GRPO with Hugging Face TRL.
ALIGN_SOURCES = ("demo", "jsonl", "hf")
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


ALIGN_KINDS = tuple(f.name for f in fields(AlignDataConfig) if f.type == "AlignSource")
"""The kinds of examples align_data makes, one per alignment stage (sft, dpo, grpo): its AlignSource fields."""


@dataclass
class TrainerOptions(TrainingOptions):
    """What the sft, dpo and grpo stages add to the shared training knobs (compactlm.train_options), which they
    pass to TRL's trainers (Hugging Face Trainer arguments)."""

    renamed: ClassVar[dict[str, str]] = {"batch_size": "micro_batch_size", "save_steps": "save_every"}

    lr: float = 1e-5
    max_steps: Optional[int] = 24
    """Optimizer steps (required: the align stages train a fixed number of steps)."""
    warmup_ratio: float = 0.1
    """Linear warm-up as a fraction of max_steps, rounded down; used when warmup_steps is None."""
    max_length: int = 160
    """Tokens per example (prompt + answer), at most the model's max_position_embeddings; longer ones are truncated
    (sft, dpo: TRL keeps the start; grpo: see GRPOConfig), far longer ones refused at launch (compactlm.align.data)."""
    batch_size: Optional[int] = None
    """Deprecated name of micro_batch_size (read until the next release)."""
    save_steps: Optional[int] = None
    """Deprecated name of save_every (read until the next release)."""
    grad_accum: Optional[int] = None
    """Deprecated: micro-batches per process per step; set global_batch_size = micro_batch_size × grad_accum ×
    processes instead (read until the next release)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        s = self.section
        _positive(f"{s}.max_length", self.max_length)
        if self.grad_accum is not None:
            _positive(f"{s}.grad_accum", self.grad_accum)
            if self.global_batch_size is not None:
                raise ConfigError(
                    f"{s}.grad_accum={self.grad_accum} and {s}.global_batch_size={self.global_batch_size} are both "
                    f"set: {s}.grad_accum is deprecated; set only {s}.global_batch_size"
                )
            announce_renamed(f"{s}.grad_accum", f"{s}.global_batch_size (= micro_batch_size × grad_accum × processes)")
        if self.max_steps is None:
            raise ConfigError(
                f"{s}.max_steps is null; the {s} stage trains a fixed number of steps, e.g. {s}.max_steps=24"
            )

    def accumulation(self, world: int) -> int:
        """The deprecated grad_accum when given, else from global_batch_size (TrainingOptions.accumulation)."""
        return self.grad_accum if self.grad_accum is not None else super().accumulation(world)

    def batch_per_step(self) -> int:
        """Examples per optimizer step on one process: the whole step when global_batch_size is set."""
        if self.global_batch_size is not None:
            return self.global_batch_size
        return self.micro_batch_size * (self.grad_accum or 1)


@dataclass
class SFTConfig(TrainerOptions):
    """Supervised fine-tuning on chat examples (TRL SFTTrainer); the loss covers the assistant turns only."""

    section: ClassVar[str] = "sft"

    lr: float = 2e-5


@dataclass
class DPOConfig(TrainerOptions):
    """Preference optimization (TRL DPOTrainer) against the stage's own starting model as the reference."""

    section: ClassVar[str] = "dpo"

    lr: float = 2e-5
    loss: str = "dpop"
    """dpop: DPO-Positive (Smaug, Pal et al. 2024); or any of TRL's DPO losses (sigmoid is plain DPO)."""
    beta: float = 0.1
    dpop_lambda: float = 50.0
    """DPO-Positive's λ: weight of max(0, log π_ref(y_w|x) − log π_θ(y_w|x)), the drop of the chosen answer's
    log-likelihood below the reference (the paper uses 50); 0 gives plain DPO (sigmoid)."""

    def __post_init__(self) -> None:
        super().__post_init__()
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

    section: ClassVar[str] = "grpo"

    lr: float = 3e-5
    max_steps: Optional[int] = 32
    micro_batch_size: int = 8
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
        super().__post_init__()
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
        if self.batch_per_step() % self.num_generations:
            what = (
                "grpo.global_batch_size"
                if self.global_batch_size is not None
                else "grpo.micro_batch_size" + (" × grpo.grad_accum" if self.grad_accum else "")
            )
            raise ConfigError(
                f"{what} = {self.batch_per_step()} must be a multiple of grpo.num_generations={self.num_generations} "
                "(whole groups per step)"
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


@dataclass
class AlignDataResult:
    """align_data stage: the examples of the sft, dpo and grpo stages (train / held-out counts, where from)."""

    sources: dict[str, str]
    """kind -> demo, jsonl or hf."""
    train: dict[str, int]
    heldout: dict[str, int]
    demo_s: Optional[float] = None
    """Seconds spent generating the demo answers (teacher and pruned student)."""

    def summary(self) -> str:
        return ", ".join(f"{k}: {self.train[k]} + {self.heldout[k]} held out ({self.sources[k]})" for k in self.train)


@dataclass
class TrainSummary:
    """What every alignment stage records about its training run."""

    source: str
    """Label of the model it started from (distilled, sft, ...)."""
    steps: int
    examples: int
    resumed_from_step: int
    world_size: int
    wall_s: float
    train_loss: Optional[float] = None


@dataclass
class SFTResult:
    """sft stage: supervised fine-tuning (TRL SFTTrainer); loss per answer token on held-out chat examples."""

    train: TrainSummary
    heldout_loss_before: float
    heldout_loss_after: float
    heldout_examples: int

    def summary(self) -> str:
        return (
            f"{self.train.steps} steps from {self.train.source}, held-out loss {self.heldout_loss_before:.3f} -> "
            f"{self.heldout_loss_after:.3f}"
        )


@dataclass
class DPOResult:
    """dpo stage: preference optimization (TRL DPOTrainer; loss dpop = DPO-Positive) on held-out pairs.

    preference accuracy: share of pairs where the model gives the chosen answer a higher log-likelihood than the
    rejected one. reward margin: β·mean[(log π − log π_ref)(chosen) − (log π − log π_ref)(rejected)], 0 before
    training by definition (the reference is the starting model); reward accuracy: share of pairs with margin > 0.
    """

    train: TrainSummary
    loss: str
    beta: float
    dpop_lambda: Optional[float]
    heldout_pairs: int
    preference_accuracy_before: float
    preference_accuracy_after: float
    reward_margin_after: float
    reward_accuracy_after: float
    chosen_logp_before: float
    chosen_logp_after: float
    rejected_logp_before: float
    rejected_logp_after: float

    def summary(self) -> str:
        return (
            f"{self.train.steps} steps ({self.loss}), held-out preference accuracy "
            f"{self.preference_accuracy_before:.2f} -> {self.preference_accuracy_after:.2f}, reward margin "
            f"{self.reward_margin_after:+.3f}"
        )


@dataclass
class GRPOResult:
    """grpo stage: GRPO with verifiable rewards (TRL GRPOTrainer); mean reward of greedy answers to held-out
    problems, per reward function and weighted total."""

    train: TrainSummary
    rewards: list[str]
    heldout_problems: int
    heldout_reward_before: dict[str, float]
    heldout_reward_after: dict[str, float]
    train_reward_first: Optional[float] = None
    train_reward_last: Optional[float] = None

    def summary(self) -> str:
        b, a = self.heldout_reward_before["total"], self.heldout_reward_after["total"]
        return f"{self.train.steps} steps, held-out mean reward {b:.3f} -> {a:.3f}"
