"""The alignment stages' launch-time checks (torch-free): the example files of align_data, each trainer's token
budget against the model's context, and GRPO's reward functions."""

from __future__ import annotations

from typing import Any

from compactlm.align.data import budgets
from compactlm.align.data import check_sources as check_example_sources
from compactlm.align.schema import ALIGN_KINDS
from compactlm.config import ConfigError
from compactlm.rewards import check_paths as check_reward_paths


def check_sources(conf, shape: dict[str, Any]) -> None:
    """Every example file of the sft, dpo and grpo sources, every line as the stages read it, each field against
    its stage's token budget (on this machine only). `conf` is the run's CompactLMConfig."""
    if not conf.cluster.is_remote():
        check_example_sources(
            {k: getattr(conf.align_data, k) for k in ALIGN_KINDS}, budgets(conf.sft, conf.dpo, conf.grpo)
        )


def check_trainer(conf, shape: dict[str, Any]) -> None:
    """The token budget (`<stage>.max_length`) of every alignment stage of the recipe fits the model's context."""
    most = shape.get("max_position_embeddings")
    for kind in ALIGN_KINDS:
        n = getattr(conf, kind).max_length
        if kind in conf.recipe.stages and most is not None and n > most:
            raise ConfigError(
                f"{kind}.max_length={n} exceeds the model's max_position_embeddings={most} "
                f"({conf.model.name}); use {kind}.max_length<={most}"
            )


def check_grpo(conf, shape: dict[str, Any]) -> None:
    """GRPO's token budget, and its reward functions import and exist (`grpo.rewards`)."""
    check_trainer(conf, shape)
    check_reward_paths(list(conf.grpo.rewards))
