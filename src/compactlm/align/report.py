"""The alignment stages' report rows (sft, dpo, grpo: held-out before and after). Torch-free."""

from __future__ import annotations

from typing import Any

from compactlm.report_blocks import Block, pct, text_table


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
                pct(dpo.preference_accuracy_before),
                pct(dpo.preference_accuracy_after),
                f"reward margin {dpo.reward_margin_after:+.4f}, reward accuracy {pct(dpo.reward_accuracy_after)}, "
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


def report(conf, rs: dict[str, Any]) -> list:
    """The "Alignment" section."""
    blocks = []
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
    return blocks


def summary(conf, rs: dict[str, Any]) -> list:
    """The launcher's terminal lines."""
    lines = []
    aligned = alignment_rows(rs)
    if aligned:
        lines += ["", "  alignment (held-out examples; before = the stage's starting model)"]
        lines += ["  " + row for row in text_table(*aligned)]
    return lines
