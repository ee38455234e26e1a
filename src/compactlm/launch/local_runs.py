"""Runs on this machine: one launcher per run folder (a lock), the stage processes it started, and stopping them.

A stage process announces itself in `<run>/<stage>/.running.json` (pid, process group, host, and the process's
start time and command line) while it runs (`compactlm.pipeline.RUNNING`). From that, and from the lock a launcher
holds on its run folder, this module answers `launch.py status` (which stage runs right now), stops stages on
Ctrl-C and on `launch.py cancel`, and refuses a second launcher of the same run, or a launch while a stage of a
dead launcher still runs.

The record outlives a stage killed by kill -9, the OOM killer or a native abort, and its pid may since belong to
an unrelated process: a recorded pid is trusted, and signalled, only while `pipeline.same_process` finds the very
process that wrote the record (same boot, start time and command line).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import time
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from compactlm.config import ConfigError
from compactlm.launch.records import NEMORUN_DIR
from compactlm.manifest import atomic_write_json, open_fd_nofollow, read_manifest, refuse_link
from compactlm.pipeline import CANCELLED, CONFIG_FILE, Task, process_identity, running, same_process

LOCK = ".launch.lock"
# What the launcher writes in a run folder, besides the stage folders.
LAUNCHER_FILES = (LOCK, CONFIG_FILE, "launch.json", CANCELLED, "report.md", "report.html", NEMORUN_DIR)
# How long a stopped stage gets to checkpoint and exit after SIGTERM before SIGKILL.
GRACE_S = 8.0


class RunBusy(ConfigError):
    """The run folder is in use by another launcher, or by a stage a dead launcher left running."""


class RunLock:
    """Exclusive hold of a run folder by one launcher process (flock: released by the kernel when the process
    dies, however it dies, so a stale lock needs no cleaning)."""

    def __init__(self, local_dir: Path):
        self.path = Path(local_dir) / LOCK
        self.fd: int | None = None

    def acquire(self, run_name: str) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = open_fd_nofollow(self.path, os.O_RDWR | os.O_CREAT)  # a link planted here: LinkRefused, one line
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = holder_of(self.path)
            raise RunBusy(
                f"run_name={run_name!r} is being run by another launch.py ({holder}); wait for it, or "
                f"stop it with `python launch.py cancel run_name={run_name}`"
            ) from None
        os.ftruncate(fd, 0)
        os.write(
            fd,
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                }
            ).encode(),
        )
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def held_elsewhere(self) -> bool:
        """Whether another process holds the lock now (for status), without taking it."""
        if self.path.is_symlink() or not self.path.is_file():
            return False
        fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)


def check_no_links(local_dir: Path, run_dir: Path, tasks: Iterable[Task]) -> None:
    """Refuse (LinkRefused, one line) a run folder with a symbolic link where the launcher or a stage writes: its
    own files (LAUNCHER_FILES) and the stage folders. Checked before anything is written; every write checks again
    (compactlm.manifest), so a link planted later is refused too."""
    for name in LAUNCHER_FILES:
        refuse_link(Path(local_dir) / name)
    for task in tasks:
        refuse_link(task.folder(run_dir))


def holder_of(lock_path: Path) -> str:
    try:
        h = json.loads(Path(lock_path).read_text())
        return f"pid {h['pid']} on {h['host']} since {h['started_at']}"
    except (OSError, ValueError, KeyError):
        return "holder unknown"


def running_stages(run_dir: Path, tasks: Iterable[Task]) -> dict[str, dict[str, Any]]:
    """task name -> its .running.json, for every task whose process runs on this host right now. Records of
    processes that died (kill -9, a crash) are stale and left out, also when their pid now belongs to another
    process (same_process)."""
    out = {}
    for task in tasks:
        info = running(task.folder(run_dir))
        if same_process(info):
            out[task.name] = info
    return out


def check_no_orphans(run_dir: Path, tasks: Iterable[Task], run_name: str) -> None:
    """Refuse to start while a stage that an earlier (now dead) launcher started is still running here."""
    for stage, info in running_stages(run_dir, tasks).items():
        raise RunBusy(
            f"stage {stage!r} of run_name={run_name!r} is still running (pid {info['pid']}, started "
            f"{info['started_at']}) although the launch.py that started it has exited; stop it with "
            f"`python launch.py cancel run_name={run_name}`, or wait for it to finish"
        )


def stop_stages(run_dir: Path, tasks: Iterable[Task], grace_s: float = GRACE_S) -> list[str]:
    """SIGTERM the process group of every task running here (the distill stage checkpoints on it), SIGKILL what
    is left after `grace_s`; returns the names of the tasks stopped."""
    targets = running_stages(run_dir, tasks)
    for info in targets.values():
        _signal_group(info, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(same_process(i) for i in targets.values()):
        time.sleep(0.1)
    for info in targets.values():
        _signal_group(info, signal.SIGKILL)  # only a stage still running: _signal_group checks
    return list(targets)


def _signal_group(info: dict[str, Any], sig: int) -> bool:
    """Send `sig` to the stage's process group, when its recorded pid is still the stage (same_process) and still
    leads the recorded group; to the stage's pid alone when the group is another. Returns whether it signalled."""
    if not same_process(info):
        return False  # gone, or its pid reused by an unrelated process: never signalled
    pid, pgid = int(info["pid"]), int(info["pgid"])
    try:
        if os.getpgid(pid) == pgid:
            os.killpg(pgid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        os.kill(pid, sig)
    return True


def mark_cancelled(run_dir: Path, by: str) -> None:
    atomic_write_json(
        Path(run_dir) / CANCELLED, {"by": by, "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    )


def clear_cancelled(run_dir: Path) -> None:
    (Path(run_dir) / CANCELLED).unlink(missing_ok=True)


def cancelled(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(run_dir) / CANCELLED).read_text())
    except (OSError, ValueError):
        return None


def stage_state(run_dir: Path, task: Task, launcher_running: bool) -> str:
    """What a task of a run on this machine is doing: SUCCEEDED, RUNNING (pid), CANCELLED, DIED, WAITING or -."""
    stage_dir = task.folder(run_dir)
    if read_manifest(stage_dir) is not None:
        return "SUCCEEDED"
    info = running(stage_dir)
    if same_process(info):
        return f"RUNNING (pid {info['pid']})"
    if cancelled(run_dir):
        return "CANCELLED"
    if info and info.get("host") == socket.gethostname():
        return f"DIED (pid {info.get('pid')} {_stale(info)})"
    return "WAITING" if launcher_running else "-"


def _stale(info: dict[str, Any]) -> str:
    """Why a RUNNING record of this host no longer names its stage."""
    try:
        return "is gone" if process_identity(int(info["pid"])) is None else "now belongs to another process"
    except (KeyError, TypeError, ValueError):
        return "unreadable"
