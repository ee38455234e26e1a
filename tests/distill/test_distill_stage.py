"""recipe=prune_distill in-process on a tiny model: teacher, pruned, distilled and quantized side by side."""

from __future__ import annotations

from helpers import compose

from compactlm.launch.launcher import write_run_dir
from compactlm.launch.report import write_report
from compactlm.launch.validate import to_config
from compactlm.manifest import read_manifest
from compactlm.model.precision import resolve_precision
from compactlm.pipeline import CONFIG_FILE, run_stage

STAGES = ["model", "data", "importance", "prune", "distill", "quantize", "evaluate"]


def test_prune_distill_recipe(tmp_path, tiny_llama_dir, capsys):
    conf = to_config(
        compose(
            [
                "recipe=prune_distill",
                f"recipe.stages=[{','.join(STAGES)}]",
                "model=local",
                f"model.path={tiny_llama_dir}",
                "data=pydoc",
                "data.max_documents=20",
                "data.seq_len=32",
                "data.validation_sequences=8",
                "data.calibration_sequences=8",
                "data.max_train_sequences=64",
                "evaluate.generate_tokens=2",
                "prune.model=null",
                "prune.export_config.num_layers=3",
                "prune.export_config.ffn_hidden_size=64",
                "distill.max_steps=12",
                "distill.lr=1e-3",
                "distill.min_lr=1e-4",
                "distill.warmup_steps=2",
                "distill.micro_batch_size=4",
                "distill.global_batch_size=8",
                "distill.eval_every=6",
                "distill.save_every=6",
                f"runs_root={tmp_path}",
            ]
        )
    )
    conf.run_dir = str(tmp_path / conf.run_name)
    run_dir = write_run_dir(conf)
    for stage in STAGES:
        assert run_stage(stage, run_dir / CONFIG_FILE) == 0, stage
    models = read_manifest(run_dir / "evaluate")["result"]["models"]
    assert set(models) == {"teacher", "pruned", "distilled", "quantized"}
    assert models["quantized"]["source"] == "distilled"
    # distillation pulls the pruned student towards the teacher (a random tiny teacher has no useful
    # perplexity to recover; the SmolLM2 demo test checks perplexity too)
    assert models["distilled"]["kl_to_teacher"] < models["pruned"]["kl_to_teacher"]
    distill = read_manifest(run_dir / "distill")
    assert distill["result"]["steps"] == 12
    # every stage that ran a model recorded the precision it resolved, the same one in this process
    precision = resolve_precision(conf.engine, "cpu").record()
    for stage in ("importance", "prune", "distill", "quantize", "evaluate"):
        assert read_manifest(run_dir / stage)["engine"] == precision, stage
    assert read_manifest(run_dir / "data")["engine"] is None
    assert (run_dir / "distill" / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    md, page = write_report(conf)
    text = md.read_text()
    for label in ("teacher", "pruned", "distilled", "quantized"):
        assert f"| {label} |" in text
    # the trade-off chart first, then importance (depth, width) and the distillation curves
    assert "loss_curve.png" in text and page.read_text().count("data:image/png;base64,") == 4

    # re-running changes nothing: every stage is up to date
    capsys.readouterr()
    for stage in STAGES:
        assert run_stage(stage, run_dir / CONFIG_FILE) == 0
    assert capsys.readouterr().out.count("up to date") == len(STAGES)
