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
from compactlm.pipeline import Task, run_tasks, running
from compactlm.report_blocks import Block, num, ordered, pct, text_table
from compactlm.results import TEACHER, Architecture, result_of
from compactlm.run_config import CompactLMConfig
from compactlm.search.schema import CandidateResult, RankingResult, agreement

SEARCH_TOP = 5  # ranked candidates in the terminal summary


def manifests(conf: CompactLMConfig) -> dict[str, dict | None]:
    """task -> its manifest (None: not finished), for every task of the run in recipe order: each stage, and one
    `candidate-<name>` per search candidate (pipeline.run_tasks)."""
    return {task.name: read_manifest(task.folder(conf.run_dir)) for task in run_tasks(conf)}


def results(ms: dict[str, dict | None]) -> dict[str, Any]:
    """task -> its typed result (compactlm.results, by the stage its manifest names), None for a task that has not
    finished."""
    return {task: result_of(task, m) for task, m in ms.items()}


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
    for r in rs.values():
        if isinstance(r, CandidateResult):
            out[r.name] = r
    return out


def search_winner(rs: dict[str, Any]) -> CandidateResult | None:
    """The chosen candidate's own result (architecture, parameter counts), when the ranking finished."""
    ranking = rs.get("ranking")
    return search_candidates(rs).get(ranking.winner) if ranking else None


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
    tasks = [t.instance for t in run_tasks(conf) if t.stage == "candidate"]
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
        folder = Task("candidate", name).folder(conf.run_dir)
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
                num(ranking.teacher_loss, ".4f"),
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
                + ", ".join(f"{name} ({Task('candidate', name).name}/)" for name in failed)
                + ".",
            )
        )
    blocks.append(Block("table", table))
    folder = Path(conf.run_dir) / "ranking"
    if ranking is not None:
        blocks += [
            Block("image", (folder / f, cap)) for f, cap in stages.get("ranking").plots if (folder / f).is_file()
        ]
    return blocks


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
    rs = results(ms)
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
    blocks += search_blocks(conf, rs)
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
