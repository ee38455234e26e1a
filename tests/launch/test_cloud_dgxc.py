"""`python launch.py cluster=dgxc ...` against a fake Run:ai control plane on 127.0.0.1 (tests/fake_runai.py).

The fake speaks Run:ai's REST API and plays NeMo-Run's data-mover workspaces onto a local folder standing for the
PVC, so these tests see what a cluster would: every HTTP call, the workload payloads, the files that reach the
PVC, the states status polls report. launch.py runs as a user runs it, in a subprocess, with the Run:ai client
id and secret only in its environment; the tests then search everything it wrote and printed for them.
"""

from __future__ import annotations

import base64
import json
import os
import re
import zlib
from pathlib import Path

import pytest
import requests
from fake_runai import FakeRunAI
from helpers import compose, config_error, run_launch

CLIENT_ID = "compactlm-client-3f9a1c"
SECRET = "runai-secret-7Qm2vX9pL4"  # neither may reach the config, the run folder, the PVC, payloads or output
IMAGE = "nvcr.io/acme/compactlm-train:1.0"
CLAIM = "compactlm-ws"
PVC_NEMO_RUN_DIR = "/workspace/compactlm/nemo_run"
CREDENTIALS = {"RUNAI_CLIENT_ID": CLIENT_ID, "RUNAI_CLIENT_SECRET": SECRET}


def dgxc_args(base_url: str, runs_root: Path, *extra: str) -> list[str]:
    return [
        "cluster=dgxc",
        f"cluster.dgxc.base_url={base_url}",
        "cluster.dgxc.project_name=compactlm",
        f"cluster.dgxc.pvcs.0.claim_name={CLAIM}",
        f"cluster.container_image={IMAGE}",
        "cluster.dgxc.poll_seconds=0.05",
        "distill.global_batch_size=64",  # dgxc: 2 nodes × 8 GPUs × micro-batch 4
        f"runs_root={runs_root}",
        "run_name=exp010",
        *extra,
    ]


@pytest.fixture
def fake(tmp_path):
    with FakeRunAI(client_id=CLIENT_ID, client_secret=SECRET, pvc_root=tmp_path / "pvc") as server:
        yield server


def on_pvc(fake: FakeRunAI, pod_path: str) -> Path:
    """The local file behind `pod_path` (an absolute path inside the pod, under the /workspace mount)."""
    return fake.pvc_path(CLAIM, os.path.relpath(pod_path, "/workspace"))


def leaks(root: Path, values=(SECRET, CLIENT_ID)) -> set[str]:
    """Files under `root` holding a credential in plain text or inside a zlib+base64 blob (NeMo-Run's
    ZlibJSONSerializer records: _TASKS, _CONFIG, .dgx_jobs.json)."""
    hits = set()
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        text = path.read_bytes().decode("utf-8", "replace")
        texts = [text]
        for blob in re.findall(r"[A-Za-z0-9_\-]{24,}={0,2}", text):
            try:
                texts.append(zlib.decompress(base64.urlsafe_b64decode(blob)).decode("utf-8", "replace"))
            except (ValueError, zlib.error):
                pass
        if any(v in t for v in values for t in texts):
            hits.add(str(path.relative_to(root)))
    return hits


@pytest.fixture
def in_process(monkeypatch):
    """`launch.py ARGS` in this process (NeMo-Run is imported once for all such tests, not once per run);
    NeMo-Run's global home and job-record paths are restored afterwards."""
    import io
    import sys

    import nemo_run.config
    from nemo_run.run.torchx_backend.schedulers import dgxcloud as dgx_scheduler

    from compactlm.launch.launcher import launch

    monkeypatch.setenv("NEMORUN_HOME", os.environ.get("NEMORUN_HOME", ""))
    monkeypatch.setattr(nemo_run.config, "_NEMORUN_HOME", nemo_run.config.get_nemorun_home())
    monkeypatch.setattr(dgx_scheduler, "DGX_JOB_DIRS", dgx_scheduler.DGX_JOB_DIRS)
    monkeypatch.setattr(sys, "stdin", io.StringIO())  # the packager shells out through invoke, which reads stdin
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    return lambda args: launch(compose(args))


@pytest.fixture
def ops(in_process, capfd):
    """`launch.py <command> ARGS` in this process: (exit code, stdout, stderr)."""
    from compactlm.launch.ops import main

    def call(*argv):
        capfd.readouterr()
        code = main(list(argv))
        out, err = capfd.readouterr()
        return code, out, err

    return call


def assert_no_credentials(*texts: str) -> None:
    for text in texts:
        assert SECRET not in text and CLIENT_ID not in text


def test_fake_requires_a_bearer_token_issued_for_the_client_credentials(fake):
    projects = f"{fake.base_url}/org-unit/projects"
    assert requests.get(projects, timeout=5).status_code == 401
    wrong = {"grantType": "client_credentials", "clientId": CLIENT_ID, "clientSecret": "nope"}
    assert requests.post(f"{fake.base_url}/token", json=wrong, timeout=5).status_code == 401
    token = requests.post(f"{fake.base_url}/token", json={**wrong, "clientSecret": SECRET}, timeout=5).json()[
        "accessToken"
    ]
    reply = requests.get(projects, headers={"Authorization": f"Bearer {token}"}, timeout=5)
    assert reply.status_code == 200 and reply.json()["projects"][0]["name"] == "compactlm"
    assert SECRET not in json.dumps([r.__dict__ for r in fake.requests])  # the recorder redacts it


def test_launch_submits_each_stage_after_the_previous_one_and_waits(tmp_path, fake, ops):
    runs = tmp_path / "runs"
    r = run_launch(dgxc_args(fake.base_url, runs, "recipe.stages=[model,distill]"), env=CREDENTIALS, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "states {'model': 'SUCCEEDED', 'distill': 'SUCCEEDED'}" in r.stdout

    # model: a one-node training without GPUs; distill: a PyTorch distributed workload, 2 pods x 8 GPUs.
    (training,) = fake.of_kind("trainings")
    (distributed,) = fake.of_kind("distributed")
    pvcs = [{"claimName": CLAIM, "path": "/workspace", "existingPvc": True, "readOnly": False}]
    for w, gpus in ((training, 0), (distributed, 8)):
        assert w.spec["image"] == IMAGE and w.spec["storage"] == {"pvc": pvcs}
        assert w.spec["compute"] == {"gpuDevicesRequest": gpus, "largeShmRequest": True}
        env = {e["name"]: e["value"] for e in w.spec["environmentVariables"]}
        assert env["PYTHONUNBUFFERED"] == "1" and "PYTHONPATH" not in env and "PATH" not in env
    assert training.request["name"] == "model" and distributed.request["name"] == "distill"
    assert (
        distributed.spec["distributedFramework"],
        distributed.spec["numWorkers"],
        distributed.spec["minReplicas"],
        distributed.spec["maxReplicas"],
    ) == ("PyTorch", 2, 2, 2)
    assert "numWorkers" not in training.spec

    # The order: model's data mover, model, polls until Completed, then distill's data mover and distill.
    seq = fake.sequence()
    model_at, distill_at = seq.index("POST /workloads/trainings"), seq.index("POST /workloads/distributed")
    assert "GET /workloads/trainings/{id}" in seq[model_at:distill_at]
    assert seq[model_at:distill_at].count("POST /workloads/workspaces") == 1  # one data mover per stage: small
    assert seq[distill_at + 1 :].count("GET /workloads/distributed/{id}") >= 2  # polled until Completed
    assert all(len(w.spec["args"]) <= 9500 for w in fake.of_kind("workspaces"))
    assert fake.lost_writes == []

    # Each stage runs its own command, from the image's compactlm, on the config copied to the PVC.
    commands = {}
    for w in (training, distributed):
        job_dir = w.spec["command"].removeprefix("/bin/bash ").removesuffix("/launch_script.sh")
        assert job_dir.startswith(f"{PVC_NEMO_RUN_DIR}/experiments/exp010/")
        launch_script = on_pvc(fake, f"{job_dir}/launch_script.sh").read_text()
        assert launch_script.startswith("\nset -o pipefail\n") and f"bash {job_dir}/torchrun_job.sh" in launch_script
        script = on_pvc(fake, f"{job_dir}/torchrun_job.sh").read_text()
        commands[w.request["name"]] = [line for line in script.splitlines() if "-m compactlm.run " in line]
        config = on_pvc(fake, f"{job_dir}/code/config.yaml").read_text()
        assert (
            "run_dir: /workspace/compactlm/runs/exp010" in config and "cache_dir: /workspace/compactlm/cache" in config
        )
    assert commands == {
        "model": ["python -m compactlm.run model config=/nemo_run/code/config.yaml"],
        "distill": [
            "torchrun --nnodes 2 --nproc-per-node 8 -m compactlm.run distill config=/nemo_run/code/config.yaml"
        ],
    }

    # `launch.py status` asks Run:ai again (credentials from the environment) and shows each stage's state.
    code, out, err = ops("status", "run_name=exp010", f"runs_root={runs}")
    assert code == 0, err
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()[:1] in (["model"], ["distill"])}
    assert rows["model"][2] == "SUCCEEDED" and rows["distill"][2] == "SUCCEEDED", out

    # No credential anywhere: resolved config, run folder (NeMo-Run's zlib records included), PVC, payloads, output.
    assert leaks(runs) == set() and leaks(fake.pvc_root) == set()
    assert "RUNAI_CLIENT_SECRET" in (runs / "exp010" / "config.yaml").read_text()  # only the variable's name
    assert_no_credentials(json.dumps([w.request for w in fake.workloads.values()]), r.stdout, r.stderr, out, err)
    assert not [q for q in fake.requests if q.path != "/token" and SECRET in json.dumps(q.body)]


def test_a_failed_stage_stops_the_stages_after_it(tmp_path, fake, in_process, capfd):
    fake.outcome = "Failed"
    assert in_process(dgxc_args(fake.base_url, tmp_path / "runs", "recipe.stages=[model,distill]")) == 1
    out, err = capfd.readouterr()
    assert "stage 'distill' not submitted: stage 'model' ended Failed" in err
    assert "states {'model': 'FAILED', 'distill': 'CANCELLED'}" in out
    assert [w.request["name"] for w in fake.workloads.values() if w.kind != "workspaces"] == ["model"]
    assert_no_credentials(out, err)


def test_detached_run_is_cancelled_by_launch_py_cancel(tmp_path, fake, in_process, ops, capfd):
    fake.outcome = "Running"  # the workload keeps running until cancelled
    runs = tmp_path / "runs"
    assert in_process(dgxc_args(fake.base_url, runs, "recipe.stages=[distill]", "cluster.detach=true")) == 0
    out, err = capfd.readouterr()
    assert "python launch.py cancel run_name=exp010" in out

    c = run_launch(["cancel", "run_name=exp010", f"runs_root={runs}"], env=CREDENTIALS, timeout=90)
    assert c.returncode == 0 and "cancelled: distill" in c.stdout, c.stdout + c.stderr
    (suspend,) = fake.calls(path=r"/workloads/distributed/[^/]+/suspend")
    assert (suspend.method, suspend.status) == ("POST", 202)  # Run:ai's suspend is a POST (NeMo-Run sent GET)
    code, status_out, status_err = ops("status", "run_name=exp010", f"runs_root={runs}")
    assert re.search(r"^distill\s+\?\s+CANCELLED\s", status_out, re.M), status_out + status_err
    assert leaks(runs) == set()
    assert_no_credentials(out, err, status_out, status_err, c.stdout, c.stderr)


def test_missing_credentials_fail_before_anything_is_written(tmp_path, fake):
    env = {"RUNAI_CLIENT_ID": CLIENT_ID, "RUNAI_CLIENT_SECRET": ""}
    r = run_launch(dgxc_args(fake.base_url, tmp_path / "runs", "recipe.stages=[model]"), env=env, timeout=60)
    assert r.returncode == 2 and "export $RUNAI_CLIENT_SECRET" in r.stderr, r.stderr
    assert not (tmp_path / "runs").exists() and fake.requests == []


def test_dryrun_prints_the_workloads_and_contacts_nothing(tmp_path):
    env = {"RUNAI_CLIENT_ID": "", "RUNAI_CLIENT_SECRET": ""}
    # Port 9 (discard) on 127.0.0.1: nothing listens, so any request would fail the run.
    r = run_launch(dgxc_args("http://127.0.0.1:9/api/v1", tmp_path / "runs", "dryrun=true"), env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "dryrun=true: nothing was written or submitted" in r.stdout
    assert not (tmp_path / "runs").exists()
    out = r.stdout
    stages = re.findall(r"^## (\w+)$", out, re.M)
    assert stages[:5] == ["model", "data", "importance", "prune", "distill"]
    # distill on 2 nodes is a distributed workload; every other stage a one-node training, after the one before.
    assert out.count("# 3. POST http://127.0.0.1:9/api/v1/workloads/trainings") == len(stages) - 1
    assert out.count("# 3. POST http://127.0.0.1:9/api/v1/workloads/distributed  (after stage prune succeeded)") == 1
    assert '"gpuDevicesRequest": 8' in out and '"numWorkers": 2' in out and f'"image": "{IMAGE}"' in out
    assert f'"claimName": "{CLAIM}"' in out
    assert "torchrun --nnodes 2 --nproc-per-node 8 -m compactlm.run distill config=/nemo_run/code/config.yaml" in out
    assert "python -m compactlm.run quantize config=/nemo_run/code/config.yaml" in out


GOOD = [
    "cluster=dgxc",
    "cluster.dgxc.base_url=https://acme.run.ai/api/v1",
    "cluster.dgxc.project_name=compactlm",
    f"cluster.dgxc.pvcs.0.claim_name={CLAIM}",
    f"cluster.container_image={IMAGE}",
]
BAD = [
    (["cluster.dgxc.base_url=null"], "cluster.dgxc.base_url is required"),
    (
        ["cluster.dgxc.base_url=acme.run.ai"],
        "cluster.dgxc.base_url='acme.run.ai' must be an http(s) URL ending in /api/v1",
    ),
    (["cluster.dgxc.project_name=null"], "cluster.dgxc.project_name is required"),
    (["cluster.dgxc.pvcs=[]"], "cluster.dgxc.pvcs is empty"),
    (["cluster.dgxc.pvcs.0.claim_name=null"], "cluster.dgxc.pvcs.0.claim_name is required"),
    (
        ["cluster.dgxc.pvc_nemo_run_dir=/scratch/nemo_run"],
        "cluster.dgxc.pvc_nemo_run_dir='/scratch/nemo_run' is not on a mounted volume",
    ),
    (["cluster.runs_root=/scratch/runs"], "cluster.runs_root='/scratch/runs' is not on a mounted volume"),
    (
        ["cluster.container_image='nvcr.io/<org>/compactlm-train:latest'"],
        "cluster.container_image='nvcr.io/<org>/compactlm-train:latest' is a placeholder",
    ),
    (["cluster.gpus_per_node=16"], "cluster.gpus_per_node=16 exceeds 8"),
    (
        ["cluster.dgxc.client_secret_env='my secret'"],
        "cluster.dgxc.client_secret_env='my secret' must be the NAME of an environment variable",
    ),
]


@pytest.mark.parametrize("overrides, message", BAD, ids=[o[0] for o, _ in BAD])
def test_bad_dgxc_input_names_the_key(overrides, message):
    assert message in config_error([*GOOD, *overrides])


def test_bad_dgxc_input_fails_in_launch_before_anything_is_written(tmp_path):
    r = run_launch(["cluster=dgxc", f"runs_root={tmp_path}"], env=CREDENTIALS, timeout=60)
    assert r.returncode == 2 and "cluster.dgxc.base_url is required" in r.stderr, r.stderr
    assert not any(tmp_path.iterdir())
