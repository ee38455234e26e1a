"""`cluster=dgx_h200` (DGX Cloud Lepton, 2 nodes x 8 H200): the job specs compactlm's launcher builds, checked
without Lepton. `dryrun=true` renders each stage's spec with NeMo-Run's own `create_lepton_job` and a stand-in
for leptonai's APIClient that answers the node-group look-ups with placeholders, so nothing is contacted and no
Lepton login is needed."""

from __future__ import annotations

import json
import re

import pytest
from helpers import compose, config_error, run_launch

from compactlm.launch.executors import render_submission
from compactlm.launch.launcher import place_run
from compactlm.launch.validate import to_config, validate
from compactlm.pipeline import STAGE_NAMES

IMAGE = "nvcr.io/acme/compactlm-train:1.0"
NODE_GROUP = "h200-pool"
H200 = [
    "cluster=dgx_h200",
    f"cluster.lepton.node_group={NODE_GROUP}",
    f"cluster.container_image={IMAGE}",
    "model=bielik_11b_v3",
    "prune=exp_010",
    "run_name=bielik_exp010",
]
NO_LEPTON_LOGIN = {"LEPTON_WORKSPACE_ID": "", "LEPTON_WORKSPACE_TOKEN": "", "LEPTON_WORKSPACE_URL": ""}


def _specs(text: str) -> dict:
    """The JSON job spec printed under '# 2. POST <workspace>/jobs'."""
    return json.loads(text[text.index("{") : text.index("\n}\n") + 2])


@pytest.fixture(scope="module")
def rendered():
    conf = to_config(compose(H200))
    validate(conf, STAGE_NAMES)
    local_dir = place_run(conf)
    return conf, dict(render_submission(conf, local_dir))


def test_distill_runs_on_two_replicas_of_eight_h200_with_torchrun(rendered):
    conf, text = rendered
    job = _specs(text["distill"])
    assert job["metadata"] == {"id": "distill"}
    spec = job["spec"]
    assert spec["resource_shape"] == "gpu.8xh200" and (spec["completions"], spec["parallelism"]) == (2, 2)
    assert spec["container"]["image"] == IMAGE and spec["intra_job_communication"] is True
    assert spec["affinity"] == {
        "allowed_dedicated_node_groups": [f"<id of node group {NODE_GROUP}>"],
        "allowed_nodes_in_node_group": [f"<nodes of {NODE_GROUP}>"],
    }
    assert spec["mounts"] == [{"path": "/compactlm", "from": "node-nfs:lepton-shared-fs", "mount_path": "/workspace"}]
    assert spec["shared_memory_size"] == 65536
    env = {e["name"]: e["value"] for e in spec["envs"]}
    assert env == {
        "PYTHONUNBUFFERED": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TORCHELASTIC_SIGNALS_TO_HANDLE": "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1",
    }
    job_dir = spec["container"]["command"][2].removeprefix("bash ").removesuffix("/launch_script.sh")
    assert spec["container"]["command"][:2] == ["/bin/bash", "-c"]
    assert job_dir.startswith("/workspace/compactlm/nemo_run/experiments/bielik_exp010/") and job_dir.endswith(
        "/distill"
    )
    # The launch script: rendezvous from Lepton's variables (no download at run time), then torchrun per node.
    assert "wget" not in text["distill"]
    assert "export NODE_RANK=${LEPTON_JOB_WORKER_INDEX}" in text["distill"]
    assert (
        "torchrun --nnodes 2 --nproc-per-node 8 --node-rank $NODE_RANK --master-addr $MASTER_ADDR "
        "--master-port $MASTER_PORT -m compactlm.run distill config=/nemo_run/code/config.yaml"
    ) in text["distill"]
    assert "(after stage prune succeeded)" in text["distill"]
    # The stages write to the shared storage the replicas mount.
    assert conf.run_dir == "/workspace/compactlm/runs/bielik_exp010" and conf.cache_dir == "/workspace/compactlm/cache"


def test_single_gpu_and_cpu_stages_take_one_h200(rendered):
    _, text = rendered
    for stage in ("model", "importance", "quantize"):
        spec = _specs(text[stage])["spec"]
        assert spec["resource_shape"] == "gpu.1xh200" and (spec["completions"], spec["parallelism"]) == (1, 1)
        assert f"\npython -m compactlm.run {stage} config=/nemo_run/code/config.yaml" in text[stage]
    assert "after stage" not in text["model"]


def test_dryrun_prints_the_job_specs_without_lepton_and_writes_nothing(tmp_path):
    r = run_launch([*H200, f"runs_root={tmp_path}", "dryrun=true"], env=NO_LEPTON_LOGIN, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "dryrun=true: nothing was written or submitted" in r.stdout
    assert '"resource_shape": "gpu.8xh200"' in r.stdout and f'"image": "{IMAGE}"' in r.stdout
    assert len(re.findall(r"^## \w+$", r.stdout, re.M)) == r.stdout.count("# 2. POST <workspace>/jobs")
    assert not any(tmp_path.iterdir())


BAD = [
    (["cluster.lepton.node_group=null"], "cluster.lepton.node_group is required"),
    (
        ["cluster.lepton.resource_shape=gpu.8xa100"],
        "cluster.lepton.resource_shape='gpu.8xa100' is not allowed; choose one of: gpu.1xh200",
    ),
    (
        ["cluster.gpus_per_node=4"],
        "cluster.gpus_per_node=4 does not match cluster.lepton.resource_shape=gpu.8xh200 (8 GPUs per replica)",
    ),
    (
        ["cluster.lepton.resource_shape=gpu.4xh200"],
        "cluster.gpus_per_node=8 does not match cluster.lepton.resource_shape=gpu.4xh200",
    ),
    (["cluster.lepton.mounts=[]"], "cluster.lepton.mounts is empty"),
    (
        ["cluster.lepton.nemo_run_dir=/tmp/nemo_run"],
        "cluster.lepton.nemo_run_dir='/tmp/nemo_run' is not on a mounted volume",
    ),
    (["cluster.cache_dir=/root/.cache"], "cluster.cache_dir='/root/.cache' is not on a mounted volume"),
    (["cluster.container_image=null"], "cluster.container_image is required for cluster.executor=lepton"),
    (["cluster.container_image='nvcr.io/<org>/compactlm-train:latest'"], "is a placeholder"),
]


@pytest.mark.parametrize("overrides, message", BAD, ids=[o[0] for o, _ in BAD])
def test_bad_lepton_input_names_the_key(overrides, message):
    assert message in config_error([*H200, *overrides])


def test_bad_lepton_input_fails_in_launch_before_anything_is_written(tmp_path):
    r = run_launch(["cluster=dgx_h200", f"runs_root={tmp_path}"], env=NO_LEPTON_LOGIN, timeout=60)
    assert r.returncode == 2 and "cluster.lepton.node_group is required" in r.stderr, r.stderr
    assert not any(tmp_path.iterdir())
