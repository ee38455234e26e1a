"""Stopping and sharing a run on this machine, driven as a user drives it: Ctrl-C in launch.py, `launch.py cancel`,
a second launch.py of the same run, and a launcher killed with -9 that leaves its stage running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import REPO, run_launch
from safetensors.torch import load_file

from compactlm.manifest import read_manifest
from compactlm.results import read_result

pytestmark = pytest.mark.slow


def _args(tmp_path, model_dir, run_name, recipe="eval", *extra):
    return [
        f"recipe={recipe}",
        "model=local",
        f"model.path={model_dir}",
        "data=pydoc",
        "data.max_documents=20",
        "data.seq_len=32",
        "data.validation_sequences=4",
        "data.calibration_sequences=4",
        "data.max_train_sequences=64",
        "evaluate.tasks=[]",
        "bench.batch_sizes=[1]",
        "bench.new_tokens=4",
        "bench.prompt_tokens=8",
        "engine.threads=1",
        f"runs_root={tmp_path}",
        f"run_name={run_name}",
        *extra,
    ]


# a distillation long enough to be interrupted mid-way: tiny model, 1 thread, a checkpoint every 5 steps
DISTILL = [
    "recipe.stages=[model,data,importance,prune,distill]",
    "prune.model=null",
    "prune.export_config.num_layers=3",
    "prune.export_config.ffn_hidden_size=64",
    "distill.max_steps=120",
    "distill.micro_batch_size=2",
    "distill.global_batch_size=4",
    "distill.eval_every=1000",
    "distill.save_every=5",
]
# an evaluate stage that decodes for a while (greedy, tiny model): long enough to cancel; the quick one after it
SLOW_EVALUATE = ["evaluate.generate_tokens=20000"]
QUICK_EVALUATE = ["evaluate.generate_tokens=4"]


def _start(args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, str(REPO / "launch.py"), *args],
        cwd=REPO,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait_for(proc, text: str, seen: list[str], timeout: float = 600) -> None:
    deadline = time.time() + timeout
    for line in proc.stdout:
        seen.append(line)
        if text in line:
            return
        if deadline <= time.time():  # a bound on waiting, not a speed check
            pytest.fail(f"{text!r} not seen within {timeout} s:\n" + "".join(seen[-40:]))
    pytest.fail(f"launch.py ended before {text!r}:\n" + "".join(seen[-60:]))


def _run_processes(run_dir) -> list[str]:
    """Processes whose command line names this run's config (the stages, torchrun, the launcher's children)."""
    out = subprocess.run(["pgrep", "-af", str(run_dir / "config.yaml")], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


def _none_left(run_dir, within: float = 10.0) -> list[str]:
    deadline = time.time() + within
    while _run_processes(run_dir) and deadline > time.time():
        time.sleep(0.2)
    return _run_processes(run_dir)


def test_ctrl_c_during_distill_stops_every_process_and_the_rerun_resumes_bitwise(tmp_path, tiny_llama_dir):
    reference = run_launch(
        _args(tmp_path, tiny_llama_dir, "reference", "prune_distill", *DISTILL, *QUICK_EVALUATE), timeout=1800
    )
    assert reference.returncode == 0, reference.stdout[-3000:] + reference.stderr[-3000:]

    args = _args(tmp_path, tiny_llama_dir, "stopped", "prune_distill", *DISTILL, *QUICK_EVALUATE)
    run_dir = tmp_path / "stopped"
    proc, seen = _start(args), []
    _wait_for(proc, "[distill] running", seen)
    deadline = time.time() + 300
    while not (run_dir / "distill" / "checkpoint").is_dir():  # a few steps in
        assert deadline > time.time() and proc.poll() is None, "".join(seen[-40:])
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGINT)  # what Ctrl-C sends to the launcher in a terminal
    out, _ = proc.communicate(timeout=30)  # the stage is stopped within 8 s, the launcher exits after it
    out = "".join(seen) + out
    assert proc.returncode == 130, out[-3000:]
    assert "compactlm: interrupted; stopped distill" in out and "Re-run the same command to resume" in out
    assert "Traceback" not in out
    assert _none_left(run_dir) == []
    assert read_manifest(run_dir / "distill") is None

    again = run_launch(args, timeout=1800)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert read_result(run_dir, "distill").resumed_from_step > 0
    a = load_file(tmp_path / "reference" / "distill" / "student" / "model.safetensors")
    b = load_file(run_dir / "distill" / "student" / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_cancel_during_evaluate_stops_it_and_the_run_is_reported_cancelled(tmp_path, tiny_llama_dir):
    args = _args(tmp_path, tiny_llama_dir, "tiny", "eval", *SLOW_EVALUATE)
    run_dir = tmp_path / "tiny"
    proc, seen = _start(args), []
    _wait_for(proc, "[evaluate] running", seen)
    time.sleep(1.0)
    status = run_launch(["status", "run_name=tiny", f"runs_root={tmp_path}"])
    assert status.returncode == 0 and "RUNNING (pid" in status.stdout and "launcher: running" in status.stdout, (
        status.stdout
    )
    cancel = run_launch(["cancel", "run_name=tiny", f"runs_root={tmp_path}"])
    assert cancel.returncode == 0 and "cancelled: stopped evaluate" in cancel.stdout, cancel.stdout + cancel.stderr
    out, _ = proc.communicate(timeout=120)
    out = "".join(seen) + out
    assert proc.returncode == 130, out[-3000:]
    assert "compactlm: run cancelled" in out and "not finished: evaluate" in out
    assert _none_left(run_dir) == []
    status = run_launch(["status", "run_name=tiny", f"runs_root={tmp_path}"])
    row = next(line for line in status.stdout.splitlines() if line.startswith("evaluate"))
    assert "CANCELLED" in row and "launcher: not running" in status.stdout
    again = run_launch([*args[:-1], *QUICK_EVALUATE], timeout=900)  # the same run, resumed with a short decode
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "[model] up to date" in again.stdout and "[evaluate] running" in again.stdout


def test_one_launcher_per_run_and_a_stage_left_by_a_dead_launcher_is_found(tmp_path, tiny_llama_dir):
    args = _args(tmp_path, tiny_llama_dir, "shared", "eval", *SLOW_EVALUATE)
    run_dir = tmp_path / "shared"
    first, seen = _start(args), []
    _wait_for(first, "[evaluate] running", seen)
    second = run_launch(args)
    assert second.returncode == 3, second.stdout[-2000:] + second.stderr[-2000:]
    assert f"run_name='shared' is being run by another launch.py (pid {first.pid} on" in second.stderr

    os.kill(first.pid, signal.SIGKILL)  # the launcher dies; its stage, in a session of its own, runs on
    first.wait(timeout=30)
    third = run_launch(args)
    assert third.returncode == 3
    assert "stage 'evaluate' of run_name='shared' is still running" in third.stderr
    assert "launch.py that started it has exited" in third.stderr
    status = run_launch(["status", "run_name=shared", f"runs_root={tmp_path}"])
    assert "launcher: not running" in status.stdout and "RUNNING (pid" in status.stdout

    cancel = run_launch(["cancel", "run_name=shared", f"runs_root={tmp_path}"])
    assert "cancelled: stopped evaluate" in cancel.stdout, cancel.stdout + cancel.stderr
    assert _none_left(run_dir) == []
    fourth = run_launch([*args[:-1], *QUICK_EVALUATE], timeout=900)
    assert fourth.returncode == 0, fourth.stdout[-3000:] + fourth.stderr[-3000:]
