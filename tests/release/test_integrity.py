"""Files placed in a release are the bytes their stage recorded; SHA256SUMS is what sha256sum -c checks."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from compactlm.manifest import file_records
from compactlm.release.integrity import SUMS, IntegrityError, check_sums, place, verify, write_sums


@pytest.fixture
def run(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "gguf" / "distilled").mkdir(parents=True)
    (run_dir / "gguf" / "distilled" / "d-q8_0.gguf").write_bytes(os.urandom(4096))
    (run_dir / "release").mkdir()
    return run_dir


def test_a_file_of_the_run_is_hard_linked_and_one_outside_is_copied(run, tmp_path):
    src = run / "gguf" / "distilled" / "d-q8_0.gguf"
    assert place(src, run / "release" / "gguf" / "d-q8_0.gguf", run) == "link"
    assert os.path.samefile(src, run / "release" / "gguf" / "d-q8_0.gguf")
    outside = tmp_path / "teacher.bin"
    outside.write_bytes(b"weights")
    assert place(outside, run / "release" / "teacher.bin", run) == "copy"
    assert not os.path.samefile(outside, run / "release" / "teacher.bin")
    link = tmp_path / "link.bin"
    link.symlink_to(outside)
    with pytest.raises(IntegrityError, match="symbolic link"):
        place(link, run / "release" / "link.bin", run)


def test_a_file_that_changed_since_its_stage_recorded_it_is_refused(run):
    src = run / "gguf" / "distilled" / "d-q8_0.gguf"
    record = file_records(src)[""]
    dst = run / "release" / "d-q8_0.gguf"
    place(src, dst, run)
    assert verify(dst, record, "gguf:distilled") == record["sha256"]
    data = bytearray(src.read_bytes())
    data[100] ^= 1  # one bit, same size
    src.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="refusing to publish: d-q8_0.gguf from gguf:distilled does not match"):
        verify(dst, record, "gguf:distilled")


def test_sha256sums_is_checked_by_sha256sum(run):
    rel = run / "release"
    place(run / "gguf" / "distilled" / "d-q8_0.gguf", rel / "gguf" / "d.gguf", run)
    (rel / "README.md").write_text("# card\n")
    (rel / "manifest.json").write_text("{}")  # the runner's record: not released, not listed
    digests = {k: v["sha256"] for k, v in file_records(rel).items() if k != "manifest.json"}
    write_sums(rel, digests)
    assert sorted(line.split("  ")[1] for line in (rel / SUMS).read_text().splitlines()) == ["README.md", "gguf/d.gguf"]
    if shutil.which("sha256sum"):
        r = subprocess.run(["sha256sum", "-c", SUMS], cwd=rel, capture_output=True, text=True)
        assert r.returncode == 0 and r.stdout.count(": OK") == 2, r.stdout + r.stderr
    assert set(check_sums(rel)) == {"README.md", "gguf/d.gguf"}
    (rel / "extra.txt").write_text("planted")
    with pytest.raises(IntegrityError, match=r"unlisted \['extra.txt'\]"):
        check_sums(rel)
    (rel / "extra.txt").unlink()
    (rel / "README.md").write_text("# edited\n")
    with pytest.raises(IntegrityError, match="README.md does not match its line"):
        check_sums(rel)
    with pytest.raises(IntegrityError, match="files without a digest"):
        write_sums(rel, {"README.md": "0" * 64})
