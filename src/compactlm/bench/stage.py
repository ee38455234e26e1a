"""The bench stage: speed of the teacher vs the final student — TTFT, TPOT, output tokens/s and peak memory at
every `bench.batch_sizes`, next to the speed-up their parameter counts promise.

Measured with transformers' generate on the run's device, or taken from the deploy stage's trtllm-bench
results when that stage ran before this one.
"""

from __future__ import annotations

import dataclasses

import torch

from compactlm.bench.schema import BenchResult, BenchRun
from compactlm.bench.speed import compare, generation_speed, params_read_per_token
from compactlm.model.loading import count_parameters, load_model, load_tokenizer, setup_engine
from compactlm.pipeline import StageContext, StageOutput
from compactlm.results import TEACHER, ParamCounts, student_label


class BenchStage:
    name = "bench"
    reads = ("bench", "engine")
    keep = ()

    def run(self, ctx: StageContext) -> StageOutput:
        if "deploy" in ctx.upstream:
            return StageOutput(bench_from_deploy(ctx))
        from_llama_cpp = bench_from_gguf(ctx.result("gguf")) if "gguf" in ctx.upstream else None
        if from_llama_cpp is not None:
            return StageOutput(from_llama_cpp)
        cfg = ctx.cfg.bench
        device, precision = setup_engine(ctx.cfg.engine)
        static = cfg.static_cache if cfg.static_cache is not None else device.startswith("cuda")
        models = ctx.models()
        student = student_label(models)
        if student is None:
            raise RuntimeError(
                "the bench stage compares the teacher with a pruned or distilled student, and no "
                "earlier stage of this recipe made one"
            )
        folders = {TEACHER: models[TEACHER], student: models[student]}
        tokenizer = load_tokenizer(folders[TEACHER])
        params, runs = {}, []
        results: dict[int, dict] = {b: {} for b in cfg.batch_sizes}
        for label, folder in folders.items():  # one model resident at a time: peak memory is its own
            model = load_model(folder, device, precision.frozen_dtype)
            params[label] = count_parameters(model)
            for b in cfg.batch_sizes:
                print(
                    f"[bench] {label}: batch {b}, {cfg.prompt_tokens} prompt + {cfg.new_tokens} new tokens", flush=True
                )
                with precision.autocast():
                    results[b][label] = generation_speed(
                        model,
                        tokenizer,
                        prompt_tokens=cfg.prompt_tokens,
                        new_tokens=cfg.new_tokens,
                        batch_size=b,
                        device=device,
                        repeats=cfg.repeats,
                        static_cache=static,
                    )
            del model
        for b in cfg.batch_sizes:
            ratio = compare(results[b][TEACHER], results[b][student], params[TEACHER], params[student])
            runs.append(BenchRun(batch_size=b, models=results[b], compare=ratio))
            print(
                f"[bench] batch {b}: {student} {ratio['tokens_per_s_ratio']:.2f}x teacher tokens/s, decode "
                f"{ratio['decode_speedup']:.2f}x, ideal (parameters read per token) {ratio['ideal_speedup']:.2f}x",
                flush=True,
            )
        return StageOutput(
            BenchResult(
                source="transformers generate",
                device=device,
                dtype=precision.compute,
                threads=torch.get_num_threads(),
                student=student,
                params={k: ParamCounts(**v) for k, v in params.items()},
                runs=runs,
            ),
            engine=precision.record(),
        )


def bench_from_deploy(ctx: StageContext) -> BenchResult:
    """The bench table from trtllm-bench (deploy stage): one row per concurrency, teacher vs student."""
    deployed = ctx.result("deploy").models
    student = student_label(deployed)
    evaluation = ctx.result("evaluate")
    params = {label: evaluation.models[label].params for label in (TEACHER, student)} if evaluation else {}
    ideal = (
        (
            params_read_per_token(dataclasses.asdict(params[TEACHER]))
            / params_read_per_token(dataclasses.asdict(params[student]))
        )
        if params
        else None
    )
    runs = []
    for t_row, s_row in zip(deployed[TEACHER]["throughput"], deployed[student]["throughput"]):
        speed = s_row["output_tokens_per_s"] / t_row["output_tokens_per_s"]
        runs.append(
            BenchRun(
                batch_size=t_row["concurrency"],
                models={TEACHER: t_row, student: s_row},
                compare={
                    "tokens_per_s_ratio": speed,
                    "ideal_speedup": ideal,
                    "decode_speedup": t_row["tpot_ms"] / s_row["tpot_ms"] if s_row.get("tpot_ms") else None,
                },
            )
        )
    return BenchResult(source="trtllm-bench (deploy stage)", student=student, params=params, runs=runs)


def bench_from_gguf(g) -> BenchResult | None:
    """The bench table from llama.cpp (gguf stage): per concurrency, the teacher's and the student's unquantized
    files compared, the student's quantized files beside them ("<student> <type>"). None when the gguf stage
    benchmarked no teacher/student pair (gguf.bench=false or gguf.teacher=false): transformers measures then."""
    student = g.student
    base = {f.model: f for f in g.files if f.type == g.outtype and f.speed}
    if TEACHER not in base or student not in base or student == TEACHER:
        return None
    pt, ps = dataclasses.asdict(g.params[TEACHER]), dataclasses.asdict(g.params[student])
    runs = []
    for t_row in base[TEACHER].speed:
        c = t_row["concurrency"]
        s_row = next(r for r in base[student].speed if r["concurrency"] == c)
        models = {TEACHER: t_row, student: s_row}
        for f in g.files:
            if f.model == student and f.type != g.outtype and f.speed:
                models[f"{student} {f.type}"] = next(r for r in f.speed if r["concurrency"] == c)
        runs.append(BenchRun(batch_size=c, models=models, compare=compare(t_row, s_row, pt, ps)))
    return BenchResult(
        source=f"llama.cpp llama-batched-bench ({g.outtype} GGUF, gguf stage)",
        device="cpu",
        dtype=g.outtype,
        threads=base[TEACHER].speed[0].get("threads"),
        student=student,
        params={TEACHER: g.params[TEACHER], student: g.params[student]},
        runs=runs,
    )
