"""The distill stage: logit distillation of the pruned student from the teacher; resumable, torchrun-aware.

`checkpoint/` and `teacher_cache/` survive a restart of this stage so that a killed or preempted run
resumes, but only while the stage's config and inputs are unchanged (`resume_key.json`).
"""

from __future__ import annotations

from compactlm.distill.schema import DistillResult
from compactlm.distill.train import distill
from compactlm.pipeline import StageContext, StageOutput


class DistillStage:
    name = "distill"
    reads = ("distill", "engine", "seed")
    keep = ("checkpoint", "teacher_cache")

    def run(self, ctx: StageContext) -> StageOutput:
        data_dir = ctx.upstream_output("data", "train").parent
        # the model stage's manifest already holds the teacher's digest (the teacher cache is keyed on it)
        teacher_digest = ctx.upstream["model"]["output_digests"]["checkpoint"]
        # the student: the prune stage's, or the winner of a search (the ranking stage's output)
        source = "prune" if "prune" in ctx.upstream else "ranking"
        metrics = distill(
            ctx.upstream_output("model", "checkpoint"),
            ctx.upstream_output(source, "checkpoint"),
            data_dir,
            ctx.stage_dir,
            ctx.cfg.distill,
            ctx.cfg.engine,
            ctx.cfg.seed,
            teacher_digest=teacher_digest,
        )
        outputs = {"checkpoint": "student", "loss_curve": "loss_curve.png", "history": "history.json"}
        engine = metrics.pop("engine")
        return StageOutput(DistillResult(**metrics), outputs=outputs, engine=engine)
