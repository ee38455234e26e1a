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
from compactlm.results import MODEL_LABELS, TEACHER, BenchResult, ModelScores, result_of

# Pipeline order, whatever order the manifest's JSON (sorted keys) stored them in.
MODEL_ORDER = tuple(MODEL_LABELS.values())
PLOTS = {  # stage -> (file, caption)
    "importance": [("depth.png", "Per-layer depth importance"), ("width.png", "Per-layer width importance")],
    "distill": [("loss_curve.png", "Distillation loss and validation curves")],
    "sft": [("curves.png", "SFT: loss on the answer tokens and token accuracy per step")],
    "dpo": [("curves.png", "DPO: loss, reward margin and reward accuracy per step (training batches)")],
    "grpo": [("curves.png", "GRPO: mean reward of the sampled completions and their length per step")],
}


def ordered(models: dict[str, Any]) -> list[tuple[str, Any]]:
    rank = {k: i for i, k in enumerate(MODEL_ORDER)}
    return sorted(models.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0]))


def manifests(conf: CompactLMConfig) -> dict[str, dict | None]:
    return {stage: read_manifest(Path(conf.run_dir) / stage) for stage in conf.recipe.stages}


def results(ms: dict[str, dict | None]) -> dict[str, Any]:
    """stage -> its typed result (compactlm.results), None for a stage that has not finished."""
    return {stage: result_of(stage, m) for stage, m in ms.items()}


# ------------------------------------------------------------------------------------------- terminal
def summary_table(conf: CompactLMConfig, launched_at: float) -> str:
    """Stages (ran / reused, wall time) and, when the evaluate stage ran, its per-model table."""
    lines = ["", f"== compactlm summary: {conf.run_name} (recipe={conf.recipe.name}) =="]
    ms = manifests(conf)
    for stage, m in ms.items():
        if m is None:
            lines.append(f"  {stage:<10} NOT FINISHED")
            continue
        finished = datetime.fromisoformat(m["finished_at"]).timestamp()
        how = "ran" if finished >= int(launched_at) else "reused (up to date)"
        lines.append(f"  {stage:<10} {how:<20} {m['wall_time_s']:>8.1f} s")
    rs = results(ms)
    evaluation = rs.get("evaluate")
    if evaluation:
        lines.append("")
        lines.append(f"  evaluated on {evaluation.validation_sequences} validation sequences, "
                     f"device={evaluation.device} dtype={evaluation.dtype} threads={evaluation.threads}")
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
    fmt = lambda cells: "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return [fmt(header), "-" * len(fmt(header))] + [fmt(r) for r in rows]


# ------------------------------------------------------------------------------------------ contents
def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.1f}%"


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
    header = ["model", "params", "perplexity", "KL to teacher", "top-1 agreement", *[f"{t} acc" for t in tasks],
              "recovery (ppl)", *[f"recovery ({t})" for t in tasks], "recovery (aggregate)", "decode tok/s", "TPOT ms"]
    teacher = models.get(TEACHER)
    rows = []
    for label, r in ordered(models):
        rec = recovery(teacher, r) if teacher and label != TEACHER else {}
        acc = [r.tasks.get(t, {}).get("acc") for t in tasks]
        rows.append([
            label, f"{r.params.total / 1e6:.1f}M", f"{r.perplexity:.3f}", _num(r.kl_to_teacher, ".4f"),
            _pct(r.top1_agreement), *[_num(a, ".3f") for a in acc],
            _pct(rec.get("perplexity")), *[_pct(rec.get(f"{t} acc")) for t in tasks], _pct(rec.get("aggregate")),
            _num(r.output_tokens_per_s, ".1f"), _num(r.tpot_ms, ".1f"),
        ])
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
        rows.append([label, f"{r.params.total / 1e6:.1f}M", f"{r.output_tokens_per_s:.1f}",
                     _num(r.ttft_ms, ".1f"), _num(r.tpot_ms, ".1f"),
                     f"{speed:.2f}x" if speed else "-", f"{ideal:.2f}x" if ideal else "-"])
    return header, rows


def _num(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def bench_rows(bench: BenchResult) -> tuple[list[str], list[list[str]]]:
    """One row per (batch size, model): tokens/s, TTFT, TPOT, peak memory, and the student's ratios."""
    header = ["batch", "model", "output tok/s", "TTFT ms", "TPOT ms", "peak memory MiB", "tok/s vs teacher",
              "decode speed-up", "ideal (param ratio)"]
    rows = []
    for run in bench.runs:
        c, t = run.compare, run.models.get(TEACHER, {})
        for label, r in ordered(run.models):
            mem = r.get("peak_memory_bytes")
            if label == bench.student:
                ratios = [c.get("tokens_per_s_ratio"), c.get("decode_speedup"), c.get("ideal_speedup")]
            elif label != TEACHER:  # e.g. the student's quantized GGUF files: measured against the same teacher row
                tps, tpot = r.get("output_tokens_per_s"), r.get("tpot_ms")
                ratios = [tps / t["output_tokens_per_s"] if tps and t.get("output_tokens_per_s") else None,
                          t["tpot_ms"] / tpot if tpot and t.get("tpot_ms") else None, None]
            else:
                ratios = [None, None, None]
            rows.append([str(run.batch_size), label, _num(r.get("output_tokens_per_s"), ".1f"),
                         _num(r.get("ttft_ms"), ".1f"), _num(r.get("tpot_ms"), ".1f"),
                         _num(mem / 2**20 if mem else None, ".0f"), *[f"{x:.2f}x" if x else "-" for x in ratios]])
    if rows and all(r[5] == "-" for r in rows):  # an engine that reports no peak memory (llama.cpp, trtllm-bench)
        header, rows = header[:5] + header[6:], [r[:5] + r[6:] for r in rows]
    return header, rows


def quantized_rows(rs: dict[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    """FP8/NVFP4 (quantize stage) and GGUF (gguf stage) variants side by side: size, bits per weight, and
    quality retention against their own unquantized source measured the same way."""
    header = ["variant", "from", "size MiB", "bits/weight", "size vs source", "perplexity", "source perplexity",
              "retention (ppl)", "measured by", "KL to source", "top-1 vs source"]
    rows = []
    q = rs.get("quantize")
    if q is not None:
        fq = q.quality or {}
        ref, quant = fq.get("reference"), fq.get("quantized")
        rows.append([q.format, MODEL_LABELS[q.source_stage], f"{q.export['safetensors_bytes'] / 2**20:.1f}", "-",
                     f"{q.export['ratio_to_bf16']:.3f}x of bf16", _num(quant and quant["perplexity"], ".3f"),
                     _num(ref and ref["perplexity"], ".3f"),
                     _pct(ref["perplexity"] / quant["perplexity"]) if quant else "-", "ModelOpt fake-quant",
                     _num(quant and quant.get("kl_to_teacher"), ".5f"), _pct(quant and quant.get("top1_agreement"))])
    g = rs.get("gguf")
    if g is not None:
        for f in g.files:
            base = g.file(f.model, g.outtype)
            ppl = f.perplexity and f.perplexity["perplexity"]
            ref = base.perplexity and base.perplexity["perplexity"]
            rows.append([f"gguf {f.type}", f.model, f"{f.size_bytes / 2**20:.1f}", f"{f.bits_per_weight:.2f}",
                         f"{f.size_ratio:.3f}x of {g.outtype}", _num(ppl, ".3f"), _num(ref, ".3f"),
                         _pct(ref / ppl) if ppl and ref else "-", "llama-perplexity" if ppl else "-",
                         _num(f.hf and f.hf["kl_to_source"], ".5f"), _pct(f.hf and f.hf["top1_agreement_to_source"])])
    return (header, rows) if rows else None


ARCH_KEYS = ("model_type", "hidden_size", "ffn_hidden_size", "num_layers", "num_attention_heads", "num_key_value_heads")


def alignment_rows(rs: dict[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    """SFT -> DPO -> GRPO: each stage's own held-out measure, before (its starting model) and after."""
    header = ["stage", "from", "steps", "held-out measure", "before", "after", "also"]
    rows = []
    sft, dpo, grpo = rs.get("sft"), rs.get("dpo"), rs.get("grpo")
    if sft:
        rows.append(["sft", sft.train.source, str(sft.train.steps), f"answer loss ({sft.heldout_examples} examples)",
                     f"{sft.heldout_loss_before:.4f}", f"{sft.heldout_loss_after:.4f}", "-"])
    if dpo:
        name = f"dpo ({dpo.loss}" + (f", λ={dpo.dpop_lambda:g}" if dpo.dpop_lambda is not None else "") + ")"
        rows.append([name, dpo.train.source, str(dpo.train.steps), f"preference accuracy ({dpo.heldout_pairs} pairs)",
                     _pct(dpo.preference_accuracy_before), _pct(dpo.preference_accuracy_after),
                     f"reward margin {dpo.reward_margin_after:+.4f}, reward accuracy {_pct(dpo.reward_accuracy_after)}, "
                     f"chosen log p {dpo.chosen_logp_before:.2f} -> {dpo.chosen_logp_after:.2f}"])
    if grpo:
        parts = ", ".join(f"{k.rsplit('.', 1)[-1].rsplit(':', 1)[-1]} {grpo.heldout_reward_before[k]:.3f} -> "
                          f"{grpo.heldout_reward_after[k]:.3f}" for k in grpo.rewards)
        rows.append(["grpo", grpo.train.source, str(grpo.train.steps), f"mean reward ({grpo.heldout_problems} problems)",
                     f"{grpo.heldout_reward_before['total']:.3f}", f"{grpo.heldout_reward_after['total']:.3f}", parts])
    return (header, rows) if rows else None


def architecture_rows(rs: dict[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    cols = {}  # label -> (Architecture, ParamCounts)
    if rs.get("model"):
        cols[TEACHER] = (rs["model"].architecture, rs["model"].params)
    if rs.get("prune"):
        cols["pruned"] = (rs["prune"].architecture, rs["prune"].params_after)
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


def build_blocks(conf: CompactLMConfig) -> list[Block]:
    run_dir = Path(conf.run_dir)
    ms = manifests(conf)
    rs = results(ms)
    blocks = [Block("h1", f"compactlm run {conf.run_name}"),
              Block("p", f"recipe={conf.recipe.name} ({' → '.join(conf.recipe.stages)}), model={conf.model.name}, "
                         f"data={conf.data.name}" + (f", prune={conf.prune.name}" if "prune" in ms else ""))]
    arch = architecture_rows(rs)
    if arch:
        blocks += [Block("h2", "Architecture"), Block("table", arch)]
    evaluation, bench = rs.get("evaluate"), rs.get("bench")
    if evaluation:
        blocks += [Block("h2", "Quality and recovery"),
                   Block("p", f"Held-out validation split: {evaluation.validation_sequences} sequences. Recovery = "
                              "teacher perplexity / model perplexity, model / teacher task accuracy; aggregate = "
                              "mean of those and top-1 agreement."),
                   Block("table", quality_rows(evaluation.models))]
        speed = speed_rows(evaluation.models)
        if speed[1] and not bench:
            blocks += [Block("h2", "Speed"),
                       Block("p", f"Greedy decoding at batch 1 on {evaluation.device} ({evaluation.dtype}, "
                                  f"{evaluation.threads} threads); the ideal ratio is the parameter ratio."),
                       Block("table", speed)]
    aligned = alignment_rows(rs)
    if aligned:
        blocks += [Block("h2", "Alignment"),
                   Block("p", "Each stage measured on its own held-out examples, before (the model it started from) "
                              "and after. SFT: loss per answer token. DPO: share of pairs where the model gives the "
                              "chosen answer the higher log-likelihood; reward margin = β·mean of the chosen-minus-"
                              "rejected log-ratio to the reference (0 before by definition). GRPO: mean reward of "
                              "greedy answers."),
                   Block("table", aligned)]
    quantized = quantized_rows(rs)
    if quantized:
        blocks += [Block("h2", "Quantized variants"),
                   Block("p", "Each variant against its own unquantized source, measured the same way: FP8/NVFP4 by "
                              "ModelOpt's fake-quantized forward on the validation split; GGUF by llama.cpp's "
                              "llama-perplexity on the held-out documents (the source is its own unquantized GGUF). "
                              "KL and top-1 for GGUF: the file dequantized by transformers vs the source checkpoint."),
                   Block("table", quantized)]
    if bench:
        where = (f"{bench.source} on {bench.device} ({bench.dtype}, {bench.threads} threads)"
                 if bench.device else bench.source)
        blocks += [Block("h2", "Speed"),
                   Block("p", f"Teacher vs {bench.student}, {where}. Ideal = weights read per decoded token, "
                              "teacher / student (decoding is memory-bound)."),
                   Block("table", bench_rows(bench))]
    stage_rows = [[s, f"{m['wall_time_s']:.1f} s" if m else "-", m["finished_at"] if m else "not finished"]
                  for s, m in ms.items()]
    blocks += [Block("h2", "Stages"), Block("table", (["stage", "wall time", "finished"], stage_rows))]
    images = [(run_dir / stage / f, cap) for stage, plots in PLOTS.items() if ms.get(stage) for f, cap in plots]
    images = [(p, c) for p, c in images if p.is_file()]
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


CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
       "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}"
       "td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}img{max-width:100%}")


def to_html(blocks: list[Block]) -> str:
    title = next((b.content for b in blocks if b.kind == "h1"), "compactlm report")
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{CSS}</style></head><body>"]
    for b in blocks:
        if b.kind in ("h1", "h2"):
            out.append(f"<{b.kind}>{html.escape(b.content)}</{b.kind}>")
        elif b.kind == "p":
            out.append(f"<p>{html.escape(b.content)}</p>")
        elif b.kind == "table":
            header, rows = b.content
            out.append("<table><thead><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr></thead><tbody>")
            out += ["<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows]
            out.append("</tbody></table>")
        elif b.kind == "image":
            path, caption = b.content
            data = base64.b64encode(path.read_bytes()).decode()
            out.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
                       f"<figcaption>{html.escape(caption)}</figcaption></figure>")
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

    def put(key: str, i: int, value: str) -> None:
        rows.setdefault(key, ["-"] * len(confs))[i] = value

    for i, conf in enumerate(confs):
        rs = results(manifests(conf))
        put("recipe", i, conf.recipe.name)
        put("prune preset", i, conf.prune.name if "prune" in conf.recipe.stages else "-")
        source = rs.get("prune") or rs.get("model")
        if source:
            for k in ("hidden_size", "ffn_hidden_size", "num_layers", "num_attention_heads"):
                put(k, i, str(getattr(source.architecture, k)))
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
            put(f"tok/s vs teacher (batch {run.batch_size})", i,
                f"{c['tokens_per_s_ratio']:.2f}x (ideal {c['ideal_speedup']:.2f}x)" if c.get("ideal_speedup") else
                f"{c['tokens_per_s_ratio']:.2f}x")
    return [Block("h1", "compactlm comparison: " + ", ".join(c.run_name for c in confs)),
            Block("p", "Each column is one run; every figure is read from that run's stage manifests."),
            Block("table", (header, [[k, *v] for k, v in rows.items()]))]


def write_comparison(confs: list[CompactLMConfig], out_dir: Path) -> tuple[Path, Path]:
    """`<out_dir>/report.md` and `report.html` comparing `confs` side by side."""
    blocks = comparison_blocks(confs)
    md, page = out_dir / "report.md", out_dir / "report.html"
    atomic_write_text(md, to_markdown(blocks, out_dir))
    atomic_write_text(page, to_html(blocks))
    return md, page
