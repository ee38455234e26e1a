"""Running one stage on the compute node: resolve inputs, skip when up to date, run, write the manifest last.

Stage code never imports Hydra or nemo_run and never reads SLURM_* variables: it gets the resolved
config file written by the launcher, converted to :class:`CompactLMConfig` dataclasses here.
"""

from __future__ import annotations

import argparse
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

# stage name -> "module:Class"; imported lazily so the launcher can list stages without torch.
STAGES: dict[str, str] = {
    "model": "compactlm.stages:ModelStage",
    "data": "compactlm.stages:DataStage",
    "importance": "compactlm.stages:ImportanceStage",
    "prune": "compactlm.stages:PruneStage",
    "distill": "compactlm.stages:DistillStage",
    "quantize": "compactlm.stages:QuantizeStage",
    "evaluate": "compactlm.stages:EvaluateStage",
    "deploy": "compactlm.stages:DeployStage",
    "bench": "compactlm.stages:BenchStage",
}
STAGE_NAMES = tuple(STAGES)
CONFIG_FILE = "config.yaml"
RESUME_KEY = "resume_key.json"


@dataclass
class StageContext:
    """What a stage gets: the typed config, its own (empty) folder and its finished upstream manifests."""

    cfg: CompactLMConfig
    run_dir: Path
    stage_dir: Path
    upstream: dict[str, dict[str, Any]]
    """Manifest of every earlier stage of the recipe, by stage name."""

    def upstream_output(self, stage: str, key: str) -> Path:
        """Absolute path of output `key` of the finished upstream `stage`."""
        try:
            value = self.upstream[stage]["outputs"][key]
        except KeyError:
            raise RuntimeError(f"stage {stage!r} has no output {key!r}; does recipe={self.cfg.recipe.name} run it?") from None
        return resolve_output(self.run_dir / stage, value)


@dataclass
class StageResult:
    outputs: dict[str, str] = field(default_factory=dict)
    """Output name -> path (relative to the stage folder, or absolute when it lives elsewhere, e.g. a cache)."""
    metrics: dict[str, Any] = field(default_factory=dict)


class Stage(Protocol):
    name: str
    sections: tuple[str, ...]
    """Config sections (attributes of CompactLMConfig) whose values decide this stage's outputs."""
    keep: tuple[str, ...]
    """Entries of the stage folder kept when a stage restarts (e.g. resumable checkpoints)."""

    def run(self, ctx: StageContext) -> StageResult: ...


def load_stage(name: str) -> Stage:
    module, cls = STAGES[name].split(":")
    return getattr(importlib.import_module(module), cls)()


def load_config(path: Path) -> CompactLMConfig:
    """The resolved config written by the launcher, as dataclasses (validated again by their __post_init__)."""
    merged = OmegaConf.merge(OmegaConf.structured(CompactLMConfig), OmegaConf.load(path))
    return OmegaConf.to_object(merged)


def stage_config_hash(cfg: CompactLMConfig, stage: Stage) -> str:
    return sha256_json({s: _plain(getattr(cfg, s)) for s in stage.sections})


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
    if not forced and is_current(stage_dir, config_hash, input_hashes):
        print(f"[{name}] up to date (manifest matches config and inputs), skipped", flush=True)
        return 0
    if rank == 0:
        _clean(stage_dir, stage.keep, {"config_hash": config_hash, "input_hashes": input_hashes}, fresh=forced)
        print(f"[{name}] running in {stage_dir}", flush=True)
    t0 = time.time()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    result = stage.run(StageContext(cfg=cfg, run_dir=run_dir, stage_dir=stage_dir, upstream=upstream))
    if rank != 0:
        return 0
    manifest = {
        "stage": name,
        "config_hash": config_hash,
        "input_hashes": input_hashes,
        "outputs": result.outputs,
        "output_digests": {k: path_digest(resolve_output(stage_dir, v)) for k, v in result.outputs.items()},
        "metrics": result.metrics,
        "versions": versions(),
        "started_at": started,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_time_s": round(time.time() - t0, 3),
    }
    atomic_write_json(stage_dir / MANIFEST, manifest)  # last: its presence means "finished"
    print(f"[{name}] done in {manifest['wall_time_s']:.1f} s", flush=True)
    return 0


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
    """Entry point of `recipes/<name>.py`: `python recipes/<name>.py --config <run_dir>/config.yaml`."""
    parser = argparse.ArgumentParser(prog=f"recipes/{name}.py", description=f"Run the {name} stage of a compactlm run.")
    parser.add_argument("--config", required=True, type=Path, help="resolved config.yaml written by launch.py")
    args = parser.parse_args(argv)
    try:
        return run_stage(name, args.config)
    except ConfigError as e:
        print(f"[{name}] configuration error: {e}", file=sys.stderr)
        return 2
