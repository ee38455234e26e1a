"""The search stages in-process on a tiny model, as recipe=search_distill runs them: one teacher cache, each candidate
pruned to its resolved sizes and distilled from that cache, the ranking, then the winner distilled and evaluated;
a candidate added later leaves the finished ones current."""

from __future__ import annotations

import os
import subprocess
import sys

from helpers import REPO, compose

from compactlm.launch.launcher import write_run_dir
from compactlm.launch.search import resolve_search
from compactlm.launch.validate import to_config, validate
from compactlm.manifest import read_manifest
from compactlm.model.loading import read_hf_config
from compactlm.pipeline import CONFIG_FILE, STAGE_NAMES, run_stage, run_tasks
from compactlm.results import read_result

STAGES = ["model", "data", "importance", "teacher_cache", "candidate", "ranking", "distill", "evaluate"]


def _conf(tmp_path, model_dir, *extra):
    conf = to_config(
        compose(
            [
                "recipe=search_distill",
                f"recipe.stages=[{','.join(STAGES)}]",
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
                "search.distill_tokens=512",
                "distill.micro_batch_size=2",
                "distill.global_batch_size=2",
                "distill.max_steps=4",
                "distill.lr=1e-3",
                "evaluate.generate_tokens=2",
                "evaluate.tasks=[]",
                "engine.dtype=float32",
                f"runs_root={tmp_path}",
                "run_name=search",
                *extra,
            ]
        )
    )
    resolve_search(conf, validate(conf, STAGE_NAMES))
    return conf


def test_search_distill_ranks_the_candidates_and_distills_the_winner(tmp_path, tiny_llama_dir, capsys):
    conf = _conf(tmp_path, tiny_llama_dir, "search.max_candidates=2")
    run_dir = write_run_dir(conf)
    tasks = run_tasks(conf)
    for task in tasks:
        assert run_stage(task.stage, run_dir / CONFIG_FILE, task.instance) == 0, task
    cache = read_result(run_dir, "teacher_cache")
    assert cache.train_sequences == 8  # 8 steps x 2 sequences = 16, capped at the train split's 8
    for c in conf.search.resolved:
        result = read_result(run_dir, f"candidate-{c.name}")
        assert result.params.without_lm_head == c.params  # pruned to exactly what the launcher counted
        assert result.steps == 8 and len(result.curve) >= 2 and result.curve[0]["step"] == 0
        # pruned-only = the evaluation before the first step; the ranking metric = the one after the last
        assert (result.pruned_loss, result.loss) == (result.curve[0]["val_nll"], result.curve[-1]["val_nll"])
    ranking = read_result(run_dir, "ranking")
    assert ranking.teacher_loss == cache.teacher_loss and cache.teacher_loss > 0  # the reference of every loss
    winner = next(c for c in conf.search.resolved if c.name == ranking.winner)
    # the winner's pruned checkpoint is what the distill stage trained
    student = read_hf_config(run_dir / "distill" / "student")
    for key, hf_key in (
        ("num_layers", "num_hidden_layers"),
        ("ffn_hidden_size", "intermediate_size"),
        ("hidden_size", "hidden_size"),
        ("num_attention_heads", "num_attention_heads"),
    ):
        value = winner.export_config.known().get(key)
        if value is not None:
            assert student[hf_key] == value, key
    models = read_manifest(run_dir / "evaluate")["result"]["models"]
    assert set(models) == {"teacher", "pruned", "distilled"}
    assert models["pruned"]["params"]["without_lm_head"] == winner.params

    # a third candidate: the two finished ones stay current, the new one runs, the ranking runs again
    more = _conf(tmp_path, tiny_llama_dir, "search.max_candidates=3")
    write_run_dir(more)
    capsys.readouterr()
    kept = {c.name for c in conf.search.resolved} & {c.name for c in more.search.resolved}
    assert kept, "the larger search should keep a candidate of the smaller one"
    for task in run_tasks(more):
        assert run_stage(task.stage, run_dir / CONFIG_FILE, task.instance) == 0, task
    out = capsys.readouterr().out
    for name in kept:
        assert f"[candidate-{name}] up to date" in out
    assert "[teacher_cache] up to date" in out and "[ranking] running" in out
    assert len(read_result(run_dir, "ranking").candidates) == 3

    # a candidate the run does not have: one configuration error line, and no folder made for it
    r = subprocess.run(
        [sys.executable, "-m", "compactlm.run", "candidate", f"config={run_dir / CONFIG_FILE}", "candidate=nope"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    assert r.returncode == 2 and "candidate='nope' is not one of this run's candidates" in r.stderr
    assert not (run_dir / "candidate-nope").exists()


def test_a_candidate_runs_data_parallel_under_torchrun(tmp_path, tiny_llama_dir):
    """distill.nproc_per_node=2 runs a candidate as two gloo processes, as on a GPU node: rank 0 prunes, the other
    rank waits for the pruned checkpoint, both distill, rank 0 alone writes the result."""
    conf = _conf(
        tmp_path, tiny_llama_dir, "search.max_candidates=1", "distill.nproc_per_node=2", "distill.micro_batch_size=1"
    )
    run_dir = write_run_dir(conf)
    tasks = run_tasks(conf)
    for task in tasks[:4]:
        assert run_stage(task.stage, run_dir / CONFIG_FILE, task.instance) == 0, task
    name = conf.search.resolved[0].name
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "-m",
            "compactlm.run",
            "candidate",
            f"config={run_dir / CONFIG_FILE}",
            f"candidate={name}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert r.stdout.count(f"[candidate {name} (1/1)] ") >= 2 and "parameters (" in r.stdout  # rank 0 pruned once
    result = read_result(run_dir, f"candidate-{name}")
    assert result.steps == 8 and result.params.without_lm_head == conf.search.resolved[0].params
