"""The gguf stage's launch-time checks (torch-free): the model type converts, the source folder carries a
tokenizer llama.cpp reads, and a given llama.cpp folder has the tools."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compactlm.config import ConfigError
from compactlm.gguf.convert import check_source
from compactlm.gguf.llamacpp import from_folder
from compactlm.gguf.schema import GGUF_MODEL_TYPES


def check(conf, shape: dict[str, Any]) -> None:
    """The gguf stage converts only what llama.cpp's converter handles, and a GGUF carries its tokenizer."""
    model_type = shape.get("model_type")
    if model_type is not None and model_type not in GGUF_MODEL_TYPES:
        raise ConfigError(
            f"recipe={conf.recipe.name} has a gguf stage, but model={conf.model.name} is {model_type!r}; "
            f"GGUF export converts model types {', '.join(GGUF_MODEL_TYPES)} (or drop gguf from "
            "recipe.stages)"
        )
    m = conf.model
    if m.source == "hf" and m.is_local() and Path(m.path).expanduser().exists():
        check_source(Path(m.path).expanduser(), key=f"model.path={m.path!r} (recipe={conf.recipe.name} exports GGUF)")
    if conf.gguf.llama_cpp and not conf.cluster.is_remote():
        from_folder(conf.gguf.llama_cpp)
