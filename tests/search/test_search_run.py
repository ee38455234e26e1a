"""recipe=search end to end on a tiny model through launch.py: candidates enumerated around a target, each pruned
and distilled briefly from the one shared teacher cache, ranked; killed during the second candidate's
distillation, a re-run skips the finished candidate and resumes the killed one from its checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import REPO, run_launch

from compactlm.manifest import read_manifest
from compactlm.pipeline import running
from compactlm.results import read_result


def _args(tmp_path, model_dir, *extra):
    return [
        "recipe=search",
        "model=local",
        f"model.path={model_dir}",
        "data=pydoc",
        "data.max_documents=20",
        "data.seq_len=32",
        "data.validation_sequences=4",
        "data.calibration_sequences=4",
        "data.max_train_sequences=8",
        "search.target_params=0.8",
        "search.tolerance=0.1",
        "search.num_layers_divisor=1",
        "search.hidden_size_divisor=16",
        "search.ffn_hidden_size_divisor=16",
        "search.max_candidates=3",
        "distill.micro_batch_size=2",
        "distill.global_batch_size=2",
        "distill.save_every=5",
        "distill.lr=1e-3",
        "engine.dtype=float32",
        "engine.threads=1",
        f"runs_root={tmp_path}",
        "run_name=search",
        f"cache_dir={tmp_path / 'cache'}",
        *extra,
    ]


@pytest.mark.slow
def test_search_killed_mid_candidate_resumes_and_skips_finished_ones(tmp_path, tiny_llama_dir):
    # 400 steps of 2 x 32 tokens per candidate: long enough that the kill lands inside the second candidate, and that
    # each candidate's short distillation lowers its loss (200 steps did not, for one of them)
    args = _args(tmp_path, tiny_llama_dir, "search.distill_tokens=25600")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "launch.py"), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    run_dir = tmp_path / "search"
    config = run_dir / "config.yaml"
    deadline = time.time() + 600
    second = None
    while proc.poll() is None and deadline > time.time():  # a bounded wait, not a timing check
        if second is None and config.is_file():
            names = [c["name"] for c in _resolved(config)]
            second = run_dir / f"candidate-{names[1]}"
        if second is not None and (second / "distill" / "checkpoint").is_dir():
            break
        time.sleep(0.05)
    assert second is not None and (second / "distill" / "checkpoint").is_dir(), (
        "the second candidate never checkpointed"
    )
    stage = running(second)
    os.killpg(proc.pid, signal.SIGKILL)
    if stage:
        os.killpg(stage["pgid"], signal.SIGKILL)  # the stage process: NeMo-Run may start it in its own session
    proc.wait(timeout=60)
    first = run_dir / f"candidate-{names[0]}"
    assert read_manifest(first) is not None and read_manifest(second) is None, "kill landed outside candidate 2"

    r = run_launch(args, timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert f"[candidate-{names[0]}] up to date" in r.stdout  # finished before the kill: not run again
    history = json.loads((second / "distill" / "history.json").read_text())
    assert history["train"][-1]["step"] == 400
    resumed = read_manifest(second)
    assert resumed is not None and read_manifest(run_dir / f"candidate-{names[2]}") is not None
    ranking = read_result(run_dir, "ranking")
    assert {c.name for c in ranking.candidates} == set(names) and ranking.winner == ranking.candidates[0].name
    assert [c.rank for c in ranking.candidates] == [1, 2, 3]
    assert all(c.loss < c.pruned_loss for c in ranking.candidates)  # the short distillation recovered each one
    assert -1 <= ranking.kendall_tau <= 1
    winner = read_manifest(run_dir / "ranking")["outputs"]["checkpoint"]
    assert winner == str(run_dir / f"candidate-{ranking.winner}" / "pruned")
    assert (run_dir / "ranking" / "pareto.png").is_file()
    # the briefly distilled weights are dropped, the pruned checkpoint (where the winner continues) stays
    assert not (second / "distill" / "checkpoint").exists() and (second / "pruned" / "config.json").is_file()
    assert "[ranking] by validation loss after the short distillation" in r.stdout


def _resolved(config):
    from omegaconf import OmegaConf  # test-only reader of the run's config.yaml

    return OmegaConf.to_container(OmegaConf.load(config))["search"]["resolved"]
