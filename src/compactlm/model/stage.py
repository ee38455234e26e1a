"""The model stage: resolve the teacher to a local Hugging Face folder (materializing packaged GGUF models once)."""

from __future__ import annotations

from transformers import AutoConfig

from compactlm.model.loading import materialize
from compactlm.model.params import architecture, count_on_meta
from compactlm.model.schema import ModelResult
from compactlm.pipeline import StageContext, StageOutput
from compactlm.results import ParamCounts


class ModelStage:
    name = "model"
    reads = ("model", "cache_dir")
    keep = ()

    def run(self, ctx: StageContext) -> StageOutput:
        # a local model.path is checked again here (check_model_folder: config.json, model_type, complete
        # safetensors), as the launcher did: the folder may have changed since the run was launched
        folder = materialize(ctx.cfg.model, ctx.cfg.cache_dir)
        hf = AutoConfig.from_pretrained(folder)
        result = ModelResult(
            name=ctx.cfg.model.name, architecture=architecture(hf), params=ParamCounts(**count_on_meta(hf))
        )
        print(
            f"[model] {result.name}: {hf.model_type}, {result.params.total / 1e6:.1f}M parameters, folder {folder}",
            flush=True,
        )
        return StageOutput(result, outputs={"checkpoint": str(folder)})
