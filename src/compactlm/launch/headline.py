"""The report's first screen: the headline figures and the size/quality trade-off chart, from the typed results.

    items = headline(rs)                    # [(figure, what it is)]: parameters -x%, recovery, decode speed-up
    points = tradeoff_points(rs)            # every model and variant the evaluate stage measured
    plot_tradeoff(points, run_dir / "report_tradeoff.png")

Every figure is one a stage measured (`rs` maps task -> typed result, as `report.results` gives it); a figure the run
did not measure is left out, never estimated. Quality on the chart is the perplexity recovery on the evaluate
stage's validation split (teacher perplexity / model perplexity, 1.0 = the teacher), the one measure every row of
that stage has (the quantized and GGUF variants included); size is the weights on disk: a variant's file size as
its stage measured it, else the safetensors files of the model's checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compactlm.bench.schema import BenchResult
from compactlm.evaluate.schema import EvaluateResult, ModelScores
from compactlm.manifest import atomic_file
from compactlm.results import TEACHER, student_label

TRADEOFF_PNG = "report_tradeoff.png"


@dataclass
class Point:
    """One model or variant on the trade-off chart."""

    label: str
    size_bytes: int
    quality: float  # teacher perplexity / this model's perplexity (1.0 = the teacher)
    kind: str  # "teacher" | "model" (a high-precision checkpoint) | "quantized" (FP8/NVFP4, GGUF)


def _params_pair(rs: dict[str, Any]) -> tuple[int, int, str] | None:
    """(teacher params, student params, student label): from the evaluate stage, else the prune stage."""
    ev: EvaluateResult | None = rs.get("evaluate")
    if ev is not None and TEACHER in ev.models and (student := student_label(ev.models)):
        return ev.models[TEACHER].params.total, ev.models[student].params.total, student
    prune = rs.get("prune")
    if prune is not None:
        return prune.params_before.total, prune.params_after.total, "pruned"
    return None


def _count(n: int) -> str:
    return next((f"{n / d:.2f}{s}" for d, s in ((1e9, "B"), (1e6, "M"), (1e3, "K")) if n >= d), str(n))


def _decode_speedup(rs: dict[str, Any]) -> tuple[float, float, str] | None:
    """(measured, ideal, where) decode speed-up of the student over the teacher at batch 1: the bench stage's, else
    the evaluate stage's greedy decoding (TPOT ratio; ideal = parameter ratio)."""
    bench: BenchResult | None = rs.get("bench")
    one = next((r for r in bench.runs if r.batch_size == 1), None) if bench else None
    if one is not None and one.compare.get("decode_speedup") and one.compare.get("ideal_speedup"):
        where = f"{bench.source} on {bench.device}" if bench.device else bench.source
        return one.compare["decode_speedup"], one.compare["ideal_speedup"], f"{bench.student} vs teacher, {where}"
    ev: EvaluateResult | None = rs.get("evaluate")
    student = student_label(ev.models) if ev else None
    if ev is None or student is None or TEACHER not in ev.models:
        return None
    t, s = ev.models[TEACHER], ev.models[student]
    if not (t.tpot_ms and s.tpot_ms):
        return None
    return t.tpot_ms / s.tpot_ms, t.params.total / s.params.total, f"{student} vs teacher, greedy on {ev.device}"


def headline(rs: dict[str, Any], recovery) -> list[tuple[str, str]]:
    """[(figure, caption)]: parameters -x%, aggregate recovery, decode speed-up at batch 1 against the ideal; each
    only where the run measured it. `recovery(teacher, model) -> {..., "aggregate": x}` is the report's."""
    items = []
    pair = _params_pair(rs)
    if pair is not None:
        teacher, student, label = pair
        items.append((f"{(student / teacher - 1) * 100:+.1f}%", f"parameters ({_count(teacher)} → {_count(student)})"))
    ev: EvaluateResult | None = rs.get("evaluate")
    student = student_label(ev.models) if ev else None
    if ev is not None and student is not None and TEACHER in ev.models:
        aggregate = recovery(ev.models[TEACHER], ev.models[student])["aggregate"]
        items.append((f"{aggregate * 100:.1f}%", f"aggregate recovery of the teacher's quality ({student})"))
    speed = _decode_speedup(rs)
    if speed is not None:
        measured, ideal, where = speed
        items.append((f"{measured:.2f}×", f"decode speed-up at batch 1, ideal {ideal:.2f}× ({where})"))
    return items


def _size(r: ModelScores) -> int | None:
    """Bytes of a row's weights on disk: the size its stage measured, else its checkpoint's safetensors files."""
    if r.size_bytes:
        return r.size_bytes
    folder = Path(r.checkpoint) if r.checkpoint else None
    if folder is None or not folder.is_dir():
        return None
    files = list(folder.glob("*.safetensors"))
    return sum(f.stat().st_size for f in files) or None


def tradeoff_points(rs: dict[str, Any]) -> list[Point]:
    """Every model and variant of the evaluate stage with a size: teacher, pruned, distilled, aligned, quantized,
    GGUF types. [] without the evaluate stage or its teacher row."""
    ev: EvaluateResult | None = rs.get("evaluate")
    if ev is None or TEACHER not in ev.models:
        return []
    ref = ev.models[TEACHER].perplexity
    points = []
    for label, r in ev.models.items():
        size = _size(r)
        if size is None:
            continue
        kind = TEACHER if label == TEACHER else "quantized" if r.format else "model"
        name = f"{label} ({r.format})" if r.format and r.format not in label else label  # quantized -> (fp8)
        points.append(Point(name, size, ref / r.perplexity, kind))
    return points


STYLE = {TEACHER: ("*", "#222222", 180), "model": ("o", "#1f77b4", 70), "quantized": ("s", "#d62728", 60)}


def plot_tradeoff(points: list[Point], path: Path) -> Path:
    """Weights on disk (MiB, log scale) against perplexity recovery, one labelled marker per point; dashed lines
    through the teacher. Written atomically as a PNG."""
    from matplotlib.figure import Figure  # heavy (about 1 s): imported when a chart is drawn, not by `launch.py`
    from matplotlib.ticker import FuncFormatter

    fig = Figure(figsize=(9, 4.6), layout="constrained")
    ax = fig.add_subplot()
    for kind, (marker, colour, size) in STYLE.items():
        sel = [p for p in points if p.kind == kind]
        if sel:
            ax.scatter([p.size_bytes / 2**20 for p in sel], [p.quality for p in sel], marker=marker, c=colour,
                       s=size, label={"model": "checkpoint", "quantized": "quantized variant"}.get(kind, kind),
                       zorder=3)  # fmt: skip
    for p in points:
        ax.annotate(p.label, (p.size_bytes / 2**20, p.quality), xytext=(6, 5), textcoords="offset points", fontsize=9)
    teacher = next((p for p in points if p.kind == TEACHER), None)
    if teacher is not None:
        ax.axhline(1.0, ls="--", c="#888888", lw=1, zorder=1)
        ax.axvline(teacher.size_bytes / 2**20, ls="--", c="#888888", lw=1, zorder=1)
    ax.set_xscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")  # 300, not 3×10^2
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.set_xlabel("weights on disk (MiB, log scale)")
    ax.set_ylabel("perplexity recovery (teacher = 1.0)")
    ax.set_title("Size against quality: every model and variant of the run")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    path = Path(path)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path
