"""Running one stage on the compute node: resolve inputs, skip when up to date, run, write the manifest last.

Stage code never imports Hydra or nemo_run and never reads SLURM_* variables: it gets the resolved
config file written by the launcher, converted to :class:`CompactLMConfig` dataclasses here.
"""

from __future__ import annotations

import dataclasses
import importlib
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

from compactlm.cli import UsageError, parse
from compactlm.config import CompactLMConfig, ConfigError, check_run_name
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
from compactlm.results import RESULTS, ResultError, result_of, run_models, to_json

# stage name -> "module:Class". The launcher lists stages without importing them (no torch on the submit
# side); the runner imports the one it runs.
STAGES: dict[str, str] = {
    "model": "compactlm.model.stage:ModelStage",
    "data": "compactlm.data.stage:DataStage",
    "importance": "compactlm.prune.stage:ImportanceStage",
    "prune": "compactlm.prune.stage:PruneStage",
    "teacher_cache": "compactlm.search.stage:TeacherCacheStage",
    "candidate": "compactlm.search.stage:CandidateStage",
    "ranking": "compactlm.search.stage:RankingStage",
    "distill": "compactlm.distill.stage:DistillStage",
    "align_data": "compactlm.align.stage:AlignDataStage",
    "sft": "compactlm.align.stage:SFTStage",
    "dpo": "compactlm.align.stage:DPOStage",
    "grpo": "compactlm.align.stage:GRPOStage",
    "quantize": "compactlm.quantize.stage:QuantizeStage",
    "gguf": "compactlm.gguf.stage:GGUFStage",
    "evaluate": "compactlm.evaluate.stage:EvaluateStage",
    "deploy": "compactlm.deploy.stage:DeployStage",
    "bench": "compactlm.bench.stage:BenchStage",
    "release": "compactlm.release.stage:ReleaseStage",
}
STAGE_NAMES = tuple(STAGES)
# Stages that run once per instance, each instance a task of its own (`candidate-exp_010`, folder
# `<run_dir>/candidate-exp_010/`): stage -> the config attribute listing the instances' names.
INSTANCED = {"candidate": "search"}
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
    module, cls = STAGES[name].split(":")
    return getattr(importlib.import_module(module), cls)()


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


def task_name(stage: str, instance: str | None = None) -> str:
    """The task (and folder) name of one instance of a stage: `candidate-exp_010`; a plain stage's is its name."""
    return f"{stage}-{instance}" if instance else stage


def split_task(task: str) -> tuple[str, str | None]:
    """`candidate-exp_010` -> ("candidate", "exp_010"); `distill` -> ("distill", None). Stage names have no dash."""
    stage, _, instance = task.partition("-")
    return stage, instance or None


def instances(cfg: CompactLMConfig, stage: str) -> list[str]:
    """Names of the instances of an instanced stage (the search candidates), in the config's order."""
    return getattr(cfg, INSTANCED[stage]).names()


def stage_tasks(cfg: CompactLMConfig, stage: str) -> list[str]:
    """The task(s) of one recipe stage: the stage itself, or one per instance."""
    if stage in INSTANCED:
        return [task_name(stage, i) for i in instances(cfg, stage)]
    return [stage]


def run_tasks(cfg: CompactLMConfig) -> list[str]:
    """Every task of the run in recipe order: each stage, with an instanced stage expanded into its instances.
    Their folders are `<run_dir>/<task>`; status, logs, cancel and the report go through this list."""
    return [t for stage in cfg.recipe.stages for t in stage_tasks(cfg, stage)]


def upstream_stages(cfg: CompactLMConfig, name: str) -> list[str]:
    """The tasks `name` (a task) depends on: every task of the recipe's earlier stages. Instances of the same
    stage never depend on one another."""
    stages = cfg.recipe.stages
    earlier = stages[: stages.index(split_task(name)[0])]
    return [t for stage in earlier for t in stage_tasks(cfg, stage)]


def run_stage(name: str, config_path: Path) -> int:
    """Run task `name` (a stage, or `candidate-<name>`) of the run described by `config_path`; returns the
    process exit code."""
    cfg = load_config(config_path)
    run_dir = Path(cfg.run_dir)
    stage_name, instance = split_task(name)
    if stage_name in STAGES and (stage_name in INSTANCED) != (instance is not None):
        raise ConfigError(
            f"stage {stage_name!r} "
            + (
                f"runs once per {INSTANCED[stage_name]} candidate: name one "
                f"(one of {', '.join(instances(cfg, stage_name)) or 'none'})"
                if instance is None
                else "has no instances"
            )
        )
    if instance is not None and instance not in instances(cfg, stage_name):
        raise ConfigError(
            f"{stage_name}={instance!r} is not one of this run's candidates: "
            f"{', '.join(instances(cfg, stage_name)) or 'none'}"
        )
    stage_dir = stage_folder(run_dir, cfg.run_name, name)
    stage = load_stage(stage_name)
    if (run_dir / CANCELLED).is_file():
        print(
            f"[{name}] not started: the run was cancelled ({run_dir / CANCELLED}); re-run the launch command to resume",
            file=sys.stderr,
        )
        return EXIT_CANCELLED
    upstream: dict[str, dict[str, Any]] = {}
    for up in upstream_stages(cfg, name):
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
    expected = RESULTS[stage_name]
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


def stage_folder(run_dir: Path, run_name: str, stage: str) -> Path:
    """`<run_dir>/<task>`, after checking that it cannot lie outside the run folder: the run folder is named
    after the (validated) run name, the stage is one of STAGES and an instance name is a plain folder name
    (the run-name rule), so a stage never cleans anything else."""
    name, instance = split_task(stage)
    if name not in STAGES:
        raise ConfigError(f"stage {name!r} is not one of {', '.join(STAGES)}")
    if instance is not None:
        check_run_name(instance, name)
    if run_dir.name != run_name or ".." in run_dir.parts or run_dir.resolve() == Path(run_dir.anchor):
        raise ConfigError(
            f"run_dir={str(run_dir)!r} is not a folder named after run_name={run_name!r}: the "
            "stages write and clean only inside <runs_root>/<run_name>"
        )
    folder = run_dir / stage
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


def main(name: str, argv: list[str] | None = None) -> int:
    """Entry point of `recipes/<name>.py`: `python recipes/<name>.py config=<run_dir>/config.yaml`."""
    argv = sys.argv[1:] if argv is None else argv
    # `python recipes/<name>.py` puts recipes/ first on sys.path, where recipes/gguf.py would shadow the `gguf`
    # package that transformers and the gguf stage import (lazily, after this point)
    if sys.argv and sys.argv[0].endswith(".py"):
        recipes = Path(sys.argv[0]).resolve().parent
        sys.path[:] = [p for p in sys.path if not p or Path(p).resolve() != recipes]
    extra = f" {name}=<name>" if name in INSTANCED else ""
    if any(a in ("-h", "--help") for a in argv):
        print(
            f"usage: python recipes/{name}.py config=<run_dir>/config.yaml{extra}\n\nRuns the {name} stage of the "
            "run that config.yaml (written by launch.py) describes"
            + (f", for one of its {INSTANCED[name]} candidates" if extra else "")
            + "; skipped when its manifest is up to date."
        )
        return 0
    try:
        args = parse(argv, {"config": None, **({name: None} if extra else {})})
    except UsageError as e:
        print(f"recipes/{name}.py: {e}", file=sys.stderr)
        return 2
    task = task_name(name, args.get(name))
    try:
        return run_stage(task, Path(args["config"]))
    except ConfigError as e:
        print(f"[{name}] configuration error: {e}", file=sys.stderr)
        _record_config_error(Path(args["config"]), task, str(e))
        return EXIT_CONFIG


def _record_config_error(config_path: Path, name: str, message: str) -> None:
    """Leave CONFIG_ERROR in the stage folder: a Slurm job script requeues a failed stage, except this one (the
    same config would fail again). The next run of the stage cleans it away."""
    try:
        cfg = load_config(config_path)
        stage, instance = split_task(name)
        if instance is not None and instance not in instances(cfg, stage):
            return  # no such task: no folder is made for it
        stage_dir = stage_folder(Path(cfg.run_dir), cfg.run_name, name)
        stage_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(stage_dir / CONFIG_ERROR, message + "\n")
    except Exception:  # the config itself may be what is broken; the message is printed already
        pass
