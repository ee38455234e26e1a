"""The release folder's integrity: files placed from the run's stage outputs are verified against the SHA-256 their
stage's manifest recorded, and `SHA256SUMS` lists every released file in `sha256sum` format.

Placing a file: a hard link when the source is inside the run folder and on the same file system (no bytes copied;
the stages replace their files through new names, so a later run of a stage never changes a released file), else a
copy. Never a symbolic link: nothing in the release points outside the run folder. A source that is itself a link
is refused.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from compactlm.errors import ConfigError
from compactlm.manifest import MANIFEST, atomic_file, atomic_write_text, file_digest

SUMS = "SHA256SUMS"
# In the stage folder but not released: the runner's records of the stage (the manifest is written after the sums)
NOT_RELEASED = (MANIFEST, SUMS, ".running.json", "resume_key.json", "config_error.txt")


class IntegrityError(ConfigError):
    """A released file does not match the record of the stage that wrote it: the release is not published."""


def place(src: Path, dst: Path, run_dir: Path) -> str:
    """Put `src` at `dst` (a fresh name in the release folder): "link" or "copy"."""
    if src.is_symlink():
        raise IntegrityError(f"{src} is a symbolic link: the release takes files, never links")
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.resolve().is_relative_to(run_dir.resolve()):
        try:
            os.link(src, dst, follow_symlinks=False)  # write-ok: a new name for a file of the run; fails if dst exists
            return "link"
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise
    with atomic_file(dst) as tmp:
        shutil.copyfile(src, tmp)
    return "copy"


def verify(path: Path, record: dict, where: str) -> str:
    """SHA-256 of the released file `path`, after checking it equals `record` (a manifest's file record); raises
    IntegrityError naming the file, the stage output and both digests."""
    digest = file_digest(path)
    if path.stat().st_size != record["size"] or digest != record["sha256"]:
        raise IntegrityError(
            f"refusing to publish: {path.name} from {where} does not match the stage's manifest "
            f"(sha256 {digest[:12]}…, {path.stat().st_size} bytes; recorded {record['sha256'][:12]}…, "
            f"{record['size']} bytes); re-run the same command: the stage that wrote it runs again"
        )
    return digest


def released_files(folder: Path) -> list[Path]:
    """Every file of the release folder that is published, relative paths sorted (the runner's records excluded)."""
    folder = Path(folder)
    return sorted(
        p.relative_to(folder)
        for p in folder.rglob("*")
        if p.is_file() and not (p.parent == folder and p.name in NOT_RELEASED)
    )


def write_sums(folder: Path, digests: dict[str, str]) -> Path:
    """`SHA256SUMS` in sha256sum's format (`<hex>  <path>`), one line per released file; every published file must
    have a digest, and only those."""
    names = {str(p) for p in released_files(folder)}
    if names != set(digests):
        raise IntegrityError(
            f"refusing to publish: files without a digest {sorted(names - set(digests))}, digests without a file "
            f"{sorted(set(digests) - names)}"
        )
    path = Path(folder) / SUMS
    atomic_write_text(path, "".join(f"{digests[n]}  {n}\n" for n in sorted(digests)))
    return path


def check_sums(folder: Path) -> dict[str, str]:
    """Read SHA256SUMS and check every released file against it (and that it lists every one); path -> digest.
    What an upload calls before it sends anything."""
    folder = Path(folder)
    sums = {}
    for line in (folder / SUMS).read_text(encoding="utf-8").splitlines():
        digest, _, name = line.partition("  ")
        sums[name] = digest
    names = {str(p) for p in released_files(folder)}
    if names != set(sums):
        raise IntegrityError(
            f"refusing to publish {folder}: {SUMS} does not list exactly its files "
            f"(unlisted {sorted(names - set(sums))}, missing {sorted(set(sums) - names)})"
        )
    for name, digest in sums.items():
        if file_digest(folder / name) != digest:
            raise IntegrityError(f"refusing to publish {folder}: {name} does not match its line in {SUMS}")
    return sums
