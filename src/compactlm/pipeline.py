"""Running one stage on the compute node: resolve inputs, skip when up to date, run, write the manifest last.

Stage code never imports Hydra or nemo_run and never reads SLURM_* variables: it gets the resolved
config file written by the launcher, converted to :class:`CompactLMConfig` dataclasses here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import shutil
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from omegaconf import OmegaConf

from compactlm import stages
from compactlm.cli import UsageError, parse
from compactlm.config import ConfigError, check_run_name
from compactlm.manifest import (
    MANIFEST,
    apply_umask_tree,
    atomic_write_json,
    atomic_write_text,
    file_records,
    fingerprint,
    is_current,
    read_manifest,
    records_digest,
    refuse_link,
    resolve_output,
    seal,
    sha256_json,
    versions,
)
from compactlm.results import ResultError, result_class, result_of, run_models, to_json
from compactlm.run_config import CompactLMConfig

# Every stage the runner knows (built-in and registered: compactlm.stages); the launcher lists them without
# importing them (no torch on the submit side), the runner imports the one it runs.
STAGE_NAMES = stages.names()
CONFIG_FILE = "config.yaml"
RESUME_KEY = "resume_key.json"
# In a stage folder while the stage runs: who runs it (pid, process group, host, and the process's identity:
# boot, start time, command line), for status, cancel and Ctrl-C. It outlives a kill -9, so it is trusted only
# while its pid still belongs to the process that wrote it (`same_process`).
RUNNING = ".running.json"
# What tells a process apart from a later one given the same pid (see process_identity).
IDENTITY = ("boot_id", "start_ticks", "cmdline")
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
# In the run folder after `launch.py cancel`: stages not yet started refuse to start.
CANCELLED = "cancelled.json"
# In a stage folder after it stopped on a configuration error: the Slurm job script does not requeue it.
CONFIG_ERROR = "config_error.txt"
# Exit codes of a stage process (besides 0, 1 for a crash, and 128+signal when a signal stopped it).
EXIT_CONFIG, EXIT_UPSTREAM, EXIT_UNAVAILABLE, EXIT_CANCELLED = 2, 3, 4, 5


class UndeclaredRead(RuntimeError):
    """A stage read a config section it does not declare in `reads` (so its cache key would miss it)."""


class StageConfig:
    """The run's config as one stage sees it: only the sections the stage declares in `reads`.

    Reading any other section raises :class:`UndeclaredRead`: what a stage reads is exactly what decides
    whether its outputs are up to date (the config hash covers `reads`, nothing else).
    """

    def __init__(self, cfg: CompactLMConfig, stage: str, reads: tuple[str, ...]):
        object.__setattr__(self, "_cfg", cfg)
        object.__setattr__(self, "_stage", stage)
        object.__setattr__(self, "_reads", tuple(reads))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if name not in self._reads:
            raise UndeclaredRead(
                f"stage {self._stage!r} read cfg.{name}, which it does not declare "
                f"(reads={self._reads}); add {name!r} to its `reads`"
            )
        return getattr(self._cfg, name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"stage {self._stage!r}: the config is read-only")


@dataclass
class StageContext:
    """What a stage gets: its declared config sections, its own (clean) folder and its upstream manifests."""

    cfg: StageConfig
    run_dir: Path
    stage_dir: Path
    upstream: dict[str, dict[str, Any]]
    """Manifest of every task of the recipe's earlier stages, by task name (the stage name, or
    `candidate-<name>` for an instanced stage)."""
    instance: str | None = None
    """Which instance of an instanced stage this task is (the candidate's name), else None."""

    def upstream_output(self, stage: str, key: str) -> Path:
        """Absolute path of output `key` of the finished upstream `stage`."""
        try:
            value = self.upstream[stage]["outputs"][key]
        except KeyError:
            raise RuntimeError(
                f"stage {stage!r} has no output {key!r}; the recipe's earlier stages are "
                f"{', '.join(self.upstream) or 'none'}"
            ) from None
        return resolve_output(self.run_dir / stage, value)

    def result(self, stage: str) -> Any:
        """The typed result (compactlm.results) of the finished upstream `stage`, or None if it is not upstream."""
        return result_of(stage, self.upstream.get(stage))

    def models(self) -> dict[str, Path]:
        """label -> folder of every model the upstream stages produced (teacher, pruned, distilled, quantized)."""
        return run_models(self.run_dir, self.upstream)


@dataclass
class StageOutput:
    """What `Stage.run` returns."""

    result: Any
    """The stage's result dataclass (compactlm.results), stored in the manifest."""
    outputs: dict[str, str] = field(default_factory=dict)
    """Output name -> path (relative to the stage folder, or absolute when it lives elsewhere, e.g. a cache)."""
    engine: dict[str, Any] | None = None
    """`Precision.record()` of a stage that ran a model (device, compute dtype, autocast, why), for the manifest."""


class Stage(Protocol):
    name: str
    reads: tuple[str, ...]
    """Config sections (attributes of CompactLMConfig) the stage reads; they, and only they, decide its outputs."""
    keep: tuple[str, ...]
    """Entries of the stage folder kept when a stage restarts (e.g. resumable checkpoints)."""

    def run(self, ctx: StageContext) -> StageOutput: ...


def load_stage(name: str) -> Stage:
    return stages.load(stages.get(name).stage)()


def load_config(path: Path) -> CompactLMConfig:
    """The resolved config written by the launcher, as dataclasses (validated again by their __post_init__)."""
    merged = OmegaConf.merge(OmegaConf.structured(CompactLMConfig), OmegaConf.load(path))
    return OmegaConf.to_object(merged)


def stage_config_hash(cfg: CompactLMConfig, stage: Stage, instance: str | None = None) -> str:
    """Digest of what decides the stage's outputs: its `reads` sections, or the narrower `config_view` a stage
    may define (a search candidate depends on its own architecture, not on the list of the others)."""
    view = getattr(stage, "config_view", None)
    if view is not None:
        return sha256_json(view(cfg, instance))
    return sha256_json({s: _plain(getattr(cfg, s)) for s in stage.reads})


def _plain(value: Any) -> Any:
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


@dataclass(frozen=True)
class Task:
    """One task of a run: a stage, or one instance of an instanced stage (a search candidate). Computed by
    `run_tasks`; the launcher, the executors, status, logs and cancel take these values and never parse `name`.

    `depends_on` holds the tasks of the recipe's stage before (what a scheduler waits for); instances of the same
    stage never depend on one another. Two tasks are equal when stage and instance are."""

    stage: str
    instance: str | None = None
    depends_on: tuple[Task, ...] = field(default=(), compare=False, repr=False)

    @property
    def name(self) -> str:
        """The task's folder under the run folder and its NeMo-Run task name: `candidate-exp_010`, or `distill`."""
        return f"{self.stage}-{self.instance}" if self.instance is not None else self.stage

    @property
    def upstream(self) -> tuple[Task, ...]:
        """Every task of the recipe's earlier stages, in recipe order: whose manifests this task reads."""
        out: dict[Task, None] = {}
        for dep in self.depends_on:
            out.update(dict.fromkeys(dep.upstream))
            out[dep] = None
        return tuple(out)

    def folder(self, run_dir: str | Path) -> Path:
        return Path(run_dir) / self.name


def instanced_by(stage: str) -> str | None:
    """The config section that lists the instances of an instanced stage (`search` for `candidate`), else None.
    The one place the task list reads the stage registry's `instanced_by`."""
    return stages.get(stage).instanced_by


def instances(cfg: CompactLMConfig, stage: str) -> list[str]:
    """Names of the instances of an instanced stage (the search candidates), in the config's order."""
    return getattr(cfg, instanced_by(stage)).names()


def run_tasks(cfg: CompactLMConfig) -> list[Task]:
    """Every task of the run in recipe order: each stage, with an instanced stage expanded into its instances
    (`instanced_by`). Their folders are `<run_dir>/<task.name>`; the launcher, status,
    logs, cancel and the report go through this list."""
    tasks: list[Task] = []
    previous: tuple[Task, ...] = ()
    for stage in cfg.recipe.stages:
        names = instances(cfg, stage) if instanced_by(stage) else [None]
        previous = tuple(Task(stage, instance, previous) for instance in names)
        tasks += previous
    return tasks


def find_task(cfg: CompactLMConfig, stage: str, instance: str | None = None) -> Task:
    """The task of the run that `stage` (and `instance`, for an instanced stage) names; ConfigError otherwise."""
    if stage in stages.names() and (instanced_by(stage) is not None) != (instance is not None):
        raise ConfigError(
            f"stage {stage!r} "
            + (
                f"runs once per {instanced_by(stage)} candidate: name one "
                f"(one of {', '.join(instances(cfg, stage)) or 'none'})"
                if instance is None
                else "has no instances"
            )
        )
    if instance is not None and instance not in instances(cfg, stage):
        raise ConfigError(
            f"{stage}={instance!r} is not one of this run's candidates: {', '.join(instances(cfg, stage)) or 'none'}"
        )
    stages.get(stage)  # a ConfigError naming the known stages
    found = [t for t in run_tasks(cfg) if t == Task(stage, instance)]
    if not found:
        raise ConfigError(
            f"stage {stage!r} is not one of recipe={cfg.recipe.name}'s stages: {', '.join(cfg.recipe.stages)}"
        )
    return found[0]


def run_stage(stage_name: str, config_path: Path, instance: str | None = None) -> int:
    """Run stage `stage_name` (for an instanced stage: its instance `instance`, a candidate's name) of the run
    described by `config_path`; returns the process exit code."""
    cfg = load_config(config_path)
    run_dir = Path(cfg.run_dir)
    task = find_task(cfg, stage_name, instance)
    name = task.name
    stage_dir = stage_folder(run_dir, cfg.run_name, task)
    stage = load_stage(stage_name)
    if (run_dir / CANCELLED).is_file():
        print(
            f"[{name}] not started: the run was cancelled ({run_dir / CANCELLED}); re-run the launch command to resume",
            file=sys.stderr,
        )
        return EXIT_CANCELLED
    upstream: dict[str, dict[str, Any]] = {}
    for up in (t.name for t in task.upstream):
        m = read_manifest(run_dir / up)
        if m is None:
            print(
                f"[{name}] not started: upstream stage {up!r} has no manifest in {run_dir / up} "
                f"(it failed or did not run); fix it and re-run the same command",
                file=sys.stderr,
            )
            return EXIT_UPSTREAM
        upstream[up] = m
    config_hash = stage_config_hash(cfg, stage, instance)
    input_hashes = {up: fingerprint(m) for up, m in upstream.items()}
    forced = cfg.force or name in cfg.force_stages or stage_name in cfg.force_stages  # a stage: all its instances
    # Under torchrun every rank runs this function; every rank reaches the same skip decision (read-only),
    # and only rank 0 touches the folder and writes the manifest.
    rank = int(os.environ.get("RANK", "0"))
    if not forced and readable(name, is_current(stage_dir, config_hash, input_hashes)):
        print(f"[{name}] up to date (manifest matches config and inputs), skipped", flush=True)
        return 0
    if rank == 0:
        _clean(stage_dir, stage.keep, {"config_hash": config_hash, "input_hashes": input_hashes}, fresh=forced)
        print(f"[{name}] running in {stage_dir}", flush=True)
    t0 = time.time()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    ctx = StageContext(
        cfg=StageConfig(cfg, name, stage.reads),
        run_dir=run_dir,
        stage_dir=stage_dir,
        upstream=upstream,
        instance=instance,
    )
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (cancel, Ctrl-C in the launcher, Slurm) ends the stage through Python, so `finally` blocks run;
        # the distill stage replaces this with its own handler, which checkpoints first.
        signal.signal(signal.SIGTERM, _exit_on_signal)
    if rank == 0:
        atomic_write_json(
            stage_dir / RUNNING,
            {**running_record(), "started_at": started, "launcher_pid": os.environ.get("COMPACTLM_LAUNCHER_PID")},
        )
    try:
        out = stage.run(ctx)
    finally:
        if rank == 0:
            (stage_dir / RUNNING).unlink(missing_ok=True)
    if rank != 0:
        return 0
    # libraries write with modes of their own (safetensors: 0600): the whole folder gets the umask's, before the
    # manifest records it
    apply_umask_tree(stage_dir)
    expected = result_class(stage_name)
    if type(out.result) is not expected:
        raise TypeError(f"stage {name!r} returned {type(out.result).__name__}, not {expected.__name__}")
    files = {k: file_records(resolve_output(stage_dir, v)) for k, v in out.outputs.items()}
    manifest = {
        "stage": stage_name,
        "task": name,
        "config_hash": config_hash,
        "input_hashes": input_hashes,
        "outputs": out.outputs,
        "output_files": files,
        "output_digests": {k: records_digest(r) for k, r in files.items()},
        "result": to_json(out.result),
        "engine": out.engine,
        "versions": versions(),
        "attempt": uuid.uuid4().hex,  # this run of the stage: the stages after it are fingerprinted against it
        "started_at": started,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_time_s": round(time.time() - t0, 3),
        **peak_rss(),
    }
    atomic_write_json(stage_dir / MANIFEST, seal(manifest))  # last: its presence means "finished"
    print(f"[{name}] done in {manifest['wall_time_s']:.1f} s", flush=True)
    return 0


def peak_rss() -> dict[str, int]:
    """Peak resident memory, in bytes, of this stage's process (`peak_rss_bytes`: one process runs one stage, so
    from its start, imports included) and of the largest child it waited for (`peak_rss_children_bytes`: the
    llama.cpp tools of the gguf stage, 0 when none). Linux reports ru_maxrss in KiB."""
    return {
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "peak_rss_children_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
    }


def _exit_on_signal(signum: int, _frame) -> None:
    raise SystemExit(128 + signum)


def stage_folder(run_dir: Path, run_name: str, task: Task) -> Path:
    """`<run_dir>/<task.name>`, after checking that it cannot lie outside the run folder: the run folder is named
    after the (validated) run name, the stage is a registered one and an instance name is a plain folder name
    (the run-name rule), so a stage never cleans anything else."""
    stages.get(task.stage)  # a ConfigError naming the known stages
    if task.instance is not None:
        check_run_name(task.instance, task.stage)
    if run_dir.name != run_name or ".." in run_dir.parts or run_dir.resolve() == Path(run_dir.anchor):
        raise ConfigError(
            f"run_dir={str(run_dir)!r} is not a folder named after run_name={run_name!r}: the "
            "stages write and clean only inside <runs_root>/<run_name>"
        )
    folder = task.folder(run_dir)
    refuse_link(folder)  # even one to another folder of the run: a stage writes into its own folder only
    if folder.resolve().parent != run_dir.resolve():
        raise ConfigError(f"{folder} resolves to {folder.resolve()}, outside the run folder {run_dir.resolve()}")
    return folder


def running(stage_dir: Path) -> dict[str, Any] | None:
    """The stage's RUNNING record (pid, pgid, host, boot_id, start_ticks, cmdline, started_at, launcher_pid), while
    the file exists; whether its process still runs is `same_process(record)`."""
    try:
        info = json.loads((Path(stage_dir) / RUNNING).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def running_record() -> dict[str, Any]:
    """This process as RUNNING records it: pid, process group, host and identity (see process_identity)."""
    return {
        "pid": os.getpid(),
        "pgid": os.getpgid(0),
        "host": socket.gethostname(),
        **(process_identity(os.getpid()) or {}),
    }


def process_identity(pid: int) -> dict[str, Any] | None:
    """What tells process `pid` apart from any later process that gets the same pid: the boot it runs in
    (`/proc/sys/kernel/random/boot_id`), its start time in clock ticks after that boot (`/proc/<pid>/stat` field 22)
    and its command line (a list of arguments). None when no such process runs (gone, or a zombie) or /proc cannot
    tell (not Linux, or /proc mounted with hidepid): such a pid is never trusted."""
    try:
        boot = BOOT_ID.read_text().strip()
        before = _stat_fields(pid)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        after = _stat_fields(pid)  # the same start time after: the command line read is not a newcomer's
    except (OSError, IndexError, ValueError):
        return None
    if before[19] != after[19] or after[0] in ("Z", "X"):  # a zombie has exited, only its parent has not reaped it
        return None
    return {
        "boot_id": boot,
        "start_ticks": int(before[19]),
        "cmdline": [a.decode(errors="replace") for a in cmdline.split(b"\0")[:-1]],
    }


def _stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat from field 3 (state) on: field n is item n - 3. The command name (field 2) is cut off
    at its last ")", as it may itself hold spaces and parentheses."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def same_process(info: dict[str, Any] | None) -> bool:
    """Whether the process a RUNNING record names still runs: on this host, and its pid still belongs to the very
    process that wrote the record (same boot, start time and command line), not to one that got the pid after it
    died (kill -9, OOM). Every place that trusts or signals a recorded pid asks this first."""
    if not info or info.get("host") != socket.gethostname():
        return False
    try:
        now = process_identity(int(info["pid"]))
    except (KeyError, TypeError, ValueError):
        return False
    return now is not None and all(info.get(k) == now[k] for k in IDENTITY)


def readable(stage: str, manifest: dict[str, Any] | None) -> bool:
    """A manifest is trusted only when its result still reads back as the stage's result class."""
    if manifest is None:
        return False
    try:
        result_of(stage, manifest)
    except ResultError as e:
        print(f"[{stage}] manifest not trusted ({e}); running the stage again", flush=True)
        return False
    return True


def _clean(stage_dir: Path, keep: tuple[str, ...], resume_key: dict[str, Any], fresh: bool) -> None:
    """Start a stage from a clean folder: whatever a killed attempt left behind is removed.

    Entries in `keep` (resumable checkpoints) survive only when the previous attempt had the same
    config and inputs, as recorded in `resume_key.json`; `fresh` (a forced re-run) removes them too.
    """
    stage_dir.mkdir(parents=True, exist_ok=True)
    (stage_dir / MANIFEST).unlink(missing_ok=True)
    key_file = stage_dir / RESUME_KEY
    resumable = bool(keep) and not fresh and key_file.is_file() and json.loads(key_file.read_text()) == resume_key
    root = stage_dir.resolve()
    for entry in stage_dir.iterdir():
        if resumable and entry.name in keep:
            _refuse_links_in(entry)  # a kept checkpoint is written into again: through no link
            continue
        if entry.parent.resolve() != root:  # never reached through a symlinked stage folder
            raise RuntimeError(f"refusing to delete {entry}: it is not inside {root}")
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    if keep:
        atomic_write_json(key_file, resume_key)


def _refuse_links_in(path: Path) -> None:
    """LinkRefused (a ConfigError: one line, exit 2) when `path`, or anything under it, is a symbolic link."""
    refuse_link(path)
    for p in path.rglob("*") if path.is_dir() else ():  # rglob does not descend into linked folders
        refuse_link(p)


USAGE = "usage: python -m compactlm.run <stage> config=<run_dir>/config.yaml [<stage>=<instance>]"


def main(argv: list[str] | None = None) -> int:
    """Every stage's entry point, `python -m compactlm.run <stage> config=<run_dir>/config.yaml` (compactlm/run.py);
    an instanced stage also names its instance: `candidate config=... candidate=exp_010`."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(
            f"{USAGE}\n\nRuns one stage of the run that config.yaml (written by launch.py) describes; skipped when its "
            f"manifest is up to date.\nStages: {', '.join(stages.names())}",
            file=sys.stdout if argv else sys.stderr,
        )
        return 0 if argv else 2
    name, argv = argv[0], argv[1:]
    if name not in stages.names():
        print(f"compactlm.run: stage {name!r} is not one of {', '.join(stages.names())}", file=sys.stderr)
        return 2
    extra = f" {name}=<name>" if instanced_by(name) else ""
    if any(a in ("-h", "--help") for a in argv):
        print(
            f"usage: python -m compactlm.run {name} config=<run_dir>/config.yaml{extra}\n\nRuns the {name} stage of "
            "the run that config.yaml (written by launch.py) describes"
            + (f", for one of its {instanced_by(name)} candidates" if extra else "")
            + "; skipped when its manifest is up to date."
        )
        return 0
    try:
        args = parse(argv, {"config": None, **({name: None} if extra else {})})
    except UsageError as e:
        print(f"compactlm.run {name}: {e}", file=sys.stderr)
        return 2
    instance = args.get(name)
    try:
        return run_stage(name, Path(args["config"]), instance)
    except ConfigError as e:
        print(f"[{name}] configuration error: {e}", file=sys.stderr)
        _record_config_error(Path(args["config"]), name, instance, str(e))
        return EXIT_CONFIG


def _record_config_error(config_path: Path, stage: str, instance: str | None, message: str) -> None:
    """Leave CONFIG_ERROR in the stage folder: a Slurm job script requeues a failed stage, except this one (the
    same config would fail again). The next run of the stage cleans it away."""
    try:
        cfg = load_config(config_path)
        task = find_task(cfg, stage, instance)  # ConfigError when there is no such task: no folder is made for it
        stage_dir = stage_folder(Path(cfg.run_dir), cfg.run_name, task)
        stage_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(stage_dir / CONFIG_ERROR, message + "\n")
    except Exception:  # the config itself may be what is broken; the message is printed already
        pass
