"""recipe=quantize in-process on a tiny model: export layout, verification, perplexity next to the source."""

from __future__ import annotations

import json

from helpers import compose

from compactlm.launch.launcher import write_run_dir
from compactlm.launch.report import write_report
from compactlm.launch.validate import to_config
from compactlm.manifest import read_manifest
from compactlm.pipeline import CONFIG_FILE, run_stage

STAGES = ["model", "data", "quantize", "evaluate"]


def _run(tmp_path, model_dir, *extra):
    conf = to_config(
        compose(
            [
                "recipe=quantize",
                f"recipe.stages=[{','.join(STAGES)}]",
                "model=local",
                f"model.path={model_dir}",
                "data=pydoc",
                "data.max_documents=20",
                "data.seq_len=32",
                "data.validation_sequences=4",
                "data.calibration_sequences=4",
                "data.max_train_sequences=4",
                "evaluate.generate_tokens=2",
                f"runs_root={tmp_path}",
                *extra,
            ]
        )
    )
    conf.run_dir = str(tmp_path / conf.run_name)
    run_dir = write_run_dir(conf)
    for stage in STAGES:
        assert run_stage(stage, run_dir / CONFIG_FILE) == 0, stage
    return conf, run_dir


def test_fp8_quantize_recipe(tmp_path, tiny_llama_dir):
    conf, run_dir = _run(tmp_path, tiny_llama_dir, "quantize.exclude=[model.layers.0.*]")
    export = run_dir / "quantize" / "export"
    hf_quant = json.loads((export / "hf_quant_config.json").read_text())
    assert hf_quant["quantization"]["quant_algo"] == "FP8"
    assert hf_quant["quantization"]["kv_cache_quant_algo"] == "FP8"
    assert "quantization_config" in json.loads((export / "config.json").read_text())
    q = read_manifest(run_dir / "quantize")["result"]
    assert q["verify"]["passed"] and q["verify"]["max_rel_err"]["fp8"] < 2**-4
    assert q["export"]["ratio_to_bf16"] < 1
    models = read_manifest(run_dir / "evaluate")["result"]["models"]
    assert set(models) == {"teacher", "quantized"}
    assert models["quantized"]["format"] == "fp8" and models["quantized"]["source"] == "teacher"
    # same validation split and tokens: the fake-quant perplexity sits next to the fp32 one
    assert models["quantized"]["tokens"] == models["teacher"]["tokens"]
    assert abs(models["quantized"]["perplexity"] / models["teacher"]["perplexity"] - 1) < 0.05
    md, _ = write_report(conf)
    assert "| quantized |" in md.read_text()


def test_nvfp4_exports_on_cpu_without_perplexity(tmp_path, tiny_llama_dir):
    _, run_dir = _run(tmp_path, tiny_llama_dir, "quantize=nvfp4")
    q = read_manifest(run_dir / "quantize")["result"]
    assert q["layout"]["quant_algo"] == "NVFP4" and q["layout"]["group_size"] == 16
    assert q["verify"]["passed"] and q["quality"] is None
    assert "quantized" not in read_manifest(run_dir / "evaluate")["result"]["models"]
