"""The importance and prune stages' schema: presets (PruneConfig, ExportConfig), calibration (ImportanceConfig) and their results.

Torch-free: the launcher and the registry's root config read it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from omegaconf import MISSING

from compactlm.config import _choice, _positive
from compactlm.results import Architecture, ParamCounts

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


@dataclass
class ImportanceResult:
    """importance stage: Minitron activation scores of the teacher."""

    calibration_sequences: int
    calibration_tokens_per_s: float
    depth_block_influence: list[float]
    """Per layer, Σ over batches of (1 − cos(layer input, layer output)); higher = more important."""

    def summary(self) -> str:
        return f"{self.calibration_sequences} calibration sequences, {len(self.depth_block_influence)} layers scored"


@dataclass
class PruneResult:
    """prune stage: the sliced student."""

    export_config: dict[str, int]
    depth_method: str
    kept_layers: list[int]
    architecture: Architecture
    params_before: ParamCounts
    params_after: ParamCounts
    params_change: float
    """params_after / params_before - 1, without lm_head (the Minitron reports' convention)."""
    depth_lm_loss: Optional[dict[str, float]] = None
    """first dropped layer -> LM loss without that block (depth_method=lm_loss only)."""

    def summary(self) -> str:
        return (
            f"{self.params_before.total / 1e6:.1f}M -> {self.params_after.total / 1e6:.1f}M params "
            f"({self.params_change * 100:+.1f}%)"
        )
