"""launch.py end to end through NeMo-Run's local executor: real stages, real processes, kill and resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import REPO, clone_env, plain_clone

from compactlm.manifest import read_manifest

pytestmark = pytest.mark.slow


def _args(tmp_path, model_dir, data_file=None, recipe="eval"):
    data = ["data=text", f"data.paths=[{data_file}]"] if data_file else ["data=pydoc", "data.max_documents=20"]
    return [
        f"recipe={recipe}",
        "model=local",
        f"model.path={model_dir}",
        *data,
        "data.seq_len=32",
        "data.validation_sequences=4",
        "data.calibration_sequences=4",
        "data.max_train_sequences=8",
        "evaluate.generate_tokens=4",
        f"runs_root={tmp_path}",
        "run_name=tiny",
    ]


def _launch(args, **kw):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, str(REPO / "launch.py"), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        **kw,
    )


def _descendants(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    kids = [int(p) for p in out]
    return kids + [d for k in kids for d in _descendants(k)]


def test_dryrun_prints_tasks_and_writes_nothing(tmp_path, tiny_llama_dir):
    proc = _launch(_args(tmp_path, tiny_llama_dir) + ["dryrun=true"])
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert "# resolved config" in out and "LocalExecutor" in out
    for stage in ("model", "data", "evaluate"):
        assert f"python -m compactlm.run {stage} config={tmp_path}/tiny/config.yaml" in out
    assert not any(tmp_path.iterdir())


def test_kill_mid_stage_then_rerun_resumes(tmp_path, tiny_llama_dir):
    # ~14 MB of CPython's documentation, one paragraph per line: tokenizing it takes long enough to kill the
    # data stage mid-way.
    from pydoc_data.topics import topics

    big = tmp_path / "big.txt"
    big.write_text(
        "\n".join(p for doc in topics.values() for p in doc.split("\n\n") if p.strip()) * 30, encoding="utf-8"
    )
    args = _args(tmp_path / "runs", tiny_llama_dir, big)
    proc = _launch(args)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "[data] running" in line:
            break
    else:
        pytest.fail("the data stage never started:\n" + "".join(seen))
    time.sleep(1.0)
    victims = [proc.pid] + _descendants(proc.pid)
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=60)
    run_dir = tmp_path / "runs" / "tiny"
    assert read_manifest(run_dir / "model") is not None
    assert read_manifest(run_dir / "data") is None, "the killed stage must not look finished"
    (run_dir / "data" / "partial.npy").write_bytes(b"left by the killed attempt")
    model_manifest = (run_dir / "model" / "manifest.json").read_text()

    proc = _launch(args)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out
    assert "[model] up to date" in out
    assert "[data] running" in out and "[evaluate] running" in out
    assert not (run_dir / "data" / "partial.npy").exists()
    assert (run_dir / "model" / "manifest.json").read_text() == model_manifest
    assert "compactlm summary" in out and "reused (up to date)" in out and "perplexity" in out


# The demo's budget cut to a CI's: every stage and code path of `make demo` (its full budget's figures are measured
# by `make demo` and quoted in the README). 8 distillation steps, 40 lm-eval examples; models scored on 8 of the 24
# validation sequences (evaluate, and the gguf stage's dequantized check, which scores the source again beside each
# file); Q8_0 and Q4_K_M only (on this student Q6_K falls back to the Q8_0 file), 4 llama.cpp perplexity chunks, one
# benchmark run each.
SHORT_DEMO = [
    "distill.max_tokens=16384",
    "evaluate.task_examples=40",
    "evaluate.max_sequences=8",
    "gguf.types=[q8_0,q4_k_m]",
    "gguf.perplexity_chunks=4",
    "gguf.repeats=1",
]


def test_demo_command_on_smollm2_from_a_plain_clone(tmp_path):
    """The README's main command, run from a copy of the repository alone (no ../shared beside it), on the embedded
    SmolLM2-135M: prune -> distill -> FP8, all side by side, with lm-eval on the run's own held-out documents."""
    clone = plain_clone(tmp_path / "clone" / "compactlm")
    check = subprocess.run(
        [sys.executable, "launch.py", f"runs_root={tmp_path}", "dryrun=true"],
        cwd=clone,
        env=clone_env(clone),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-3000:]
    # the stage processes import compactlm from the clone
    assert f"PYTHONPATH={clone}/src" in check.stdout.split() and "shared/data" not in check.stdout
    assert f"python -m compactlm.run evaluate config={tmp_path}/prune_distill_smollm2_135m/config.yaml" in check.stdout
    proc = subprocess.Popen(
        [sys.executable, "launch.py", f"runs_root={tmp_path}", *SHORT_DEMO],
        cwd=clone,
        env=clone_env(clone),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    out, _ = proc.communicate(timeout=3000)
    assert proc.returncode == 0, out[-5000:]
    assert "[evaluate] lm-eval task heldout_continuation: 40 examples" in out
    assert "[engine] " in out  # the precision each stage computes in, and why
    run_dir = tmp_path / "prune_distill_smollm2_135m"
    models = read_manifest(run_dir / "evaluate")["result"]["models"]
    teacher, pruned, distilled = models["teacher"], models["pruned"], models["distilled"]
    assert teacher["params"]["total"] == 134_515_008
    assert 5 < teacher["perplexity"] < 60, teacher["perplexity"]  # pydoc English prose; measured 18.64
    assert "Paris" in teacher["sample"]
    assert pruned["params"]["total"] == 89_386_560
    # distillation clearly recovers the pruned student (measured in bf16 with 8 steps: ppl 88.5 -> 36.0)
    assert distilled["perplexity"] < 0.7 * pruned["perplexity"]
    assert distilled["kl_to_teacher"] < 0.7 * pruned["kl_to_teacher"]
    assert models["quantized"]["format"] == "fp8" and models["quantized"]["source"] == "distilled"
    for label in ("teacher", "pruned", "distilled", "quantized"):
        assert f"{models[label]['perplexity']:.3f}" in out
    assert (run_dir / "report.html").is_file() and (run_dir / "report.md").is_file()
    for label in ("teacher", "pruned", "distilled"):  # lm-eval (HF backend, offline) on the held-out documents
        task = models[label]["tasks"]["heldout_continuation"]
        assert task["num_examples"] == 40 and 0 <= task["acc"] <= 1
    # GGUF with llama.cpp: every type made from the distilled student, verified, its perplexity beside the f16 file's
    g = read_manifest(run_dir / "gguf")["result"]
    files = {(f["model"], f["type"]): f for f in g["files"]}
    assert set(files) == {("teacher", "f16"), ("distilled", "f16"), ("distilled", "q8_0"), ("distilled", "q4_k_m")}
    f16, q8 = files[("distilled", "f16")], files[("distilled", "q8_0")]
    assert q8["perplexity"]["perplexity"] < 1.01 * f16["perplexity"]["perplexity"]  # Q8_0 loses < 1%
    assert files[("distilled", "q4_k_m")]["size_bytes"] < q8["size_bytes"] < 0.6 * f16["size_bytes"]
    assert models["gguf q8_0"]["source"] == "distilled" and models["gguf q4_k_m"]["size_bytes"] > 0
    assert "Quantized variants" in (run_dir / "report.md").read_text()
    bench = read_manifest(run_dir / "bench")["result"]
    assert bench["source"].startswith("llama.cpp") and bench["student"] == "distilled"
    assert [r["batch_size"] for r in bench["runs"]] == [1, 8]
    for run in bench["runs"]:  # the speed ratio is reported next to the parameter ratio (not asserted: timing)
        assert run["compare"]["ideal_speedup"] == pytest.approx(134_515_008 / 89_386_560, rel=1e-6)
        assert run["compare"]["tokens_per_s_ratio"] > 0
        assert set(run["models"]) == {"teacher", "distilled", "distilled q8_0", "distilled q4_k_m"}
    assert "speed (llama.cpp" in out and "ideal (param ratio)" in out


def test_prune_distill_with_two_torchrun_processes(tmp_path, tiny_llama_dir):
    """The launcher runs the distill stage under torchrun (gloo on CPU) when distill.nproc_per_node=2."""
    args = _args(tmp_path, tiny_llama_dir, recipe="prune_distill") + [
        # without gguf: llama.cpp's converter refuses the tiny test tokenizer (tests/gguf cover that stage)
        "recipe.stages=[model,data,importance,prune,distill,quantize,evaluate,bench]",
        "prune.model=null",
        "prune.export_config.num_layers=3",
        "prune.export_config.ffn_hidden_size=64",
        "data.max_train_sequences=32",
        "distill.nproc_per_node=2",
        "distill.max_steps=4",
        "distill.micro_batch_size=2",
        "distill.global_batch_size=8",
        "distill.eval_every=2",
        "distill.save_every=2",
        "engine.threads=1",
    ]
    proc = _launch(args)
    out, _ = proc.communicate(timeout=1200)
    assert proc.returncode == 0, out[-5000:]
    m = read_manifest(tmp_path / "tiny" / "distill")["result"]
    assert m["world_size"] == 2 and m["steps"] == 4
    assert "torchrun" in out or "[default1]" in out
    models = read_manifest(tmp_path / "tiny" / "evaluate")["result"]["models"]
    assert set(models) == {"teacher", "pruned", "distilled", "quantized"}
    assert (tmp_path / "tiny" / "report.html").is_file()
