"""recipe=search on the real Slurm started by conftest (tiny model): one sbatch job per candidate, each depending
only on the shared stages, so the candidates run side by side when the node has room (sacct's times overlap)
and the ranking job waits for all of them."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from compactlm.results import read_result

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
from helpers import run_launch  # noqa: E402

pytestmark = pytest.mark.slow
SHARED = ["model", "data", "importance", "teacher_cache"]


def test_candidates_are_concurrent_slurm_jobs_after_the_shared_stages(slurm_cluster, tmp_path, tiny_llama_dir):
    # the node must be free: a job an earlier test left running or completing holds a CPU, and the two candidates
    # (one CPU each, on a 2-CPU node) would then run one after the other
    slurm_cluster.wait_idle()
    venv_bin = Path(sys.executable).parent
    r = run_launch(
        [
            "recipe=search",
            "model=local",
            f"model.path={tiny_llama_dir}",
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
            "search.max_candidates=2",
            # long enough (a few seconds each) that two jobs started together are seen running together
            "search.distill_tokens=12800",
            "distill.micro_batch_size=2",
            "distill.global_batch_size=2",
            "engine.dtype=float32",
            "engine.threads=1",
            "cluster=slurm",
            f"cluster.slurm.account={slurm_cluster.account}",
            f"cluster.slurm.partition={slurm_cluster.partition}",
            "cluster.slurm.time=00:20:00",
            "cluster.slurm.cpus_per_task=1",
            f"cluster.slurm.setup_lines=['export PATH={venv_bin}:$PATH']",
            f"runs_root={tmp_path}",
            "run_name=search_slurm",
            f"cache_dir={tmp_path / 'cache'}",
        ],
        env=slurm_cluster.env,
        timeout=1200,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
    run_dir = tmp_path / "search_slurm"
    ranking = read_result(run_dir, "ranking")
    candidates = [f"candidate-{c.name}" for c in ranking.candidates]
    assert len(candidates) == 2

    status = run_launch(
        ["status", "run_name=search_slurm", f"runs_root={tmp_path}"], env=slurm_cluster.env, timeout=120
    )
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    header = next(re.split(r"\s{2,}", line.strip()) for line in lines if line.startswith("stage "))
    column = header.index("job id")
    ids = {
        cells[0]: cells[column]
        for line in lines
        if (cells := re.split(r"\s{2,}", line.strip())) and cells[0] in [*SHARED, *candidates, "ranking"]
    }
    assert set(ids) == {*SHARED, *candidates, "ranking"}, status.stdout
    times = {}
    for task, job in ids.items():
        slurm_cluster.wait_state(job, "COMPLETED", timeout=60)  # accounting lags the controller by seconds
        ((start, end),) = slurm_cluster.sacct(job, "Start,End")
        times[task] = (start, end)  # ISO strings: they order as times do
    a, b = (times[c] for c in candidates)
    assert a[0] < b[1] and b[0] < a[1], f"the candidate jobs did not overlap: {times}"
    for c in candidates:  # after the shared stages, before the ranking
        assert times[c][0] >= times["teacher_cache"][1] and times["ranking"][0] >= times[c][1], times
