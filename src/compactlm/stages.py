"""The stages of a run. Each is thin: it finds its inputs, calls the library, and names its outputs.

A stage is any object with `name`, `sections`, `keep` and `run(ctx) -> StageResult` (see
`compactlm.pipeline.Stage`); no base class.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from compactlm.config import ConfigError
from compactlm.pipeline import StageContext, StageResult

TEACHER = "teacher"
# stage that produced a model -> its label in evaluation tables
MODEL_LABELS = {"model": TEACHER, "prune": "pruned", "distill": "distilled", "quantize": "quantized"}


def arch_metrics(hf) -> dict:
    """Sizes of a transformers config under the names used in reports and prune presets."""
    return {
        "model_type": hf.model_type,
        "hidden_size": hf.hidden_size,
        "ffn_hidden_size": hf.intermediate_size,
        "num_layers": hf.num_hidden_layers,
        "num_attention_heads": hf.num_attention_heads,
        "num_key_value_heads": hf.num_key_value_heads,
        "vocab_size": hf.vocab_size,
    }


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
        metrics = {**arch_metrics(hf), "params": count_on_meta(hf)}
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
                folders[MODEL_LABELS.get(stage, stage)] = ctx.upstream_output(stage, "checkpoint")
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
        if cfg.tasks:
            for label, scores in task_accuracy(ctx, models, tokenizer).items():
                results[label]["tasks"] = scores
        quantized = ctx.upstream.get("quantize", {}).get("metrics", {})
        if quantized.get("quality"):  # measured by the quantize stage on the fake-quantized model
            source_label = MODEL_LABELS.get(quantized["source_stage"], quantized["source_stage"])
            q = quantized["quality"]["quantized"]
            results["quantized"] = {
                "perplexity": q["perplexity"], "loss": q["loss"], "tokens": q["tokens"],
                "kl_to_source": q.get("kl_to_teacher"), "top1_agreement_to_source": q.get("top1_agreement"),
                "source": source_label, "format": quantized["format"], "forward": "ModelOpt fake-quant",
                "params": results[source_label]["params"],
                "forward_tokens_per_s": q["forward_tokens_per_s"],
                "size_bytes": quantized["export"]["safetensors_bytes"],
            }
        metrics = {"device": device, "dtype": str(dtype).removeprefix("torch."), "threads": torch.get_num_threads(),
                   "validation_sequences": int(len(val)), "models": results}
        for label, r in results.items():
            if label == "quantized":
                print(f"[evaluate] quantized ({r['format']}, from {r['source']}): perplexity {r['perplexity']:.3f}",
                      flush=True)
                continue
            extra = f", KL {r['kl_to_teacher']:.4f}" if "kl_to_teacher" in r else ""
            extra += "".join(f", {t} acc {v['acc']:.3f}" for t, v in r.get("tasks", {}).items() if "acc" in v)
            speed = f", {r['output_tokens_per_s']:.1f} tok/s decode" if "output_tokens_per_s" in r else ""
            print(f"[evaluate] {label}: perplexity {r['perplexity']:.3f}{extra}{speed}", flush=True)
        return StageResult(metrics=metrics)


def task_accuracy(ctx: StageContext, models: dict, tokenizer) -> dict[str, dict]:
    """lm-eval (HF backend) accuracy of every model on `evaluate.tasks`; the local tasks' examples are built
    first from `evaluate.task_text` (default: the Polish sample beside the repository) into `<stage>/lm_eval_data/`."""
    from compactlm.lmeval import build_task_data, run_tasks, task_text_folder

    cfg = ctx.cfg.evaluate
    data_dir = ctx.stage_dir / "lm_eval_data"
    source = task_text_folder(cfg.task_text)
    if cfg.text_tasks() and not any(source.rglob("*.txt")):
        raise ConfigError(f"evaluate.task_text={cfg.task_text!r}: no .txt file under {source.resolve()} on "
                          f"{socket.gethostname()}, where the evaluate stage runs; point it at a folder of .txt "
                          "files there, or set evaluate.tasks=[]")
    for task in cfg.text_tasks():
        path = build_task_data(source, data_dir, name=task, num_examples=cfg.task_examples, seed=ctx.cfg.seed)
        print(f"[evaluate] lm-eval task {task}: {sum(1 for _ in path.open())} examples from {source}", flush=True)
    out = {}
    for label, model in models.items():
        print(f"[evaluate] lm-eval {', '.join(cfg.tasks)} on {label}", flush=True)
        out[label] = run_tasks(model, tokenizer, list(cfg.tasks), data_dir=data_dir, batch_size=cfg.task_batch_size,
                               seed=ctx.cfg.seed, samples_dir=ctx.stage_dir / "lm_eval_samples" / label)
    return out


def _batches(sequences, batch_size: int):
    """LongTensor batches [batch_size, seq_len] over an int32 array of sequences."""
    import numpy as np
    import torch

    for start in range(0, len(sequences), batch_size):
        yield torch.from_numpy(np.array(sequences[start : start + batch_size], dtype=np.int64))


class ImportanceStage:
    """Minitron activation importance of the teacher over the calibration split, plus plots.

    Independent of the pruning target, so trying another preset reuses these scores.
    """

    name = "importance"
    sections = ("importance", "engine")
    keep = ()

    def run(self, ctx: StageContext) -> StageResult:
        import time

        from compactlm.arch import adapter_for
        from compactlm.data import load_split
        from compactlm.models import load_model, setup_engine
        from compactlm.prune import collect_importance, plot_depth, plot_width

        device, dtype = setup_engine(ctx.cfg.engine)
        folder = ctx.upstream_output("model", "checkpoint")
        model = load_model(folder, device, dtype)
        calib = load_split(ctx.upstream_output("data", "calibration").parent, "calibration")
        if ctx.cfg.importance.max_sequences:
            calib = calib[: ctx.cfg.importance.max_sequences]
        t0 = time.perf_counter()
        scores = collect_importance(model, adapter_for(model.config.model_type), _batches(calib, ctx.cfg.importance.batch_size))
        seconds = time.perf_counter() - t0
        scores.save(ctx.stage_dir / "scores.safetensors")
        plot_depth(scores, ctx.stage_dir / "depth.png")
        plot_width(scores, ctx.stage_dir / "width.png")
        metrics = {
            "calibration_sequences": int(len(calib)),
            "calibration_tokens_per_s": calib.size / seconds,
            "depth_block_influence": [round(float(v), 6) for v in scores.depth],
        }
        print(f"[importance] {len(calib)} calibration sequences in {seconds:.1f} s; "
              f"least important layers: {scores.depth.argsort()[:5].tolist()}", flush=True)
        return StageResult(outputs={"scores": "scores.safetensors", "depth_plot": "depth.png", "width_plot": "width.png"},
                           metrics=metrics)


class PruneStage:
    """Slice the teacher to `prune.export_config` by importance and save a plain HF checkpoint."""

    name = "prune"
    sections = ("prune",)
    keep = ()

    def run(self, ctx: StageContext) -> StageResult:
        from compactlm.arch import adapter_for
        from compactlm.data import load_split
        from compactlm.models import count_parameters, load_model, load_tokenizer, setup_engine
        from compactlm.params import count_on_meta
        from compactlm.prune import ImportanceScores, add_lm_loss_scores, prune_model, save_pruned, select_layers

        p = ctx.cfg.prune
        device, dtype = setup_engine(ctx.cfg.engine)
        folder = ctx.upstream_output("model", "checkpoint")
        model = load_model(folder, device, dtype)
        adapter = adapter_for(model.config.model_type)
        scores = ImportanceScores.load(ctx.upstream_output("importance", "scores"))
        export = p.export_config.known()
        before = count_parameters(model)
        num_layers = model.config.num_hidden_layers
        if p.depth_method == "lm_loss" and export.get("num_layers", num_layers) < num_layers:
            # Scored on the calibration split so the validation split stays held out for the evaluate stage.
            calib = load_split(ctx.upstream_output("data", "calibration").parent, "calibration")
            add_lm_loss_scores(scores, model, adapter, _batches(calib, ctx.cfg.importance.batch_size),
                               block_size=num_layers - export["num_layers"])
        kept_layers = select_layers(scores, export.get("num_layers", num_layers), p.depth_method)
        prune_model(model, adapter, scores, export, p.depth_method)
        after = count_parameters(model)
        accounted = count_on_meta(model.config)
        if accounted != after:  # the checkpoint must hold exactly what recipe=params promised
            raise RuntimeError(f"pruned model has {after} parameters but accounting says {accounted}")
        save_pruned(model, load_tokenizer(folder), ctx.stage_dir / "checkpoint")
        metrics = {
            "export_config": export,
            "depth_method": p.depth_method,
            "kept_layers": kept_layers,
            "architecture": arch_metrics(model.config),
            "params_before": before,
            "params_after": after,
            "params_change": after["without_lm_head"] / before["without_lm_head"] - 1.0,
        }
        if scores.depth_lm_loss:
            metrics["depth_lm_loss"] = {str(k): v for k, v in scores.depth_lm_loss.items()}
        print(f"[prune] {before['total'] / 1e6:.1f}M -> {after['total'] / 1e6:.1f}M parameters "
              f"({metrics['params_change'] * 100:+.1f}%), kept layers {kept_layers}", flush=True)
        return StageResult(outputs={"checkpoint": "checkpoint"}, metrics=metrics)


class DistillStage:
    """Logit distillation of the pruned student from the teacher; resumable, torchrun-aware.

    `checkpoint/` and `teacher_cache/` survive a restart of this stage so that a killed or preempted run
    resumes, but only while the stage's config and inputs are unchanged (`resume_key.json`).
    """

    name = "distill"
    sections = ("distill", "engine", "seed")
    keep = ("checkpoint", "teacher_cache")

    def run(self, ctx: StageContext) -> StageResult:
        from compactlm.distill import distill

        data_dir = ctx.upstream_output("data", "train").parent
        metrics = distill(ctx.upstream_output("model", "checkpoint"), ctx.upstream_output("prune", "checkpoint"),
                          data_dir, ctx.stage_dir, ctx.cfg.distill, ctx.cfg.engine, ctx.cfg.seed)
        outputs = {"checkpoint": "student", "loss_curve": "loss_curve.png", "history": "history.json"}
        return StageResult(outputs=outputs, metrics=metrics)


def latest_model_stage(ctx: StageContext) -> str:
    """The last upstream stage that produced a model checkpoint (distill, else prune, else model)."""
    return [s for s, m in ctx.upstream.items() if "checkpoint" in m["outputs"]][-1]


class QuantizeStage:
    """ModelOpt PTQ of the run's latest model, export to the unified HF checkpoint, and its verification.

    The export is verified here, on any machine: its layout is checked against what TensorRT-LLM reads,
    and every quantized weight is dequantized from the files and compared with the high-precision source.
    Plain transformers cannot run the export (it drops the scales), so the quantized model's perplexity
    is measured on ModelOpt's fake-quantized model before export, where that forward runs.
    """

    name = "quantize"
    sections = ("quantize", "engine", "evaluate")
    keep = ()

    def run(self, ctx: StageContext) -> StageResult:
        import copy

        from compactlm.data import load_split
        from compactlm.models import load_model, load_tokenizer, setup_engine
        from compactlm.quantize.ptq import check_exclude, export, forward_supported, quantize
        from compactlm.quantize.verify import check_layout, compare, fake_quant_quality

        q = ctx.cfg.quantize
        device, dtype = setup_engine(ctx.cfg.engine)
        source_stage = latest_model_stage(ctx)
        source = ctx.upstream_output(source_stage, "checkpoint")
        model = load_model(source, device, dtype)
        check_exclude(model, q.exclude)
        data_dir = ctx.upstream_output("data", "calibration").parent
        calib = load_split(data_dir, "calibration")
        if q.calibration_sequences:
            calib = calib[: q.calibration_sequences]
        measure = q.evaluate and forward_supported(q.format, device)
        reference = copy.deepcopy(model) if measure else None
        quantize(model, calib, q.format, q.kv_cache_fp8, list(q.exclude), q.batch_size, device)
        metrics: dict = {"format": q.format, "kv_cache_fp8": q.kv_cache_fp8, "exclude": list(q.exclude),
                         "source_stage": source_stage, "source": str(source)}
        if measure:
            val = load_split(data_dir, "validation")
            if ctx.cfg.evaluate.max_sequences:
                val = val[: ctx.cfg.evaluate.max_sequences]
            res = fake_quant_quality(model, val, q.format, ctx.cfg.evaluate.batch_size, device, reference)
            metrics["quality"] = {"reference": res["reference"], "quantized": res["quantized"]}
            del reference
        else:
            metrics["quality"] = None
            print(f"[quantize] perplexity not measured: the {q.format} fake-quant forward does not run on {device} "
                  "(ModelOpt's NVFP4 kernels need CUDA)" if q.evaluate else "[quantize] quantize.evaluate=false",
                  flush=True)
        out = ctx.stage_dir / "export"
        metrics["export"] = export(model, load_tokenizer(source), out, dtype=q.export_dtype)
        metrics["layout"] = check_layout(out, q.format, kv_cache_fp8=q.kv_cache_fp8)
        verified = compare(out, source)
        metrics["verify"] = verified
        if not verified["passed"]:
            rows = {r["name"]: r for r in verified["rows"]}
            bad = "; ".join(f"{n}: rel err {rows[n]['rel_err']:.3g} > {rows[n]['bound']:.3g}" for n in verified["failures"][:5])
            raise RuntimeError(f"dequantized export of {source_stage} differs from its weights beyond the "
                               f"{q.format} bound: {bad}")
        e = metrics["export"]
        worst = ", ".join(f"{k} {v:.4f}" for k, v in verified["max_rel_err"].items())
        print(f"[quantize] {q.format} export: {e['safetensors_bytes'] / 2**20:.1f} MiB on disk, "
              f"{e['ratio_to_bf16']:.3f}x of bf16; max relative weight error per stored format: {worst}", flush=True)
        if metrics["quality"]:
            r = metrics["quality"]
            print(f"[quantize] perplexity {r['reference']['perplexity']:.3f} ({source_stage}, {dtype}) -> "
                  f"{r['quantized']['perplexity']:.3f} ({q.format} fake-quant)", flush=True)
        return StageResult(outputs={"export": "export"}, metrics=metrics)


class DeployStage:
    """Serve the run's models with TensorRT-LLM and measure them with trtllm-bench (GPU, TensorRT-LLM image).

    Deploys the teacher, the final student (distilled, else pruned) and the quantized export. Where
    TensorRT-LLM is not installed the stage stops with a message saying where it runs (exit code 4).
    """

    name = "deploy"
    sections = ("deploy",)
    keep = ()

    def run(self, ctx: StageContext) -> StageResult:
        from compactlm.deploy import DeployUnavailable, run_deploy

        models = deploy_targets(ctx)
        print(f"[deploy] {', '.join(f'{k}: {v}' for k, v in models.items())}", flush=True)
        try:
            metrics = run_deploy({k: str(v) for k, v in models.items()}, ctx.stage_dir, ctx.cfg.deploy)
        except DeployUnavailable as e:
            print(f"[deploy] cannot run here: {e}", file=sys.stderr, flush=True)
            raise SystemExit(4) from None
        return StageResult(outputs={label: label for label in metrics}, metrics={"models": metrics})


def deploy_targets(ctx: StageContext) -> dict[str, Path]:
    """label -> checkpoint folder of every model the deploy stage serves, in report order."""
    out = {TEACHER: ctx.upstream_output("model", "checkpoint")}
    student = next((s for s in ("distill", "prune") if s in ctx.upstream), None)
    if student:
        out[MODEL_LABELS[student]] = ctx.upstream_output(student, "checkpoint")
    if "quantize" in ctx.upstream:
        out[MODEL_LABELS["quantize"]] = ctx.upstream_output("quantize", "export")
    return out


class BenchStage:
    """Speed of the teacher vs the final student: TTFT, TPOT, output tokens/s and peak memory at every
    `bench.batch_sizes`, next to the speed-up their parameter counts promise.

    Measured with transformers' generate on the run's device, or taken from the deploy stage's
    trtllm-bench results when that stage ran before this one.
    """

    name = "bench"
    sections = ("bench", "engine")
    keep = ()

    def run(self, ctx: StageContext) -> StageResult:
        if "deploy" in ctx.upstream:
            return StageResult(metrics=bench_from_deploy(ctx))
        import torch

        from compactlm.bench import compare, generation_speed
        from compactlm.models import count_parameters, load_model, load_tokenizer, setup_engine

        cfg = ctx.cfg.bench
        device, dtype = setup_engine(ctx.cfg.engine)
        static = cfg.static_cache if cfg.static_cache is not None else device.startswith("cuda")
        student_stage = next(s for s in ("distill", "prune", "quantize") if s in ctx.upstream and
                             "checkpoint" in ctx.upstream[s]["outputs"])
        folders = {TEACHER: ctx.upstream_output("model", "checkpoint"),
                   MODEL_LABELS[student_stage]: ctx.upstream_output(student_stage, "checkpoint")}
        tokenizer = load_tokenizer(folders[TEACHER])
        params, runs = {}, []
        results: dict[int, dict] = {b: {} for b in cfg.batch_sizes}
        for label, folder in folders.items():  # one model resident at a time: peak memory is its own
            model = load_model(folder, device, dtype)
            params[label] = count_parameters(model)
            for b in cfg.batch_sizes:
                print(f"[bench] {label}: batch {b}, {cfg.prompt_tokens} prompt + {cfg.new_tokens} new tokens", flush=True)
                results[b][label] = generation_speed(model, tokenizer, prompt_tokens=cfg.prompt_tokens,
                                                     new_tokens=cfg.new_tokens, batch_size=b, device=device,
                                                     repeats=cfg.repeats, static_cache=static)
            del model
        student = MODEL_LABELS[student_stage]
        for b in cfg.batch_sizes:
            ratio = compare(results[b][TEACHER], results[b][student], params[TEACHER], params[student])
            runs.append({"batch_size": b, "models": results[b], "compare": ratio})
            print(f"[bench] batch {b}: {student} {ratio['tokens_per_s_ratio']:.2f}x teacher tokens/s, decode "
                  f"{ratio['decode_speedup']:.2f}x, ideal (parameters read per token) {ratio['ideal_speedup']:.2f}x",
                  flush=True)
        return StageResult(metrics={"source": "transformers generate", "device": device,
                                    "dtype": str(dtype).removeprefix("torch."), "threads": torch.get_num_threads(),
                                    "student": student, "params": params, "runs": runs})


def bench_from_deploy(ctx: StageContext) -> dict:
    """The bench table from trtllm-bench (deploy stage): one row per concurrency, teacher vs student."""
    from compactlm.bench import params_read_per_token

    deployed = ctx.upstream["deploy"]["metrics"]["models"]
    student = next(label for label in ("distilled", "pruned") if label in deployed)
    params = {label: ctx.upstream["evaluate"]["metrics"]["models"][label]["params"]
              for label in (TEACHER, student)} if "evaluate" in ctx.upstream else {}
    runs = []
    for t_row, s_row in zip(deployed[TEACHER]["throughput"], deployed[student]["throughput"]):
        ideal = (params_read_per_token(params[TEACHER]) / params_read_per_token(params[student])) if params else None
        speed = s_row["output_tokens_per_s"] / t_row["output_tokens_per_s"]
        runs.append({"batch_size": t_row["concurrency"], "models": {TEACHER: t_row, student: s_row},
                     "compare": {"tokens_per_s_ratio": speed, "ideal_speedup": ideal,
                                 "decode_speedup": t_row["tpot_ms"] / s_row["tpot_ms"] if s_row.get("tpot_ms") else None}})
    return {"source": "trtllm-bench (deploy stage)", "student": student, "params": params, "runs": runs}
