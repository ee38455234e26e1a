"""The data stage's schema: its text sources and splits (DataConfig) and what it writes (DataResult).

Torch-free: the launcher and the registry's root config read it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from omegaconf import MISSING

from compactlm.config import ConfigError, _choice, _positive

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


@dataclass
class DataResult:
    """data stage: packed int32 splits [sequences, seq_len] and the held-out documents' text."""

    seq_len: int
    sequences: dict[str, int]
    """split -> number of sequences (validation, calibration, train)."""
    tokens: dict[str, int]
    heldout_documents: int
    """Documents whose text went to `heldout/` (the validation split's, never trained or calibrated on)."""

    def summary(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.sequences.items()) + f" x {self.seq_len} tokens"
