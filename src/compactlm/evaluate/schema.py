"""The evaluate stage's schema: EvaluateConfig and EvaluateResult (one ModelScores row per model).

Torch-free: the launcher and the registry's root config read it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from compactlm.config import ConfigError, _positive
from compactlm.results import ParamCounts

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


@dataclass
class ModelScores:
    """One model's row of the evaluation table."""

    perplexity: float
    loss: float
    tokens: int
    params: ParamCounts
    checkpoint: Optional[str] = None
    forward_tokens_per_s: Optional[float] = None
    kl_to_teacher: Optional[float] = None
    top1_agreement: Optional[float] = None
    tasks: dict[str, dict[str, float]] = field(default_factory=dict)
    """lm-eval task -> {acc, acc_stderr, num_examples, ...}."""
    ttft_ms: Optional[float] = None
    tpot_ms: Optional[float] = None
    output_tokens_per_s: Optional[float] = None
    new_tokens: Optional[int] = None
    sample: Optional[str] = None
    # the quantized row: measured by the quantize stage on ModelOpt's fake-quantized model
    source: Optional[str] = None
    format: Optional[str] = None
    forward: Optional[str] = None
    kl_to_source: Optional[float] = None
    top1_agreement_to_source: Optional[float] = None
    size_bytes: Optional[int] = None


@dataclass
class EvaluateResult:
    """evaluate stage: every model of the run side by side."""

    device: str
    dtype: str
    threads: int
    validation_sequences: int
    models: dict[str, ModelScores]

    def summary(self) -> str:
        return ", ".join(f"{label} ppl {m.perplexity:.3f}" for label, m in self.models.items())
