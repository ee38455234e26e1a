"""compactlm.release.upload against a fake Hub (tests/fake_hub.py) that speaks the Hub's HTTP API on 127.0.0.1.

The uploads run as `python -m compactlm.release.upload` subprocesses (HF_HUB_DISABLE_XET=1: the fake speaks the
Git LFS protocol; HF_HUB_OFFLINE and TRANSFORMERS_OFFLINE unset), so one can be killed mid-transfer and run again.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_hub import FakeHub

from compactlm.errors import ConfigError
from compactlm.release.upload import COMMIT_MESSAGE, release_files, token_from_env, upload_release

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "hf_fakeTOKEN_" + "x7Q2" * 6  # looked for in every file the tests leave
REPO_ID = "compactlm-test/smol-pruned"
FILES = {  # path -> size; *.safetensors and *.gguf go through LFS, the rest are regular files in the commit
    "model-00001-of-00002.safetensors": 3_000_000,
    "model-00002-of-00002.safetensors": 2_500_000,
    "gguf/model-Q8_0.gguf": 1_500_000,
    "gguf/model-Q4_K_M.gguf": 900_000,
    "config.json": 700,
    "README.md": 2_000,
    "gguf/Modelfile.Q8_0": 300,
}


def make_release(folder: Path) -> dict[str, str]:
    """A release folder of FILES with distinct pseudo-random bytes; returns path -> sha256."""
    sums = {}
    for i, (path, size) in enumerate(FILES.items()):
        data = hashlib.shake_256(f"{i}:{path}".encode()).digest(size)
        if path == "README.md":  # a model card: huggingface_hub has the Hub validate its YAML before uploading
            card = b"---\nlicense: apache-2.0\nbase_model: HuggingFaceTB/SmolLM2-135M-Instruct\n---\n"
            data = card + data.hex().encode()[: size - len(card)]
        elif not path.endswith((".safetensors", ".gguf")):
            data = data.hex().encode()[:size]  # text
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
        sums[path] = hashlib.sha256(data).hexdigest()
    return sums


def upload_cmd(folder: Path, hub: FakeHub, *extra: str) -> tuple[list[str], dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN")}
    env.update(
        HF_TOKEN=TOKEN,
        HF_HUB_DISABLE_XET="1",
        HF_HOME=str(folder.parent / "hf_home"),  # huggingface_hub's own files, grepped for the token below
        PYTHONPATH=str(ROOT / "src"),
        PYTHONUNBUFFERED="1",
    )
    cmd = [sys.executable, "-m", "compactlm.release.upload", str(folder), REPO_ID, "--endpoint", hub.url]
    return [*cmd, *extra], env


def files_holding(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_a_killed_upload_resumes_without_resending_what_arrived(tmp_path):
    release = tmp_path / "release"
    sums = make_release(release)
    lfs_oids = {sums[p] for p in FILES if p.endswith((".safetensors", ".gguf"))}
    stalled = sums["model-00001-of-00002.safetensors"]
    with FakeHub(token=TOKEN, storage=tmp_path / "hub") as hub:
        hub.hold(stalled)
        cmd, env = upload_cmd(release, hub)
        log = (tmp_path / "first.log").open("w")
        first = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            # Every other LFS object has arrived and the held one is mid-transfer: kill the upload there.
            others_arrived = lambda: all(hub.stored(o) for o in lfs_oids - {stalled})  # noqa: E731
            hub.wait_until(lambda: first.poll() is not None or (stalled in hub.holding and others_arrived()))
            assert first.poll() is None, (tmp_path / "first.log").read_text()
        finally:
            first.kill()
            first.wait()
        hub.release_held()
        hub.wait_until(lambda: not hub.holding)
        before = dict(hub.received)
        assert before == {o: 1 for o in lfs_oids - {stalled}}, "before the kill: the other LFS objects, once each"
        assert hub.interrupted[stalled] == 1 and not hub.stored(stalled)
        assert all(not r.commits for r in hub.repos.values()), "nothing was committed before the kill"
        puts_before = sum(1 for m, _ in hub.requests if m == "PUT")

        cmd, env = upload_cmd(release, hub)
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 0, second.stdout + second.stderr

        # Every file exactly once over both runs, its checksum the local one; the re-run sent only the stalled object.
        assert dict(hub.received) == {sha: 1 for sha in sums.values()}
        assert sum(1 for m, _ in hub.requests if m == "PUT") - puts_before == 1
        tree = hub.repo_files(REPO_ID)
        assert {p: hashlib.sha256(b).hexdigest() for p, b in tree.items()} == sums
        assert {p: (release / p).read_bytes() == b for p, b in tree.items()} == dict.fromkeys(FILES, True)
        commits = hub.commits(REPO_ID)
        assert [c["title"] for c in commits] == [COMMIT_MESSAGE], "the message the dry run announces"
        assert f"committed {len(FILES)} files" in second.stdout and commits[0]["id"] in second.stdout

        # A third run finds everything committed and sends nothing.
        third = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert third.returncode == 0, third.stdout + third.stderr
        assert dict(hub.received) == {sha: 1 for sha in sums.values()} and len(hub.commits(REPO_ID)) == 1

    # The upload wrote nothing into the release folder; the token is in no file the runs and the fake left.
    assert sorted(p.relative_to(release).as_posix() for p in release.rglob("*") if p.is_file()) == sorted(FILES)
    assert files_holding(tmp_path, TOKEN.encode()) == []


def test_dry_run_lists_every_file_and_the_commit_without_a_network_call(tmp_path, capsys):
    release = tmp_path / "release"
    make_release(release)
    (release / ".cache" / "huggingface" / "upload").mkdir(parents=True)  # huggingface_hub's records: never sent
    (release / ".cache" / "huggingface" / "upload" / "config.json.metadata").write_text("1\n700\n")
    with FakeHub(token=TOKEN, storage=tmp_path / "hub") as hub:
        result = upload_release(release, REPO_ID, TOKEN, dry_run=True, endpoint=hub.url)
        assert hub.requests == [] and hub.repos == {}
    assert [(f.path, f.size) for f in result.files] == sorted(FILES.items())
    assert release_files(release) == result.files
    assert (result.repo_id, result.revision, result.commit_message) == (REPO_ID, "main", COMMIT_MESSAGE)
    text = result.describe()
    for path, size in FILES.items():
        assert any(line.endswith(f" B  {path}") and f"{size:,}" in line for line in text.splitlines()), path
    assert text.splitlines()[-1] == (
        f"would commit {len(FILES)} files, {sum(FILES.values()):,} B, to {hub.url}/{REPO_ID} revision main "
        f"with message '{COMMIT_MESSAGE}'"
    )
    assert TOKEN not in text


@pytest.mark.parametrize(
    ("repo_id", "token", "message"),
    [
        ("org/na me", TOKEN, "release.repo_id='org/na me' is not a valid Hub repo id"),
        ("org--x/model", TOKEN, "release.repo_id='org--x/model' is not a valid Hub repo id: Cannot have -- or .."),
        ("a/b/c", TOKEN, "release.repo_id='a/b/c' is not a valid Hub repo id"),
        ("model-only", TOKEN, "give it as namespace/name"),
        (REPO_ID, "", "HF_TOKEN is empty"),
    ],
)
def test_refusals_in_one_line(tmp_path, repo_id, token, message):
    make_release(tmp_path)
    with pytest.raises(ConfigError, match=r"^[^\n]*$") as err:
        upload_release(tmp_path, repo_id, token, dry_run=True)
    assert message in str(err.value)


def test_the_token_comes_from_hf_token_only(tmp_path):
    assert token_from_env({"HF_TOKEN": " hf_abc "}) == "hf_abc"
    for env in ({}, {"HF_TOKEN": "  "}, {"HUGGING_FACE_HUB_TOKEN": "hf_abc"}):
        with pytest.raises(ConfigError, match="HF_TOKEN is not set"):
            token_from_env(env)
    env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
    proc = subprocess.run(
        [sys.executable, "-m", "compactlm.release.upload", str(tmp_path), REPO_ID, "--dry-run"],
        env={**env, "PYTHONPATH": str(ROOT / "src")}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.startswith("error: HF_TOKEN is not set") and proc.stdout == ""


def test_an_empty_release_is_refused(tmp_path):
    (tmp_path / ".cache" / "huggingface").mkdir(parents=True)
    (tmp_path / ".cache" / "huggingface" / "x.metadata").write_text("x")
    with pytest.raises(ConfigError, match="holds no file to upload"):
        upload_release(tmp_path, REPO_ID, TOKEN, dry_run=True)
