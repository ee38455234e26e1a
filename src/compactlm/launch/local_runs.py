"""Runs on this machine: one launcher per run folder (a lock), the stage processes it started, and stopping them.

A stage process announces itself in `<run>/<stage>/.running.json` (pid, process group, host) while it runs
(`compactlm.pipeline.RUNNING`). From that, and from the lock a launcher holds on its run folder, this module
answers `launch.py status` (which stage runs right now), stops stages on Ctrl-C and on `launch.py cancel`, and
refuses a second launcher of the same run, or a launch while a stage of a dead launcher still runs.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from compactlm.config import ConfigError
from compactlm.manifest import atomic_write_json, read_manifest
from compactlm.pipeline import CANCELLED, running

LOCK = ".launch.lock"
# How long a stopped stage gets to checkpoint and exit after SIGTERM before SIGKILL.
GRACE_S = 8.0


class RunBusy(ConfigError):
    """The run folder is in use by another launcher, or by a stage a dead launcher left running."""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (exited, not yet reaped by its parent) is not running any more
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


class RunLock:
    """Exclusive hold of a run folder by one launcher process (flock: released by the kernel when the process
    dies, however it dies, so a stale lock needs no cleaning)."""

    def __init__(self, local_dir: Path):
        self.path = Path(local_dir) / LOCK
        self.fd: int | None = None

    def acquire(self, run_name: str) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = holder_of(self.path)
            raise RunBusy(f"run_name={run_name!r} is being run by another launch.py ({holder}); wait for it, or "
                          f"stop it with `python launch.py cancel run_name={run_name}`") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}).encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def held_elsewhere(self) -> bool:
        """Whether another process holds the lock now (for status), without taking it."""
        if not self.path.is_file():
            return False
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)


def holder_of(lock_path: Path) -> str:
    try:
        h = json.loads(Path(lock_path).read_text())
        return f"pid {h['pid']} on {h['host']} since {h['started_at']}"
    except (OSError, ValueError, KeyError):
        return "holder unknown"


def running_stages(run_dir: Path, stages: Iterable[str]) -> dict[str, dict[str, Any]]:
    """stage -> its .running.json, for every stage whose process runs on this host right now. Markers of
    processes that died (kill -9, a crash) are stale and left out."""
    host = socket.gethostname()
    out = {}
    for stage in stages:
        info = running(Path(run_dir) / stage)
        if info and info.get("host") == host and alive(int(info["pid"])):
            out[stage] = info
    return out


def check_no_orphans(run_dir: Path, stages: Iterable[str], run_name: str) -> None:
    """Refuse to start while a stage that an earlier (now dead) launcher started is still running here."""
    for stage, info in running_stages(run_dir, stages).items():
        raise RunBusy(f"stage {stage!r} of run_name={run_name!r} is still running (pid {info['pid']}, started "
                      f"{info['started_at']}) although the launch.py that started it has exited; stop it with "
                      f"`python launch.py cancel run_name={run_name}`, or wait for it to finish")


def stop_stages(run_dir: Path, stages: Iterable[str], grace_s: float = GRACE_S) -> list[str]:
    """SIGTERM the process group of every stage running here (the distill stage checkpoints on it), SIGKILL what
    is left after `grace_s`; returns the stages stopped."""
    targets = running_stages(run_dir, stages)
    for info in targets.values():
        _signal_group(info, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(alive(int(i["pid"])) for i in targets.values()):
        time.sleep(0.1)
    for info in targets.values():
        if alive(int(info["pid"])):
            _signal_group(info, signal.SIGKILL)
    return list(targets)


def _signal_group(info: dict[str, Any], sig: int) -> None:
    try:
        os.killpg(int(info["pgid"]), sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(int(info["pid"]), sig)


def mark_cancelled(run_dir: Path, by: str) -> None:
    atomic_write_json(Path(run_dir) / CANCELLED, {"by": by, "at": datetime.now(timezone.utc).isoformat(timespec="seconds")})


def clear_cancelled(run_dir: Path) -> None:
    (Path(run_dir) / CANCELLED).unlink(missing_ok=True)


def cancelled(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(run_dir) / CANCELLED).read_text())
    except (OSError, ValueError):
        return None


def stage_state(run_dir: Path, stage: str, launcher_running: bool) -> str:
    """What a stage of a run on this machine is doing: SUCCEEDED, RUNNING (pid), CANCELLED, DIED, WAITING or -."""
    stage_dir = Path(run_dir) / stage
    if read_manifest(stage_dir) is not None:
        return "SUCCEEDED"
    info = running(stage_dir)
    here = bool(info) and info.get("host") == socket.gethostname()
    if here and alive(int(info["pid"])):
        return f"RUNNING (pid {info['pid']})"
    if cancelled(run_dir):
        return "CANCELLED"
    if here:
        return f"DIED (pid {info['pid']} is gone)"
    return "WAITING" if launcher_running else "-"
