"""Stage manifests: what a finished stage produced, written last and atomically.

A stage folder without `manifest.json` is unfinished and is never trusted by a later stage. A stage
whose manifest matches (same stage config hash, same upstream fingerprints, outputs still on disk) is
skipped on re-run, which is how a failed pipeline resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

MANIFEST = "manifest.json"
# Files above this size are fingerprinted by size plus a head and tail sample, not read whole:
# a 22 GB teacher checkpoint must not cost minutes of hashing on every re-run.
FULL_HASH_LIMIT = 64 << 20
_SAMPLE = 1 << 20
PACKAGES = ("compactlm", "torch", "transformers", "nvidia-modelopt", "hydra-core", "omegaconf", "nemo-run")


def sha256_json(obj: Any) -> str:
    """Stable hash of a JSON-serializable object (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    size = path.stat().st_size
    with path.open("rb") as f:
        if size <= FULL_HASH_LIMIT:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        else:
            h.update(f"size={size}".encode())
            h.update(f.read(_SAMPLE))
            f.seek(size - _SAMPLE)
            h.update(f.read(_SAMPLE))
    return h.hexdigest()


def path_digest(path: Path) -> str:
    """Digest of a file, or of a folder's relative file names and file digests."""
    path = Path(path)
    if path.is_file():
        return file_digest(path)
    if not path.is_dir():
        raise FileNotFoundError(path)
    entries = {str(p.relative_to(path)): file_digest(p) for p in sorted(path.rglob("*")) if p.is_file()}
    return sha256_json(entries)


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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def publish_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Move a fully written folder into place; an older folder at `final_dir` is replaced."""
    final_dir = Path(final_dir)
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
    tmp = Path(tempfile.mkdtemp(dir=final_dir.parent, prefix=f".{final_dir.name}.", suffix=".tmp"))
    try:
        yield tmp
        publish_dir(tmp, final_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_manifest(stage_dir: Path) -> dict[str, Any] | None:
    p = Path(stage_dir) / MANIFEST
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        return None


def fingerprint(manifest: dict[str, Any]) -> str:
    """What a downstream stage records about this one: its config, its inputs and its outputs."""
    return sha256_json(
        {k: manifest[k] for k in ("stage", "config_hash", "input_hashes", "output_digests")}
    )


def resolve_output(stage_dir: Path, value: str) -> Path:
    """Outputs are stored relative to the stage folder when inside it, absolute otherwise."""
    p = Path(value)
    return p if p.is_absolute() else Path(stage_dir) / p


def is_current(stage_dir: Path, config_hash: str, input_hashes: dict[str, str]) -> dict[str, Any] | None:
    """The manifest when the stage can be skipped: same config and inputs, every output still present."""
    m = read_manifest(stage_dir)
    if m is None or m.get("config_hash") != config_hash or m.get("input_hashes") != input_hashes:
        return None
    for value in m.get("outputs", {}).values():
        if not resolve_output(stage_dir, value).exists():
            return None
    return m
