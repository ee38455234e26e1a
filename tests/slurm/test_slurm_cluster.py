"""The local Slurm cluster behaves like a real one: accounting, enforced accounts, dependencies, requeue,
signals. These pin the behaviour that compactlm's NeMo-Run/sbatch launch path relies on (Slurm 22.05)."""

from __future__ import annotations

import time
from pathlib import Path


def _wait_text(path: Path, text: str, timeout: float = 30.0) -> str:
    """Wait until the file exists and contains `text`; return its content."""
    deadline = time.monotonic() + timeout
    while True:
        content = path.read_text() if path.exists() else ""
        if text in content:
            return content
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not in {path} after {timeout:.0f}s; content: {content!r}")
        time.sleep(0.2)


def test_cluster_shape(slurm_cluster):
    c = slurm_cluster
    assert c.partition == "debug" and c.account == "compactlm" and c.cpus >= 1
    out = c.run("sinfo", "-h", "-p", c.partition, "-o", "%P|%a|%l|%D|%N").stdout.strip()
    assert out == f"{c.partition}*|up|infinite|1|{c.node}"
    assert c.run("scontrol", "show", "config").stdout.count("JobRequeue              = 1") == 1


def test_sbatch_wrap_completes_in_accounting(slurm_cluster, tmp_path):
    c = slurm_cluster
    out = tmp_path / "hello.out"
    job = c.sbatch(
        f"--chdir={tmp_path}",
        f"--output={out}",
        "--job-name=hello",
        "--wrap",
        "echo hello from job $SLURM_JOB_ID account $SLURM_JOB_ACCOUNT",
    )
    assert c.wait_state(job, "COMPLETED", timeout=30) == "COMPLETED"
    # Slurm 22.05 quirk: for a short job sacct may show PENDING (with Start and NodeList already set) or
    # even COMPLETED while the record still lacks the job's start message -- JobName reads "allocation"
    # for a few seconds until slurmdbd processes it.
    deadline = time.monotonic() + 20
    while (row := c.sacct(job, "State,ExitCode,Account,JobName")[0])[3] == "allocation":
        assert time.monotonic() < deadline, row
        time.sleep(0.5)
    assert row == ["COMPLETED", "0:0", c.account, "hello"]
    assert out.read_text().strip() == f"hello from job {job} account {c.account}"


def test_unknown_account_is_rejected(slurm_cluster):
    """AccountingStorageEnforce=associations: a job for an account the user lacks never gets an id."""
    r = slurm_cluster.run("sbatch", "--parsable", "--account=no_such_account", "--wrap", "true", check=False)
    assert r.returncode != 0
    assert "Invalid account" in r.stderr


def test_afterok_dependency_runs_after(slurm_cluster, tmp_path):
    c = slurm_cluster
    log = tmp_path / "order.log"
    first = c.sbatch(f"--chdir={tmp_path}", "--output=/dev/null", "--wrap", f"sleep 2; echo first >> {log}")
    second = c.sbatch(
        f"--chdir={tmp_path}", "--output=/dev/null", f"--dependency=afterok:{first}", "--wrap", f"echo second >> {log}"
    )
    c.wait_state(second, "COMPLETED", timeout=45)
    assert c.state(first) == "COMPLETED"
    assert log.read_text().split() == ["first", "second"]
    [[end_first]] = c.sacct(first, "End")
    [[start_second]] = c.sacct(second, "Start")
    assert start_second >= end_first  # ISO timestamps compare as strings


def test_afterok_on_failed_job(slurm_cluster, tmp_path):
    """Slurm 22.05: a job whose afterok parent FAILED stays PENDING (DependencyNeverSatisfied) forever;
    only with --kill-on-invalid-dep=yes (or SchedulerParameters=kill_invalid_depend) is it CANCELLED.
    Accounting lags the controller: any job has no sacct row for its first ~1-5 s (squeue has it)."""
    c = slurm_cluster
    first = c.sbatch(f"--chdir={tmp_path}", "--output=/dev/null", "--wrap", "sleep 1; exit 3")
    stuck = c.sbatch(
        f"--chdir={tmp_path}", "--output=/dev/null", f"--dependency=afterok:{first}", "--wrap", "echo must not run"
    )
    killed = c.sbatch(
        f"--chdir={tmp_path}",
        "--output=/dev/null",
        f"--dependency=afterok:{first}",
        "--kill-on-invalid-dep=yes",
        "--wrap",
        "echo must not run",
    )
    try:
        c.wait_state(first, "FAILED", timeout=30)
        assert c.sacct(first, "ExitCode") == [["3:0"]]
        assert c.wait_state(killed, "CANCELLED", timeout=30) == "CANCELLED"
        deadline = time.monotonic() + 20
        while (
            reason := c.run("squeue", "-h", "-j", str(stuck), "-o", "%T|%r").stdout.strip()
        ) != "PENDING|DependencyNeverSatisfied":
            assert time.monotonic() < deadline, f"job {stuck}: {reason!r}"
            time.sleep(0.5)
        # accounting lags: the held job has no sacct row for the first seconds, then shows PENDING
        assert c.wait_state(stuck, "PENDING", timeout=20) == "PENDING"
    finally:
        c.run("scancel", str(stuck), check=False)
    assert c.wait_state(stuck, "CANCELLED", timeout=30) == "CANCELLED"


# The batch script a preemptible stage would use: bash runs traps only between commands, so it sleeps in
# the background and `wait`s. SIGTERM (what `scontrol requeue` sends first) writes a marker and exits;
# SIGUSR1 (`scancel --signal=USR1 --batch`) writes a marker and ends the job cleanly.
REQUEUE_SCRIPT = """#!/bin/bash
echo "start restart=${SLURM_RESTART_COUNT:-0}"
on_term() { echo "TERM restart=${SLURM_RESTART_COUNT:-0}" >> "$MARKER"; echo "got TERM"; exit 0; }
on_usr1() { echo "USR1 restart=${SLURM_RESTART_COUNT:-0}" >> "$MARKER"; echo "got USR1"; exit 0; }
trap on_term TERM
trap on_usr1 USR1
if [ "${SLURM_RESTART_COUNT:-0}" = 0 ] || [ "$SLEEP_AGAIN" = 1 ]; then
    sleep 120 & wait $!
    echo "sleep ended without a signal"; exit 1
fi
echo "second run done"
"""


def _submit_trapping_job(c, tmp_path: Path, *extra: str, sleep_again: int = 0) -> tuple[int, Path, Path]:
    script = tmp_path / "job.sh"
    script.write_text(REQUEUE_SCRIPT)
    out, marker = tmp_path / "job.out", tmp_path / "marker"
    job = c.sbatch(
        f"--chdir={tmp_path}",
        f"--output={out}",
        "--open-mode=append",
        f"--export=ALL,MARKER={marker},SLEEP_AGAIN={sleep_again}",
        *extra,
        str(script),
    )
    c.wait_state(job, "RUNNING", timeout=30)
    _wait_text(out, "start restart=0")  # the traps are installed
    return job, out, marker


def test_requeue_runs_job_again(slurm_cluster, tmp_path):
    c = slurm_cluster
    job, out, marker = _submit_trapping_job(c, tmp_path, "--requeue")
    t0 = time.monotonic()
    c.run("scontrol", "requeue", str(job))
    # REQUEUED, then PENDING (Reason=BeginTime: Slurm holds a requeued job for AuthInfo cred_expire+1 s,
    # 5+1 s here, 120+1 s by default), then the second run.
    _wait_text(out, "start restart=1", timeout=45)
    delay = time.monotonic() - t0
    assert c.wait_state(job, "COMPLETED", timeout=30) == "COMPLETED"
    text = out.read_text()
    assert "got TERM" in text and "DUE TO JOB REQUEUE" in text and "second run done" in text
    assert marker.read_text().split("\n")[0] == "TERM restart=0"
    assert c.sacct(job, "State,ExitCode") == [["COMPLETED", "0:0"]]
    # sacct -D shows every run: the first one as REQUEUED
    assert c.runs(job) == ["REQUEUED", "COMPLETED"]
    assert c.run("scontrol", "show", "job", str(job)).stdout.count("Restarts=1") == 1
    print(f"requeue -> running again: {delay:.1f}s")


def test_scancel_signal_reaches_batch_script(slurm_cluster, tmp_path):
    c = slurm_cluster
    job, out, marker = _submit_trapping_job(c, tmp_path)
    c.run("scancel", "--signal=USR1", "--batch", str(job))
    assert c.wait_state(job, "COMPLETED", timeout=30) == "COMPLETED"
    assert marker.read_text().strip() == "USR1 restart=0"
    assert "got USR1" in out.read_text()
    assert c.sacct(job, "ExitCode") == [["0:0"]]
