"""Helpers shared by tests: compose configs with the real Hydra, run launch.py as a user would."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


def compose(overrides: list[str] | None = None):
    """Compose conf/config.yaml with `overrides` exactly as launch.py does (compactlm.launch.compose, Hydra's
    compose API); a bad override raises ConfigError with launch.py's one-line message."""
    from compactlm.launch.compose import compose as compose_config

    return compose_config(overrides or [], CONF)


def plain_clone(dest: Path) -> Path:
    """A copy of this repository's files alone (tracked, and untracked ones git does not ignore) at `dest`, with
    no ../shared beside it: what a user has after `git clone`. Run it with `clone_env(dest)`."""
    files = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard", "-z"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    assert not (dest.parent / "shared").exists()
    return dest


def clone_env(clone: Path) -> dict:
    """Environment that makes `python` import compactlm from `clone` rather than from this checkout."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(clone / "src")}


def group_options(group: str) -> list[str]:
    """The options of a config group: its YAML files (the recipes a user picks live in recipes/, not conf/)."""
    folder = REPO / "recipes" if group == "recipe" else CONF / group
    return sorted(p.stem for p in folder.glob("*.yaml"))


def run_launch(args: list[str], cwd: Path = REPO, env: dict | None = None, timeout: int = 900, **kw):
    """`python launch.py ARGS` in a subprocess; returns CompletedProcess with text output."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, str(REPO / "launch.py"), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        **kw,
    )


def config_error(overrides: list[str]) -> str:
    """The ConfigError message `launch.py <overrides>` would stop with (composition, validation, placement)."""
    import pytest

    from compactlm.config import ConfigError
    from compactlm.launch.launcher import place_run
    from compactlm.launch.validate import to_config, validate
    from compactlm.pipeline import STAGE_NAMES

    with pytest.raises(ConfigError) as e:
        conf = to_config(compose(overrides))
        validate(conf, STAGE_NAMES)
        place_run(conf)
    return str(e.value)


class Rows:
    """An in-memory sink for compactlm.data.splits.pack_rows (the data stage writes its splits to files)."""

    def __init__(self, seq_len: int):
        self.seq_len, self.kept = seq_len, []

    @property
    def rows(self) -> int:
        return len(self.kept)

    def append(self, row) -> None:
        self.kept.append(row.copy())

    def array(self):
        import numpy as np  # helpers are imported by every test module; numpy only where sequences are packed

        return np.stack(self.kept) if self.kept else np.zeros((0, self.seq_len), np.int32)


def pack(token_docs, seq_len: int, quotas: list) -> list:
    """compactlm.data.splits.pack_rows into arrays: one [n, seq_len] int32 array per quota."""
    from compactlm.data.splits import pack_rows

    sinks = [Rows(seq_len) for _ in quotas]
    pack_rows(token_docs, seq_len, quotas, sinks)
    return [s.array() for s in sinks]


def pydoc_sequences(tokenizer, n: int, seq_len: int):
    """n packed sequences of real text (CPython's pydoc topics) tokenized with `tokenizer`."""
    from pydoc_data.topics import topics

    docs = (tokenizer(topics[k], add_special_tokens=False)["input_ids"] for k in sorted(topics))
    return pack(docs, seq_len, [n])[0]
