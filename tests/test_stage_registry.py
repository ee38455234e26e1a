"""A stage defined outside compactlm, added by one registry entry: launch.py checks its config, runs it in a recipe,
`launch.py status` and the report show its result, and the stage after it reads its model. Nothing in the source
tree is edited: the stage's package lives in a temporary folder, named by COMPACTLM_STAGES."""

from __future__ import annotations

import os
import textwrap

import pytest
from helpers import REPO, run_launch

from compactlm.manifest import read_manifest

PACKAGE = {
    "__init__.py": '''
        """A toy stage: copies the run's latest model and scales nothing; registered with one entry."""
        from compactlm.stages import StageSpec, register

        register(
            StageSpec(
                name="toy",
                package="toystage",
                stage="toystage.stage:ToyStage",
                result="toystage.schema:ToyResult",
                section="toy",
                config="toystage.schema:ToyConfig",
                model_label="toy",
                student=True,
                checks="toystage.schema:check",
                report="toystage.schema:report",
                summary="toystage.schema:summary",
            )
        )
    ''',
    "schema.py": '''
        from dataclasses import dataclass

        from compactlm.config import ConfigError
        from compactlm.report_blocks import Block


        @dataclass
        class ToyConfig:
            copies: int = 1
            """How many times the toy copies the model (only the last copy is kept)."""

            def __post_init__(self):
                if self.copies < 1:
                    raise ConfigError(f"toy.copies={self.copies} must be >= 1")


        @dataclass
        class ToyResult:
            source: str
            files: int

            def summary(self):
                return f"toy copy of {self.source}, {self.files} files"


        def check(conf, shape):
            if "evaluate" not in conf.recipe.stages:
                raise ConfigError("recipe.stages: the toy stage wants an evaluate stage after it")


        def report(conf, results):
            r = results["toy"]
            return [Block("h2", "Toy"), Block("p", f"The toy copied the {r.source} model ({r.files} files).")]


        def summary(conf, results):
            return ["", f"  toy: {results['toy'].summary()}"] if results.get("toy") else []
    ''',
    "stage.py": """
        import shutil

        from compactlm.pipeline import StageContext, StageOutput
        from toystage.schema import ToyResult


        class ToyStage:
            name = "toy"
            reads = ("toy",)
            keep = ()

            def run(self, ctx: StageContext) -> StageOutput:
                label, source = list(ctx.models().items())[-1]
                for _ in range(ctx.cfg.toy.copies):
                    out = ctx.stage_dir / "model"
                    shutil.rmtree(out, ignore_errors=True)
                    shutil.copytree(source, out)
                files = sum(1 for p in out.iterdir() if p.is_file())
                return StageOutput(ToyResult(source=label, files=files), outputs={"checkpoint": "model"})
    """,
}


def _args(tmp_path, model_dir, *extra):
    return [
        "recipe=eval",
        "recipe.stages=[model,data,toy,evaluate]",
        "model=local",
        f"model.path={model_dir}",
        "data=pydoc",
        "data.max_documents=20",
        "data.seq_len=32",
        "data.validation_sequences=4",
        "data.calibration_sequences=4",
        "data.max_train_sequences=8",
        "evaluate.generate_tokens=4",
        f"runs_root={tmp_path / 'runs'}",
        "run_name=toy",
        *extra,
    ]


@pytest.mark.slow
def test_a_stage_registered_from_outside_runs_in_a_recipe(tmp_path, tiny_llama_dir):
    package = tmp_path / "plugins" / "toystage"
    package.mkdir(parents=True)
    for name, text in PACKAGE.items():
        (package / name).write_text(textwrap.dedent(text).lstrip())
    env = {
        "COMPACTLM_STAGES": "toystage",
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(tmp_path / "plugins")]),
    }
    runs = tmp_path / "runs"

    # its config is checked by its own schema and by its own checks, before anything is written
    bad = run_launch(_args(tmp_path, tiny_llama_dir, "toy.copies=0"), env=env, timeout=300)
    assert bad.returncode == 2, bad.stdout + bad.stderr
    assert bad.stderr.strip().splitlines()[-1].endswith("toy.copies=0 must be >= 1"), bad.stderr
    no_eval = run_launch(_args(tmp_path, tiny_llama_dir, "recipe.stages=[model,data,toy]"), env=env, timeout=300)
    assert no_eval.returncode == 2 and "the toy stage wants an evaluate stage" in no_eval.stderr, no_eval.stderr
    assert not runs.exists()
    # without the registration, the stage is unknown (one line, exit 2)
    unknown = run_launch(_args(tmp_path, tiny_llama_dir), env={"COMPACTLM_STAGES": ""}, timeout=300)
    assert unknown.returncode == 2 and "toy" in unknown.stderr.strip().splitlines()[-1], unknown.stderr

    r = run_launch(_args(tmp_path, tiny_llama_dir, "toy.copies=2"), env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run_dir = runs / "toy"
    result = read_manifest(run_dir / "toy")["result"]
    assert result["source"] == "teacher" and result["files"] >= 2  # config.json and the weights at least
    # the next stage reads its model: evaluate measured it beside the teacher
    models = read_manifest(run_dir / "evaluate")["result"]["models"]
    assert set(models) == {"teacher", "toy"}
    assert models["toy"]["checkpoint"] == str(run_dir / "toy" / "model")
    assert models["toy"]["perplexity"] == pytest.approx(models["teacher"]["perplexity"], rel=1e-6)
    assert "toy: toy copy of teacher" in r.stdout  # the launcher's summary

    status = run_launch(["status", "run_name=toy", f"runs_root={runs}"], env=env, timeout=300)
    assert status.returncode == 0, status.stderr
    toy_line = next(line for line in status.stdout.splitlines() if line.split()[:1] == ["toy"])
    assert "toy copy of teacher" in toy_line, status.stdout
    report = (run_dir / "report.md").read_text()
    assert "## Toy" in report and "The toy copied the teacher model" in report


def test_the_tables_derived_from_the_registry():
    from compactlm import stages
    from compactlm.config import ConfigError

    assert stages.model_labels() == {
        "model": "teacher",
        "prune": "pruned",
        "ranking": "pruned",
        "distill": "distilled",
        "sft": "sft",
        "dpo": "dpo",
        "grpo": "grpo",
        "quantize": "quantized",
    }
    assert stages.student_labels() == ("grpo", "dpo", "sft", "distilled", "pruned")
    assert stages.search_order() == ("importance", "teacher_cache", "candidate", "ranking")
    assert stages.where(trains=True) == ("candidate", "distill", "sft", "dpo", "grpo")
    assert stages.where(multi_node=True) == ("distill", "sft", "dpo", "grpo")
    assert stages.where(cpu_only=True) == ("model", "data", "release")  # release copies, hashes and uploads
    assert set(stages.group_sections()) == {"model", "data", "prune", "align_data", "quantize"}
    assert stages.sections()["search"].endswith(":SearchConfig")
    with pytest.raises(ConfigError, match="stage 'prune' is registered already"):
        stages.register(stages.StageSpec(name="prune", package="x", stage="x.stage:X", result="x:R"))
    with pytest.raises(ConfigError, match="must be a Python identifier"):
        stages.register(stages.StageSpec(name="my-stage", package="x", stage="x.stage:X", result="x:R"))
    with pytest.raises(ConfigError, match="stage 'nope' is not one of model, data"):
        stages.get("nope")
