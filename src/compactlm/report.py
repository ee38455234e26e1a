"""The terminal summary at the end of `launch.py`, read from the stage manifests (one source of truth)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from compactlm.config import CompactLMConfig
from compactlm.manifest import read_manifest


def summary_table(conf: CompactLMConfig, launched_at: float) -> str:
    """Stages (ran / reused, wall time) and, when the evaluate stage ran, its per-model table."""
    run_dir = Path(conf.run_dir)
    lines = ["", f"== compactlm summary: {conf.run_name} (recipe={conf.recipe.name}) =="]
    evaluation = None
    for stage in conf.recipe.stages:
        m = read_manifest(run_dir / stage)
        if m is None:
            lines.append(f"  {stage:<10} NOT FINISHED")
            continue
        finished = datetime.fromisoformat(m["finished_at"]).timestamp()
        how = "ran" if finished >= int(launched_at) else "reused (up to date)"
        lines.append(f"  {stage:<10} {how:<20} {m['wall_time_s']:>8.1f} s")
        if stage == "evaluate":
            evaluation = m["metrics"]
    if evaluation:
        lines.append("")
        lines.append(f"  evaluated on {evaluation['validation_sequences']} validation sequences, "
                     f"device={evaluation['device']} dtype={evaluation['dtype']} threads={evaluation['threads']}")
        lines.append(model_table(evaluation["models"]))
    return "\n".join(lines)


# Pipeline order, whatever order the manifest's JSON (sorted keys) stored them in.
MODEL_ORDER = ("teacher", "pruned", "distilled", "quantized")


def ordered(models: dict[str, dict]) -> list[tuple[str, dict]]:
    rank = {k: i for i, k in enumerate(MODEL_ORDER)}
    return sorted(models.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0]))


def model_table(models: dict[str, dict]) -> str:
    head = f"  {'model':<10}{'params':>10}{'perplexity':>12}{'KL':>9}{'top-1':>8}{'fwd tok/s':>11}{'decode tok/s':>14}{'TPOT ms':>9}"
    rows = [head, "  " + "-" * (len(head) - 2)]
    for label, r in ordered(models):
        kl = f"{r['kl_to_teacher']:.4f}" if "kl_to_teacher" in r else "-"
        agree = f"{r['top1_agreement'] * 100:.1f}%" if "top1_agreement" in r else "-"
        dec = f"{r['output_tokens_per_s']:.1f}" if "output_tokens_per_s" in r else "-"
        tpot = f"{r['tpot_ms']:.1f}" if "tpot_ms" in r else "-"
        rows.append(f"  {label:<10}{r['params']['total'] / 1e6:>9.1f}M{r['perplexity']:>12.3f}{kl:>9}{agree:>8}"
                    f"{r['forward_tokens_per_s']:>11.0f}{dec:>14}{tpot:>9}")
    return "\n".join(rows)
