"""What each cluster submits, checked without contacting it: golden sbatch scripts for 2 nodes x 8 GPUs
with pyxis, `dryrun=true` for every cluster, bad cluster input, and credentials kept out of the run."""

from __future__ import annotations

import os
import re
import subprocess

import pytest
from helpers import REPO, compose, config_error, run_launch

from compactlm.config import ConfigError
from compactlm.launch.executors import render_submission
from compactlm.launch.launcher import place_run
from compactlm.launch.validate import to_config, validate
from compactlm.pipeline import STAGE_NAMES, Task

GOLDEN = REPO / "tests" / "golden"
SLURM_2X8 = [
    "cluster=slurm",
    "cluster.slurm.account=llm_research",
    "cluster.slurm.partition=batch",
    "cluster.nodes=2",
    "cluster.gpus_per_node=8",
    "distill.global_batch_size=64",  # 2 × 8 processes × micro-batch 4
    "cluster.slurm.tunnel=ssh",
    "cluster.slurm.host=login.example.com",
    "cluster.slurm.user=alice",
    "cluster.slurm.job_dir=/lustre/alice/nemorun",
    "cluster.runs_root=/lustre/alice/runs",
    "cluster.cache_dir=/lustre/alice/cache",
    "cluster.container_image=/lustre/containers/compactlm-train.sqsh",
    "cluster.container_mounts=[/lustre/datasets:/datasets]",
    "cluster.slurm.time=12:00:00",
    "cluster.slurm.exclusive=true",
    "model=bielik_11b_v3",
    "prune=exp_010",
    "run_name=bielik_exp010",
]


def _normalize(text: str) -> str:
    """Experiment ids carry a timestamp and torchrun's rendezvous id is random: fixed placeholders."""
    text = re.sub(r"(bielik_exp010)_\d{10,}", r"\1_<EXPERIMENT_ID>", text)
    return re.sub(r"--rdzv-id \d+", "--rdzv-id <RDZV_ID>", text)


def _render(overrides):
    conf = to_config(compose(overrides))
    validate(conf, STAGE_NAMES)
    local_dir = place_run(conf)
    return conf, dict(render_submission(conf, local_dir))


@pytest.mark.parametrize("stage", ["distill", "importance", "model"])
def test_slurm_sbatch_scripts_match_golden_files(stage):
    _, scripts = _render(SLURM_2X8)
    got = _normalize(scripts[stage])
    golden = GOLDEN / f"slurm_2x8_pyxis_{stage}.sbatch"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(got)
    assert got == golden.read_text(), f"{golden} differs; UPDATE_GOLDEN=1 rewrites it after a deliberate change"


def test_golden_distill_script_has_rendezvous_pyxis_requeue_and_outputs():
    text = (GOLDEN / "slurm_2x8_pyxis_distill.sbatch").read_text()
    assert "#SBATCH --nodes=2" in text and "#SBATCH --gpus-per-node=8" in text and "#SBATCH --exclusive" in text
    assert "--nnodes 2 --nproc-per-node 8" in text and "--rdzv-backend c10d --rdzv-endpoint $head_node_ip:29500" in text
    assert "--container-image /lustre/containers/compactlm-train.sqsh" in text
    assert "/lustre/datasets:/datasets" in text and "/lustre/alice/runs:/lustre/alice/runs" in text
    assert "#SBATCH --signal=USR1@120" in text and 'scontrol requeue "$SLURM_JOB_ID"' in text
    assert "sbatch --requeue" in text and "TORCHELASTIC_SIGNALS_TO_HANDLE=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1" in text
    assert "#SBATCH --output=/lustre/alice/nemorun/bielik_exp010/" in text
    assert "-m compactlm.run distill config=config.yaml" in text
    importance = (GOLDEN / "slurm_2x8_pyxis_importance.sbatch").read_text()
    assert "#SBATCH --nodes=1" in importance and "#SBATCH --gpus-per-node=1" in importance
    assert "--gpus-per-node" not in (GOLDEN / "slurm_2x8_pyxis_model.sbatch").read_text()


def test_packaged_config_points_the_stages_at_the_cluster_storage():
    conf, _ = _render(SLURM_2X8)
    assert conf.run_dir == "/lustre/alice/runs/bielik_exp010" and conf.cache_dir == "/lustre/alice/cache"


@pytest.mark.parametrize("cluster", ["local", "slurm"])
def test_dryrun_prints_what_would_be_submitted_and_writes_nothing(tmp_path, cluster):
    extra = ["cluster.slurm.account=acct"] if cluster == "slurm" else []
    r = run_launch([f"cluster={cluster}", *extra, f"runs_root={tmp_path}", "dryrun=true"], timeout=300)
    assert r.returncode == 0, r.stderr
    assert "# resolved config" in r.stdout and "dryrun=true: nothing was written or submitted" in r.stdout
    for stage in ("model", "distill", "evaluate"):
        assert f"## {stage}" in r.stdout
    assert ("#SBATCH --account=acct" in r.stdout) == (cluster == "slurm")
    assert not any(tmp_path.iterdir()), list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["cluster=slurm"], "cluster.slurm.account is required"),
        (
            ["cluster=slurm", "cluster.slurm.account=a", "cluster.gpus_per_node=16"],
            "cluster.gpus_per_node=16 exceeds 8",
        ),
        (["cluster=slurm", "cluster.slurm.account=a", "cluster.nodes=0"], "cluster.nodes=0 must be an integer >= 1"),
        (
            ["cluster=slurm", "cluster.slurm.account=a", "cluster.nodes=2", "+cluster.stage_nodes.distill=4"],
            "cluster.stage_nodes.distill=4 asks more nodes than the cluster has (cluster.nodes=2)",
        ),
        (["cluster=slurm", "cluster.slurm.account=a", "cluster.slurm.time=forever"], "cluster.slurm.time='forever'"),
        (["cluster=slurm", "cluster.slurm.account=a", "cluster.slurm.tunnel=ssh"], "cluster.slurm.host is required"),
        (
            [
                "cluster=slurm",
                "cluster.slurm.account=a",
                "cluster.slurm.tunnel=ssh",
                "cluster.slurm.host=h",
                "cluster.slurm.job_dir=/j",
            ],
            "cluster.runs_root=None",
        ),
        (["cluster.nodes=2"], "cluster.nodes=2 with cluster.executor=local"),
        (["cluster.executor=kubernetes"], "cluster.executor='kubernetes' is not allowed"),
        (["+cluster.env.HF_TOKEN=abc"], "cluster.env.HF_TOKEN: credentials must not be in the config"),
    ],
)
def test_bad_cluster_input_fails_before_submission(tmp_path, overrides, message):
    r = run_launch([*overrides, f"runs_root={tmp_path}"], timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr, r.stderr
    assert not any(tmp_path.iterdir())


def test_resources_per_stage():
    from compactlm.launch.resources import stage_gpus, stage_processes

    conf = to_config(compose(SLURM_2X8))
    assert [conf.cluster.nodes_for(s) for s in ("model", "importance", "distill", "quantize")] == [1, 1, 2, 1]
    assert [stage_gpus(conf, Task(s)) for s in ("model", "data", "prune", "distill", "evaluate")] == [0, 0, 1, 8, 1]
    assert stage_processes(conf, Task("distill")) == 8 and stage_processes(conf, Task("prune")) == 1
    with pytest.raises(ConfigError):
        to_config(compose([*SLURM_2X8, "+cluster.stage_nodes.prune=3"]))


SSH_SLURM = [
    "cluster=slurm",
    "cluster.slurm.account=a",
    "cluster.slurm.tunnel=ssh",
    "cluster.slurm.host=h",
    "cluster.slurm.job_dir=/j",
    "cluster.runs_root=/lustre/runs",
    "cluster.cache_dir=/lustre/cache",
]


def _placed(overrides):
    conf = to_config(compose(overrides))
    validate(conf, STAGE_NAMES)
    return conf, place_run(conf)


def test_local_inputs_become_absolute_paths_the_stages_can_read_from_anywhere(tmp_path, monkeypatch):
    """Slurm runs each stage from NeMo-Run's copy of the code: a relative path would point at nothing there
    (the evaluate stage failed so on a real Slurm)."""
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "a.txt").write_text("Zdanie pierwsze jest tutaj. Zdanie drugie jest tam.\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    conf, _ = _placed(
        [
            "cluster=slurm",
            "cluster.slurm.account=a",
            "data=text",
            "data.paths=[texts/*.txt]",
            f"runs_root={tmp_path}",
            "evaluate.tasks=[polish_continuation]",
            "evaluate.task_text=texts",
        ]
    )
    assert conf.data.paths == [str(texts / "*.txt")]
    assert conf.evaluate.task_text == str(texts)


def test_the_default_evaluation_reads_nothing_outside_the_run(tmp_path):
    """heldout_continuation is built from the data stage's held-out documents: no folder to name or ship."""
    conf, _ = _placed([*SSH_SLURM, f"run_name={tmp_path.name}"])
    assert conf.evaluate.tasks == ["heldout_continuation"] and conf.evaluate.task_text is None
    conf, _ = _placed(["cluster=dgx_h200", "cluster.lepton.node_group=g", "cluster.container_image=nvcr.io/o/t:1"])
    assert conf.evaluate.task_text is None


def test_a_container_mounts_the_folders_of_local_inputs(tmp_path):
    from compactlm.launch.resources import container_mounts

    texts = tmp_path / "pl"
    texts.mkdir()
    (texts / "a.txt").write_text("Zdanie pierwsze jest tutaj.\n", encoding="utf-8")
    conf, _ = _placed(
        [
            "cluster=slurm",
            "cluster.slurm.account=a",
            "cluster.container_image=/c/train.sqsh",
            "cluster.runs_root=/lustre/runs",
            "data=text",
            f"data.paths=[{texts}/*.txt]",
            "cluster.container_mounts=[/lustre:/lustre]",
        ]
    )
    mounts = container_mounts(conf)
    assert f"{texts}:{texts}" in mounts
    assert not any(m.startswith("/lustre/runs") for m in mounts), mounts  # already inside the user's /lustre mount


def test_remote_slurm_packages_the_code_and_the_config(tmp_path, monkeypatch):
    import io
    import sys
    import tarfile

    import nemo_run as run

    from compactlm.launch.executors import packager

    conf, local_dir = _placed([*SSH_SLURM, f"run_name={tmp_path.name}"])
    local_dir.mkdir(parents=True, exist_ok=True)
    (local_dir / "config.yaml").write_text("x: 1\n")
    monkeypatch.setattr(sys, "stdin", io.StringIO())  # the packager shells out through invoke, which reads stdin
    tar = packager(conf, run, local_dir).package(REPO, str(tmp_path), "job")
    names = set(tarfile.open(tar).getnames())
    assert {
        "config.yaml",
        "recipes/prune_distill.yaml",
        "src/compactlm/evaluate/lm_eval_tasks/heldout_continuation.yaml",
    } <= names
    assert not any("shared" in n.split("/") for n in names)


@pytest.mark.parametrize(
    "extra, key",
    [
        (["data=text", "data.paths=[texts/*.txt]"], "data.paths='texts/*.txt' is relative"),
        (
            ["evaluate.tasks=[polish_continuation]", "evaluate.task_text=texts"],
            "evaluate.task_text='texts' is relative",
        ),
        (["recipe=eval", "model=local", "model.path=./models/teacher"], "model.path='./models/teacher' is relative"),
    ],
)
def test_relative_inputs_on_a_remote_cluster_are_refused(extra, key):
    assert key in config_error([*SSH_SLURM, *extra])


def test_a_stage_that_fails_cancels_the_stages_waiting_on_it():
    text = (GOLDEN / "slurm_2x8_pyxis_importance.sbatch").read_text()
    assert "#SBATCH --kill-on-invalid-dep=yes" in text  # (the afterok dependency is added at submission)


@pytest.mark.parametrize(
    "config_error, exitcode, requeued",
    [
        (True, 2, False),  # the stage stopped on a configuration error: the same config would fail again
        (False, 143, True),  # preempted / time limit: the stage checkpointed, the job comes back
        (False, 1, True),  # a crash (node failure, OOM): retried up to max_retries
    ],
)
def test_the_job_script_requeues_all_but_configuration_errors(tmp_path, config_error, exitcode, requeued):
    """The end of the real rendered sbatch script, run by bash with a `scontrol` that records its calls."""
    text = (GOLDEN / "slurm_2x8_pyxis_importance.sbatch").read_text()
    tail = text[text.index("exitcode=$?") :]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/scontrol.calls\n')
    (bin_dir / "scontrol").chmod(0o755)
    marker = tmp_path / "importance" / "config_error.txt"
    if config_error:
        marker.parent.mkdir()
        marker.write_text("evaluate.task_text='/x' has no .txt file\n")
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "TORCHX_MAX_RETRIES": "3",
        "SLURM_RESTART_COUNT": "0",
        "SLURM_JOB_ID": "42",
        "COMPACTLM_NO_REQUEUE": str(marker),
    }
    r = subprocess.run(["bash", "-c", f"(exit {exitcode})\n{tail}"], env=env, capture_output=True, text=True)
    assert r.returncode == exitcode
    calls = (tmp_path / "scontrol.calls").read_text() if (tmp_path / "scontrol.calls").exists() else ""
    assert (calls == "requeue 42\n") is requeued, (calls, r.stdout)
    if config_error:
        assert "not requeued" in r.stdout


def test_a_configuration_error_in_a_stage_leaves_the_no_requeue_marker(tmp_path, tiny_llama_dir):
    import shutil

    from compactlm.launch.launcher import write_run_dir
    from compactlm.pipeline import CONFIG_ERROR, EXIT_CONFIG, main

    model = shutil.copytree(tiny_llama_dir, tmp_path / "teacher")
    conf = to_config(compose(["recipe=eval", "model=local", f"model.path={model}", f"runs_root={tmp_path}"]))
    conf.run_dir = str(tmp_path / conf.run_name)
    run_dir = write_run_dir(conf)
    (model / "model.safetensors").unlink()  # the folder changed between submission and the stage
    assert main(["model", f"config={run_dir / 'config.yaml'}"]) == EXIT_CONFIG
    assert "model.path" in (run_dir / "model" / CONFIG_ERROR).read_text()
