"""recipe=quantize in-process with its gguf stage, on a tiny llama with SmolLM2's tokenizer: files verified,
llama.cpp's perplexity beside the dequantized check, the evaluate rows, the report and llama.cpp's bench table."""

from __future__ import annotations

import json

import pytest
from conftest import llama3_rope, make_llama3_model
from helpers import compose, run_launch

from compactlm.bench.stage import bench_from_gguf
from compactlm.gguf import convert as gg
from compactlm.gguf.schema import GGUFFile, GGUFResult
from compactlm.launch.launcher import write_run_dir
from compactlm.launch.report import write_report
from compactlm.launch.validate import to_config
from compactlm.manifest import read_manifest
from compactlm.pipeline import CONFIG_FILE, run_stage
from compactlm.results import ParamCounts

STAGES = ["model", "data", "quantize", "gguf", "evaluate"]


@pytest.mark.slow
def test_gguf_stage_in_the_quantize_recipe(tmp_path, gguf_llama_dir, llama_cpp, capsys):
    conf = to_config(
        compose(
            [
                "recipe=quantize",
                f"recipe.stages=[{','.join(STAGES)}]",
                "model=local",
                f"model.path={gguf_llama_dir}",
                "data=pydoc",
                "data.max_documents=30",
                "data.seq_len=64",
                "data.validation_sequences=4",
                "data.calibration_sequences=4",
                "data.max_train_sequences=4",
                "evaluate.generate_tokens=0",
                "gguf.types=[q8_0,q4_k_m]",
                "gguf.perplexity_chunks=3",
                "gguf.concurrency=[1,2]",
                "gguf.prompt_tokens=16",
                "gguf.new_tokens=4",
                "gguf.repeats=1",
                f"runs_root={tmp_path}",
            ]
        )
    )
    run_dir = write_run_dir(conf)
    for stage in STAGES:
        assert run_stage(stage, run_dir / CONFIG_FILE) == 0, stage
    out = capsys.readouterr().out
    g = read_manifest(run_dir / "gguf")["result"]
    assert g["student"] == "teacher" and g["outtype"] == "f16"  # recipe=quantize: the teacher is the student
    files = {f["type"]: f for f in g["files"]}
    assert sorted(files) == ["f16", "q4_k_m", "q8_0"]
    for t, f in files.items():
        assert (run_dir / "gguf" / f["file"]).is_file() and f["file"] == f"teacher/teacher-{t}.gguf"
        assert f["perplexity"]["chunks"] == 3 and f["perplexity"]["ctx"] == 64
        assert [r["concurrency"] for r in f["speed"]] == [1, 2]
        assert f"teacher-{t}.gguf: " in out
    assert "matches teacher's architecture" in out
    assert files["q4_k_m"]["size_bytes"] < files["q8_0"]["size_bytes"] < files["f16"]["size_bytes"]
    assert files["q8_0"]["hf"]["tokens"] == g["source_hf"]["tokens"]
    assert files["q8_0"]["hf"]["kl_to_source"] < files["q4_k_m"]["hf"]["kl_to_source"]
    models = read_manifest(run_dir / "evaluate")["result"]["models"]
    assert {"teacher", "quantized", "gguf q8_0", "gguf q4_k_m"} <= set(models)
    assert models["gguf q8_0"]["perplexity"] == files["q8_0"]["hf"]["perplexity"]
    assert models["gguf q8_0"]["tokens"] == models["teacher"]["tokens"]  # the same validation split
    md, _ = write_report(conf)
    text = md.read_text()
    assert "## Quantized variants" in text and "| gguf q4_k_m | teacher |" in text and "| fp8 | teacher |" in text
    # a re-run skips the stage: its manifest matches
    assert run_stage("gguf", run_dir / CONFIG_FILE) == 0
    assert "[gguf] up to date" in capsys.readouterr().out


@pytest.mark.slow
def test_a_llama31_checkpoint_through_prune_distill_quantize_and_gguf(tmp_path, smol_tokenizer_dir, llama_cpp):
    """launch.py on a Llama-3.1-style teacher (GQA, untied, rope_theta 500000 and llama3 RoPE scaling, config.json
    as on the Hub): every checkpoint it writes keeps the teacher's RoPE in the keys transformers 4.x reads, and
    the gguf stage converts, verifies (llama.cpp's generated rope_freqs included) and loads back its files."""
    teacher = make_llama3_model(tmp_path / "llama31", smol_tokenizer_dir, num_hidden_layers=4)
    hub = json.loads((teacher / "config.json").read_text())
    stages = ["model", "data", "importance", "prune", "distill", "quantize", "gguf"]
    r = run_launch(
        [
            "recipe=prune_distill",
            f"recipe.stages=[{','.join(stages)}]",
            "model=local",
            f"model.path={teacher}",
            "prune.model=null",
            "prune.export_config.num_layers=3",
            "prune.export_config.ffn_hidden_size=384",
            "data=pydoc",
            "data.max_documents=30",
            "data.seq_len=64",
            "data.validation_sequences=4",
            "data.calibration_sequences=4",
            "data.max_train_sequences=8",
            "distill.max_steps=3",
            "distill.micro_batch_size=2",
            "distill.global_batch_size=2",
            "engine.dtype=float32",
            "engine.threads=2",
            "gguf.types=[q8_0]",
            "gguf.perplexity_chunks=2",
            "gguf.bench=false",
            f"runs_root={tmp_path}",
            "run_name=l31",
        ],
        timeout=1200,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    run_dir = tmp_path / "l31"
    for folder in ("prune/checkpoint", "distill/student", "quantize/export"):
        saved = json.loads((run_dir / folder / "config.json").read_text())
        assert (saved["rope_theta"], saved["rope_scaling"]) == (hub["rope_theta"], hub["rope_scaling"]), folder
        assert saved["rope_parameters"] == {**llama3_rope()["rope_scaling"], "rope_theta": 500000.0}, folder
    g = read_manifest(run_dir / "gguf")["result"]
    files = {(f["model"], f["type"]): f for f in g["files"]}
    assert g["student"] == "distilled" and sorted(files) == [
        ("distilled", "f16"),
        ("distilled", "q8_0"),
        ("teacher", "f16"),
    ]
    assert "distilled-q8_0.gguf: " in r.stdout and "matches distilled's architecture" in r.stdout
    for f in files.values():
        info = gg.inspect(run_dir / "gguf" / f["file"])
        assert len(info["rope_freqs"]) == 256 // 4 // 2 and info["metadata"]["rope.freq_base"] == 500000.0
    # loaded back by transformers with the source's llama3 RoPE: the f16 file is the distilled model to f16 rounding
    # (measured: KL 1.6e-6, top-1 agreement 0.988 over 252 tokens of a random model)
    f16 = files[("distilled", "f16")]["hf"]
    assert f16["tokens"] == g["source_hf"]["tokens"] and f16["kl_to_source"] < 1e-4, f16
    assert f16["top1_agreement_to_source"] > 0.95, f16


def _file(model, type_, tps, tpot):
    rows = [
        {
            "concurrency": c,
            "ttft_ms": 10.0 * c,
            "tpot_ms": tpot * c,
            "prompt_tokens_per_s": 100.0,
            "output_tokens_per_s": tps,
            "prompt_tokens": 16,
            "new_tokens": 4,
            "threads": 2,
        }
        for c in (1, 8)
    ]
    return GGUFFile(
        model=model,
        type=type_,
        file=f"{model}/{model}-{type_}.gguf",
        size_bytes=1,
        bits_per_weight=16.0,
        tensor_types={},
        size_ratio=1.0,
        speed=rows,
    )


def test_the_bench_table_comes_from_llama_cpp_when_it_ran():
    params = {
        "teacher": ParamCounts(total=150, embedding=50, without_lm_head=150),
        "distilled": ParamCounts(total=100, embedding=50, without_lm_head=100),
    }
    g = GGUFResult(
        llama_cpp={},
        student="distilled",
        outtype="f16",
        params=params,
        files=[
            _file("teacher", "f16", 10.0, 100.0),
            _file("distilled", "f16", 14.0, 70.0),
            _file("distilled", "q8_0", 20.0, 50.0),
        ],
    )
    bench = bench_from_gguf(g)
    assert bench.source.startswith("llama.cpp llama-batched-bench") and bench.student == "distilled"
    assert [r.batch_size for r in bench.runs] == [1, 8]
    for run in bench.runs:
        assert set(run.models) == {"teacher", "distilled", "distilled q8_0"}
        assert run.compare["ideal_speedup"] == 1.5  # tied embeddings: all weights read per token
        assert abs(run.compare["decode_speedup"] - 100 / 70) < 1e-9
        assert abs(run.compare["tokens_per_s_ratio"] - 1.4) < 1e-9
