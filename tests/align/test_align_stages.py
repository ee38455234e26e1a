"""The alignment stages on a tiny model: align_data -> sft -> dpo -> grpo in-process, every model side by side in
the evaluation, and kill -9 during sft and during grpo resumes from the last complete checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import REPO, compose

from compactlm.align.demo import problems
from compactlm.launch.launcher import write_run_dir
from compactlm.launch.validate import to_config
from compactlm.manifest import read_manifest
from compactlm.pipeline import CONFIG_FILE, run_stage
from compactlm.results import read_result

UPSTREAM = ["model", "data", "align_data"]
WORDS = ["class", "return", "yield", "import", "lambda", "while", "raise", "assert"]


def _data(folder):
    folder.mkdir(parents=True, exist_ok=True)
    sft = [
        {"messages": [{"role": "user", "content": f"Name keyword {i}."}, {"role": "assistant", "content": w}]}
        for i, w in enumerate(WORDS * 5)
    ]
    dpo = [
        {"prompt": f"Name keyword {i}.", "chosen": w, "rejected": f"{w} {w} {w} no"} for i, w in enumerate(WORDS * 5)
    ]
    files = {}
    for kind, rows in (("sft", sft), ("dpo", dpo), ("grpo", problems(40, seed=0))):
        files[kind] = folder / f"{kind}.jsonl"
        files[kind].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return files


def _conf(tmp_path, model_dir, stages, *extra):
    files = _data(tmp_path / "align")
    conf = to_config(
        compose(
            [
                "recipe=prune_distill_align",
                f"recipe.stages=[{','.join(stages)}]",
                "model=local",
                f"model.path={model_dir}",
                "data=pydoc",
                "data.max_documents=20",
                "data.seq_len=32",
                "data.validation_sequences=4",
                "data.calibration_sequences=4",
                "data.max_train_sequences=8",
                "evaluate.generate_tokens=2",
                "align_data=jsonl",
                *(f"align_data.{k}.paths=[{p}]" for k, p in files.items()),
                "align_data.sft.heldout=8",
                "align_data.dpo.heldout=8",
                "align_data.grpo.heldout=8",
                "sft.max_steps=6",
                "sft.save_every=3",
                "sft.lr=1e-3",
                "dpo.max_steps=4",
                "dpo.save_every=2",
                "dpo.lr=1e-3",
                "grpo.max_steps=4",
                "grpo.save_every=2",
                "grpo.max_completion_length=8",
                "engine.dtype=float32",
                f"runs_root={tmp_path}",
                *extra,
            ]
        )
    )
    conf.run_dir = str(tmp_path / conf.run_name)
    return conf


def test_sft_dpo_grpo_in_order_with_every_model_evaluated(tmp_path, tiny_llama_dir):
    stages = [*UPSTREAM, "sft", "dpo", "grpo", "evaluate"]
    run_dir = write_run_dir(_conf(tmp_path, tiny_llama_dir, stages))
    for stage in stages:
        assert run_stage(stage, run_dir / CONFIG_FILE) == 0, stage
    data = read_result(run_dir, "align_data")
    assert data.train == {"sft": 32, "dpo": 32, "grpo": 32} and data.heldout == {"sft": 8, "dpo": 8, "grpo": 8}
    sft, dpo, grpo = (read_result(run_dir, s) for s in ("sft", "dpo", "grpo"))
    assert (sft.train.source, dpo.train.source, grpo.train.source) == ("teacher", "sft", "dpo")
    assert sft.train.steps == 6 and dpo.train.steps == 4 and grpo.train.steps == 4
    # a random tiny model learns the one-word answers: the held-out answer loss falls
    assert sft.heldout_loss_after < sft.heldout_loss_before
    assert dpo.loss == "dpop" and dpo.dpop_lambda == 50.0 and 0 <= dpo.preference_accuracy_after <= 1
    assert set(grpo.heldout_reward_after) == {
        "total",
        "compactlm.rewards.numeric_match",
        "compactlm.rewards.answer_format",
    }
    for stage in ("sft", "dpo", "grpo"):
        folder = run_dir / stage
        assert (folder / "model" / "config.json").is_file() and (folder / "curves.png").is_file()
        assert not (folder / "checkpoints").exists()  # published model: the resumable state is gone
        assert (
            "chat_template" in json.loads((folder / "model" / "tokenizer_config.json").read_text())
            or (folder / "model" / "chat_template.jinja").is_file()
        )
    models = read_manifest(run_dir / "evaluate")["result"]["models"]
    assert set(models) == {"teacher", "sft", "dpo", "grpo"}


def _kill_during_training(tmp_path, model_dir, stage, sig=signal.SIGKILL, **steps):
    stages = [*UPSTREAM, stage]
    extra = [f"{stage}.{k}={v}" for k, v in steps.items()]
    run_dir = write_run_dir(_conf(tmp_path, model_dir, stages, *extra))
    for up in UPSTREAM:
        assert run_stage(up, run_dir / CONFIG_FILE) == 0
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "recipes" / f"{stage}.py"), f"config={run_dir / CONFIG_FILE}"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    complete = []
    while not complete and proc.poll() is None and deadline > time.time():  # a bounded wait, not a timing check
        complete = list((run_dir / stage / "checkpoints").glob("checkpoint-*/compactlm_complete.json"))
        time.sleep(0.05)
    os.killpg(proc.pid, sig)
    rc = proc.wait(timeout=300)
    assert complete, f"{stage} wrote no complete checkpoint before it ended (rc {rc})"
    assert read_manifest(run_dir / stage) is None, f"{stage} finished before it was killed; give it more steps"
    return run_dir, rc


# enough steps that the kill lands after the first checkpoint and well before the end (the process polls 20x/s)
@pytest.mark.parametrize(
    "stage,steps", [("sft", dict(max_steps=40, save_every=4)), ("grpo", dict(max_steps=12, save_every=2))]
)
def test_kill_9_resumes_from_the_last_complete_checkpoint(tmp_path, tiny_llama_dir, capsys, stage, steps):
    run_dir, _ = _kill_during_training(tmp_path, tiny_llama_dir, stage, **steps)
    saved = sorted(
        int(p.parent.name.split("-")[1])
        for p in (run_dir / stage / "checkpoints").glob("checkpoint-*/compactlm_complete.json")
    )
    assert run_stage(stage, run_dir / CONFIG_FILE) == 0
    out = capsys.readouterr().out
    assert f"[{stage}] resuming from checkpoint-{saved[-1]}" in out
    result = read_result(run_dir, stage)
    assert result.train.resumed_from_step == saved[-1] > 0 and result.train.steps == steps["max_steps"]


def test_sigterm_checkpoints_the_current_step_and_exits_with_the_requeue_code(tmp_path, tiny_llama_dir, capsys):
    run_dir, rc = _kill_during_training(tmp_path, tiny_llama_dir, "sft", sig=signal.SIGTERM, max_steps=40, save_every=4)
    assert rc == 128 + signal.SIGTERM  # what the Slurm job script requeues
    markers = [
        json.loads(p.read_text())["global_step"]
        for p in (run_dir / "sft" / "checkpoints").glob("checkpoint-*/compactlm_complete.json")
    ]
    last = max(markers)
    assert 0 < last < 40
    assert run_stage("sft", run_dir / CONFIG_FILE) == 0
    assert f"[sft] resuming from checkpoint-{last}" in capsys.readouterr().out
    assert read_result(run_dir, "sft").train.resumed_from_step == last


@pytest.mark.slow
def test_sft_runs_data_parallel_under_torchrun(tmp_path, tiny_llama_dir):
    """sft.nproc_per_node=2 runs the stage as two gloo processes on CPU, as on a GPU node; rank 0 alone writes."""
    from helpers import run_launch

    files = _data(tmp_path / "align")
    r = run_launch(
        [
            "recipe=prune_distill_align",
            "recipe.stages=[model,data,align_data,sft]",
            "model=local",
            f"model.path={tiny_llama_dir}",
            "data=pydoc",
            "data.max_documents=20",
            "data.seq_len=32",
            "data.validation_sequences=4",
            "data.calibration_sequences=4",
            "data.max_train_sequences=8",
            "align_data=jsonl",
            *(f"align_data.{k}.paths=[{p}]" for k, p in files.items()),
            "align_data.sft.heldout=8",
            "align_data.dpo.heldout=8",
            "align_data.grpo.heldout=8",
            "sft.max_steps=4",
            "sft.save_every=2",
            "sft.nproc_per_node=2",
            "engine.dtype=float32",
            f"runs_root={tmp_path}",
            "run_name=ddp",
        ],
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    result = read_result(tmp_path / "ddp", "sft")
    assert result.train.world_size == 2 and result.train.steps == 4
    assert (tmp_path / "ddp" / "sft" / "model" / "model.safetensors").is_file()
