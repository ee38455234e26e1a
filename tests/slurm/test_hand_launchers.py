"""launchers/slurm for users who submit by hand: prepare the run with launch.py, submit its stages with
submit.sh (stage.sbatch, afterok chain) on the real Slurm, and find the same manifests as launch.py makes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from compactlm.manifest import read_manifest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
from helpers import run_launch  # noqa: E402

pytestmark = pytest.mark.slow


def test_submit_sh_runs_a_prepared_recipe_as_dependent_jobs(slurm_cluster, tmp_path, tiny_llama_dir):
    import subprocess

    r = run_launch(
        [
            "recipe=eval",
            "model=local",
            f"model.path={tiny_llama_dir}",
            "data=pydoc",
            "data.max_documents=20",
            "data.seq_len=32",
            "data.validation_sequences=4",
            "data.calibration_sequences=4",
            "data.max_train_sequences=8",
            "evaluate.generate_tokens=4",
            "evaluate.task_examples=20",
            f"runs_root={tmp_path}",
            "run_name=by_hand",
            "prepare_only=true",
            f"cache_dir={tmp_path / 'cache'}",
        ],
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    config = tmp_path / "by_hand" / "config.yaml"
    assert f"launchers/slurm/submit.sh {config}" in r.stdout and not (tmp_path / "by_hand" / "model").exists()

    env = {**slurm_cluster.env, "PATH": f"{Path(sys.executable).parent}:{slurm_cluster.env['PATH']}"}
    sub = subprocess.run(
        [
            str(REPO / "launchers" / "slurm" / "submit.sh"),
            str(config),
            f"--account={slurm_cluster.account}",
            f"--partition={slurm_cluster.partition}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=tmp_path,
    )
    assert sub.returncode == 0, sub.stdout + sub.stderr
    jobs = dict(line.split(": job ") for line in sub.stdout.splitlines() if ": job " in line)
    assert list(jobs) == ["model", "data", "evaluate"]
    for stage, job in jobs.items():
        slurm_cluster.wait_state(job, "COMPLETED", timeout=600)
        assert read_manifest(tmp_path / "by_hand" / stage) is not None, stage
    log = next((tmp_path / "by_hand" / "slurm_logs").glob("evaluate-*.out")).read_text()
    assert "compactlm: stage evaluate" in log and "[evaluate] done" in log
