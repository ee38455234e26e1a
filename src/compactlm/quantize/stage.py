"""The quantize stage: ModelOpt PTQ of the run's latest model, export to the unified HF checkpoint, and its
verification.

The export is verified here, on any machine: its layout is checked against what TensorRT-LLM reads,
and every quantized weight is dequantized from the files and compared with the high-precision source.
Plain transformers cannot run the export (it drops the scales), so the quantized model's perplexity
is measured on ModelOpt's fake-quantized model before export, where that forward runs.
"""

from __future__ import annotations

import copy
import gc
import time

import torch

from compactlm import stages
from compactlm.data.splits import load_split
from compactlm.model.loading import (
    computing_in,
    load_model,
    load_tokenizer,
    read_weights_unmapped,
    setup_engine,
    storage_dtype,
)
from compactlm.pipeline import StageContext, StageOutput
from compactlm.quantize.formats import forward_supported
from compactlm.quantize.ptq import check_exclude, export, quantize
from compactlm.quantize.schema import QuantizeResult
from compactlm.quantize.verify import check_layout, compare, fake_quant_quality


class QuantizeStage:
    name = "quantize"
    # evaluate: the validation split's size and batch size for the fake-quant perplexity
    reads = ("quantize", "engine", "evaluate")
    keep = ()

    def run(self, ctx: StageContext) -> StageOutput:
        q = ctx.cfg.quantize
        device, precision = setup_engine(ctx.cfg.engine)
        label, source = list(ctx.models().items())[
            -1
        ]  # the latest model of the run: distilled, else pruned, else teacher
        source_stage = next(s for s, lab in stages.model_labels().items() if lab == label)
        # a bf16 checkpoint on a float32 CPU stays bf16 in memory; each block runs in float32 (the same values), and
        # the export quantizes each weight from float32: the files are those of a float32-loaded model
        held = getattr(torch, storage_dtype(source, precision.compute))
        compute = precision.frozen_dtype  # blocks held narrower run in it (a no-op where the model is held in it)
        model = load_model(source, device, held)
        if device == "cpu":  # the export frees each weight as it converts it: only where the files are not mapped
            read_weights_unmapped(model, source)
        check_exclude(model, q.exclude)
        data_dir = ctx.upstream_output("data", "calibration").parent
        calib = load_split(data_dir, "calibration")
        if q.calibration_sequences:
            calib = calib[: q.calibration_sequences]
        measure = q.evaluate and forward_supported(q.format, device)
        reference = copy.deepcopy(model) if measure else None
        t0 = time.perf_counter()
        with precision.autocast():
            quantize(
                model, calib, q.format, q.kv_cache_fp8, list(q.exclude), q.batch_size, device, compute_dtype=compute
            )
        calibration_seconds = time.perf_counter() - t0
        quality = None
        if measure:
            val = load_split(data_dir, "validation")
            if ctx.cfg.evaluate.max_sequences:
                val = val[: ctx.cfg.evaluate.max_sequences]
            with precision.autocast(), computing_in(compute, model, reference):
                res = fake_quant_quality(model, val, q.format, ctx.cfg.evaluate.batch_size, device, reference)
            quality = {"reference": res["reference"], "quantized": res["quantized"]}
            del reference
        else:
            print(
                f"[quantize] perplexity not measured: the {q.format} fake-quant forward does not run on {device} "
                "(ModelOpt's NVFP4 kernels need CUDA)"
                if q.evaluate
                else "[quantize] quantize.evaluate=false",
                flush=True,
            )
        out = ctx.stage_dir / "export"
        sizes = export(model, load_tokenizer(source), out, dtype=q.export_dtype, compute_dtype=precision.frozen_dtype)
        del model  # the verification below reads both checkpoints tensor by tensor
        gc.collect()
        layout = check_layout(out, q.format, kv_cache_fp8=q.kv_cache_fp8)
        verified = compare(out, source)
        if not verified["passed"]:
            rows = {r["name"]: r for r in verified["rows"]}
            bad = "; ".join(
                f"{n}: rel err {rows[n]['rel_err']:.3g} > {rows[n]['bound']:.3g}" for n in verified["failures"][:5]
            )
            raise RuntimeError(
                f"dequantized export of {source_stage} differs from its weights beyond the {q.format} bound: {bad}"
            )
        worst = ", ".join(f"{k} {v:.4f}" for k, v in verified["max_rel_err"].items())
        print(
            f"[quantize] {q.format} export: {sizes['safetensors_bytes'] / 2**20:.1f} MiB on disk, "
            f"{sizes['ratio_to_bf16']:.3f}x of bf16; max relative weight error per stored format: {worst}",
            flush=True,
        )
        if quality:
            print(
                f"[quantize] perplexity {quality['reference']['perplexity']:.3f} ({source_stage}, {precision.compute}) -> "
                f"{quality['quantized']['perplexity']:.3f} ({q.format} fake-quant)",
                flush=True,
            )
        result = QuantizeResult(
            format=q.format,
            kv_cache_fp8=q.kv_cache_fp8,
            exclude=list(q.exclude),
            source_stage=source_stage,
            source=str(source),
            export=sizes,
            layout=layout,
            verify=verified,
            quality=quality,
            calibration_seconds=round(calibration_seconds, 3),
        )
        return StageOutput(result, outputs={"export": "export"}, engine=precision.record())
