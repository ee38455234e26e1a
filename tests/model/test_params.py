"""Parameter accounting = sum(p.numel()) of the instantiated architecture, for every shipped model and preset."""

from __future__ import annotations

import pytest
import torch
from helpers import compose, group_options, run_launch
from transformers import AutoModelForCausalLM

from compactlm.launch.search import prune_presets
from compactlm.launch.validate import to_config
from compactlm.model.params import count_on_meta, model_hf_config, param_table, pruned_hf_config


def _meta_numel(cfg) -> int:
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("model", ["smollm2_135m", "bielik_11b_v3"])
def test_table_equals_instantiated_numel_for_every_preset(model):
    conf = to_config(compose([f"model={model}"]))
    presets = prune_presets(model)
    assert presets, f"no prune preset ships for {model}"
    rows = param_table(conf.model, presets)
    base = model_hf_config(conf.model)
    assert rows[0]["total"] == _meta_numel(base)
    for preset, row in zip(presets, rows[1:]):
        cfg = pruned_hf_config(base, preset.export_config.known())
        assert row["total"] == _meta_numel(cfg), preset.name
        for key, value in preset.export_config.known().items():
            assert row[key] == value
        untied = not base.tie_word_embeddings
        head = cfg.vocab_size * cfg.hidden_size if untied else 0
        assert row["total"] - row["without_lm_head"] == head
        assert row["embedding"] == cfg.vocab_size * cfg.hidden_size


def test_reference_figures():
    """SmolLM2-135M as loaded (docs/architecture.md, Measured facts: 134.5M) and Bielik 11.04B -> EXP_010 7.35B (-33.4%) from the report."""
    rows = {
        r["name"]: r
        for r in param_table(to_config(compose(["model=bielik_11b_v3"])).model, prune_presets("bielik_11b_v3"))
    }
    assert [f"exp_{i:03d}" for i in range(1, 11)] == [n for n in rows if n.startswith("exp_")]
    assert round(rows["bielik_11b_v3"]["without_lm_head"] / 1e9, 2) == 11.04
    assert round(rows["exp_010"]["without_lm_head"] / 1e9, 2) == 7.35
    assert round(rows["exp_010"]["change"] * 100, 1) == -33.4
    smol = param_table(to_config(compose([])).model, [])[0]
    assert smol["total"] == 134_515_008


def test_meta_count_equals_a_real_local_model(tiny_model_dir):
    from transformers import AutoConfig

    real = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert count_on_meta(AutoConfig.from_pretrained(tiny_model_dir))["total"] == sum(
        p.numel() for p in real.parameters()
    )


def test_shipped_presets_cover_every_prune_yaml():
    names = {p.name for m in ("smollm2_135m", "bielik_11b_v3") for p in prune_presets(m)}
    assert names == set(group_options("prune"))


def test_cli_prints_the_exp_table(tmp_path):
    proc = run_launch(["recipe=params", "model=bielik_11b_v3", f"runs_root={tmp_path}"], timeout=300)
    assert proc.returncode == 0, proc.stderr
    for i in range(1, 11):
        assert f"exp_{i:03d}" in proc.stdout
    assert "7.346B" in proc.stdout and "-33.4%" in proc.stdout
    assert (tmp_path / "params_bielik_11b_v3" / "params.json").is_file()


def test_a_hub_id_without_sizes_is_one_configuration_line_and_no_folder(tmp_path):
    """model=local with a Hub id has no config.json here and no shape: counting it used to end in a KeyError
    traceback (after the run folder was made); nothing is downloaded to count parameters."""
    proc = run_launch(
        ["recipe=params", "model=local", "model.path=HuggingFaceTB/SmolLM2-135M", f"runs_root={tmp_path}"], timeout=300
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("compactlm: configuration error:")]
    assert len(lines) == 1
    assert "model.path='HuggingFaceTB/SmolLM2-135M'" in lines[0] and "model.shape lacks model_type" in lines[0]
    assert not any(tmp_path.iterdir())

    # the YAML's shape is enough: the same Hub id with SmolLM2's sizes (its preset's shape) on the command line is
    # counted
    shape = {k: str(v).lower() if isinstance(v, bool) else v for k, v in compose().model.shape.items()}
    proc = run_launch(
        ["recipe=params", "model=local", "model.path=HuggingFaceTB/SmolLM2-135M", "dryrun=true"]
        + [f"model.shape.{k}={v}" for k, v in shape.items()],
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "134.515M" in proc.stdout
