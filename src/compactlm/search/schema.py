"""The candidate search's schema (teacher_cache, candidate, ranking): SearchConfig and the three results.

Torch-free: the launcher and the registry's root config read it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from omegaconf import MISSING

from compactlm.config import ConfigError, _choice, _positive, check_run_name
from compactlm.prune.schema import DEPTH_METHODS, ExportConfig
from compactlm.results import Architecture, ParamCounts

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


@dataclass
class TeacherCacheResult:
    """teacher_cache stage: the teacher's top-k log-probabilities over the ranking tokens, shared by every candidate."""

    train_sequences: int
    validation_sequences: int
    topk: int
    seq_len: int
    wall_s: float
    size_bytes: int
    teacher_loss: Optional[float] = None
    """The teacher's validation NLL per token: the reference of every candidate's loss."""

    def summary(self) -> str:
        return (
            f"top-{self.topk} of {self.train_sequences} + {self.validation_sequences} sequences "
            f"({self.size_bytes / 2**20:.0f} MiB)"
            + ("" if self.teacher_loss is None else f", teacher val loss {self.teacher_loss:.3f}")
        )


@dataclass
class CandidateResult:
    """candidate stage (one per search candidate): pruned from the shared scores, then distilled briefly."""

    name: str
    kind: str
    export_config: dict[str, int]
    architecture: Architecture
    params: ParamCounts
    params_change: float
    """Without lm_head, relative to the teacher."""
    kept_layers: list[int]
    pruned_loss: float
    """Validation NLL per token of the pruned model, before any distillation."""
    pruned_kl: float
    """KL(teacher ‖ pruned) per token on the validation split (teacher top-k cache)."""
    loss: float
    """Validation NLL per token after the short distillation: the ranking metric."""
    kl: float
    steps: int
    tokens: int
    distill_s: float
    curve: list[dict[str, float]] = field(default_factory=list)
    """Validation evaluations during the short distillation: step, val_nll, val_kl."""

    def summary(self) -> str:
        return f"{self.params_change * 100:+.1f}%, val loss {self.pruned_loss:.3f} -> {self.loss:.3f}"


@dataclass
class RankedCandidate:
    """One row of the ranking."""

    name: str
    kind: str
    export_config: dict[str, int]
    params: int
    """Without lm_head."""
    params_change: float
    pruned_loss: float
    loss: float
    kl: float
    rank: int
    """1 = best validation loss after the short distillation."""
    pruned_rank: int
    """Its rank by the pruned-only validation loss."""
    decode_speedup: float
    """Estimated batch-1 decode speed-up over the teacher: weights read per token (bench.speed.params_read_per_token),
    teacher / candidate; decoding one sequence is bound by them."""
    pareto: bool
    """No other candidate has both fewer parameters and a lower loss."""


def agreement(tau: float, short: bool = False) -> str:
    """How the pruned-only ranking relates to the ranking after distillation, in words, from Kendall's tau: a
    verb phrase ("partly agrees with") for a sentence, or `short` ("partly agrees") for a table cell."""
    for bound, phrase, word in (
        (0.999, "agrees exactly with", "same order"),
        (0.6, "largely agrees with", "largely agrees"),
        (0.2, "partly agrees with", "partly agrees"),
        (-0.2, "is nearly unrelated to", "unrelated"),
        (-0.6, "partly disagrees with", "partly disagrees"),
    ):
        if tau >= bound:
            return word if short else phrase
    return "reversed" if short else "largely reverses"


@dataclass
class RankingResult:
    """ranking stage: candidates ordered by validation loss after the short distillation; the winner goes on."""

    metric: str
    candidates: list[RankedCandidate]
    winner: str
    kendall_tau: float
    """Agreement of the pruned-only ranking with the ranking after distillation (1: same order, -1: reversed)."""
    teacher_params: int
    teacher_loss: Optional[float] = None

    def summary(self) -> str:
        return f"{len(self.candidates)} candidates, winner {self.winner}, Kendall tau vs pruned-only {self.kendall_tau:+.2f}"
