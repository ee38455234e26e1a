"""A REAL single-node Slurm cluster with accounting for the tests in this folder (and any test that asks).

The session fixture `slurm_cluster` runs `start_slurm.sh` (munged, MariaDB, slurmdbd, slurmctld, slurmd,
started directly, state under $COMPACTLM_SLURM_DIR or /tmp/compactlm-slurm). When the Debian packages
are missing the tests are skipped with the install command -- except under CI (env CI set), where that
is a failure. The cluster is left running after the session (a second start only verifies it); set
COMPACTLM_SLURM_STOP=1 to stop it at the end. Every test in this folder is marked `slurm`.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
START = HERE / "start_slurm.sh"
STOP = HERE / "stop_slurm.sh"
PACKAGES = "slurm-wlm slurmdbd munge mariadb-server"
INSTALL_CMD = f"apt-get install -y --no-install-recommends {PACKAGES}"
BINARIES = ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd", "sbatch", "sacct", "sacctmgr")
# sacct states after which a job never changes again (REQUEUED / PREEMPTED / PENDING are not final).
FINAL_STATES = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE"}
)


# This file and tests/conftest.py are both imported as the module `conftest` (tests/ has no __init__.py):
# whichever pytest imported last owns `sys.modules["conftest"]`, and tests that do
# `from conftest import POLISH` would find this one. Names this file lacks are therefore looked up in
# tests/conftest.py (the very module object pytest loaded). Making tests/slurm a package
# (an empty tests/slurm/__init__.py) removes the clash altogether.
_ROOT_CONFTEST = HERE.parent / "conftest.py"
_pluginmanager = None


def pytest_configure(config):  # a historic hook: also called for conftests registered late, like this one
    global _pluginmanager
    _pluginmanager = config.pluginmanager


def __getattr__(name: str):
    if name.startswith(("__", "pytest", "collect_ignore")) or _pluginmanager is None:
        raise AttributeError(name)
    for plugin in _pluginmanager.get_plugins():
        if Path(getattr(plugin, "__file__", None) or "/nonexistent") == _ROOT_CONFTEST:
            return getattr(plugin, name)
    raise AttributeError(name)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.slurm)
            # one cluster with a few CPUs: its tests run one after another on one pytest-xdist worker, so no
            # test's jobs wait behind another test's (tests check that candidates' jobs overlap)
            item.add_marker(pytest.mark.xdist_group("slurm"))


@pytest.fixture(autouse=True)
def _one_slurm_test_at_a_time(request):
    """The `xdist_group` above keeps these tests on one worker; this lock keeps them one at a time even when it
    does not (pytest 9.2 silently dropped the grouping, pytest-xdist#1386, and two tests' jobs then queued behind
    each other on the 2-CPU node). With the grouping in force the lock is never contended."""
    if "slurm_cluster" not in request.fixturenames:
        yield
        return
    state_dir = Path(os.environ.get("COMPACTLM_SLURM_DIR", "/tmp/compactlm-slurm"))
    lock = state_dir.parent / f".{state_dir.name}.tests.lock"
    with open(lock, "a") as fd:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)


def _unavailable(reason: str):
    """Skip -- or, under CI, fail loudly: CI must exercise the real cluster."""
    if os.environ.get("CI"):
        pytest.fail(f"Slurm cluster unavailable under CI: {reason}", pytrace=False)
    pytest.skip(reason)


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


@dataclass(frozen=True)
class SlurmCluster:
    """The running cluster as tests see it. Client commands find it through `conf` (SLURM_CONF)."""

    partition: str
    account: str
    node: str
    cpus: int
    conf: Path
    state_dir: Path
    version: str

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run a Slurm client command (text output, captured)."""
        return subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, check=check, timeout=timeout)

    def sbatch(self, *args: str) -> int:
        """`sbatch --parsable --account=<account> --partition=<partition> *args`; returns the job id."""
        out = self.run(
            "sbatch", "--parsable", f"--account={self.account}", f"--partition={self.partition}", *args
        ).stdout.strip()
        return int(out.split(";")[0])

    def sacct(self, job_id: int | str, fields: str = "State", *extra: str) -> list[list[str]]:
        """Rows of `sacct -j <id> -X -n -P -o <fields>` (accounting, not the controller's memory)."""
        out = self.run("sacct", "-j", str(job_id), "-X", "-n", "-P", "-o", fields, *extra).stdout
        return [line.split("|") for line in out.splitlines() if line.strip()]

    def state(self, job_id: int | str) -> str | None:
        """The job's state in accounting, first word only ("CANCELLED by 0" -> "CANCELLED"); None if absent."""
        rows = self.sacct(job_id, "State")
        return rows[-1][0].split()[0] if rows and rows[-1][0] else None

    def runs(self, job_id: int | str) -> list[str]:
        """States of every run of the job, oldest first (`sacct -D`): a job requeued once and then
        finished reads ["REQUEUED", "COMPLETED"]. (sacct 22.05 has no Restarts field; `scontrol show job`
        has Restarts=N only while the job is still in slurmctld's memory, MinJobAge=30 s here.)"""
        return [r[0].split()[0] for r in self.sacct(job_id, "State", "--duplicates") if r and r[0]]

    def wait_idle(self, timeout: float = 120.0) -> None:
        """Wait until the queue is empty: a job an earlier test left running or completing still holds CPUs."""
        deadline = time.monotonic() + timeout
        while self.run("squeue", "-h", "-o", "%i").stdout.strip():
            if time.monotonic() > deadline:  # a bound on waiting, not a speed check
                pytest.fail(f"Slurm queue not empty after {timeout} s:\n" + self.run("squeue").stdout)
            time.sleep(0.2)

    def wait_state(
        self, job_id: int | str, states: str | Iterable[str], timeout: float = 60.0, poll: float = 0.5
    ) -> str:
        """Poll `sacct -j <id> -X -n -P -o State` until the state is one of `states`; return it.

        Fails at once when the job reaches a final state that is not wanted, and after `timeout` seconds.
        """
        wanted = {states} if isinstance(states, str) else set(states)
        deadline = time.monotonic() + timeout
        seen: list[str | None] = []
        while True:
            st = self.state(job_id)
            if not seen or seen[-1] != st:
                seen.append(st)
            if st in wanted:
                return st
            if st in FINAL_STATES:
                raise AssertionError(
                    f"job {job_id} ended {st}, wanted {sorted(wanted)} (states seen: {seen}){self._explain(job_id)}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"job {job_id} not in {sorted(wanted)} after {timeout:.0f}s "
                    f"(states seen: {seen}){self._explain(job_id)}"
                )
            time.sleep(poll)

    def _explain(self, job_id) -> str:
        r = self.run("scontrol", "show", "job", str(job_id), check=False)
        return "\n" + (r.stdout or r.stderr)


@pytest.fixture(scope="session")
def slurm_cluster() -> SlurmCluster:
    missing = [b for b in BINARIES if _which(b) is None]
    if missing:
        _unavailable(f"Slurm is not installed (missing {', '.join(missing)}); install it with: {INSTALL_CMD}")

    state_dir = Path(os.environ.get("COMPACTLM_SLURM_DIR", "/tmp/compactlm-slurm"))
    proc = subprocess.run(["bash", str(START)], capture_output=True, text=True, timeout=300)
    if proc.returncode == 3:  # start_slurm.sh: packages missing
        _unavailable(proc.stderr.strip())
    if proc.returncode != 0 and os.geteuid() != 0 and "must run as root" in proc.stderr:
        _unavailable(f"the local Slurm is not running and starting it needs root: {proc.stderr.strip()}")
    if proc.returncode != 0:
        pytest.fail(f"start_slurm.sh failed (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}", pytrace=False)
    status = proc.stdout.strip().splitlines()[-1]
    fields = dict(tok.split("=", 1) for tok in status.split() if "=" in tok)

    cluster = SlurmCluster(
        partition=fields["partition"],
        account=fields["account"],
        node=fields["node"],
        cpus=int(fields["cpus"]),
        conf=Path(fields["SLURM_CONF"]),
        state_dir=state_dir,
        version=fields["version"],
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", str(cluster.conf))  # for code under test that shells out to sbatch/sacct
        yield cluster
    if os.environ.get("COMPACTLM_SLURM_STOP"):
        subprocess.run(["bash", str(STOP)], capture_output=True, text=True, timeout=120)
