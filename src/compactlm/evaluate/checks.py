"""The evaluate stage's launch-time checks (torch-free): every task is known, and the text tasks have their files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compactlm.config import ConfigError
from compactlm.data.splits import check_utf8_text
from compactlm.evaluate.lmeval import TASK_DIR, unknown_tasks
from compactlm.evaluate.schema import TEXT_TASKS


def check_tasks(conf) -> None:
    """Every `evaluate.tasks` name is a project task or one lm_eval knows (offline), with a "did you mean"."""
    unknown = unknown_tasks(list(conf.evaluate.tasks))
    if unknown:
        name, close = next(iter(unknown.items()))
        hint = f"did you mean {close!r}? " if close else ""
        raise ConfigError(
            f"evaluate.tasks contains {name!r}, which is neither a project task ({', '.join(TEXT_TASKS)}; "
            f"{TASK_DIR}) nor an lm-eval task or group; {hint}"
            f"lm_eval --tasks list shows them all"
        )


def check_task_text(conf) -> None:
    """The lm-eval tasks built from `evaluate.task_text` need UTF-8 .txt files there, on the machine that runs the
    evaluate stage (heldout_continuation needs nothing: it is built from the run's own held-out documents)."""
    e = conf.evaluate
    folder_tasks = e.folder_tasks()
    if not folder_tasks:
        return
    files = sorted(Path(e.task_text).expanduser().rglob("*.txt"))
    if not files:
        raise ConfigError(
            f"evaluate.tasks={list(e.tasks)} builds {folder_tasks[0]} from .txt files, but "
            f"evaluate.task_text={e.task_text!r} has none: point it at a folder of .txt files, or use "
            "evaluate.tasks=[heldout_continuation] (built from the run's own held-out documents)"
        )
    for path in files:
        check_utf8_text(path, "evaluate.task_text")


def check(conf, shape: dict[str, Any]) -> None:
    """`conf` is the run's CompactLMConfig; the task files are checked on this machine only."""
    check_tasks(conf)
    if not conf.cluster.is_remote():
        check_task_text(conf)
