"""The gguf stage: the run's student (and teacher) as GGUF files for llama.cpp, LM Studio and Ollama —
converted and quantized by llama.cpp's own tools, each file verified against its source checkpoint, its
perplexity measured by llama.cpp and through transformers' dequantizing loader, and its serving speed on
this machine measured by llama.cpp (`llama-batched-bench`).

Files: `<stage>/<label>/<label>-<type>.gguf` (e.g. distilled/distilled-q4_k_m.gguf), tool logs in
`<stage>/logs/`. A file that disagrees with its source's architecture fails the stage.
"""

from __future__ import annotations

import os
from pathlib import Path

from compactlm import stages
from compactlm.data.splits import load_split
from compactlm.evaluate.quality import quality
from compactlm.gguf import convert as gg
from compactlm.gguf.llamacpp import ensure
from compactlm.gguf.measure import perplexity, serving_speed, summary_row
from compactlm.gguf.schema import GGUFFile, GGUFResult
from compactlm.manifest import atomic_write_text
from compactlm.model.loading import computing_in, load_model, setup_engine, storage_dtype
from compactlm.pipeline import StageContext, StageOutput
from compactlm.results import TEACHER, ParamCounts, student_label


class GGUFStage:
    name = "gguf"
    # evaluate: the validation split's size and batch size of the dequantized check; engine: its device and threads
    reads = ("gguf", "engine", "evaluate", "cache_dir")
    keep = ()

    def run(self, ctx: StageContext) -> StageOutput:
        cfg = ctx.cfg.gguf
        models = {k: v for k, v in ctx.models().items() if k != stages.get("quantize").model_label}
        student = student_label(models) or TEACHER
        sources = {student: models[student]}
        if cfg.teacher and student != TEACHER:
            sources = {TEACHER: models[TEACHER], **sources}
        for label, folder in sources.items():  # refused before anything is built or converted
            gg.check_source(folder, key=f"gguf ({label} checkpoint)")
        llama = ensure(ctx.cfg.cache_dir, cfg.llama_cpp, log=lambda m: print(m, flush=True))
        threads = cfg.threads or os.cpu_count() or 1
        logs = ctx.stage_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        print(f"[gguf] llama.cpp: {llama.version} ({llama.bin}), {threads} threads", flush=True)

        files: list[GGUFFile] = []
        params: dict[str, ParamCounts] = {}
        for label, folder in sources.items():
            params[label] = ParamCounts(**gg.param_counts(folder))
            out_dir = ctx.stage_dir / label
            out_dir.mkdir(exist_ok=True)
            base = gg.convert(llama, folder, out_dir / f"{label}-{cfg.outtype}.gguf", cfg.outtype, logs / "convert.log")
            made = [(cfg.outtype, base)]
            if label == student:
                for t in cfg.types:
                    if t == cfg.outtype:
                        continue
                    made.append(
                        (t, gg.quantize(llama, base, out_dir / f"{label}-{t}.gguf", t, threads, logs / "quantize.log"))
                    )
            base_size = base.stat().st_size
            for t, path in made:
                info = gg.inspect(path)
                gg.check_against_source(info, folder, path.name)
                files.append(
                    GGUFFile(
                        model=label,
                        type=t,
                        file=str(path.relative_to(ctx.stage_dir)),
                        size_bytes=info["size_bytes"],
                        bits_per_weight=info["bits_per_weight"],
                        tensor_types=info["tensor_types"],
                        size_ratio=info["size_bytes"] / base_size,
                    )
                )
                mix = ", ".join(f"{n} {k}" for k, n in sorted(info["tensor_types"].items(), key=lambda kv: -kv[1]))
                print(
                    f"[gguf] {path.name}: {info['size_bytes'] / 2**20:.1f} MiB, {info['bits_per_weight']:.2f} bits "
                    f"per weight ({mix}); matches {label}'s architecture",
                    flush=True,
                )

        if cfg.perplexity:
            text = heldout_text(ctx.upstream_output("data", "heldout"), ctx.stage_dir / "heldout.txt")
            seq_len = ctx.result("data").seq_len
            for f in files:
                f.perplexity = perplexity(
                    llama,
                    ctx.stage_dir / f.file,
                    text,
                    seq_len,
                    threads,
                    logs / "perplexity.log",
                    cfg.perplexity_chunks,
                )
                print(
                    f"[gguf] llama.cpp perplexity {f.model} {f.type}: {f.perplexity['perplexity']:.3f} "
                    f"± {f.perplexity['stderr']:.3f} ({f.perplexity['chunks']} chunks of {seq_len})",
                    flush=True,
                )
        source_hf = hf_check(ctx, files, sources[student], student) if cfg.hf_check else None
        if cfg.bench:
            for f in files:
                if f.model != student and f.type != cfg.outtype:
                    continue
                speed = serving_speed(
                    llama,
                    ctx.stage_dir / f.file,
                    cfg.prompt_tokens,
                    cfg.new_tokens,
                    list(cfg.concurrency),
                    threads,
                    cfg.repeats,
                    logs / "bench.log",
                )
                f.speed = [{"concurrency": c, **row} for c, row in sorted(speed.items())]
                for row in f.speed:
                    print(
                        f"[gguf] llama.cpp {f.model} {f.type}, concurrency {row['concurrency']}: {summary_row(row)}",
                        flush=True,
                    )
        (ctx.stage_dir / "heldout.txt").unlink(missing_ok=True)
        result = GGUFResult(
            llama_cpp=llama.record(),
            student=student,
            outtype=cfg.outtype,
            files=files,
            params=params,
            source_hf=source_hf,
        )
        return StageOutput(result, outputs={label: label for label in sources})


def heldout_text(folder: Path, out: Path) -> Path:
    """The held-out documents (the validation split's, never trained on) as one text file for llama-perplexity."""
    docs = [p.read_text(encoding="utf-8") for p in sorted(folder.rglob("*.txt"))]
    atomic_write_text(out, "\n\n".join(docs))
    return out


def hf_check(ctx: StageContext, files: list[GGUFFile], source: Path, student: str) -> dict:
    """Every student file dequantized by transformers' GGUF loader, scored on the validation split against the
    student checkpoint itself: perplexity, KL(source ‖ file) and top-1 agreement per token."""
    import torch  # heavy: only where hf_check runs

    device, _ = setup_engine(ctx.cfg.engine)
    val = load_split(ctx.upstream_output("data", "validation").parent, "validation")
    if ctx.cfg.evaluate.max_sequences:
        val = val[: ctx.cfg.evaluate.max_sequences]
    # the dequantized files are compared at full precision: the reference computes in float32, held in its
    # checkpoint's bf16 where it is stored so (each block upcast while it runs: the same values, half the bytes)
    held = storage_dtype(source, "float32")
    reference = load_model(source, device, getattr(torch, held))
    source_row = None
    for f in files:
        if f.model != student:
            continue
        model = gg.load_dequantized(ctx.stage_dir / f.file, device, source)
        with computing_in(torch.float32, reference):  # a no-op for a float32 reference
            rows = quality(
                {"source": reference, f.type: model}, "source", val, ctx.cfg.evaluate.batch_size, device, progress=False
            )
        source_row = rows["source"]
        r = rows[f.type]
        f.hf = {
            "perplexity": r["perplexity"],
            "loss": r["loss"],
            "tokens": r["tokens"],
            "kl_to_source": r["kl_to_teacher"],
            "top1_agreement_to_source": r["top1_agreement"],
        }
        print(
            f"[gguf] dequantized {f.type}: perplexity {r['perplexity']:.3f} (source {source_row['perplexity']:.3f}), "
            f"KL to source {r['kl_to_teacher']:.5f}, top-1 agreement {r['top1_agreement']:.4f}",
            flush=True,
        )
        del model
    return source_row
