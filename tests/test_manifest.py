"""compactlm.manifest's writers: a symbolic link at a destination is refused, never followed or replaced, and what
they publish (whatever library wrote it) gets the umask's modes."""

from __future__ import annotations

import os
import stat

import pytest
import torch
from safetensors.torch import save_file

from compactlm.config import ConfigError
from compactlm.manifest import (
    LinkRefused,
    apply_umask_tree,
    atomic_file,
    atomic_write_json,
    atomic_write_text,
    open_nofollow,
    publish_dir,
    staging_dir,
)


@pytest.fixture
def victim(tmp_path):
    path = tmp_path / "outside" / "victim.txt"
    path.parent.mkdir()
    path.write_text("not compactlm's\n")
    return path


def _write_atomic_text(dest):
    atomic_write_text(dest, "x")


def _write_atomic_json(dest):
    atomic_write_json(dest, {"a": 1})


def _write_atomic_file(dest):
    with atomic_file(dest) as tmp:
        tmp.write_bytes(b"x")


def _write_nofollow(dest):
    with open_nofollow(dest, "w") as f:
        f.write("x")


def _append_nofollow(dest):
    with open_nofollow(dest, "ab") as f:
        f.write(b"x")


def _write_staging_dir(dest):
    with staging_dir(dest) as tmp:
        (tmp / "a").mkdir()


@pytest.mark.parametrize(
    "write",
    [_write_atomic_text, _write_atomic_json, _write_atomic_file, _write_nofollow, _append_nofollow, _write_staging_dir],
)
def test_a_link_at_the_destination_is_refused_and_left_alone(tmp_path, victim, write):
    run = tmp_path / "run"
    run.mkdir()
    target = victim.parent if write is _write_staging_dir else victim
    (run / "dest").symlink_to(target)
    with pytest.raises(LinkRefused) as e:
        write(run / "dest")
    assert isinstance(e.value, ConfigError) and "\n" not in str(e.value)
    assert f"{run / 'dest'} is a symbolic link (to {target})" in str(e.value)
    assert victim.read_text() == "not compactlm's\n" and os.listdir(victim.parent) == ["victim.txt"]
    assert (run / "dest").is_symlink() and os.listdir(run) == ["dest"]  # no temporary left behind


def test_a_dangling_link_is_refused_and_creates_nothing(tmp_path):
    (tmp_path / "log").symlink_to(tmp_path / "missing")
    with pytest.raises(LinkRefused):
        open_nofollow(tmp_path / "log", "a")
    assert not (tmp_path / "missing").exists()


def test_publish_dir_refuses_a_link_where_the_folder_goes(tmp_path, victim):
    (tmp_path / "model").symlink_to(victim.parent)
    (tmp_path / "new").mkdir()
    with pytest.raises(LinkRefused):
        publish_dir(tmp_path / "new", tmp_path / "model")
    assert os.listdir(victim.parent) == ["victim.txt"]


@pytest.mark.parametrize(
    "mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775)], ids=["umask022", "umask002"]
)
def test_weights_saved_by_safetensors_get_the_umasks_mode(tmp_path, mask, file_mode, dir_mode):
    """safetensors (under save_pretrained) creates 0600 files: published folders and files get the umask's mode."""
    old = os.umask(mask)
    try:
        save_file({"w": torch.zeros(2)}, str(tmp_path / "raw.safetensors"))
        assert stat.S_IMODE((tmp_path / "raw.safetensors").stat().st_mode) == 0o600  # the defect, as safetensors has it
        with staging_dir(tmp_path / "model") as tmp:
            (tmp / "sub").mkdir(mode=0o700)
            save_file({"w": torch.zeros(2)}, str(tmp / "sub" / "model.safetensors"))
            (tmp / "run.sh").write_text("#!/bin/sh\n")
            (tmp / "run.sh").chmod(0o700)
        with atomic_file(tmp_path / "scores.safetensors") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp))
    finally:
        os.umask(old)
    modes = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode) for p in tmp_path.rglob("*")}
    assert modes == {
        "raw.safetensors": 0o600,
        "model": dir_mode,
        "model/sub": dir_mode,
        "model/sub/model.safetensors": file_mode,
        "model/run.sh": dir_mode,  # an executable stays one
        "scores.safetensors": file_mode,
    }


def test_apply_umask_tree_changes_no_link_and_nothing_behind_one(tmp_path, victim):
    victim.chmod(0o600)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "link").symlink_to(victim)
    (tmp_path / "run" / "dirlink").symlink_to(victim.parent)
    old = os.umask(0o022)
    try:
        apply_umask_tree(tmp_path / "run")
    finally:
        os.umask(old)
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600
