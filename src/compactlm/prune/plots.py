"""PNG summaries of importance scores (matplotlib Agg, no display needed), written atomically."""

from __future__ import annotations

from pathlib import Path

# Figure objects without pyplot render through Agg and never touch the global backend or a display.
from matplotlib.figure import Figure

from compactlm.manifest import atomic_file
from compactlm.prune.importance import ImportanceScores


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def plot_depth(scores: ImportanceScores, path: str | Path) -> Path:
    """Bar chart of per-layer block influence; a second panel with the lm_loss block scores when present."""
    lm = scores.depth_lm_loss
    fig = Figure(figsize=(10, 6 if lm else 3.5), layout="constrained")
    axes = fig.subplots(2 if lm else 1, 1, squeeze=False)[:, 0]
    depth = scores.depth.float().numpy()
    ax = axes[0]
    ax.bar(range(len(depth)), depth, color="tab:blue")
    ax.set_xlabel("layer")
    ax.set_ylabel("Σ (1 − cos(in, out))")
    ax.set_title(f"Block influence per layer (higher = more important; {scores.num_samples} samples)")
    if lm:
        starts = sorted(lm)
        ax = axes[1]
        # Points, not bars from 0: the differences between blocks are small next to the loss itself.
        losses = [lm[s] for s in starts]
        ax.plot(starts, losses, marker="o", color="tab:orange", label="block skipped")
        best = min(starts, key=lambda s: (lm[s], s))
        ax.plot([best], [lm[best]], marker="*", ms=14, color="tab:red", ls="none", label="lowest (dropped)")
        if "lm_loss_full" in scores.extra:
            ax.axhline(scores.extra["lm_loss_full"], color="k", ls="--", lw=1, label="no layer skipped")
        ax.set_xticks(starts)
        ax.legend(loc="best")
        ax.set_xlabel(f"first skipped layer (block of {scores.depth_lm_loss_block_size})")
        ax.set_ylabel("LM loss (nats/token)")
        ax.set_title("LM loss with the block skipped (lower = safer to drop)")
    return _save(fig, path)


def plot_width(scores: ImportanceScores, path: str | Path) -> Path:
    """Per-layer min/mean/max of FFN-neuron and head scores, and all hidden-channel scores sorted."""
    fig = Figure(figsize=(10, 9), layout="constrained")
    axes = fig.subplots(3, 1)
    for ax, t, what in ((axes[0], scores.ffn, "FFN neuron"), (axes[1], scores.heads, "attention head")):
        t = t.float()
        x = range(t.shape[0])
        lo, mean, hi = t.min(dim=1).values.numpy(), t.mean(dim=1).numpy(), t.max(dim=1).values.numpy()
        ax.fill_between(x, lo, hi, alpha=0.25, label="min–max")
        ax.plot(x, mean, marker="o", label="mean")
        ax.set_xlabel("layer")
        ax.set_ylabel("score")
        ax.set_title(f"{what} importance per layer ({t.shape[1]} per layer)")
        ax.legend(loc="upper left")
    hidden = scores.hidden.float().sort(descending=True).values.numpy()
    ax = axes[2]
    ax.plot(range(len(hidden)), hidden)
    ax.set_xlabel("hidden channel rank")
    ax.set_ylabel("score")
    ax.set_title(f"Hidden-channel importance, sorted ({len(hidden)} channels)")
    return _save(fig, path)
