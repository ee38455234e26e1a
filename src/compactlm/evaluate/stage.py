"""The evaluate stage: perplexity, KL / top-1 agreement vs the teacher, lm-eval task accuracy and decoding
speed of every model of the run, side by side."""

from __future__ import annotations

import socket
from pathlib import Path

import torch

from compactlm import stages
from compactlm.config import ConfigError
from compactlm.data.splits import load_split
from compactlm.evaluate.lmeval import build_task_data, run_tasks
from compactlm.evaluate.quality import decode_speed, quality
from compactlm.evaluate.schema import HELDOUT_TASK, EvaluateResult, ModelScores
from compactlm.model.loading import count_parameters, load_model, load_tokenizer, setup_engine
from compactlm.pipeline import StageContext, StageOutput
from compactlm.results import TEACHER, ParamCounts


class EvaluateStage:
    name = "evaluate"
    reads = ("evaluate", "engine", "seed")
    keep = ()

    def run(self, ctx: StageContext) -> StageOutput:
        cfg = ctx.cfg.evaluate
        device, precision = setup_engine(ctx.cfg.engine)
        # the quantized export is not loadable by plain transformers: its row comes from the quantize stage
        folders = {label: path for label, path in ctx.models().items() if label != stages.get("quantize").model_label}
        models = {label: load_model(path, device, precision.frozen_dtype) for label, path in folders.items()}
        val = load_split(ctx.upstream_output("data", "validation").parent, "validation")
        if cfg.max_sequences:
            val = val[: cfg.max_sequences]
        tokenizer = load_tokenizer(folders[TEACHER])
        with precision.autocast():
            rows = quality(models, TEACHER, val, cfg.batch_size, device)
            tasks = task_accuracy(ctx, models, tokenizer) if cfg.tasks else {}
            speeds = (
                {
                    label: decode_speed(model, tokenizer, cfg.prompt, cfg.generate_tokens, device)
                    for label, model in models.items()
                }
                if cfg.generate_tokens
                else {}
            )
        scores: dict[str, ModelScores] = {}
        for label, model in models.items():
            speed = speeds.get(label, {})
            scores[label] = ModelScores(
                **rows[label],
                **speed,
                params=ParamCounts(**count_parameters(model)),
                checkpoint=str(folders[label]),
                tasks=tasks.get(label, {}),
            )
        q = ctx.result("quantize")
        if q is not None and q.quality:  # measured by the quantize stage on the fake-quantized model
            source = stages.model_labels()[q.source_stage]
            fq = q.quality["quantized"]
            scores["quantized"] = ModelScores(
                perplexity=fq["perplexity"],
                loss=fq["loss"],
                tokens=fq["tokens"],
                params=scores[source].params,
                kl_to_source=fq.get("kl_to_teacher"),
                top1_agreement_to_source=fq.get("top1_agreement"),
                source=source,
                format=q.format,
                forward="ModelOpt fake-quant",
                forward_tokens_per_s=fq["forward_tokens_per_s"],
                size_bytes=q.export["safetensors_bytes"],
            )
        scores.update(gguf_rows(ctx.result("gguf"), scores))
        result = EvaluateResult(
            device=device,
            dtype=precision.compute,
            threads=torch.get_num_threads(),
            validation_sequences=int(len(val)),
            models=scores,
        )
        for label, r in scores.items():
            if r.format is not None:
                print(f"[evaluate] {label} ({r.format}, from {r.source}): perplexity {r.perplexity:.3f}", flush=True)
                continue
            extra = f", KL {r.kl_to_teacher:.4f}" if r.kl_to_teacher is not None else ""
            extra += "".join(f", {t} acc {v['acc']:.3f}" for t, v in r.tasks.items() if "acc" in v)
            speed = f", {r.output_tokens_per_s:.1f} tok/s decode" if r.output_tokens_per_s is not None else ""
            print(f"[evaluate] {label}: perplexity {r.perplexity:.3f}{extra}{speed}", flush=True)
        return StageOutput(result, engine=precision.record())


def gguf_rows(g, scores: dict[str, ModelScores]) -> dict[str, ModelScores]:
    """One row per quantized GGUF type (label "gguf <type>"), measured by the gguf stage on this same validation
    split through transformers' dequantizing GGUF loader; {} when the gguf stage did not run or measure."""
    if g is None:
        return {}
    rows = {}
    for f in g.files:
        if f.model != g.student or f.type == g.outtype or f.hf is None or f.model not in scores:
            continue
        rows[f"gguf {f.type}"] = ModelScores(
            perplexity=f.hf["perplexity"],
            loss=f.hf["loss"],
            tokens=f.hf["tokens"],
            params=scores[f.model].params,
            kl_to_source=f.hf["kl_to_source"],
            top1_agreement_to_source=f.hf["top1_agreement_to_source"],
            source=f.model,
            format=f"gguf {f.type}",
            forward="llama.cpp GGUF dequantized by transformers",
            size_bytes=f.size_bytes,
            checkpoint=f.file,
        )
    return rows


def task_sources(ctx: StageContext) -> dict[str, Path]:
    """task -> folder of .txt files each local lm-eval task of `evaluate.tasks` is built from: the data stage's
    held-out documents for heldout_continuation, `evaluate.task_text` for the others."""
    cfg = ctx.cfg.evaluate
    out = {}
    for task in cfg.text_tasks():
        if task == HELDOUT_TASK:
            out[task] = ctx.upstream_output("data", "heldout")
            continue
        folder = Path(cfg.task_text).expanduser()
        if not any(folder.rglob("*.txt")):
            raise ConfigError(
                f"evaluate.task_text={cfg.task_text!r}: no .txt file under {folder.resolve()} on "
                f"{socket.gethostname()}, where the evaluate stage runs; point it at a folder of .txt "
                f"files there, or drop {task} from evaluate.tasks"
            )
        out[task] = folder
    return out


def task_accuracy(ctx: StageContext, models: dict, tokenizer) -> dict[str, dict]:
    """lm-eval (HF backend) accuracy of every model on `evaluate.tasks`; the local tasks' examples are built
    first into `<stage>/lm_eval_data/`."""
    cfg = ctx.cfg.evaluate
    data_dir = ctx.stage_dir / "lm_eval_data"
    for task, source in task_sources(ctx).items():
        path = build_task_data(source, data_dir, name=task, num_examples=cfg.task_examples, seed=ctx.cfg.seed)
        print(f"[evaluate] lm-eval task {task}: {sum(1 for _ in path.open())} examples from {source}", flush=True)
    out = {}
    for label, model in models.items():
        print(f"[evaluate] lm-eval {', '.join(cfg.tasks)} on {label}", flush=True)
        out[label] = run_tasks(
            model,
            tokenizer,
            list(cfg.tasks),
            data_dir=data_dir,
            batch_size=cfg.task_batch_size,
            seed=ctx.cfg.seed,
            samples_dir=ctx.stage_dir / "lm_eval_samples" / label,
        )
    return out
