"""The deploy stage: serve the run's models with TensorRT-LLM and measure them with trtllm-bench (GPU,
TensorRT-LLM image).

Deploys the teacher, the final student (distilled, else pruned) and the quantized export. Where
TensorRT-LLM is not installed the stage stops with a message saying where it runs (exit code 4).
"""

from __future__ import annotations

import sys
from pathlib import Path

from compactlm.deploy.schema import DeployResult
from compactlm.deploy.trtllm import DeployUnavailable, run_deploy
from compactlm.pipeline import EXIT_UNAVAILABLE, StageContext, StageOutput
from compactlm.results import TEACHER, student_label


class DeployStage:
    name = "deploy"
    reads = ("deploy",)
    keep = ()

    def run(self, ctx: StageContext) -> StageOutput:
        models = deploy_targets(ctx)
        print(f"[deploy] {', '.join(f'{k}: {v}' for k, v in models.items())}", flush=True)
        try:
            metrics = run_deploy({k: str(v) for k, v in models.items()}, ctx.stage_dir, ctx.cfg.deploy)
        except DeployUnavailable as e:
            print(f"[deploy] cannot run here: {e}", file=sys.stderr, flush=True)
            raise SystemExit(EXIT_UNAVAILABLE) from None
        return StageOutput(DeployResult(models=metrics), outputs={label: label for label in metrics})


def deploy_targets(ctx: StageContext) -> dict[str, Path]:
    """label -> checkpoint folder of every model the deploy stage serves, in report order: the teacher, the
    final student and the quantized export."""
    models = ctx.models()
    keep = {TEACHER, student_label(models), "quantized"}
    return {label: path for label, path in models.items() if label in keep}
