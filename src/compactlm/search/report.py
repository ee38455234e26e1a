"""The search's part of the run report and of the terminal summary: the candidates' table (ranked, finished, running,
failed), the winner and what Kendall's tau says about ranking by the pruned-only loss, and a run's search in one row
of a comparison. Every figure comes from the candidate, ranking, teacher cache and model results (`rs`, as the
launcher reads them from the manifests); a candidate without a manifest is shown by its task's state."""

from __future__ import annotations

from pathlib import Path

from compactlm import stages
from compactlm.report_blocks import Block, num, text_table
from compactlm.results import TEACHER, Architecture, RunResults
from compactlm.search.schema import CandidateResult, RankingResult, agreement

SEARCH_TOP = 5  # ranked candidates in the terminal summary

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


def search_candidates(rs: RunResults) -> dict[str, CandidateResult]:
    """candidate name -> its result, for every finished `candidate-<name>` task."""
    out = {}
    for r in rs.values():
        if isinstance(r, CandidateResult):
            out[r.name] = r
    return out


def search_winner(rs: RunResults) -> CandidateResult | None:
    """The chosen candidate's own result (architecture, parameter counts), when the ranking finished."""
    ranking = rs.get("ranking")
    return search_candidates(rs).get(ranking.winner) if ranking else None


def search_rows(conf, rs: RunResults, plain: bool = False) -> tuple[list[str], list[list[str]]] | None:
    """One row per search candidate: ranked ones by rank (from the ranking stage), then finished but unranked
    ones, then those without a manifest, and the teacher as the reference. None when the run has no search.
    `plain`: ASCII for the terminal.

    status: winner / ranked; finished (not ranked yet); for a candidate without a manifest, failed (the ranking
    went ahead without it, or its folder holds a stopped attempt), running (a stage process has its folder) or
    not started."""
    ranking: RankingResult | None = rs.get("ranking")
    done = search_candidates(rs)
    tasks = [t for t in rs.tasks if t.stage == "candidate"]
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
    for task in tasks:
        name = task.instance
        if name in ranked or name in done:
            continue
        plan = planned.get(name)
        counted = plan is not None and plan.params > 0
        # without a manifest: failed once the ranking went ahead without it, or when no process runs its attempt
        state = "failed" if ranking or task.state == "stopped" else task.state
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


def report(conf, rs: RunResults) -> list[Block]:
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
                + ", ".join(
                    f"{t.instance} ({t.name}/)" for t in rs.tasks if t.stage == "candidate" and t.instance in failed
                )
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


def summary(conf, rs: RunResults) -> list[str]:
    """The terminal summary's search lines, once the ranking finished: the winner, what Kendall's tau says, and the
    first SEARCH_TOP ranked candidates with every failed one."""
    lines: list[str] = []
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
    return lines


def comparison_row(conf, rs: RunResults) -> list[str]:
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
