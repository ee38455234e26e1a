"""The run folder's safety on this machine (issue #28): a link planted where the launcher writes is refused with
one line and never written through; a `.running.json` left by a killed stage whose pid now belongs to an unrelated
process is stale for status and launch, and cancel never signals that process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import compose, run_launch

from compactlm.launch.launcher import write_run_dir
from compactlm.launch.local_runs import LOCK, RunLock, check_no_orphans, running_stages, stage_state, stop_stages
from compactlm.launch.ops import main as ops_main
from compactlm.launch.validate import to_config
from compactlm.manifest import LinkRefused
from compactlm.pipeline import RUNNING, Task, process_identity, running_record, same_process


def _args(tmp_path, model_dir, run_name):
    return [
        "recipe=eval",
        "model=local",
        f"model.path={model_dir}",
        "data=pydoc",
        "data.max_documents=20",
        "data.seq_len=32",
        "data.validation_sequences=4",
        "data.calibration_sequences=4",
        "evaluate.generate_tokens=4",
        "evaluate.tasks=[]",
        f"runs_root={tmp_path}",
        f"run_name={run_name}",
    ]


def _one_line_refusal(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    return lines[0]


@pytest.mark.parametrize("planted", [LOCK, "config.yaml", "launch.json"])
def test_a_link_planted_where_the_launcher_writes_is_refused_in_one_line(tmp_path, tiny_llama_dir, planted):
    """Repro of #28 item 2: `ln -s /tmp/victim runs/<run>/.launch.lock`, then launch <run>. The lock was opened with
    O_CREAT and no O_NOFOLLOW, and the outside file truncated and overwritten with the lock's JSON."""
    victim = tmp_path / "victim"
    victim.write_text("not compactlm's\n")
    run_dir = tmp_path / "runs" / "linked"
    run_dir.mkdir(parents=True)
    (run_dir / planted).symlink_to(victim)
    proc = run_launch(_args(tmp_path / "runs", tiny_llama_dir, "linked"), timeout=300)
    line = _one_line_refusal(proc)
    assert f"{run_dir / planted} is a symbolic link (to {victim})" in line and "remove the link" in line, line
    assert victim.read_text() == "not compactlm's\n"
    assert (run_dir / planted).is_symlink() and not (run_dir / "eval").exists()  # nothing started


def test_a_dangling_lock_link_creates_nothing_outside(tmp_path):
    victim = tmp_path / "victim"  # does not exist: O_CREAT through the link would create it
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / LOCK).symlink_to(victim)
    with pytest.raises(LinkRefused, match="is a symbolic link"):
        RunLock(tmp_path / "run").acquire("run")
    assert not victim.exists() and not RunLock(tmp_path / "run").held_elsewhere()


def test_process_identity_tells_a_process_from_a_later_one_with_the_same_pid():
    me = process_identity(os.getpid())
    assert "python" in me["cmdline"][0], me  # an xdist worker's command line names no pytest: only the interpreter
    assert me["start_ticks"] > 0 and len(me["boot_id"]) == 36
    record = running_record()
    assert same_process(record)
    assert not same_process({**record, "start_ticks": record["start_ticks"] - 1})  # the pid, reused later
    assert not same_process({**record, "cmdline": ["python", "something-else"]})
    assert not same_process({k: v for k, v in record.items() if k != "start_ticks"})  # an older record: unverifiable
    assert not same_process({**record, "host": "another-host"})
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert process_identity(int(done.stdout)) is None  # gone


@pytest.fixture
def unrelated_sleep():
    """An unrelated process (`sleep`, in a process group of its own) that the test must never see signalled."""
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def _stale_marker(run_dir, stage, pid: int) -> None:
    """The RUNNING record a stage wrote before it was killed (kill -9: never removed), its pid since given to
    another process: written by the real writer in a process that has exited, then pointed at `pid`."""
    code = (
        "import json, sys; from compactlm.pipeline import running_record; "
        "print(json.dumps({**running_record(), 'started_at': '2026-12-06T00:00:00+00:00'}))"
    )
    record = json.loads(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={**os.environ}
        ).stdout
    )
    record.update(pid=pid, pgid=os.getpgid(pid))
    (run_dir / stage).mkdir(parents=True, exist_ok=True)
    (run_dir / stage / RUNNING).write_text(json.dumps(record))


def test_a_stale_running_record_with_a_reused_pid_is_not_trusted_nor_signalled(
    tmp_path, tiny_llama_dir, unrelated_sleep, capsys
):
    """Repro of #28 item 3: status said RUNNING, a re-launch was refused (exit 3), and `launch.py cancel` killed the
    unrelated process group that had been given the dead stage's pid."""
    conf = to_config(compose(_args(tmp_path, tiny_llama_dir, "stale")))
    conf.run_dir = str(tmp_path / conf.run_name)
    run_dir = write_run_dir(conf)
    _stale_marker(run_dir, "evaluate", unrelated_sleep.pid)

    tasks = [Task("model"), Task("data"), Task("evaluate")]
    assert running_stages(run_dir, tasks) == {}
    check_no_orphans(run_dir, tasks, "stale")  # a launch is not refused
    assert (
        stage_state(run_dir, Task("evaluate"), False)
        == f"DIED (pid {unrelated_sleep.pid} now belongs to another process)"
    )

    capsys.readouterr()
    assert ops_main(["status", "run_name=stale", f"runs_root={tmp_path}"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("evaluate"))
    assert "RUNNING" not in row and "now belongs to another process" in row, row

    assert ops_main(["cancel", "run_name=stale", f"runs_root={tmp_path}"]) == 0
    assert "stopped no running stage" in capsys.readouterr().out
    assert stop_stages(run_dir, [Task("evaluate")], grace_s=0.5) == []
    time.sleep(0.2)
    assert unrelated_sleep.poll() is None, "cancel signalled a process that is not the stage"


def test_cancel_still_stops_a_stage_that_really_runs(tmp_path):
    """The other side of the check: a process whose record is its own is found and stopped (SIGTERM to its group)."""
    run_dir = tmp_path / "run"
    (run_dir / "evaluate").mkdir(parents=True)
    code = (
        "import json, sys, time; from compactlm.pipeline import running_record; "
        f"open({str(run_dir / 'evaluate' / RUNNING)!r}, 'w').write(json.dumps(running_record())); "
        "print('ready', flush=True); time.sleep(300)"
    )
    stage = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert stage.stdout.readline().strip() == "ready"
        assert list(running_stages(run_dir, [Task("evaluate")])) == ["evaluate"]
        assert stop_stages(run_dir, [Task("evaluate")], grace_s=5) == ["evaluate"]
        assert stage.wait(timeout=10) == -signal.SIGTERM
    finally:
        stage.kill()
        stage.wait()
