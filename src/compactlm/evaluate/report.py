"""The evaluate stage's report rows: quality and recovery of every model of the run, and its speed when no bench
stage ran. Torch-free: the launcher's report (compactlm.launch.report) calls it through the stage registry."""

from __future__ import annotations

from typing import Any

from compactlm.evaluate.schema import ModelScores
from compactlm.report_blocks import Block, num, ordered, pct, text_table
from compactlm.results import TEACHER


def recovery(teacher: ModelScores, model: ModelScores) -> dict[str, float]:
    """Recovery of each metric, student relative to teacher (1.0 = as good as the teacher).

    Perplexity is lower-is-better, so its recovery is teacher / student; top-1 agreement is already a
    fraction of the teacher's own predictions. The aggregate is their mean.
    """
    out = {"perplexity": teacher.perplexity / model.perplexity}
    if model.top1_agreement is not None:
        out["top1_agreement"] = model.top1_agreement
    for task, scores in model.tasks.items():
        base = teacher.tasks.get(task, {}).get("acc")
        if base and "acc" in scores:
            out[f"{task} acc"] = scores["acc"] / base
    out["aggregate"] = sum(out.values()) / len(out)
    return out


def task_names(models: dict[str, ModelScores]) -> list[str]:
    return sorted({t for r in models.values() for t, v in r.tasks.items() if "acc" in v})


def quality_rows(models: dict[str, ModelScores]) -> tuple[list[str], list[list[str]]]:
    tasks = task_names(models)
    header = [
        "model",
        "params",
        "perplexity",
        "KL to teacher",
        "top-1 agreement",
        *[f"{t} acc" for t in tasks],
        "recovery (ppl)",
        *[f"recovery ({t})" for t in tasks],
        "recovery (aggregate)",
        "decode tok/s",
        "TPOT ms",
    ]
    teacher = models.get(TEACHER)
    rows = []
    for label, r in ordered(models):
        rec = recovery(teacher, r) if teacher and label != TEACHER else {}
        acc = [r.tasks.get(t, {}).get("acc") for t in tasks]
        rows.append(
            [
                label,
                f"{r.params.total / 1e6:.1f}M",
                f"{r.perplexity:.3f}",
                num(r.kl_to_teacher, ".4f"),
                pct(r.top1_agreement),
                *[num(a, ".3f") for a in acc],
                pct(rec.get("perplexity")),
                *[pct(rec.get(f"{t} acc")) for t in tasks],
                pct(rec.get("aggregate")),
                num(r.output_tokens_per_s, ".1f"),
                num(r.tpot_ms, ".1f"),
            ]
        )
    return header, rows


def speed_rows(models: dict[str, ModelScores]) -> tuple[list[str], list[list[str]]]:
    header = ["model", "params", "decode tok/s", "TTFT ms", "TPOT ms", "speed vs teacher", "ideal (param ratio)"]
    teacher = models.get(TEACHER)
    rows = []
    for label, r in ordered(models):
        if r.output_tokens_per_s is None:
            continue
        speed = r.output_tokens_per_s / teacher.output_tokens_per_s if teacher and teacher.output_tokens_per_s else None
        ideal = teacher.params.total / r.params.total if teacher else None
        rows.append(
            [
                label,
                f"{r.params.total / 1e6:.1f}M",
                f"{r.output_tokens_per_s:.1f}",
                num(r.ttft_ms, ".1f"),
                num(r.tpot_ms, ".1f"),
                f"{speed:.2f}x" if speed else "-",
                f"{ideal:.2f}x" if ideal else "-",
            ]
        )
    return header, rows


def report(conf, rs: dict[str, Any]) -> list:
    """The "Quality and recovery" section (and "Speed" without a bench stage); `rs`: task -> typed result."""
    blocks = []
    evaluation, bench = rs.get("evaluate"), rs.get("bench")
    if evaluation:
        blocks += [
            Block("h2", "Quality and recovery"),
            Block(
                "p",
                f"Held-out validation split: {evaluation.validation_sequences} sequences. Recovery = "
                "teacher perplexity / model perplexity, model / teacher task accuracy; aggregate = "
                "mean of those and top-1 agreement.",
            ),
            Block("table", quality_rows(evaluation.models)),
        ]
        speed = speed_rows(evaluation.models)
        if speed[1] and not bench:
            blocks += [
                Block("h2", "Speed"),
                Block(
                    "p",
                    f"Greedy decoding at batch 1 on {evaluation.device} ({evaluation.dtype}, "
                    f"{evaluation.threads} threads); the ideal ratio is the parameter ratio.",
                ),
                Block("table", speed),
            ]
    return blocks


def summary(conf, rs: dict[str, Any]) -> list:
    """The launcher's terminal lines: the per-model table."""
    lines = []
    evaluation = rs.get("evaluate")
    if evaluation:
        lines.append("")
        lines.append(
            f"  evaluated on {evaluation.validation_sequences} validation sequences, "
            f"device={evaluation.device} dtype={evaluation.dtype} threads={evaluation.threads}"
        )
        for row in text_table(*quality_rows(evaluation.models)):
            lines.append("  " + row)
    return lines
