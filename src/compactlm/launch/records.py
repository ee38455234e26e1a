"""Where a run's records live on the submitting machine: the repository, the run folder's NeMo-Run home and
the stage logs NeMo-Run keeps there. The lowest module of the submit side: it imports nothing of compactlm's
but the config file's name and the Task type."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from compactlm.pipeline import CONFIG_FILE, Task
from compactlm.run_config import CompactLMConfig

__all__ = ["CONFIG_FILE", "NEMORUN_DIR", "REPO", "nemorun_home", "resolved_yaml", "stage_logs"]

# src/compactlm/launch/records.py -> the repository root (launch.py, conf/, recipes/)
REPO = Path(__file__).resolve().parents[3]
NEMORUN_DIR = "nemorun"


def nemorun_home(local_dir: Path) -> Path:
    # Not ".../nemo_run": NeMo-Run rewrites every "/nemo_run" in container-less sbatch scripts.
    return Path(local_dir) / NEMORUN_DIR


def resolved_yaml(conf: CompactLMConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(conf))


def stage_logs(folder: Path, task: Task) -> list[Path]:
    """Log files NeMo-Run keeps for `task` in the run's latest experiment, oldest first."""
    exps = sorted((nemorun_home(folder) / "experiments" / Path(folder).name).glob("*/"))
    if not exps:
        return []
    stage_dir = exps[-1] / task.name
    files = [p for p in stage_dir.rglob("*") if p.is_file() and p.suffix in (".log", ".out") and p.stat().st_size]
    return sorted(files, key=lambda p: p.stat().st_mtime)
