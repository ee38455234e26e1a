"""The stages of a run. Each is thin: it finds its inputs, calls the library, and names its outputs.

A stage is any object with `name`, `sections`, `keep` and `run(ctx) -> StageResult` (see
`compactlm.pipeline.Stage`); no base class.
"""

from __future__ import annotations

from compactlm.pipeline import StageContext, StageResult

TEACHER = "teacher"


class ModelStage:
    """Resolve the teacher to a local Hugging Face folder (materializing packaged GGUF models once)."""

    name = "model"
    sections = ("model",)
    keep = ()

    def run(self, ctx: StageContext) -> StageResult:
        from transformers import AutoConfig

        from compactlm.models import materialize
        from compactlm.params import count_on_meta

        folder = materialize(ctx.cfg.model, ctx.cfg.cache_dir)
        hf = AutoConfig.from_pretrained(folder)
        metrics = {
            "model_type": hf.model_type,
            "hidden_size": hf.hidden_size,
            "ffn_hidden_size": hf.intermediate_size,
            "num_layers": hf.num_hidden_layers,
            "num_attention_heads": hf.num_attention_heads,
            "num_key_value_heads": hf.num_key_value_heads,
            "vocab_size": hf.vocab_size,
            "params": count_on_meta(hf),
        }
        print(f"[model] {ctx.cfg.model.name}: {hf.model_type}, {metrics['params']['total'] / 1e6:.1f}M parameters, "
              f"folder {folder}", flush=True)
        return StageResult(outputs={"checkpoint": str(folder)}, metrics=metrics)


class DataStage:
    """Tokenize and pack the text source into validation / calibration / train splits."""

    name = "data"
    sections = ("data", "seed")
    keep = ()

    def run(self, ctx: StageContext) -> StageResult:
        from compactlm.data import build_splits, save_splits
        from compactlm.models import load_tokenizer

        tokenizer = load_tokenizer(ctx.upstream_output("model", "checkpoint"))
        arrays = build_splits(ctx.cfg.data, tokenizer, ctx.cfg.seed)
        outputs = save_splits(arrays, ctx.stage_dir)
        metrics = {f"{k}_sequences": int(v.shape[0]) for k, v in arrays.items()}
        metrics.update({f"{k}_tokens": int(v.size) for k, v in arrays.items()})
        metrics["seq_len"] = ctx.cfg.data.seq_len
        print("[data] " + ", ".join(f"{k}: {v.shape[0]} x {v.shape[1]}" for k, v in arrays.items()), flush=True)
        return StageResult(outputs=outputs, metrics=metrics)


class EvaluateStage:
    """Perplexity, KL / top-1 agreement vs the teacher, and decoding speed of every model of the run."""

    name = "evaluate"
    sections = ("evaluate", "engine")
    keep = ()

    def run(self, ctx: StageContext) -> StageResult:
        import torch

        from compactlm.data import load_split
        from compactlm.evaluate import decode_speed, quality
        from compactlm.models import count_parameters, load_model, load_tokenizer, setup_engine

        cfg = ctx.cfg.evaluate
        device, dtype = setup_engine(ctx.cfg.engine)
        folders = {TEACHER: ctx.upstream_output("model", "checkpoint")}
        for stage, manifest in ctx.upstream.items():  # every later stage that produced a model
            if stage != "model" and "checkpoint" in manifest["outputs"]:
                folders[stage] = ctx.upstream_output(stage, "checkpoint")
        models = {label: load_model(path, device, dtype) for label, path in folders.items()}
        val = load_split(ctx.upstream_output("data", "validation").parent, "validation")
        if cfg.max_sequences:
            val = val[: cfg.max_sequences]
        results = quality(models, TEACHER, val, cfg.batch_size, device)
        tokenizer = load_tokenizer(folders[TEACHER])
        for label, model in models.items():
            results[label]["params"] = count_parameters(model)
            results[label]["checkpoint"] = str(folders[label])
            if cfg.generate_tokens:
                results[label].update(decode_speed(model, tokenizer, cfg.prompt, cfg.generate_tokens, device))
        metrics = {"device": device, "dtype": str(dtype).removeprefix("torch."), "threads": torch.get_num_threads(),
                   "validation_sequences": int(len(val)), "models": results}
        for label, r in results.items():
            extra = f", KL {r['kl_to_teacher']:.4f}" if "kl_to_teacher" in r else ""
            speed = f", {r['output_tokens_per_s']:.1f} tok/s decode" if "output_tokens_per_s" in r else ""
            print(f"[evaluate] {label}: perplexity {r['perplexity']:.3f}{extra}{speed}", flush=True)
        return StageResult(metrics=metrics)
