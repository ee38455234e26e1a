"""Run operations: `python launch.py list | status | logs | cancel | report ...` (no Hydra, no torch).

Each run's records live in `<runs_root>/<run_name>/`: config.yaml, launch.json and NeMo-Run's
experiment records (`nemorun/`), through which status, logs and cancellation go to the cluster the run
was submitted to. Stage completion comes from the stages' manifests where this machine sees them.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from pathlib import Path

from omegaconf.errors import OmegaConfBaseException

from compactlm.cli import UsageError, parse
from compactlm.config import ConfigError, check_run_name
from compactlm.launch.local_runs import LOCK, RunLock, holder_of, mark_cancelled, stage_state, stop_stages
from compactlm.launch.records import CONFIG_FILE, nemorun_home, stage_logs
from compactlm.launch.report import write_comparison
from compactlm.manifest import read_manifest
from compactlm.pipeline import Task, load_config, run_tasks
from compactlm.report_blocks import text_table
from compactlm.results import ResultError, read_result

COMMANDS = ("list", "status", "logs", "cancel", "report")
USAGE = """usage: python launch.py <command> [key=value ...]

  list   [runs_root=runs]                                  every run under runs_root, with its progress
  status run_name=<name> [runs_root=runs]                  per-stage state, scheduler job id and job state
  logs   run_name=<name> stage=<stage> [lines=60] [runs_root=runs]
                                                           the stage's log (its latest attempt)
  cancel run_name=<name> [stage=<stage>] [runs_root=runs]  cancel the run's unfinished jobs (or one stage's)
  report runs=<a>,<b>[,...] [runs_root=runs] [out=<dir>]   compare runs side by side (report.md + report.html)
"""


class OpsError(UsageError):
    """A bad command line or a run that does not exist; the message says what is allowed."""


def run_folder(runs_root: str, run_name: str) -> Path:
    try:
        check_run_name(run_name)
    except ConfigError as e:
        raise OpsError(str(e)) from None
    folder = Path(runs_root).expanduser().resolve() / run_name
    if not (folder / "launch.json").exists():
        known = ", ".join(sorted(p.name for p in list_runs(runs_root))) or "none"
        raise OpsError(f"run_name={run_name!r}: no run in {folder.parent} (runs there: {known})")
    return folder


def list_runs(runs_root: str) -> list[Path]:
    root = Path(runs_root).expanduser()
    return sorted(p for p in root.glob("*") if (p / "launch.json").exists()) if root.is_dir() else []


def run_info(folder: Path) -> tuple[dict, object]:
    """(launch.json, typed config) of a run folder."""
    try:
        return json.loads((folder / "launch.json").read_text()), load_config(folder / CONFIG_FILE)
    except (ConfigError, OmegaConfBaseException, ValueError, OSError) as e:
        raise OpsError(
            f"run {folder.name}: cannot read its records ({type(e).__name__}: {str(e).splitlines()[0]}); "
            "was it launched by an older compactlm?"
        ) from None


def stage_done(conf, task: Task) -> str:
    """done / missing / '?' (the stages write on a file system this machine does not see)."""
    run_dir = Path(conf.run_dir)
    if not run_dir.exists():
        return "?"
    return "done" if read_manifest(task.folder(run_dir)) is not None else "-"


def named_tasks(conf, folder: Path, names: list[str]) -> list[Task]:
    """The run's tasks that `stage=` names (by task name: `distill`, `candidate-exp_010`); OpsError otherwise."""
    tasks = {t.name: t for t in run_tasks(conf)}
    for name in names:
        if name not in tasks:
            raise OpsError(f"stage={name!r} is not a stage of run {folder.name}; its stages: {', '.join(tasks)}")
    return [tasks[name] for name in names]


def experiment(folder: Path):
    """The run's latest NeMo-Run experiment, rebuilt from its records."""
    home = nemorun_home(folder)
    if not (home / "experiments" / folder.name).is_dir():
        return None
    import nemo_run as run  # torch and leptonai come with it: only for runs that have NeMo-Run records

    from compactlm.launch.cloud import use_home  # NeMo-Run too: see above

    use_home(home)  # also registers compactlm's DGX Cloud / Lepton executor classes and their job records
    with contextlib.redirect_stdout(io.StringIO()):
        return run.Experiment.from_title(folder.name)


def job_states(exp) -> dict[str, dict]:
    if exp is None:
        return {}
    with contextlib.redirect_stdout(io.StringIO()):
        return exp.status(return_dict=True) or {}


def cmd_list(args: dict[str, str]) -> int:
    rows = []
    for folder in list_runs(args["runs_root"]):
        try:
            launch, conf = run_info(folder)
        except UsageError as e:
            rows.append([folder.name, "?", "?", "?", str(e).split(": ", 1)[1][:60]])
            continue
        tasks = run_tasks(conf)
        done = sum(stage_done(conf, t) == "done" for t in tasks)
        rows.append(
            [
                folder.name,
                conf.recipe.name,
                launch.get("cluster", "local"),
                launch.get("launched_at", ""),
                f"{done}/{len(tasks)}" if Path(conf.run_dir).exists() else "remote",
            ]
        )
    if not rows:
        print(f"no runs under {Path(args['runs_root']).expanduser().resolve()}")
        return 0
    _print_table(["run", "recipe", "cluster", "launched (UTC)", "stages done"], rows)
    return 0


def cmd_status(args: dict[str, str]) -> int:
    folder = run_folder(args["runs_root"], args["run_name"])
    launch, conf = run_info(folder)
    local = launch.get("cluster", "local") == "local"
    print(
        f"run {folder.name}: recipe={conf.recipe.name}, cluster={launch.get('cluster', 'local')}, "
        f"outputs in {conf.run_dir}"
    )
    rows = []
    if local:  # the stage processes on this machine and the launcher's lock say what runs now
        launcher = RunLock(folder).held_elsewhere()
        print(f"launcher: {'running (' + holder_of(folder / LOCK) + ')' if launcher else 'not running'}")
        for task in run_tasks(conf):
            rows.append(
                [
                    task.name,
                    stage_done(conf, task),
                    stage_state(Path(conf.run_dir), task, launcher),
                    stage_summary(conf, task),
                ]
            )
        _print_table(["stage", "manifest", "state", "result"], rows)
        return 0
    jobs = job_states(experiment(folder))
    for task in run_tasks(conf):
        job = jobs.get(task.name, {})
        rows.append(
            [
                task.name,
                stage_done(conf, task),
                str(job.get("status", "-")),
                str(job.get("job_id", "-")),
                stage_summary(conf, task),
            ]
        )
    _print_table(["stage", "manifest", "scheduler state", "job id", "result"], rows)
    return 0


def stage_summary(conf, task: Task) -> str:
    """One line from the stage's typed result (compactlm.results), or why there is none."""
    run_dir = Path(conf.run_dir)
    if not run_dir.exists():
        return "-"
    try:
        result = read_result(run_dir, task.name)
    except ResultError as e:
        return f"unreadable result: {e}"
    return result.summary() if result is not None else "-"


def cmd_logs(args: dict[str, str]) -> int:
    folder = run_folder(args["runs_root"], args["run_name"])
    _, conf = run_info(folder)
    (task,) = named_tasks(conf, folder, [args["stage"]])
    stage = task.name
    if not args["lines"].isdigit():
        raise OpsError(f"lines={args['lines']!r} must be a positive integer")
    lines = int(args["lines"])
    files = [p for p in stage_logs(folder, task) if p.name not in ("stdout.log", "stderr.log")]
    if not files:
        exp = experiment(folder)
        if exp is None:
            raise OpsError(f"no logs of stage {stage!r} yet (run {folder.name} has no experiment records)")
        exp.logs(stage)  # the cluster's own log API (DGX Cloud, Lepton)
        return 0
    for path in files[-2:]:
        text = path.read_text(errors="replace").splitlines()
        print(f"==> {path} (last {min(lines, len(text))} of {len(text)} lines) <==")
        print("\n".join(text[-lines:]))
    return 0


def cmd_cancel(args: dict[str, str]) -> int:
    folder = run_folder(args["runs_root"], args["run_name"])
    launch, conf = run_info(folder)
    tasks = named_tasks(conf, folder, [args["stage"]]) if args["stage"] else run_tasks(conf)
    if launch.get("cluster", "local") == "local":
        return cancel_local(folder, conf, tasks)
    exp = experiment(folder)
    if exp is None:
        raise OpsError(f"run {folder.name} has no experiment records to cancel")
    jobs = job_states(exp)
    cancelled = []
    for task in tasks:
        state = str(jobs.get(task.name, {}).get("status", ""))
        if stage_done(conf, task) == "done" or state.endswith(("SUCCEEDED", "FAILED", "CANCELLED")):
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            exp.cancel(task.name)
        cancelled.append(task.name)
    print(f"cancelled: {', '.join(cancelled) if cancelled else 'nothing (every job had ended)'}")
    return 0


def cancel_local(folder: Path, conf, tasks: list[Task]) -> int:
    """Stop the tasks running on this machine (SIGTERM to their process groups, SIGKILL after a grace period) and
    keep the tasks not yet started from starting; the launcher then reports the run cancelled."""
    run_dir = Path(conf.run_dir)
    if all(read_manifest(t.folder(run_dir)) is not None for t in tasks):
        print("cancelled: nothing (every stage had finished)")
        return 0
    mark_cancelled(run_dir, by=f"launch.py cancel (pid {os.getpid()})")
    stopped = stop_stages(run_dir, tasks)
    pending = [t.name for t in tasks if t.name not in stopped and read_manifest(t.folder(run_dir)) is None]
    print(
        f"cancelled: stopped {', '.join(stopped) or 'no running stage'}"
        + (f"; will not start: {', '.join(pending)}" if pending else "")
        + f". Re-run the launch command to resume (python launch.py status run_name={folder.name})"
    )
    return 0


def cmd_report(args: dict[str, str]) -> int:
    names = [n for n in args["runs"].split(",") if n]
    if len(names) < 1:
        raise OpsError("runs=<a>,<b> names at least one run")
    folders = [run_folder(args["runs_root"], n) for n in names]
    confs = [run_info(f)[1] for f in folders]
    out = (
        Path(args["out"]).expanduser()
        if args["out"]
        else Path(args["runs_root"]).expanduser() / ("compare_" + "_vs_".join(names))
    )
    md, page = write_comparison(confs, out)
    print(md.read_text())
    print(f"  report: {page}  ({md.name} beside it)")
    return 0


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    print("\n".join(text_table(header, rows)))


def main(argv: list[str]) -> int:
    """`argv` = [command, key=value, ...]; returns the exit code."""
    command, rest = argv[0], argv[1:]
    if any(a in ("-h", "--help") for a in rest):
        print(USAGE)
        return 0
    handlers = {
        "list": (cmd_list, {"runs_root": "runs"}),
        "status": (cmd_status, {"run_name": None, "runs_root": "runs"}),
        "logs": (cmd_logs, {"run_name": None, "stage": None, "lines": "60", "runs_root": "runs"}),
        "cancel": (cmd_cancel, {"run_name": None, "stage": "", "runs_root": "runs"}),
        "report": (cmd_report, {"runs": None, "runs_root": "runs", "out": ""}),
    }
    fn, allowed = handlers[command]
    try:
        return fn(parse(rest, allowed))
    except UsageError as e:
        print(f"compactlm {command}: {e}\n\n{USAGE}", file=sys.stderr)
        return 2
