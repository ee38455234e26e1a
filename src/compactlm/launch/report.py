"""The run report: terminal summary, `report.md` and a self-contained `report.html`, all from the manifests.

Every figure shown is read from a stage's `manifest.json` (one source of truth); the markdown and HTML
files are rendered from the same list of blocks, so they cannot disagree. Plots found in the stage
folders are embedded in the HTML as base64 PNGs.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from compactlm.config import CompactLMConfig
from compactlm.manifest import atomic_write_text, read_manifest
from compactlm.pipeline import run_tasks, running, split_task, task_name
from compactlm.results import (
    MODEL_LABELS,
    TEACHER,
    Architecture,
    BenchResult,
    CandidateResult,
    ModelScores,
    RankingResult,
    recovery,
    result_of,
    task_names,
)

# Pipeline order, whatever order the manifest's JSON (sorted keys) stored them in.
MODEL_ORDER = tuple(MODEL_LABELS.values())
PLOTS = {  # stage -> (file, caption)
    "importance": [("depth.png", "Per-layer depth importance"), ("width.png", "Per-layer width importance")],
    "distill": [("loss_curve.png", "Distillation loss and validation curves")],
    "sft": [("curves.png", "SFT: loss on the answer tokens and token accuracy per step")],
    "dpo": [("curves.png", "DPO: loss, reward margin and reward accuracy per step (training batches)")],
    "grpo": [("curves.png", "GRPO: mean reward of the sampled completions and their length per step")],
    "ranking": [
        (
            "pareto.png",
            "Candidate search: parameters (without lm_head) vs validation loss after the short "
            "distillation (filled) and pruned only (hollow); Pareto front, and the chosen "
            "candidate as a star",
        ),
        (
            "search_curves.png",
            "Candidate search: validation loss and KL to the teacher per step of each candidate's short distillation",
        ),
    ],
}
SEARCH_TOP = 5  # ranked candidates in the terminal summary


def ordered(models: dict[str, Any]) -> list[tuple[str, Any]]:
    rank = {k: i for i, k in enumerate(MODEL_ORDER)}
    return sorted(models.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0]))


def manifests(conf: CompactLMConfig) -> dict[str, dict | None]:
    """task -> its manifest (None: not finished), for every task of the run in recipe order: each stage, and one
    `candidate-<name>` per search candidate (pipeline.run_tasks)."""
    return {task: read_manifest(Path(conf.run_dir) / task) for task in run_tasks(conf)}


def results(ms: dict[str, dict | None]) -> dict[str, Any]:
    """task -> its typed result (compactlm.results, by the task's stage), None for a task that has not finished."""
    return {task: result_of(split_task(task)[0], m) for task, m in ms.items()}


# ------------------------------------------------------------------------------------------- terminal
def summary_table(conf: CompactLMConfig, launched_at: float) -> str:
    """Stages (ran / reused, wall time) and, when the evaluate stage ran, its per-model table."""
    lines = ["", f"== compactlm summary: {conf.run_name} (recipe={conf.recipe.name}) =="]
    ms = manifests(conf)
    width = max([10, *map(len, ms)])
    for task, m in ms.items():
        if m is None:
            lines.append(f"  {task:<{width}} NOT FINISHED")
            continue
        finished = datetime.fromisoformat(m["finished_at"]).timestamp()
        how = "ran" if finished >= int(launched_at) else "reused (up to date)"
        rss = (
            f"  peak RSS {m['peak_rss_bytes'] / 2**30:.2f} GiB" if "peak_rss_bytes" in m else ""
        )  # older manifests: none
        lines.append(f"  {task:<{width}} {how:<20} {m['wall_time_s']:>8.1f} s{rss}")
    rs = results(ms)
    ranking = rs.get("ranking")
    if ranking:
        header, rows = search_rows(conf, rs, plain=True)
        keep = [
            header.index(h)
            for h in (
                "rank",
                "candidate",
                "kind",
                "params",
                "reduction",
                "pruned-only loss (rank)",
                "loss after short distillation",
                "Pareto",
                "status",
            )
        ]
        ranked = [r for r in rows if r[0] != "-"]
        shown = ranked[:SEARCH_TOP] + [r for r in rows if r[-1] == "failed"]
        lines += [
            "",
            f"  candidate search: winner {ranking.winner}; Kendall tau {ranking.kendall_tau:+.2f}, the "
            f"pruned-only ranking {agreement(ranking.kendall_tau)} the ranking after the short distillation",
        ]
        lines += ["  " + row for row in text_table([header[i] for i in keep], [[r[i] for i in keep] for r in shown])]
        if len(ranked) > SEARCH_TOP:
            lines.append(f"  ... and {len(ranked) - SEARCH_TOP} more ranked candidates in the report")
    evaluation = rs.get("evaluate")
    if evaluation:
        lines.append("")
        lines.append(
            f"  evaluated on {evaluation.validation_sequences} validation sequences, "
            f"device={evaluation.device} dtype={evaluation.dtype} threads={evaluation.threads}"
        )
        for row in text_table(*quality_rows(evaluation.models)):
            lines.append("  " + row)
    aligned = alignment_rows(rs)
    if aligned:
        lines += ["", "  alignment (held-out examples; before = the stage's starting model)"]
        lines += ["  " + row for row in text_table(*aligned)]
    quantized = quantized_rows(rs)
    if quantized:
        lines += ["", "  quantized variants (each against its own unquantized source, measured the same way)"]
        lines += ["  " + row for row in text_table(*quantized)]
    bench = rs.get("bench")
    if bench:
        lines += ["", f"  speed ({bench.source}" + (f", {bench.device}" if bench.device else "") + ")"]
        lines += ["  " + row for row in text_table(*bench_rows(bench))]
    return "\n".join(lines)


def text_table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]

    def fmt(cells):
        return "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return [fmt(header), "-" * len(fmt(header))] + [fmt(r) for r in rows]


# ------------------------------------------------------------------------------------------ contents
def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.1f}%"


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
                _num(r.kl_to_teacher, ".4f"),
                _pct(r.top1_agreement),
                *[_num(a, ".3f") for a in acc],
                _pct(rec.get("perplexity")),
                *[_pct(rec.get(f"{t} acc")) for t in tasks],
                _pct(rec.get("aggregate")),
                _num(r.output_tokens_per_s, ".1f"),
                _num(r.tpot_ms, ".1f"),
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
                _num(r.ttft_ms, ".1f"),
                _num(r.tpot_ms, ".1f"),
                f"{speed:.2f}x" if speed else "-",
                f"{ideal:.2f}x" if ideal else "-",
            ]
        )
    return header, rows


def _num(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


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
                    _num(r.get("output_tokens_per_s"), ".1f"),
                    _num(r.get("ttft_ms"), ".1f"),
                    _num(r.get("tpot_ms"), ".1f"),
                    _num(mem / 2**20 if mem else None, ".0f"),
                    *[f"{x:.2f}x" if x else "-" for x in ratios],
                ]
            )
    if rows and all(r[5] == "-" for r in rows):  # an engine that reports no peak memory (llama.cpp, trtllm-bench)
        header, rows = header[:5] + header[6:], [r[:5] + r[6:] for r in rows]
    return header, rows


def quantized_rows(rs: dict[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    """FP8/NVFP4 (quantize stage) and GGUF (gguf stage) variants side by side: size, bits per weight, and
    quality retention against their own unquantized source measured the same way."""
    header = [
        "variant",
        "from",
        "size MiB",
        "bits/weight",
        "size vs source",
        "perplexity",
        "source perplexity",
        "retention (ppl)",
        "measured by",
        "KL to source",
        "top-1 vs source",
    ]
    rows = []
    q = rs.get("quantize")
    if q is not None:
        fq = q.quality or {}
        ref, quant = fq.get("reference"), fq.get("quantized")
        rows.append(
            [
                q.format,
                MODEL_LABELS[q.source_stage],
                f"{q.export['safetensors_bytes'] / 2**20:.1f}",
                "-",
                f"{q.export['ratio_to_bf16']:.3f}x of bf16",
                _num(quant and quant["perplexity"], ".3f"),
                _num(ref and ref["perplexity"], ".3f"),
                _pct(ref["perplexity"] / quant["perplexity"]) if quant else "-",
                "ModelOpt fake-quant",
                _num(quant and quant.get("kl_to_teacher"), ".5f"),
                _pct(quant and quant.get("top1_agreement")),
            ]
        )
    g = rs.get("gguf")
    if g is not None:
        for f in g.files:
            base = g.file(f.model, g.outtype)
            ppl = f.perplexity and f.perplexity["perplexity"]
            ref = base.perplexity and base.perplexity["perplexity"]
            rows.append(
                [
                    f"gguf {f.type}",
                    f.model,
                    f"{f.size_bytes / 2**20:.1f}",
                    f"{f.bits_per_weight:.2f}",
                    f"{f.size_ratio:.3f}x of {g.outtype}",
                    _num(ppl, ".3f"),
                    _num(ref, ".3f"),
                    _pct(ref / ppl) if ppl and ref else "-",
                    "llama-perplexity" if ppl else "-",
                    _num(f.hf and f.hf["kl_to_source"], ".5f"),
                    _pct(f.hf and f.hf["top1_agreement_to_source"]),
                ]
            )
    return (header, rows) if rows else None


ARCH_KEYS = ("model_type", "hidden_size", "ffn_hidden_size", "num_layers", "num_attention_heads", "num_key_value_heads")


def alignment_rows(rs: dict[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    """SFT -> DPO -> GRPO: each stage's own held-out measure, before (its starting model) and after."""
    header = ["stage", "from", "steps", "held-out measure", "before", "after", "also"]
    rows = []
    sft, dpo, grpo = rs.get("sft"), rs.get("dpo"), rs.get("grpo")
    if sft:
        rows.append(
            [
                "sft",
                sft.train.source,
                str(sft.train.steps),
                f"answer loss ({sft.heldout_examples} examples)",
                f"{sft.heldout_loss_before:.4f}",
                f"{sft.heldout_loss_after:.4f}",
                "-",
            ]
        )
    if dpo:
        name = f"dpo ({dpo.loss}" + (f", λ={dpo.dpop_lambda:g}" if dpo.dpop_lambda is not None else "") + ")"
        rows.append(
            [
                name,
                dpo.train.source,
                str(dpo.train.steps),
                f"preference accuracy ({dpo.heldout_pairs} pairs)",
                _pct(dpo.preference_accuracy_before),
                _pct(dpo.preference_accuracy_after),
                f"reward margin {dpo.reward_margin_after:+.4f}, reward accuracy {_pct(dpo.reward_accuracy_after)}, "
                f"chosen log p {dpo.chosen_logp_before:.2f} -> {dpo.chosen_logp_after:.2f}",
            ]
        )
    if grpo:
        parts = ", ".join(
            f"{k.rsplit('.', 1)[-1].rsplit(':', 1)[-1]} {grpo.heldout_reward_before[k]:.3f} -> "
            f"{grpo.heldout_reward_after[k]:.3f}"
            for k in grpo.rewards
        )
        rows.append(
            [
                "grpo",
                grpo.train.source,
                str(grpo.train.steps),
                f"mean reward ({grpo.heldout_problems} problems)",
                f"{grpo.heldout_reward_before['total']:.3f}",
                f"{grpo.heldout_reward_after['total']:.3f}",
                parts,
            ]
        )
    return (header, rows) if rows else None


def architecture_rows(rs: dict[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    cols = {}  # label -> (Architecture, ParamCounts)
    if rs.get("model"):
        cols[TEACHER] = (rs["model"].architecture, rs["model"].params)
    if rs.get("prune"):
        cols["pruned"] = (rs["prune"].architecture, rs["prune"].params_after)
    chosen = search_winner(rs)
    if chosen is not None and "pruned" not in cols:
        cols[f"pruned ({chosen.name})"] = (chosen.architecture, chosen.params)
    if not cols:
        return None
    header = ["", *cols]
    rows = [[k, *[str(getattr(arch, k)) for arch, _ in cols.values()]] for k in ARCH_KEYS]
    for key in ("total", "embedding", "without_lm_head"):
        rows.append([f"params ({key})", *[f"{getattr(params, key):,}" for _, params in cols.values()]])
    return header, rows


@dataclass
class Block:
    kind: str  # "h1" | "h2" | "p" | "table" | "image"
    content: Any


# ------------------------------------------------------------------------------------------- search
SEARCH_ARCH = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads")


def _count(n: float) -> str:
    """A parameter count as 7.35B / 134.5M / 52.3K."""
    for div, suffix, fmt in ((1e9, "B", ".2f"), (1e6, "M", ".1f"), (1e3, "K", ".1f")):
        if abs(n) >= div:
            return f"{n / div:{fmt}}{suffix}"
    return str(int(n))


def _arch(export: dict[str, int], teacher: Architecture | None, actual: Architecture | None) -> str:
    """layers / hidden / FFN / heads: the candidate's own architecture when it finished, else its export_config
    over the teacher's sizes (a size it does not prune is the teacher's)."""
    if actual is not None:
        values = [getattr(actual, k) for k in SEARCH_ARCH]
    else:
        values = [export.get(k, getattr(teacher, k) if teacher else None) for k in SEARCH_ARCH]
    return " / ".join("?" if v is None else str(v) for v in values)


def search_candidates(rs: dict[str, Any]) -> dict[str, CandidateResult]:
    """candidate name -> its result, for every finished `candidate-<name>` task."""
    out = {}
    for task, r in rs.items():
        stage, instance = split_task(task)
        if stage == "candidate" and r is not None:
            out[instance] = r
    return out


def search_winner(rs: dict[str, Any]) -> CandidateResult | None:
    """The chosen candidate's own result (architecture, parameter counts), when the ranking finished."""
    ranking = rs.get("ranking")
    return search_candidates(rs).get(ranking.winner) if ranking else None


def agreement(tau: float, short: bool = False) -> str:
    """How the pruned-only ranking relates to the ranking after distillation, in words, from Kendall's tau: a
    verb phrase ("partly agrees with") for a sentence, or `short` ("partly agrees") for a table cell."""
    for bound, phrase, word in (
        (0.999, "agrees exactly with", "same order"),
        (0.6, "largely agrees with", "largely agrees"),
        (0.2, "partly agrees with", "partly agrees"),
        (-0.2, "is nearly unrelated to", "unrelated"),
        (-0.6, "partly disagrees with", "partly disagrees"),
    ):
        if tau >= bound:
            return word if short else phrase
    return "reversed" if short else "largely reverses"


def search_rows(
    conf: CompactLMConfig, rs: dict[str, Any], plain: bool = False
) -> tuple[list[str], list[list[str]]] | None:
    """One row per search candidate: ranked ones by rank (from the ranking stage), then finished but unranked
    ones, then those without a manifest, and the teacher as the reference. None when the run has no search.
    `plain`: ASCII for the terminal.

    status: winner / ranked; finished (not ranked yet); for a candidate without a manifest, failed (the ranking
    went ahead without it, or its folder holds a stopped attempt), running (a stage process has its folder) or
    not started."""
    ranking: RankingResult | None = rs.get("ranking")
    done = search_candidates(rs)
    tasks = [split_task(t)[1] for t in rs if split_task(t)[0] == "candidate"]
    if ranking is None and not tasks:
        return None
    model = rs.get("model")
    teacher = model.architecture if model else None
    planned = {c.name: c for c in conf.search.resolved}
    check, times = ("yes", "x") if plain else ("✓", "×")
    header = [
        "rank",
        "candidate",
        "kind",
        "layers / hidden / FFN / heads",
        "params",
        "reduction",
        "pruned-only loss (rank)",
        "loss after short distillation",
        "KL to teacher",
        "est. decode speed-up",
        "Pareto",
        "status",
    ]
    rows = []
    ranked = {c.name: c for c in ranking.candidates} if ranking else {}
    for c in sorted(ranked.values(), key=lambda c: c.rank):
        own = done.get(c.name)
        rows.append(
            [
                str(c.rank),
                c.name,
                c.kind,
                _arch(c.export_config, teacher, own and own.architecture),
                _count(c.params),
                f"{c.params_change * 100:+.1f}%",
                f"{c.pruned_loss:.4f} (#{c.pruned_rank})",
                f"{c.loss:.4f}",
                f"{c.kl:.4f}",
                f"{c.decode_speedup:.2f}{times}",
                check if c.pareto else "",
                "winner" if c.name == ranking.winner else "ranked",
            ]
        )
    for r in sorted((r for name, r in done.items() if name not in ranked), key=lambda r: r.loss):
        speed = model.params.total / r.params.total if model else None
        rows.append(
            [
                "-",
                r.name,
                r.kind,
                _arch(r.export_config, teacher, r.architecture),
                _count(r.params.without_lm_head),
                f"{r.params_change * 100:+.1f}%",
                f"{r.pruned_loss:.4f}",
                f"{r.loss:.4f}",
                f"{r.kl:.4f}",
                f"{speed:.2f}{times}" if speed else "-",
                "",
                "not ranked" if ranking else "finished",
            ]
        )
    for name in tasks:
        if name in ranked or name in done:
            continue
        plan = planned.get(name)
        counted = plan is not None and plan.params > 0
        folder = Path(conf.run_dir) / task_name("candidate", name)
        state = (
            "failed"
            if ranking or (folder.is_dir() and running(folder) is None)
            else "running"
            if folder.is_dir()
            else "not started"
        )
        export = plan.export_config.known() if plan else {}
        rows.append(
            [
                "-",
                name,
                plan.kind if plan else "-",
                _arch(export, teacher, None),
                _count(plan.params) if counted else "-",
                f"{plan.change * 100:+.1f}%" if counted else "-",
                "-",
                "-",
                "-",
                "-",
                "",
                state,
            ]
        )
    if ranking is not None:
        rows.append(
            [
                "-",
                TEACHER,
                "-",
                _arch({}, teacher, teacher),
                _count(ranking.teacher_params),
                "-",
                "-",
                _num(ranking.teacher_loss, ".4f"),
                "-",
                f"1.00{times}",
                "",
                "reference",
            ]
        )
    return header, rows


def search_blocks(conf: CompactLMConfig, rs: dict[str, Any]) -> list[Block]:
    """The "Candidate search" section: what was searched and how it was ranked, the winner, what Kendall's tau
    says about ranking by the pruned-only loss, the candidates' table and the ranking stage's plots."""
    table = search_rows(conf, rs)
    if table is None:
        return []
    ranking: RankingResult | None = rs.get("ranking")
    done = search_candidates(rs)
    status = [r[-1] for r in table[1] if r[-1] != "reference"]
    steps = sorted({r.steps for r in done.values()})
    tokens = sorted({r.tokens for r in done.values()})
    budget = (
        f"{steps[0]} steps ({tokens[0]:,} tokens)"
        if len(steps) == 1 and len(tokens) == 1
        else f"{steps[0]}-{steps[-1]} steps"
        if steps
        else "a few steps"
    )
    cache = rs.get("teacher_cache")
    source = f"the teacher's cached top-{cache.topk} log-probabilities" if cache else "the teacher cache"
    metric = ranking.metric if ranking else "validation loss"
    blocks = [
        Block("h2", "Candidate search"),
        Block(
            "p",
            f"{len(status)} candidate architectures, each pruned from the teacher with the shared "
            f"importance scores, then distilled for {budget} from {source}; ranked by the validation "
            f"loss ({metric}, per token, lower is better) after that short distillation. Parameters "
            "without lm_head; reduction relative to the teacher; Pareto ✓: no other candidate has both "
            "fewer parameters and a lower loss; decode speed-up: estimated, teacher / candidate weights "
            "read per decoded token at batch 1 (what single-stream decoding is bound by). Sizes a candidate does not "
            "prune are the teacher's. The teacher row is the reference (its own validation loss).",
        ),
    ]
    if ranking is None:
        blocks.append(Block("p", "The ranking stage has not finished: the candidates below are not ranked yet."))
    elif (w := next((c for c in ranking.candidates if c.name == ranking.winner), None)) is not None:
        own = done.get(w.name)
        teacher = rs["model"].architecture if rs.get("model") else None
        goes = ", which the distill stage trains further" if "distill" in conf.recipe.stages else ""
        blocks.append(
            Block(
                "p",
                f"Chosen: {w.name} ({w.kind}; layers / hidden / FFN / heads "
                f"{_arch(w.export_config, teacher, own and own.architecture)}), {_count(w.params)} "
                f"parameters ({w.params_change * 100:+.1f}% vs the teacher), validation loss "
                f"{w.loss:.4f} after the short distillation"
                + ("" if ranking.teacher_loss is None else f" (teacher {ranking.teacher_loss:.4f})")
                + f". It is the run's pruned model{goes}.",
            )
        )
        n, tau = len(ranking.candidates), ranking.kendall_tau
        first = min(ranking.candidates, key=lambda c: c.pruned_rank)
        pick = (
            "Ranking by the pruned-only loss alone would have picked the same winner."
            if first.name == w.name
            else f"Ranking by the pruned-only loss alone would have picked {first.name} (#{first.rank} after the "
            f"short distillation) instead of {w.name}."
        )
        blocks.append(
            Block(
                "p",
                f"Kendall τ = {tau:+.2f} over {n} candidates (1: the same order, 0: unrelated, "
                f"-1: reversed): the pruned-only ranking {agreement(tau)} the ranking after the "
                f"short distillation. {pick}" + (" With fewer than 3 candidates τ says little." if n < 3 else ""),
            )
        )
    failed = [r[1] for r in table[1] if r[-1] == "failed"]
    if failed:
        blocks.append(
            Block(
                "p",
                f"{len(failed)} candidate(s) failed (no manifest in their folder"
                + (
                    ", so not ranked): "
                    if ranking
                    else "; the ranking stage waits for every "
                    "candidate, so fix and re-run the same command to resume): "
                )
                + ", ".join(f"{name} ({task_name('candidate', name)}/)" for name in failed)
                + ".",
            )
        )
    blocks.append(Block("table", table))
    folder = Path(conf.run_dir) / "ranking"
    if ranking is not None:
        blocks += [Block("image", (folder / f, cap)) for f, cap in PLOTS["ranking"] if (folder / f).is_file()]
    return blocks


def build_blocks(conf: CompactLMConfig) -> list[Block]:
    run_dir = Path(conf.run_dir)
    ms = manifests(conf)
    rs = results(ms)
    blocks = [
        Block("h1", f"compactlm run {conf.run_name}"),
        Block(
            "p",
            f"recipe={conf.recipe.name} ({' → '.join(conf.recipe.stages)}), model={conf.model.name}, "
            f"data={conf.data.name}"
            + (f", prune={conf.prune.name}" if "prune" in ms else "")
            + (f", search={len(conf.search.resolved)} candidates" if "candidate" in conf.recipe.stages else ""),
        ),
    ]
    arch = architecture_rows(rs)
    if arch:
        blocks += [Block("h2", "Architecture"), Block("table", arch)]
    blocks += search_blocks(conf, rs)
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
    aligned = alignment_rows(rs)
    if aligned:
        blocks += [
            Block("h2", "Alignment"),
            Block(
                "p",
                "Each stage measured on its own held-out examples, before (the model it started from) "
                "and after. SFT: loss per answer token. DPO: share of pairs where the model gives the "
                "chosen answer the higher log-likelihood; reward margin = β·mean of the chosen-minus-"
                "rejected log-ratio to the reference (0 before by definition). GRPO: mean reward of "
                "greedy answers.",
            ),
            Block("table", aligned),
        ]
    quantized = quantized_rows(rs)
    if quantized:
        blocks += [
            Block("h2", "Quantized variants"),
            Block(
                "p",
                "Each variant against its own unquantized source, measured the same way: FP8/NVFP4 by "
                "ModelOpt's fake-quantized forward on the validation split; GGUF by llama.cpp's "
                "llama-perplexity on the held-out documents (the source is its own unquantized GGUF). "
                "KL and top-1 for GGUF: the file dequantized by transformers vs the source checkpoint.",
            ),
            Block("table", quantized),
        ]
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
    stage_rows = [
        [t, f"{m['wall_time_s']:.1f} s" if m else "-", m["finished_at"] if m else "not finished"] for t, m in ms.items()
    ]
    blocks += [Block("h2", "Stages"), Block("table", (["stage", "wall time", "finished"], stage_rows))]
    shown = {b.content[0] for b in blocks if b.kind == "image"}  # plots already shown in their own section
    images = [(run_dir / task / f, cap) for task, m in ms.items() if m for f, cap in PLOTS.get(split_task(task)[0], [])]
    images = [(p, c) for p, c in images if p.is_file() and p not in shown]
    if images:
        blocks.append(Block("h2", "Plots"))
        blocks += [Block("image", (p, c)) for p, c in images]
    return blocks


# ------------------------------------------------------------------------------------------ renderers
def to_markdown(blocks: list[Block], run_dir: Path) -> str:
    out = []
    for b in blocks:
        if b.kind == "h1":
            out.append(f"# {b.content}\n")
        elif b.kind == "h2":
            out.append(f"## {b.content}\n")
        elif b.kind == "p":
            out.append(f"{b.content}\n")
        elif b.kind == "table":
            header, rows = b.content
            out.append("| " + " | ".join(header) + " |")
            out.append("|" + "---|" * len(header))
            out += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
            out.append("")
        elif b.kind == "image":
            path, caption = b.content
            out.append(f"![{caption}]({path.relative_to(run_dir)})\n")
    return "\n".join(out)


CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}"
    "td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}img{max-width:100%}"
)


def to_html(blocks: list[Block]) -> str:
    title = next((b.content for b in blocks if b.kind == "h1"), "compactlm report")
    out = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head><body>"
    ]
    for b in blocks:
        if b.kind in ("h1", "h2"):
            out.append(f"<{b.kind}>{html.escape(b.content)}</{b.kind}>")
        elif b.kind == "p":
            out.append(f"<p>{html.escape(b.content)}</p>")
        elif b.kind == "table":
            header, rows = b.content
            out.append(
                "<table><thead><tr>"
                + "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
                + "</tr></thead><tbody>"
            )
            out += ["<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows]
            out.append("</tbody></table>")
        elif b.kind == "image":
            path, caption = b.content
            data = base64.b64encode(path.read_bytes()).decode()
            out.append(
                f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
    out.append("</body></html>")
    return "\n".join(out)


def write_report(conf: CompactLMConfig) -> tuple[Path, Path]:
    """Write `<run_dir>/report.md` and `<run_dir>/report.html` (atomically) and return their paths."""
    run_dir = Path(conf.run_dir)
    blocks = build_blocks(conf)
    md, page = run_dir / "report.md", run_dir / "report.html"
    atomic_write_text(md, to_markdown(blocks, run_dir))
    atomic_write_text(page, to_html(blocks))
    return md, page


# ------------------------------------------------------------------------------------------- compare
def comparison_blocks(confs: list[CompactLMConfig]) -> list[Block]:
    """Runs side by side (e.g. EXP candidates): architecture, parameters, quality, recovery and speed of
    each run's final student, every figure read from that run's manifests."""
    header = ["", *[c.run_name for c in confs]]
    rows: dict[str, list[str]] = {}
    searches = []

    def put(key: str, i: int, value: str) -> None:
        rows.setdefault(key, ["-"] * len(confs))[i] = value

    for i, conf in enumerate(confs):
        rs = results(manifests(conf))
        put("recipe", i, conf.recipe.name)
        put("prune preset", i, conf.prune.name if "prune" in conf.recipe.stages else "-")
        source = rs.get("prune") or search_winner(rs) or rs.get("model")
        if source:
            for k in ("hidden_size", "ffn_hidden_size", "num_layers", "num_attention_heads"):
                put(k, i, str(getattr(source.architecture, k)))
        ranking = rs.get("ranking")
        if ranking:
            put("search winner", i, ranking.winner)
            searches.append(search_summary(conf, rs))
        models = rs["evaluate"].models if rs.get("evaluate") else {}
        final = [label for label, _ in ordered(models) if label not in (TEACHER, "quantized")]
        if TEACHER in models:
            put("teacher perplexity", i, f"{models[TEACHER].perplexity:.3f}")
        if final:
            label, r = final[-1], models[final[-1]]
            put("student", i, label)
            put("student params", i, f"{r.params.total / 1e6:.1f}M")
            put("student perplexity", i, f"{r.perplexity:.3f}")
            if r.kl_to_teacher is not None:
                put("KL to teacher", i, f"{r.kl_to_teacher:.4f}")
            for task, v in r.tasks.items():
                if "acc" in v:
                    put(f"{task} acc", i, f"{v['acc']:.3f}")
            if TEACHER in models:
                for k, v in recovery(models[TEACHER], r).items():
                    put(f"recovery ({k})", i, _pct(v))
        if "quantized" in models:
            q = models["quantized"]
            put("quantized perplexity", i, f"{q.perplexity:.3f} ({q.format})")
        for run in rs["bench"].runs if rs.get("bench") else []:
            c = run.compare
            put(
                f"tok/s vs teacher (batch {run.batch_size})",
                i,
                f"{c['tokens_per_s_ratio']:.2f}x (ideal {c['ideal_speedup']:.2f}x)"
                if c.get("ideal_speedup")
                else f"{c['tokens_per_s_ratio']:.2f}x",
            )
    blocks = [
        Block("h1", "compactlm comparison: " + ", ".join(c.run_name for c in confs)),
        Block("p", "Each column is one run; every figure is read from that run's stage manifests."),
        Block("table", (header, [[k, *v] for k, v in rows.items()])),
    ]
    if searches:
        blocks += [
            Block("h2", "Candidate searches"),
            Block(
                "p",
                "One row per run that ranked candidate architectures: the winner (lowest validation "
                "loss after the short distillation), its parameters without lm_head and their change "
                "vs the teacher, and Kendall τ of the pruned-only ranking against the ranking after "
                "distillation (1: the same order, -1: reversed).",
            ),
            Block(
                "table",
                (
                    [
                        "run",
                        "candidates",
                        "winner",
                        "winner params",
                        "reduction",
                        "winner loss",
                        "pruned-only pick",
                        "Kendall τ",
                    ],
                    searches,
                ),
            ),
        ]
    return blocks


def search_summary(conf: CompactLMConfig, rs: dict[str, Any]) -> list[str]:
    """A run's search in one row of the comparison: run, candidates (and failed ones), winner, its parameters,
    reduction and loss, the pruned-only loss's pick, Kendall tau."""
    ranking: RankingResult = rs["ranking"]
    w = next((c for c in ranking.candidates if c.name == ranking.winner), None)
    failed = [r[1] for r in search_rows(conf, rs)[1] if r[-1] == "failed"]
    first = min(ranking.candidates, key=lambda c: c.pruned_rank, default=None)
    return [
        conf.run_name,
        f"{len(ranking.candidates)}" + (f" ({len(failed)} failed)" if failed else ""),
        ranking.winner,
        _count(w.params) if w else "-",
        f"{w.params_change * 100:+.1f}%" if w else "-",
        f"{w.loss:.4f}" if w else "-",
        first.name if first else "-",
        f"{ranking.kendall_tau:+.2f} ({agreement(ranking.kendall_tau, short=True)})",
    ]


def write_comparison(confs: list[CompactLMConfig], out_dir: Path) -> tuple[Path, Path]:
    """`<out_dir>/report.md` and `report.html` comparing `confs` side by side."""
    blocks = comparison_blocks(confs)
    md, page = out_dir / "report.md", out_dir / "report.html"
    atomic_write_text(md, to_markdown(blocks, out_dir))
    atomic_write_text(page, to_html(blocks))
    return md, page
