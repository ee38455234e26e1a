"""What a distillation run shows while and after it trains: TensorBoard scalars and a loss-curve PNG."""

from __future__ import annotations

from pathlib import Path

from compactlm.manifest import atomic_file


class Scalars:
    """TensorBoard scalars in `<out_dir>/tensorboard` (a no-op object on ranks other than 0).

    On resume, `purge_step` drops events logged after the checkpoint by the interrupted run, so the
    curves show each step once.
    """

    def __init__(self, log_dir: Path | None, purge_step: int | None = None):
        self._writer = None
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter  # imports tensorboard (slow): only when logging

            self._writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def add(self, step: int, values: dict[str, float]) -> None:
        if self._writer is None:
            return
        for name, v in values.items():
            if v is not None:
                self._writer.add_scalar(name, v, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()


def plot_loss_curve(history: list[dict], evals: list[dict], path: Path, title: str = "distillation") -> None:
    """Train loss per step (left) and validation perplexity and KL (right), saved atomically as PNG."""
    import matplotlib  # the backend is chosen before pyplot is imported

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after the backend is set

    fig, (ax_l, ax_r) = plt.subplots(1, 2, figsize=(11, 4))
    if history:
        ax_l.plot([h["step"] for h in history], [h["loss"] for h in history], lw=1, label="train loss")
        if any(h.get("kl") is not None and h.get("ce") for h in history):
            ax_l.plot([h["step"] for h in history], [h["kl"] for h in history], lw=1, label="train KL")
    ax_l.set_xlabel("optimizer step")
    ax_l.set_ylabel("loss per token (nats)")
    ax_l.set_title("training")
    ax_l.legend(loc="upper right")
    if evals:
        steps = [e["step"] for e in evals]
        ax_r.plot(steps, [e["val_ppl"] for e in evals], "o-", color="tab:blue", label="val perplexity")
        ax_r.set_ylabel("student perplexity", color="tab:blue")
        ax_kl = ax_r.twinx()
        ax_kl.plot(steps, [e["val_kl"] for e in evals], "s--", color="tab:red", label="val KL")
        ax_kl.set_ylabel("KL(teacher ‖ student) per token", color="tab:red")
    ax_r.set_xlabel("optimizer step")
    ax_r.set_title("validation")
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
