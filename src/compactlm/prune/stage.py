"""The importance and prune stages: Minitron activation importance of the teacher, then slicing to a preset."""

from __future__ import annotations

import gc
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from compactlm.arch import adapter_for
from compactlm.data.splits import load_split
from compactlm.model.loading import computing_in, load_model, load_tokenizer, setup_engine, storage_dtype
from compactlm.model.params import architecture, count_on_meta
from compactlm.pipeline import StageContext, StageOutput
from compactlm.prune.importance import ImportanceScores, add_lm_loss_scores, collect_importance
from compactlm.prune.plots import plot_depth, plot_width
from compactlm.prune.schema import ImportanceResult, PruneResult
from compactlm.prune.slicing import stream_prune
from compactlm.results import ParamCounts


def batches(sequences, batch_size: int):
    """LongTensor batches [batch_size, seq_len] over an int32 array of sequences."""
    for start in range(0, len(sequences), batch_size):
        yield torch.from_numpy(np.array(sequences[start : start + batch_size], dtype=np.int64))


class ImportanceStage:
    """Minitron activation importance of the teacher over the calibration split, plus plots.

    Independent of the pruning target, so trying another preset reuses these scores.
    """

    name = "importance"
    reads = ("importance", "engine")
    keep = ()

    def run(self, ctx: StageContext) -> StageOutput:
        device, precision = setup_engine(ctx.cfg.engine)
        folder = ctx.upstream_output("model", "checkpoint")
        # a bf16 checkpoint on a float32 CPU stays bf16 in memory; each block runs in float32 (same values)
        model = load_model(folder, device, getattr(torch, storage_dtype(folder, precision.compute)))
        adapter = adapter_for(model.config.model_type)
        calib = load_split(ctx.upstream_output("data", "calibration").parent, "calibration")
        if ctx.cfg.importance.max_sequences:
            calib = calib[: ctx.cfg.importance.max_sequences]
        t0 = time.perf_counter()
        with precision.autocast(), computing_in(precision.frozen_dtype, model):
            scores = collect_importance(model, adapter, batches(calib, ctx.cfg.importance.batch_size))
        seconds = time.perf_counter() - t0
        scores.save(ctx.stage_dir / "scores.safetensors")
        plot_depth(scores, ctx.stage_dir / "depth.png")
        plot_width(scores, ctx.stage_dir / "width.png")
        result = ImportanceResult(
            calibration_sequences=int(len(calib)),
            calibration_tokens_per_s=calib.size / seconds,
            depth_block_influence=[round(float(v), 6) for v in scores.depth],
        )
        print(
            f"[importance] {len(calib)} calibration sequences in {seconds:.1f} s; "
            f"least important layers: {scores.depth.argsort()[:5].tolist()}",
            flush=True,
        )
        return StageOutput(
            result,
            outputs={"scores": "scores.safetensors", "depth_plot": "depth.png", "width_plot": "width.png"},
            engine=precision.record(),
        )


class PruneStage:
    """Slice the teacher to `prune.export_config` by importance and save a plain HF checkpoint."""

    name = "prune"
    # importance: the batch size of the lm_loss depth scoring
    reads = ("prune", "engine", "importance")
    keep = ()

    def run(self, ctx: StageContext) -> StageOutput:
        p = ctx.cfg.prune
        result, engine = prune_checkpoint(ctx, p.export_config.known(), p.depth_method, ctx.stage_dir / "checkpoint")
        return StageOutput(result, outputs={"checkpoint": "checkpoint"}, engine=engine)


def prune_checkpoint(
    ctx: StageContext, export: dict[str, int], depth_method: str, out_dir: Path, tag: str = "prune"
) -> tuple[PruneResult, dict]:
    """Slice the run's teacher (upstream `model`) to `export` with the upstream `importance` scores and save it
    to `out_dir` (atomically); the prune stage and every search candidate prune through this. The slicing
    streams the checkpoint's tensors (:func:`stream_prune`); only depth_method=lm_loss loads the teacher.

    Returns the result and the engine record. `ctx.cfg` must declare `engine` and `importance`."""
    device, precision = setup_engine(ctx.cfg.engine)
    folder = ctx.upstream_output("model", "checkpoint")
    scores = ImportanceScores.load(ctx.upstream_output("importance", "scores"))
    num_layers = scores.num_layers
    if depth_method == "lm_loss" and export.get("num_layers", num_layers) < num_layers:
        # The one case that runs the teacher (loss with each block dropped), so the one case that loads it.
        # Scored on the calibration split so the validation split stays held out for the evaluate stage.
        model = load_model(folder, device, precision.frozen_dtype)
        calib = load_split(ctx.upstream_output("data", "calibration").parent, "calibration")
        with precision.autocast():
            add_lm_loss_scores(
                scores,
                model,
                adapter_for(model.config.model_type),
                batches(calib, ctx.cfg.importance.batch_size),
                block_size=num_layers - export["num_layers"],
            )
        del model  # freed before the slicing below reads the checkpoint
        gc.collect()
    # sliced tensor by tensor from the safetensors files, in the checkpoint's dtype: the teacher is never built
    pruned = stream_prune(folder, scores, export, out_dir, depth_method, tokenizer=load_tokenizer(folder))
    before, after, kept_layers, config = pruned["before"], pruned["after"], pruned["kept_layers"], pruned["config"]
    accounted = count_on_meta(config)
    if accounted != after:  # the checkpoint must hold exactly what recipe=params promised
        shutil.rmtree(out_dir)
        raise RuntimeError(f"pruned model has {after} parameters but accounting says {accounted}")
    result = PruneResult(
        export_config=export,
        depth_method=depth_method,
        kept_layers=kept_layers,
        architecture=architecture(config),
        params_before=ParamCounts(**before),
        params_after=ParamCounts(**after),
        params_change=after["without_lm_head"] / before["without_lm_head"] - 1.0,
        depth_lm_loss={str(k): v for k, v in scores.depth_lm_loss.items()} if scores.depth_lm_loss else None,
    )
    print(
        f"[{tag}] {before['total'] / 1e6:.1f}M -> {after['total'] / 1e6:.1f}M parameters "
        f"({result.params_change * 100:+.1f}%), kept layers {kept_layers}",
        flush=True,
    )
    return result, precision.record()
