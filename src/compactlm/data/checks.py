"""The data stage's launch-time checks (torch-free; run by the launcher's validator through the stage registry)."""

from __future__ import annotations

from typing import Any

from compactlm.config import ConfigError
from compactlm.data.splits import check_sources


def check_seq_len(conf, shape: dict[str, Any]) -> None:
    """Packed sequences must fit the model's context."""
    most = shape.get("max_position_embeddings")
    if most is not None and conf.data.seq_len > most:
        raise ConfigError(
            f"data.seq_len={conf.data.seq_len} exceeds the model's max_position_embeddings={most} "
            f"({conf.model.name}); use data.seq_len<={most}"
        )


def check(conf, shape: dict[str, Any]) -> None:
    """Packed sequences fit the model's context; the data files exist and read as the stage will read them (on
    this machine only: a remote cluster's paths are checked where the stage runs). `conf` is the run's
    CompactLMConfig."""
    check_seq_len(conf, shape)
    if not conf.cluster.is_remote():
        check_sources(conf.data)
