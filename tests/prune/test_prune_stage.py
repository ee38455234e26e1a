"""recipe=prune stages in-process on a tiny model: checkpoint vs accounting, reuse of scores, evaluation."""

from __future__ import annotations

from helpers import compose
from transformers import AutoModelForCausalLM, AutoTokenizer

from compactlm.launch.launcher import write_run_dir
from compactlm.launch.validate import to_config
from compactlm.manifest import read_manifest
from compactlm.model.loading import read_hf_config
from compactlm.model.params import param_table
from compactlm.pipeline import CONFIG_FILE, run_stage

STAGES = ["model", "data", "importance", "prune", "evaluate"]


def _conf(tmp_path, model_dir, *extra):
    conf = to_config(
        compose(
            [
                "recipe=prune",
                "model=local",
                f"model.path={model_dir}",
                "data=pydoc",
                "data.max_documents=20",
                "data.seq_len=32",
                "data.validation_sequences=4",
                "data.calibration_sequences=8",
                "data.max_train_sequences=8",
                "evaluate.generate_tokens=4",
                "prune.model=null",
                "prune.export_config.num_layers=3",
                "prune.export_config.ffn_hidden_size=64",
                "prune.export_config.num_attention_heads=2",
                "prune.export_config.hidden_size=48",
                f"runs_root={tmp_path}",
                *extra,
            ]
        )
    )
    conf.run_dir = str(tmp_path / conf.run_name)
    return conf


def _run(conf):
    run_dir = write_run_dir(conf)
    for stage in STAGES:
        assert run_stage(stage, run_dir / CONFIG_FILE) == 0, stage
    return run_dir


def test_prune_recipe_end_to_end(tmp_path, tiny_model_dir, capsys):
    conf = _conf(tmp_path, tiny_model_dir)
    run_dir = _run(conf)
    ckpt = run_dir / "prune" / "checkpoint"
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.intermediate_size, cfg.num_attention_heads, cfg.hidden_size) == (3, 64, 2, 48)
    # the checkpoint holds exactly what the foundation's accounting promised for the same sizes
    row = param_table(conf.model, [conf.prune], local_config=read_hf_config(tiny_model_dir))[1]
    assert row["total"] == sum(p.numel() for p in model.parameters())
    tok = AutoTokenizer.from_pretrained(ckpt)
    out = model.generate(**tok("The", return_tensors="pt"), max_new_tokens=5, do_sample=False)
    assert out.shape[1] > 1
    for png in ("depth.png", "width.png"):
        assert (run_dir / "importance" / png).read_bytes()[:4] == b"\x89PNG"
    models = read_manifest(run_dir / "evaluate")["result"]["models"]
    assert set(models) == {"teacher", "pruned"}
    assert models["pruned"]["kl_to_teacher"] > 0 and models["pruned"]["params"]["total"] == row["total"]

    # Another target re-uses the importance scores and only re-runs prune and evaluate.
    capsys.readouterr()
    _run(_conf(tmp_path, tiny_model_dir, "prune.export_config.num_layers=2", "prune.depth_method=lm_loss"))
    out = capsys.readouterr().out
    assert "[importance] up to date" in out and "[prune] running" in out
    m = read_manifest(run_dir / "prune")["result"]
    assert len(m["kept_layers"]) == 2 and m["depth_lm_loss"]
    kept = m["kept_layers"]  # 4 layers -> 2: lm_loss drops one contiguous block of 2
    assert kept in ([2, 3], [0, 3], [0, 1])
