"""The run report: terminal summary, `report.md` and a self-contained `report.html`, all from the manifests.

Every figure shown is read from a stage's `manifest.json` (one source of truth); the markdown and HTML
files are rendered from the same list of blocks, so they cannot disagree. Plots found in the stage
folders are embedded in the HTML as base64 PNGs.
"""

from __future__ import annotations

import base64
import html
from datetime import datetime
from pathlib import Path
from typing import Any

from compactlm import stages
from compactlm.evaluate.report import recovery
from compactlm.launch.headline import TRADEOFF_PNG, headline, plot_tradeoff, tradeoff_points
from compactlm.manifest import atomic_write_text, read_manifest
from compactlm.pipeline import run_tasks, running
from compactlm.report_blocks import Block, ordered, pct
from compactlm.results import TEACHER, RunResults, TaskState, result_of
from compactlm.run_config import CompactLMConfig
from compactlm.search.report import comparison_row, search_winner


def manifests(conf: CompactLMConfig) -> dict[str, dict | None]:
    """task -> its manifest (None: not finished), for every task of the run in recipe order: each stage, and one
    `candidate-<name>` per search candidate (pipeline.run_tasks)."""
    return {task.name: read_manifest(task.folder(conf.run_dir)) for task in run_tasks(conf)}


def results(conf: CompactLMConfig, ms: dict[str, dict | None] | None = None) -> RunResults:
    """task -> its typed result (compactlm.results, by the stage its manifest names), None for a task that has not
    finished, with each task's state (finished, running, stopped or not started) for the report functions; `ms`:
    the manifests when already read."""
    ms = manifests(conf) if ms is None else ms
    states = []
    for task in run_tasks(conf):
        folder = task.folder(conf.run_dir)
        if ms.get(task.name):
            state = "finished"
        elif not folder.is_dir():
            state = "not started"
        else:  # a stage process holds its folder (RUNNING), or an attempt stopped there
            state = "stopped" if running(folder) is None else "running"
        states.append(TaskState(task.stage, task.instance, task.name, state))
    return RunResults({task: result_of(task, m) for task, m in ms.items()}, states)


def _registered(conf: CompactLMConfig, what: str) -> list:
    """The report functions (`what`: "report" blocks or "summary" lines) of the recipe's stages, from the stage
    registry, each once, in pipeline order."""
    named = [getattr(s, what) for s in stages.specs() if getattr(s, what) and s.name in conf.recipe.stages]
    return [stages.load(dotted) for dotted in dict.fromkeys(named)]


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
    rs = results(conf, ms)
    lines += [line for fn in _registered(conf, "summary") for line in fn(conf, rs)]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ contents
ARCH_KEYS = ("model_type", "hidden_size", "ffn_hidden_size", "num_layers", "num_attention_heads", "num_key_value_heads")


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


def first_screen(rs: dict[str, Any], run_dir: Path) -> list[Block]:
    """What the report opens with: the headline figures, then the size/quality chart of every model and variant
    (written to `<run>/report_tradeoff.png`), each only where the run measured it."""
    blocks = []
    items = headline(rs, recovery)
    if items:
        blocks.append(Block("headline", items))
    points = tradeoff_points(rs)
    if len(points) > 1:
        caption = (
            "Size against quality of every model and variant the evaluate stage measured: weights on disk against "
            "perplexity recovery on its validation split (teacher perplexity / model perplexity); dashed lines "
            "through the teacher."
        )
        blocks.append(Block("image", (plot_tradeoff(points, run_dir / TRADEOFF_PNG), caption)))
    return blocks


def build_blocks(conf: CompactLMConfig) -> list[Block]:
    run_dir = Path(conf.run_dir)
    ms = manifests(conf)
    rs = results(conf, ms)
    blocks = [Block("h1", f"compactlm run {conf.run_name}"), *first_screen(rs, run_dir)]
    blocks += [
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
    blocks += [b for fn in _registered(conf, "report") for b in fn(conf, rs)]
    stage_rows = [
        [t, f"{m['wall_time_s']:.1f} s" if m else "-", m["finished_at"] if m else "not finished"] for t, m in ms.items()
    ]
    blocks += [Block("h2", "Stages"), Block("table", (["stage", "wall time", "finished"], stage_rows))]
    shown = {b.content[0] for b in blocks if b.kind == "image"}  # plots already shown in their own section
    images = [(run_dir / task / f, cap) for task, m in ms.items() if m for f, cap in stages.get(m["stage"]).plots]
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
        elif b.kind == "headline":
            out.append(" · ".join(f"**{figure}** {caption}" for figure, caption in b.content) + "\n")
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


# Wide tables fit the page (1280 px screens and up): header words may break anywhere (a task name such as
# heldout_continuation is one word), cells are compact, and a table wider than the page still scrolls inside its own
# box rather than pushing the page wider. The headline is a row of large figures that wraps on narrow screens.
CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
    ".table{max-width:100%;overflow-x:auto}"
    "table{border-collapse:collapse;margin:1em 0;font-size:14px}"
    "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}th{overflow-wrap:anywhere;min-width:3em}"
    "td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}img{max-width:100%}"
    ".headline{display:flex;flex-wrap:wrap;gap:1em;margin:1em 0}"
    ".headline div{flex:1 1 14em;border:1px solid #ccc;border-radius:6px;padding:.6em 1em;background:#f7f9fc}"
    ".headline b{display:block;font-size:2em}.headline span{color:#555}"
)


TABLE_CHARS = 120  # about what 1100 px hold at the CSS's 14 px font, padding included


def split_columns(header: list[str], rows: list[list[str]], budget: int = TABLE_CHARS) -> list[tuple[list, list]]:
    """A table too wide for the page as several tables, each repeating the first column (the row's name).

    A column's width is estimated in characters: its longest cell (numbers do not wrap), its header's longest word
    up to 8 characters (headers wrap, long words anywhere), plus 2 for padding. One table when it fits `budget`."""
    words = [max(map(len, str(h).split()), default=0) for h in header]
    widths = [max([len(str(r[i])) for r in rows] + [min(words[i], 8)]) + 2 for i in range(len(header))]
    if sum(widths) <= budget or len(header) < 3:
        return [(header, rows)]
    parts, current, used = [], [], widths[0]
    for i in range(1, len(header)):
        if current and used + widths[i] > budget:
            parts.append(current)
            current, used = [], widths[0]
        current.append(i)
        used += widths[i]
    parts.append(current)
    return [([header[0], *[header[i] for i in p]], [[r[0], *[r[i] for i in p]] for r in rows]) for p in parts]


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
        elif b.kind == "headline":
            figures = "".join(
                f"<div><b>{html.escape(figure)}</b><span>{html.escape(caption)}</span></div>"
                for figure, caption in b.content
            )
            out.append(f"<div class='headline'>{figures}</div>")
        elif b.kind == "table":
            for header, rows in split_columns(*b.content):
                out.append(
                    "<div class='table'><table><thead><tr>"
                    + "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
                    + "</tr></thead><tbody>"
                )
                out += ["<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows]
                out.append("</tbody></table></div>")
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
        rs = results(conf)
        put("recipe", i, conf.recipe.name)
        put("prune preset", i, conf.prune.name if "prune" in conf.recipe.stages else "-")
        source = rs.get("prune") or search_winner(rs) or rs.get("model")
        if source:
            for k in ("hidden_size", "ffn_hidden_size", "num_layers", "num_attention_heads"):
                put(k, i, str(getattr(source.architecture, k)))
        ranking = rs.get("ranking")
        if ranking:
            put("search winner", i, ranking.winner)
            searches.append(comparison_row(conf, rs))
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
                    put(f"recovery ({k})", i, pct(v))
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


def write_comparison(confs: list[CompactLMConfig], out_dir: Path) -> tuple[Path, Path]:
    """`<out_dir>/report.md` and `report.html` comparing `confs` side by side."""
    blocks = comparison_blocks(confs)
    md, page = out_dir / "report.md", out_dir / "report.html"
    atomic_write_text(md, to_markdown(blocks, out_dir))
    atomic_write_text(page, to_html(blocks))
    return md, page
