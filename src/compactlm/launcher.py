"""The submit side of a run: validate, write the run folder, build the NeMo-Run experiment, run it, summarize.

Never imports torch model code: everything heavy happens in `recipes/<stage>.py` on the compute node.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from omegaconf import OmegaConf

from compactlm.config import CompactLMConfig, ConfigError, PruneConfig
from compactlm.manifest import atomic_write_json, atomic_write_text, read_manifest, versions
from compactlm.pipeline import CONFIG_FILE, STAGE_NAMES
from compactlm.report import summary_table, write_report
from compactlm.validate import to_config, validate

REPO = Path(__file__).resolve().parents[2]


def launch(cfg) -> int:
    """Entry of `launch.py` (after Hydra composed `cfg`); returns the process exit code."""
    try:
        conf = to_config(cfg)
        validate(conf, STAGE_NAMES)
    except ConfigError as e:
        print(f"compactlm: configuration error: {e}", file=sys.stderr)
        return 2
    conf.run_dir = str(Path(conf.run_dir).expanduser().resolve())
    if not conf.recipe.stages:
        return print_params(conf)
    if conf.dryrun:
        return dryrun(conf)
    return submit(conf)


def resolved_yaml(conf: CompactLMConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(conf))


def write_run_dir(conf: CompactLMConfig) -> Path:
    """config.yaml (resolved), launch.json (git SHA, versions, command) into the run folder."""
    run_dir = Path(conf.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / CONFIG_FILE, resolved_yaml(conf))
    atomic_write_json(run_dir / "launch.json", {
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "git_sha": git_sha(),
        "versions": versions(),
        "launched_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
    return run_dir


def git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def stage_script(stage: str) -> Path:
    return REPO / "recipes" / f"{stage}.py"


def build_experiment(conf: CompactLMConfig, config_path: Path):
    """A NeMo-Run Experiment with one `run.Script` task per stage, each depending on the one before."""
    os.environ["NEMORUN_HOME"] = str(Path(conf.run_dir) / "nemo_run")
    import nemo_run as run
    from nemo_run.config import set_nemorun_home

    from compactlm.executors import make_executor

    set_nemorun_home(os.environ["NEMORUN_HOME"])
    exp = run.Experiment(conf.run_name, log_level="WARN")
    with exp:
        previous = None
        for stage in conf.recipe.stages:
            task = run.Script(path=str(stage_script(stage)), entrypoint="python", args=["--config", str(config_path)])
            previous = exp.add(task, executor=make_executor(conf, run, stage), name=stage, tail_logs=True,
                               dependencies=[previous] if previous else None)
    return exp


def dryrun(conf: CompactLMConfig) -> int:
    """Print the resolved config and the tasks and executor that would run; write and submit nothing."""
    from compactlm.executors import describe_executor

    print("# resolved config\n" + resolved_yaml(conf))
    print(f"# executor\n{describe_executor(conf)}")
    print("# tasks (each depends on the one before)")
    config_path = Path(conf.run_dir) / CONFIG_FILE
    for stage in conf.recipe.stages:
        print(f"  {stage:<10} python {stage_script(stage)} --config {config_path}")
    print("dryrun=true: nothing was written or submitted")
    return 0


def submit(conf: CompactLMConfig) -> int:
    run_dir = write_run_dir(conf)
    print(f"compactlm: run {conf.run_name} -> {run_dir}  (recipe={conf.recipe.name}: {' -> '.join(conf.recipe.stages)})",
          flush=True)
    t0 = time.time()
    exp = build_experiment(conf, run_dir / CONFIG_FILE)
    with exp:
        exp.run(tail_logs=True)
    states = {job.id: str(job.state) for job in exp.jobs}
    print(summary_table(conf, t0))
    md, page = write_report(conf)
    print(f"  report: {page}  ({md.name} beside it)")
    failed = [stage for stage in conf.recipe.stages if read_manifest(run_dir / stage) is None]
    if failed:
        print(f"compactlm: stage {failed[0]!r} did not finish (states: {states}); its log is under "
              f"{run_dir / 'nemo_run'}. Re-run the same command to resume from it.", file=sys.stderr)
        return 1
    print(f"compactlm: run finished; artifacts in {run_dir}")
    return 0


def prune_presets(model_name: str) -> list[PruneConfig]:
    """Every preset of conf/prune/ made for `model_name` (or for any model), as PruneConfig."""
    out = []
    for path in sorted(glob.glob(str(REPO / "conf" / "prune" / "*.yaml"))):
        raw = OmegaConf.load(path)
        raw.pop("defaults", None)
        preset = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(PruneConfig), raw))
        if preset.model in (None, model_name):
            out.append(preset)
    return out


def print_params(conf: CompactLMConfig) -> int:
    """recipe=params: the parameter table of the model and its presets (meta device, no weights)."""
    from compactlm.models import read_hf_config
    from compactlm.params import format_table, param_table

    local = read_hf_config(Path(conf.model.path).expanduser()) if conf.model.source == "hf" and conf.model.is_local() else None
    rows = param_table(conf.model, prune_presets(conf.model.name), local)
    print(f"Parameters of model={conf.model.name} and its prune presets (instantiated on the meta device):")
    print(format_table(rows))
    if not conf.dryrun:
        out = Path(conf.run_dir) / "params.json"
        atomic_write_json(out, {"model": asdict(conf.model), "rows": rows})
        print(f"written to {out}")
    return 0

