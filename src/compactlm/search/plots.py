"""PNG figures of a candidate search (matplotlib Agg, no display needed), written atomically.

`plot_pareto`: parameters vs validation loss after the short distillation, the Pareto front and the winner, with
each candidate's pruned-only loss beside it (how the ranking changed). `plot_search_curves`: validation loss
and KL per step of every candidate's short distillation.
"""

from __future__ import annotations

from pathlib import Path

# Figure objects without pyplot render through Agg and never touch the global backend or a display.
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter

from compactlm.manifest import atomic_file
from compactlm.search.schema import CandidateResult, RankedCandidate, RankingResult, agreement

# kind -> (color, marker); an unknown kind gets the last entry's look
KIND_STYLE = {
    "depth": ("tab:blue", "o"),
    "ffn": ("tab:orange", "s"),
    "hidden": ("tab:green", "D"),
    "heads": ("tab:purple", "^"),
    "hybrid": ("tab:red", "P"),
    "other": ("tab:gray", "v"),
}


def kind_style(kind: str) -> tuple[str, str]:
    return KIND_STYLE.get(kind, KIND_STYLE["other"])


def param_unit(counts: list[int | float]) -> tuple[float, str]:
    """(divisor, suffix) that shows the largest of `counts` with a few digits: B, M or K."""
    top = max(counts, default=0)
    return next(((d, s) for d, s in ((1e9, "B"), (1e6, "M"), (1e3, "K")) if top >= d), (1.0, ""))


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def _beside(params: int, cands: list[RankedCandidate], dy: int) -> dict:
    """Where a point's name goes: to its right, or to its left in the right third of the x range (the text
    stays inside the axes)."""
    lo, hi = min(c.params for c in cands), max(c.params for c in cands)
    left = hi > lo and (params - lo) / (hi - lo) > 0.66
    return {"xytext": (-5 if left else 5, dy), "ha": "right" if left else "left"}


def _draw_candidates(ax, result: RankingResult, scale: float, with_pruned: bool, label: str) -> None:
    """Distilled points by kind (with the pruned-only ones, hollow and joined to them, when `with_pruned`),
    the Pareto front, the winner and the teacher's loss. `label`: "distilled" names the distilled points with
    both ranks, "pruned" names the pruned-only points (the distilled ones are named in another panel)."""
    cands = result.candidates
    if with_pruned:
        for c in cands:
            color, marker = kind_style(c.kind)
            x = c.params / scale
            ax.plot([x, x], [c.pruned_loss, c.loss], color=color, lw=0.8, alpha=0.35, zorder=1)
            ax.scatter(
                [x],
                [c.pruned_loss],
                marker=marker,
                s=40,
                facecolors="none",
                edgecolors=color,
                alpha=0.45,
                linewidths=1.0,
                zorder=2,
            )
            if label == "pruned":
                ax.annotate(
                    f"p#{c.pruned_rank}",
                    (x, c.pruned_loss),
                    textcoords="offset points",
                    fontsize=7,
                    color="dimgray",
                    zorder=6,
                    **_beside(c.params, cands, 2),
                )
    kinds_seen: set[str] = set()
    order = list(KIND_STYLE)
    for c in sorted(cands, key=lambda c: order.index(c.kind) if c.kind in order else len(order)):
        color, marker = kind_style(c.kind)
        ax.scatter(
            [c.params / scale],
            [c.loss],
            marker=marker,
            s=48,
            color=color,
            edgecolors="black",
            linewidths=0.5,
            zorder=4,
            label=None if c.kind in kinds_seen else c.kind,
        )
        kinds_seen.add(c.kind)
        if label == "distilled":  # the rank only: the key beside the plot names it (long names collide)
            ax.annotate(
                f"#{c.rank}",
                (c.params / scale, c.loss),
                textcoords="offset points",
                fontsize=8,
                fontweight="bold",
                zorder=6,
                **_beside(c.params, cands, 4),
            )
    front = sorted((c for c in cands if c.pareto), key=lambda c: c.params)
    if front:
        ax.plot(
            [c.params / scale for c in front],
            [c.loss for c in front],
            color="black",
            lw=1.2,
            ls="-",
            zorder=3,
            label="Pareto front",
        )
    winner = next((c for c in cands if c.name == result.winner), None)
    if winner is not None:
        ax.scatter(
            [winner.params / scale],
            [winner.loss],
            marker="*",
            s=320,
            color="gold",
            edgecolors="black",
            linewidths=0.9,
            zorder=5,
            label=f"chosen: {winner.name}",
        )
        ax.annotate(
            "chosen",
            (winner.params / scale, winner.loss),
            textcoords="offset points",
            xytext=(-10, -16),
            fontsize=9,
            fontweight="bold",
            ha="right",
            zorder=6,
        )
    if result.teacher_loss is not None:
        ax.axhline(result.teacher_loss, color="gray", ls="--", lw=1, label=f"teacher ({result.teacher_loss:.3f})")


def plot_pareto(result: RankingResult, path: str | Path) -> Path:
    """Parameters (without lm_head) vs validation loss after the short distillation, one point per candidate
    marked by kind and named; the Pareto front joined by a line; the winner a star. Each candidate's pruned-only
    loss is a faint hollow marker joined to its distilled point, so the reader sees how distillation reordered
    them. When the pruned-only losses dwarf the spread after distillation, a second panel shows the distilled
    points alone at a readable scale."""
    cands: list[RankedCandidate] = result.candidates
    scale, unit = param_unit([c.params for c in cands])
    losses = [c.loss for c in cands]
    everything = losses + [c.pruned_loss for c in cands]
    spread = (max(losses) - min(losses)) if cands else 0.0
    full = (max(everything) - min(everything)) if cands else 0.0
    zoom = len(cands) > 1 and full > 4 * max(spread, 1e-9)
    fig = Figure(figsize=(14 if zoom else 9, 6), layout="constrained")
    axes = fig.subplots(1, 2 if zoom else 1, squeeze=False)[0]
    xlabel = f"parameters without lm_head ({unit})" if unit else "parameters without lm_head"

    ax = axes[0]
    _draw_candidates(ax, result, scale, with_pruned=True, label="pruned" if zoom else "distilled")
    ax.margins(x=0.2)
    ax.scatter(
        [], [], marker="o", s=40, facecolors="none", edgecolors="gray", label="pruned only (before distillation)"
    )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"validation loss ({result.metric})")
    ax.grid(alpha=0.3)
    if result.teacher_params:
        teacher = result.teacher_params / scale
        top = ax.secondary_xaxis(
            "top", functions=(lambda x: (x / teacher - 1) * 100, lambda pct: (pct / 100 + 1) * teacher)
        )
        top.set_xlabel("change vs teacher (%)")
    if zoom:
        ax.set_title("pruned only (hollow) → after the short distillation (filled)")
        z = axes[1]
        _draw_candidates(z, result, scale, with_pruned=False, label="distilled")
        z.margins(x=0.2)
        pad = max(spread * 0.15, 1e-3)
        low = min(losses + ([result.teacher_loss] if result.teacher_loss is not None else []))
        z.set_ylim(low - pad, max(losses) + pad)
        z.set_xlabel(xlabel)
        z.set_ylabel(f"validation loss after the short distillation ({result.metric})")
        z.set_title("after the short distillation (zoomed)")
        z.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    axes[-1].legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, borderaxespad=0)
    key = ["#  candidate (pruned-only #)"] + [f"{c.rank:<2} {c.name} ({c.pruned_rank})" for c in cands]
    axes[-1].text(
        1.02, 0.0, "\n".join(key), transform=axes[-1].transAxes, fontsize=8, family="monospace", va="bottom", ha="left"
    )
    tau = result.kendall_tau
    plural = "" if len(cands) == 1 else "s"
    fig.suptitle(
        f"Candidate search: {len(cands)} candidate{plural}, winner {result.winner}; Kendall τ pruned-only vs "
        f"distilled = {tau:+.2f} ({agreement(tau, short=True)})"
    )
    return _save(fig, path)


def plot_search_curves(candidates: list[CandidateResult], path: str | Path, winner: str | None = None) -> Path:
    """Validation loss (left) and KL to the teacher (right) per step of each candidate's short distillation, one
    line per candidate; step 0 is the pruned-only model when the curve does not start there. The winner's line
    is drawn thicker."""
    fig = Figure(figsize=(13, 5), layout="constrained")
    axes = fig.subplots(1, 2)
    colors = [f"C{i % 10}" for i in range(len(candidates))]
    for c, color in zip(candidates, colors):
        points = sorted(c.curve, key=lambda p: p["step"])
        if not points or points[0]["step"] > 0:
            points = [{"step": 0, "val_nll": c.pruned_loss, "val_kl": c.pruned_kl}, *points]
        best = c.name == winner
        _, marker = kind_style(c.kind)
        for ax, key in zip(axes, ("val_nll", "val_kl")):
            xs = [p["step"] for p in points if p.get(key) is not None]
            ys = [p[key] for p in points if p.get(key) is not None]
            ax.plot(
                xs,
                ys,
                color=color,
                marker=marker,
                ms=4,
                lw=2.6 if best else 1.2,
                label=f"{c.name} ({c.kind})" + (" — chosen" if best else ""),
            )
    for ax, what in zip(axes, ("validation loss (NLL per token)", "validation KL(teacher ‖ student) per token")):
        ax.set_xlabel("step of the short distillation")
        ax.set_ylabel(what)
        ax.set_yscale("log")
        for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
            axis(FormatStrFormatter("%.3g"))
        ax.grid(alpha=0.3, which="both")
    axes[0].set_title("validation loss")
    axes[1].set_title("KL to the teacher")
    if candidates:
        axes[0].legend(loc="best", fontsize=8)
    fig.suptitle(f"Short distillation of {len(candidates)} candidates (step 0: pruned only)")
    return _save(fig, path)
