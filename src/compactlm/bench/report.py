"""The bench stage's report rows: teacher vs student speed per batch size. Torch-free."""

from __future__ import annotations

from typing import Any

from compactlm.bench.schema import BenchResult
from compactlm.report_blocks import Block, num, ordered, text_table
from compactlm.results import TEACHER


def bench_rows(bench: BenchResult) -> tuple[list[str], list[list[str]]]:
    """One row per (batch size, model): tokens/s, TTFT, TPOT, peak memory, and the student's ratios."""
    header = [
        "batch",
        "model",
        "output tok/s",
        "TTFT ms",
        "TPOT ms",
        "peak memory MiB",
        "tok/s vs teacher",
        "decode speed-up",
        "ideal (param ratio)",
    ]
    rows = []
    for run in bench.runs:
        c, t = run.compare, run.models.get(TEACHER, {})
        for label, r in ordered(run.models):
            mem = r.get("peak_memory_bytes")
            if label == bench.student:
                ratios = [c.get("tokens_per_s_ratio"), c.get("decode_speedup"), c.get("ideal_speedup")]
            elif label != TEACHER:  # e.g. the student's quantized GGUF files: measured against the same teacher row
                tps, tpot = r.get("output_tokens_per_s"), r.get("tpot_ms")
                ratios = [
                    tps / t["output_tokens_per_s"] if tps and t.get("output_tokens_per_s") else None,
                    t["tpot_ms"] / tpot if tpot and t.get("tpot_ms") else None,
                    None,
                ]
            else:
                ratios = [None, None, None]
            rows.append(
                [
                    str(run.batch_size),
                    label,
                    num(r.get("output_tokens_per_s"), ".1f"),
                    num(r.get("ttft_ms"), ".1f"),
                    num(r.get("tpot_ms"), ".1f"),
                    num(mem / 2**20 if mem else None, ".0f"),
                    *[f"{x:.2f}x" if x else "-" for x in ratios],
                ]
            )
    if rows and all(r[5] == "-" for r in rows):  # an engine that reports no peak memory (llama.cpp, trtllm-bench)
        header, rows = header[:5] + header[6:], [r[:5] + r[6:] for r in rows]
    return header, rows


def report(conf, rs: dict[str, Any]) -> list:
    """The "Speed" section."""
    blocks = []
    bench = rs.get("bench")
    if bench:
        where = (
            f"{bench.source} on {bench.device} ({bench.dtype}, {bench.threads} threads)"
            if bench.device
            else bench.source
        )
        blocks += [
            Block("h2", "Speed"),
            Block(
                "p",
                f"Teacher vs {bench.student}, {where}. Ideal = weights read per decoded token, "
                "teacher / student (decoding is memory-bound).",
            ),
            Block("table", bench_rows(bench)),
        ]
    return blocks


def summary(conf, rs: dict[str, Any]) -> list:
    """The launcher's terminal lines."""
    lines = []
    bench = rs.get("bench")
    if bench:
        lines += ["", f"  speed ({bench.source}" + (f", {bench.device}" if bench.device else "") + ")"]
        lines += ["  " + row for row in text_table(*bench_rows(bench))]
    return lines
