"""The deploy stage's launch-time checks (torch-free): TensorRT-LLM where it runs, and a GPU that serves the
quantized format."""

from __future__ import annotations

from typing import Any

from compactlm.config import ConfigError
from compactlm.deploy.trtllm import WHERE_IT_RUNS, tensorrt_llm_available
from compactlm.quantize.formats import check_deploy_support


def check_deploy(conf) -> None:
    """The deploy stage needs TensorRT-LLM where it runs, and a GPU that can serve the quantized format."""
    c = conf.cluster
    if c.executor == "local" and tensorrt_llm_available() is None:
        raise ConfigError(
            f"recipe={conf.recipe.name} has a deploy stage but cluster=local has no TensorRT-LLM: "
            f"{WHERE_IT_RUNS} (cluster.deploy_image), or pick a recipe without deploy"
        )
    if c.executor != "local" and not c.deploy_image:
        raise ConfigError(
            f"recipe={conf.recipe.name} has a deploy stage: set cluster.deploy_image to NVIDIA's "
            "TensorRT-LLM image (see containers/README.md)"
        )
    if c.executor == "lepton" and "quantize" in conf.recipe.stages:
        gpu = c.lepton.resource_shape.split("x", 1)[1].split("-")[0]
        check_deploy_support(
            conf.quantize.format, gpu, key=f"cluster.lepton.resource_shape={c.lepton.resource_shape}: GPU"
        )


def check(conf, shape: dict[str, Any]) -> None:
    check_deploy(conf)
