"""The submit side of a run: validate, write the run folder, build the NeMo-Run experiment, run it, summarize.

Never imports torch model code: everything heavy happens in `python -m compactlm.run <stage>` on the compute node.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from compactlm import stages
from compactlm.config import ConfigError
from compactlm.launch.local_runs import (
    RunBusy,
    RunLock,
    cancelled,
    check_no_links,
    check_no_orphans,
    clear_cancelled,
    mark_cancelled,
    stop_stages,
)
from compactlm.launch.plan import RunPlan, check_plan, format_plan, plan_run
from compactlm.launch.records import CONFIG_FILE, REPO, nemorun_home, resolved_yaml, stage_logs
from compactlm.launch.report import summary_table, write_report
from compactlm.launch.search import format_candidates, prune_presets, resolve_search
from compactlm.launch.shell import check_shell_values
from compactlm.launch.validate import check_force_stages, to_config, validate
from compactlm.manifest import atomic_write_json, atomic_write_text, read_manifest, versions
from compactlm.model.loading import read_hf_config
from compactlm.model.params import format_table, param_table
from compactlm.pipeline import Task, run_tasks
from compactlm.run_config import CompactLMConfig

# launch.py's exit codes besides 0 (finished), 1 (a stage failed) and 2 (a configuration error)
EXIT_BUSY = 3  # the run folder is in use by another launcher, or by a stage a dead launcher left running
EXIT_STOPPED = 130  # interrupted (Ctrl-C) or cancelled (launch.py cancel); re-running the command resumes


def launch(cfg) -> int:
    """Entry of `launch.py` (after Hydra composed `cfg`); returns the process exit code."""
    try:
        conf = to_config(cfg)
        shape = validate(conf, stages.names())
        resolve_search(conf, shape)
        check_force_stages(conf)
        local_dir = place_run(conf)
        if conf.recipe.stages:
            check_shell_values(conf, local_dir)
        if conf.recipe.stages and not conf.dryrun:
            check_no_links(local_dir, Path(conf.run_dir), run_tasks(conf))
        plan = plan_run(conf, shape) if conf.recipe.stages else None
        rows = None if conf.recipe.stages else params_rows(conf)  # recipe=params: its sizes, before a folder is made
        if plan is not None:
            check_plan(plan, conf)
        if conf.recipe.stages and not (conf.dryrun or conf.prepare_only):
            from compactlm.launch.executors import check_credentials  # NeMo-Run (torch, leptonai): only to submit

            check_credentials(conf)
        if not conf.dryrun:
            make_run_dir(conf, local_dir)
    except ConfigError as e:
        print(f"compactlm: configuration error: {e}", file=sys.stderr)
        return 2
    if rows is not None:
        return print_params(conf, rows)
    if conf.dryrun:
        return dryrun(conf, local_dir, plan)
    if conf.prepare_only:
        print(f"# plan\n{format_plan(plan)}")
        write_run_dir(conf, local_dir)
        print(
            f"compactlm: wrote {local_dir / CONFIG_FILE} (stages: {' '.join(conf.recipe.stages)}); submit by hand with\n"
            f"  launchers/slurm/submit.sh {local_dir / CONFIG_FILE} --account=<account> [--partition=<p>]"
        )
        return 0
    return submit(conf, local_dir, plan)


def place_run(conf: CompactLMConfig) -> Path:
    """Fix where the stages write (`conf.run_dir`, `conf.cache_dir`) and return the local run folder.

    The local folder holds config.yaml, launch.json and NeMo-Run's records. On this machine and on a
    Slurm login node (tunnel=local) the stages write there too; elsewhere they write under
    `cluster.runs_root` on the cluster's shared file system.
    """
    local_dir = Path(conf.run_dir).expanduser().resolve()
    c = conf.cluster
    if c.cache_dir:
        conf.cache_dir = c.cache_dir
    if c.is_remote():
        if not c.runs_root or not c.runs_root.startswith("/"):
            raise ConfigError(
                f"cluster.runs_root={c.runs_root!r}: cluster.executor={c.executor} needs an absolute "
                "folder on the cluster's shared storage where the stages write their outputs"
            )
        if not conf.cache_dir.startswith("/"):
            raise ConfigError(
                f"cache_dir={conf.cache_dir!r} is not an absolute path on the cluster; "
                "set cluster.cache_dir to a folder on its shared storage"
            )
        conf.run_dir = f"{c.runs_root.rstrip('/')}/{conf.run_name}"
    elif c.runs_root:
        conf.run_dir = str(Path(c.runs_root).expanduser().resolve() / conf.run_name)
    else:
        conf.run_dir = str(local_dir)
    if c.is_remote():
        place_remote_inputs(conf)
    else:
        conf.cache_dir = str(Path(conf.cache_dir).expanduser())
        pin_local_paths(conf)
    return local_dir


def make_run_dir(conf: CompactLMConfig, local_dir: Path) -> None:
    """Create the local run folder and check that a file can be written in it; ConfigError names `runs_root`."""
    try:
        local_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=local_dir):  # a folder can exist and still refuse new files
            pass
    except OSError as e:
        raise ConfigError(
            f"runs_root={conf.runs_root!r}: cannot write the run folder {local_dir} "
            f"({e.strerror or e}); set runs_root=<a folder you can write>"
        ) from None


def pin_local_paths(conf: CompactLMConfig) -> None:
    """Make every input path of the config absolute, as seen from where launch.py runs.

    The stages run elsewhere (NeMo-Run's copy of the code on Slurm, another working directory), so a
    relative `data.paths`, `model.path` or `evaluate.task_text` would point at nothing there. config.yaml
    then records the files the run really read.
    """

    def pinned(path: str) -> str:
        return os.path.abspath(os.path.expanduser(path))

    if conf.model.is_local():
        conf.model.path = pinned(conf.model.path)
    if conf.data.reads_files():
        conf.data.paths = [pinned(p) for p in conf.data.paths]
    if conf.evaluate.task_text:
        conf.evaluate.task_text = pinned(conf.evaluate.task_text)


def place_remote_inputs(conf: CompactLMConfig) -> None:
    """On a cluster that does not see this machine's files, input paths must be absolute paths over there."""
    where = f"cluster.executor={conf.cluster.executor}" + (
        " with cluster.slurm.tunnel=ssh" if conf.cluster.executor == "slurm" else ""
    )
    named = []
    if "evaluate" in conf.recipe.stages and conf.evaluate.folder_tasks():
        named.append(("evaluate.task_text", conf.evaluate.task_text))
    if conf.model.is_local():
        named.append(("model.path", conf.model.path))
    if "data" in conf.recipe.stages and conf.data.reads_files():
        named += [("data.paths", p) for p in conf.data.paths]
    for key, path in named:
        if not path.startswith("/"):
            raise ConfigError(
                f"{key}={path!r} is relative, but the stages run on the cluster ({where}), where it "
                "would be read from an unknown working directory: give an absolute path on the "
                "cluster's storage"
            )


def write_run_dir(conf: CompactLMConfig, local_dir: Path | None = None) -> Path:
    """config.yaml (resolved), launch.json (git SHA, versions, command) into the local run folder
    (`conf.run_dir` unless the stages write on a cluster's storage)."""
    local_dir = Path(conf.run_dir) if local_dir is None else local_dir
    local_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(local_dir / CONFIG_FILE, resolved_yaml(conf))
    atomic_write_json(
        local_dir / "launch.json",
        {
            "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
            "git_sha": git_sha(),
            "versions": versions(),
            "cluster": conf.cluster.executor,
            "run_dir": conf.run_dir,
            "launched_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    )
    return local_dir


def git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def dryrun(conf: CompactLMConfig, local_dir: Path, plan: RunPlan) -> int:
    """Print the resolved config, the plan, the executors and what would be submitted (sbatch scripts, job specs).

    Nothing is written to the run folder and nothing is contacted: scripts and specs are rendered in a
    temporary folder by the same code that submits them.
    """
    from compactlm.launch.executors import describe_executor, render_submission  # NeMo-Run: see check_credentials

    print("# resolved config\n" + resolved_yaml(conf))
    if conf.search.resolved:
        print(f"# search candidates ({len(conf.search.resolved)})\n{format_candidates(conf)}")
    print(f"# plan\n{format_plan(plan)}")
    print(f"# executor\n{describe_executor(conf)}")
    print("# tasks (each depends on the task(s) of the stage before)")
    for stage, text in render_submission(conf, local_dir):
        print(f"## {stage}\n{text.rstrip()}")
    print("dryrun=true: nothing was written or submitted")
    return 0


def submit(conf: CompactLMConfig, local_dir: Path, plan: RunPlan) -> int:
    """Print the plan, then run (local) or submit (cluster) the recipe's stages, holding the run folder's lock
    meanwhile."""
    print(f"compactlm: plan of run {conf.run_name}\n{format_plan(plan)}", flush=True)
    lock = RunLock(local_dir)
    try:
        lock.acquire(conf.run_name)
        if not conf.cluster.is_remote():
            check_no_orphans(Path(conf.run_dir), run_tasks(conf), conf.run_name)
            clear_cancelled(Path(conf.run_dir))
    except RunBusy as e:
        lock.release()
        print(f"compactlm: {e}", file=sys.stderr)
        return EXIT_BUSY
    except ConfigError as e:  # a link planted at the lock since check_no_links (LinkRefused)
        lock.release()
        print(f"compactlm: configuration error: {e}", file=sys.stderr)
        return 2
    if conf.cluster.executor != "local":
        try:
            return _submit(conf, local_dir)
        finally:
            lock.release()
    # NeMo-Run's local executor finishes the running stage before a KeyboardInterrupt gets through: Ctrl-C (SIGINT)
    # and SIGTERM stop that stage first (_stopper), then unwind; the next stages are never started.
    handlers = {sig: signal.signal(sig, _stopper(conf)) for sig in (signal.SIGINT, signal.SIGTERM)}
    t0 = time.time()
    try:
        return _submit(conf, local_dir)
    except KeyboardInterrupt:
        print(summary_table(conf, t0), file=sys.stderr)
        print("compactlm: run stopped; re-run the same command to resume.", file=sys.stderr)
        return EXIT_STOPPED
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        lock.release()


def _stopper(conf: CompactLMConfig):
    """A signal handler that stops the run's stages on this machine (the distill stage checkpoints first)."""
    run_dir, stopping = Path(conf.run_dir), []

    def stop(signum: int, _frame) -> None:
        if stopping:
            return  # a second Ctrl-C while stopping or unwinding changes nothing
        name = signal.Signals(signum).name
        stopping.append(name)
        print(f"\ncompactlm: {name}: stopping run {conf.run_name} ...", file=sys.stderr, flush=True)
        mark_cancelled(run_dir, by=f"{name} to launch.py")
        stopped = stop_stages(run_dir, run_tasks(conf))
        print(
            f"compactlm: interrupted; stopped {', '.join(stopped) or 'no running stage'}; the stages after it will "
            "not start. Re-run the same command to resume.",
            file=sys.stderr,
            flush=True,
        )
        raise KeyboardInterrupt

    return stop


def _submit(conf: CompactLMConfig, local_dir: Path) -> int:
    from compactlm.launch.executors import build_experiment  # NeMo-Run (torch, leptonai): only to submit

    write_run_dir(conf, local_dir)
    where = (
        f"{local_dir}" if conf.run_dir == str(local_dir) else f"{conf.run_dir} on the cluster (records in {local_dir})"
    )
    print(
        f"compactlm: run {conf.run_name} -> {where}  (recipe={conf.recipe.name}: {' -> '.join(conf.recipe.stages)}, "
        f"cluster={conf.cluster.name})",
        flush=True,
    )
    if conf.search.resolved:
        print(f"compactlm: {len(conf.search.resolved)} search candidates\n{format_candidates(conf)}", flush=True)
    t0 = time.time()
    exp = build_experiment(conf, local_dir)
    detach = conf.cluster.detach and conf.cluster.executor != "local"
    try:
        with exp:
            exp.run(detach=detach, tail_logs=not detach)
    except Exception as e:  # the scheduler refused (sbatch error, HTTP error): say so without a traceback
        detail = " ".join(str(e).split())[-1500:]
        print(
            f"compactlm: submitting to cluster={conf.cluster.name} failed: {type(e).__name__}: {detail}\n"
            f"  nothing is lost: fix the cause and re-run the same command (finished stages are skipped)",
            file=sys.stderr,
        )
        return 1
    states = {job.id: str(job.state) for job in exp.jobs}
    if detach:
        print(
            f"compactlm: submitted {len(exp.jobs)} stage job(s) of experiment {exp._id}; follow them with\n"
            f"  python launch.py status run_name={conf.run_name}\n"
            f"  python launch.py logs run_name={conf.run_name} stage=<stage>\n"
            f"  python launch.py cancel run_name={conf.run_name}"
        )
        return 0
    if conf.cluster.is_remote():
        print(
            f"compactlm: jobs ended with states {states}; outputs and report are in {conf.run_dir} on the cluster "
            f"(python launch.py report runs={conf.run_name} runs_root={conf.cluster.runs_root} there)"
        )
        return 0 if all(s.endswith("SUCCEEDED") for s in states.values()) else 1
    run_dir = Path(conf.run_dir)
    print(summary_table(conf, t0))
    md, page = write_report(conf)
    print(f"  report: {page}  ({md.name} beside it)")
    failed = [task for task in run_tasks(conf) if read_manifest(task.folder(run_dir)) is None]
    stop = cancelled(run_dir)
    if stop and failed:
        print(
            f"compactlm: run cancelled ({stop['by']}, {stop['at']}); not finished: {', '.join(t.name for t in failed)}. "
            "Re-run the same command to resume.",
            file=sys.stderr,
        )
        return EXIT_STOPPED
    if failed:
        print(
            f"compactlm: stage {failed[0].name!r} did not finish (states: {states}); its log is under "
            f"{nemorun_home(local_dir)} (python launch.py logs run_name={conf.run_name} stage={failed[0].name}). "
            "Re-run the same command to resume from it.",
            file=sys.stderr,
        )
        print(failed_log_tail(local_dir, failed[0]), file=sys.stderr)
        return 1
    print(f"compactlm: run finished; artifacts in {run_dir}")
    return 0


def failed_log_tail(local_dir: Path, task: Task, lines: int = 30) -> str:
    """The last lines of the newest log of `task` (its latest attempt), where the cause of a failure is."""
    logs = stage_logs(local_dir, task)
    logs = [p for p in logs if p.name not in ("stdout.log", "stderr.log")] or logs
    if not logs:
        return f"  (no log of stage {task.name!r} was written)"
    text = logs[-1].read_text(errors="replace").splitlines()
    return f"==> {logs[-1]} (last {min(lines, len(text))} lines) <==\n" + "\n".join(text[-lines:])


def params_rows(conf: CompactLMConfig) -> list[dict]:
    """recipe=params: the parameter table of the model and its presets (meta device, no weights); ConfigError when
    the model's sizes are unknown here."""
    local = (
        read_hf_config(Path(conf.model.path).expanduser())
        if conf.model.source == "hf" and conf.model.is_local()
        else None
    )
    return param_table(conf.model, prune_presets(conf.model.name), local)


def print_params(conf: CompactLMConfig, rows: list[dict]) -> int:
    """Prints recipe=params' table and, unless a dry run, writes it to `<run_dir>/params.json`."""
    print(f"Parameters of model={conf.model.name} and its prune presets (instantiated on the meta device):")
    print(format_table(rows))
    if not conf.dryrun:
        out = Path(conf.run_dir) / "params.json"
        atomic_write_json(out, {"model": asdict(conf.model), "rows": rows})
        print(f"written to {out}")
    return 0
