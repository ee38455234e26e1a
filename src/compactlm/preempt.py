"""Preemption of the training stages: SIGTERM (cancel, Ctrl-C in the launcher, Slurm) and SIGUSR1 (Slurm's warning
before the time limit) are recorded instead of killing the process; the training loop writes a checkpoint after the
current step and exits with 128 + signal, the code Slurm's job script requeues."""

from __future__ import annotations

import signal
import threading
from typing import Any

PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(SystemExit):
    """SIGTERM/SIGUSR1 arrived; a checkpoint was written after the current step.

    A SystemExit with code 128 + signal (143 for SIGTERM, 138 for SIGUSR1), so an uncaught one ends the
    process with the code Slurm's requeue logic expects; running the stage again resumes.
    """

    def __init__(self, signum: int, step: int):
        super().__init__(128 + signum)
        self.signum, self.step = signum, step


class PreemptFlag:
    """Records SIGTERM/SIGUSR1 instead of dying; the loop checks it after each optimizer step."""

    def __init__(self):
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for s in PREEMPT_SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._previous.items():
            signal.signal(s, h)
