"""Stage manifests: what a finished stage produced, written last and atomically.

A stage folder without `manifest.json` is unfinished and is never trusted by a later stage. A stage
whose manifest matches (same stage config hash, same upstream fingerprints, every output file still the one
it wrote) is skipped on re-run, which is how a failed pipeline resumes where it stopped.

Integrity: every output file is recorded with its size, mtime and full SHA-256. A re-run compares size and
mtime first (free) and hashes a file again only when they differ, so a truncated or rewritten file is found and
its stage runs again, while an untouched 22 GB checkpoint costs nothing. A manifest carries the SHA-256 of its
own content: one edited by hand (or half-copied) is not trusted.

Files and folders are created with the permissions the umask gives (teammates on a shared file system can read
them), although they are written under temporary names first; :func:`apply_umask_tree` gives whatever a library
wrote (safetensors writes 0600) the same modes.

Writing never follows a symbolic link: a link planted at a destination (`.launch.lock`, `config.yaml`, a manifest, a
log) is refused with one line naming it (:class:`LinkRefused`), so nothing outside the run folder is truncated or
overwritten through one. Every write of compactlm goes through this module (tests/test_architecture.py checks it).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import platform
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import IO, Any

from compactlm.errors import ConfigError

MANIFEST = "manifest.json"
CHECKSUM = "checksum"
PACKAGES = ("compactlm", "torch", "transformers", "nvidia-modelopt", "hydra-core", "omegaconf", "nemo-run")


def sha256_json(obj: Any) -> str:
    """Stable hash of a JSON-serializable object (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def file_digest(path: Path) -> str:
    """SHA-256 of the whole file."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(path: Path) -> dict[str, Path]:
    """relative name -> file of an output: the file itself ("") or every file under a folder."""
    path = Path(path)
    if path.is_file():
        return {"": path}
    if not path.is_dir():
        raise FileNotFoundError(path)
    return {str(p.relative_to(path)): p for p in sorted(path.rglob("*")) if p.is_file()}


def file_records(path: Path) -> dict[str, dict[str, Any]]:
    """relative name -> {size, mtime_ns, sha256} of every file of an output (a file or a folder)."""
    out = {}
    for name, p in _files(path).items():
        st = p.stat()
        out[name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": file_digest(p)}
    return out


def records_digest(records: dict[str, dict[str, Any]]) -> str:
    """One digest of an output from its file records (names and contents, not times)."""
    return sha256_json({name: r["sha256"] for name, r in records.items()})


def path_digest(path: Path) -> str:
    """Digest of a file, or of a folder's relative file names and file contents."""
    return records_digest(file_records(path))


def changed_file(path: Path, records: dict[str, dict[str, Any]]) -> str | None:
    """Why `path` no longer holds the files `records` describes (naming the file), or None when it does.

    Size and mtime equal to the record: trusted without reading. Otherwise the file is hashed again, so a
    copy with a new mtime but the same bytes still counts as unchanged.
    """
    try:
        files = _files(path)
    except FileNotFoundError:
        return f"{path} is missing"
    for name in sorted(set(records) - set(files)):
        return f"{Path(path) / name} is missing"
    for name in sorted(set(files) - set(records)):
        return f"{files[name]} was not written by the stage"
    for name, rec in records.items():
        st = files[name].stat()
        if st.st_size == rec["size"] and st.st_mtime_ns == rec["mtime_ns"]:
            continue
        if st.st_size != rec["size"]:
            return f"{files[name]} changed size ({rec['size']} -> {st.st_size} bytes)"
        if file_digest(files[name]) != rec["sha256"]:
            return f"{files[name]} changed content (same size, different SHA-256)"
    return None


def umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def apply_umask(path: Path, is_dir: bool = False) -> None:
    """Give a file or folder made by mkstemp/mkdtemp (0600/0700) the mode a plain open/mkdir would have."""
    os.chmod(path, (0o777 if is_dir else 0o666) & ~umask())


def apply_umask_tree(root: Path) -> None:
    """Give `root` and every file and folder under it the mode a plain open/mkdir would have under the umask
    (0644/0755 under umask 022), whatever wrote them: safetensors' `save_file` (and so `save_pretrained`) creates
    0600 files, mkstemp/mkdtemp 0600/0700. A file with an execute bit (a script, a binary) keeps it, as 0755.
    Links are neither followed nor changed."""
    mask = umask()
    root = Path(root)
    if root.is_symlink() or not root.exists():
        return
    if not root.is_dir():
        _chmod_masked(root, mask)
        return
    for folder, _dirs, files in os.walk(root):  # os.walk never descends into a linked folder
        _chmod_masked(Path(folder), mask)
        for name in files:
            _chmod_masked(Path(folder) / name, mask)


def _chmod_masked(path: Path, mask: int) -> None:
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return
    full = 0o777 if stat.S_ISDIR(st.st_mode) or st.st_mode & 0o111 else 0o666
    if stat.S_IMODE(st.st_mode) != full & ~mask:
        os.chmod(path, full & ~mask)


class LinkRefused(ConfigError):
    """A destination compactlm was about to write is a symbolic link: it is never written through."""


def refuse_link(path: Path) -> None:
    """Raise LinkRefused when `path` is a symbolic link (writing would replace or follow it)."""
    if os.path.islink(path):
        raise LinkRefused(_link_message(path))


def _link_message(path: Path) -> str:
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    return (
        f"{path} is a symbolic link (to {target}): compactlm never writes through a link in a run folder; "
        "remove the link and run again"
    )


def open_nofollow(path: Path, mode: str = "w", encoding: str | None = None) -> IO:
    """`open(path, mode)` for writing ("w", "a", "wb", "ab") that refuses a symbolic link at `path` (O_NOFOLLOW:
    the kernel checks, so no link can be swapped in after a check) with LinkRefused; the file gets the umask's
    mode."""
    base = {"w": os.O_TRUNC, "a": os.O_APPEND}[mode.rstrip("b")]
    fd = open_fd_nofollow(path, os.O_WRONLY | os.O_CREAT | base)
    return os.fdopen(fd, mode, encoding=encoding if "b" not in mode else None)


def open_fd_nofollow(path: Path, flags: int) -> int:
    """`os.open(path, flags | O_NOFOLLOW | O_CLOEXEC, 0o666)`: a descriptor, or LinkRefused for a link at `path`."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP:  # what O_NOFOLLOW gives for a link, dangling or not
            raise LinkRefused(_link_message(path)) from None
        raise


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` via a temporary file in the same folder and `os.replace`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    refuse_link(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        apply_umask(tmp)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A temporary name beside `path` for a library to write to (savefig, save_file); renamed to `path`, with
    the umask's permissions, when the block succeeds, removed when it fails. A link at `path` is refused."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    refuse_link(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        apply_umask(tmp)
        refuse_link(path)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def publish_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Move a fully written folder into place, every file and folder in it with the umask's mode; an older folder
    at `final_dir` is replaced. A link at `final_dir` is refused."""
    final_dir = Path(final_dir)
    refuse_link(final_dir)
    apply_umask_tree(tmp_dir)
    if final_dir.exists():
        old = final_dir.with_name(f".{final_dir.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final_dir, old)
        os.replace(tmp_dir, final_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        final_dir.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp_dir, final_dir)


@contextmanager
def staging_dir(final_dir: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `final_dir` to write into; published with :func:`publish_dir` on
    success, removed on any failure, so a half-written folder never appears under the final name."""
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    refuse_link(final_dir)
    tmp = Path(tempfile.mkdtemp(dir=final_dir.parent, prefix=f".{final_dir.name}.", suffix=".tmp"))
    try:
        apply_umask(tmp, is_dir=True)
        yield tmp
        publish_dir(tmp, final_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def seal(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest with the SHA-256 of its own content (without that field) added."""
    body = {k: v for k, v in manifest.items() if k != CHECKSUM}
    return {**body, CHECKSUM: sha256_json(body)}


def read_manifest(stage_dir: Path) -> dict[str, Any] | None:
    """A finished stage's manifest, or None: missing, unreadable, or not matching its own checksum."""
    p = Path(stage_dir) / MANIFEST
    if not p.is_file():
        return None
    try:
        m = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(m, dict) or m.get(CHECKSUM) != seal(m)[CHECKSUM]:
        _warn_once(
            f"compactlm: {p} does not match its checksum (edited by hand, or written by an older "
            "compactlm): not trusted, the stage runs again"
        )
        return None
    return m


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        print(message, file=sys.stderr, flush=True)


def fingerprint(manifest: dict[str, Any]) -> str:
    """What a downstream stage records about this one: its config, its inputs, its outputs, and which run of
    it made them (a stage that runs again, even to the same bytes, makes the stages after it run again)."""
    return sha256_json({k: manifest[k] for k in ("stage", "config_hash", "input_hashes", "output_digests", "attempt")})


def resolve_output(stage_dir: Path, value: str) -> Path:
    """Outputs are stored relative to the stage folder when inside it, absolute otherwise."""
    p = Path(value)
    return p if p.is_absolute() else Path(stage_dir) / p


def is_current(stage_dir: Path, config_hash: str, input_hashes: dict[str, str]) -> dict[str, Any] | None:
    """The manifest when the stage can be skipped: same config and inputs, every output file the one it wrote.

    A changed output is named on stderr ("[prune] .../model.safetensors changed size ...; running the stage
    again"); the stages after it then see a new fingerprint and run again too.
    """
    m = read_manifest(stage_dir)
    if m is None or m.get("config_hash") != config_hash or m.get("input_hashes") != input_hashes:
        return None
    for key, value in m.get("outputs", {}).items():
        why = changed_file(resolve_output(stage_dir, value), m.get("output_files", {}).get(key, {}))
        if why:
            print(f"[{m['stage']}] output {key!r}: {why}; running the stage again", file=sys.stderr, flush=True)
            return None
    return m
