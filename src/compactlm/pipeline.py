"""Running one stage on the compute node: resolve inputs, skip when up to date, run, write the manifest last.

Stage code never imports Hydra or nemo_run and never reads SLURM_* variables: it gets the resolved
config file written by the launcher, converted to :class:`CompactLMConfig` dataclasses here.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from omegaconf import OmegaConf

from compactlm.cli import UsageError, parse
from compactlm.config import CompactLMConfig, ConfigError
from compactlm.manifest import (
    MANIFEST,
    atomic_write_json,
    fingerprint,
    is_current,
    path_digest,
    read_manifest,
    resolve_output,
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
    "distill": "compactlm.distill.stage:DistillStage",
    "quantize": "compactlm.quantize.stage:QuantizeStage",
    "evaluate": "compactlm.evaluate.stage:EvaluateStage",
    "deploy": "compactlm.deploy.stage:DeployStage",
    "bench": "compactlm.bench.stage:BenchStage",
}
STAGE_NAMES = tuple(STAGES)
CONFIG_FILE = "config.yaml"
RESUME_KEY = "resume_key.json"


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
            raise UndeclaredRead(f"stage {self._stage!r} read cfg.{name}, which it does not declare "
                                 f"(reads={self._reads}); add {name!r} to its `reads`")
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
    """Manifest of every earlier stage of the recipe, by stage name."""

    def upstream_output(self, stage: str, key: str) -> Path:
        """Absolute path of output `key` of the finished upstream `stage`."""
        try:
            value = self.upstream[stage]["outputs"][key]
        except KeyError:
            raise RuntimeError(f"stage {stage!r} has no output {key!r}; the recipe's earlier stages are "
                               f"{', '.join(self.upstream) or 'none'}") from None
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


def stage_config_hash(cfg: CompactLMConfig, stage: Stage) -> str:
    return sha256_json({s: _plain(getattr(cfg, s)) for s in stage.reads})


def _plain(value: Any) -> Any:
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def upstream_stages(cfg: CompactLMConfig, name: str) -> list[str]:
    stages = cfg.recipe.stages
    return stages[: stages.index(name)]


def run_stage(name: str, config_path: Path) -> int:
    """Run stage `name` of the run described by `config_path`; returns the process exit code."""
    cfg = load_config(config_path)
    run_dir = Path(cfg.run_dir)
    stage = load_stage(name)
    stage_dir = run_dir / name
    upstream: dict[str, dict[str, Any]] = {}
    for up in upstream_stages(cfg, name):
        m = read_manifest(run_dir / up)
        if m is None:
            print(f"[{name}] not started: upstream stage {up!r} has no manifest in {run_dir / up} "
                  f"(it failed or did not run); fix it and re-run the same command", file=sys.stderr)
            return 3
        upstream[up] = m
    config_hash = stage_config_hash(cfg, stage)
    input_hashes = {up: fingerprint(m) for up, m in upstream.items()}
    forced = cfg.force or name in cfg.force_stages
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
    ctx = StageContext(cfg=StageConfig(cfg, name, stage.reads), run_dir=run_dir, stage_dir=stage_dir, upstream=upstream)
    out = stage.run(ctx)
    if rank != 0:
        return 0
    expected = RESULTS[name]
    if type(out.result) is not expected:
        raise TypeError(f"stage {name!r} returned {type(out.result).__name__}, not {expected.__name__}")
    manifest = {
        "stage": name,
        "config_hash": config_hash,
        "input_hashes": input_hashes,
        "outputs": out.outputs,
        "output_digests": {k: path_digest(resolve_output(stage_dir, v)) for k, v in out.outputs.items()},
        "result": to_json(out.result),
        "versions": versions(),
        "started_at": started,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_time_s": round(time.time() - t0, 3),
    }
    atomic_write_json(stage_dir / MANIFEST, manifest)  # last: its presence means "finished"
    print(f"[{name}] done in {manifest['wall_time_s']:.1f} s", flush=True)
    return 0


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
    for entry in stage_dir.iterdir():
        if resumable and entry.name in keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    if keep:
        atomic_write_json(key_file, resume_key)


def main(name: str, argv: list[str] | None = None) -> int:
    """Entry point of `recipes/<name>.py`: `python recipes/<name>.py config=<run_dir>/config.yaml`."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(f"usage: python recipes/{name}.py config=<run_dir>/config.yaml\n\nRuns the {name} stage of the run "
              "that config.yaml (written by launch.py) describes; skipped when its manifest is up to date.")
        return 0
    try:
        args = parse(argv, {"config": None})
    except UsageError as e:
        print(f"recipes/{name}.py: {e}", file=sys.stderr)
        return 2
    try:
        return run_stage(name, Path(args["config"]))
    except ConfigError as e:
        print(f"[{name}] configuration error: {e}", file=sys.stderr)
        return 2
