"""Upload a release folder to the Hugging Face Hub with huggingface_hub's resumable folder upload.

    files = release_files(folder)                     # [ReleaseFile(path, size)]: what the upload sends
    token = token_from_env()                          # HF_TOKEN, or a ConfigError
    result = upload_release(folder, "org/name", token, dry_run=True)   # no network call
    print(result.describe())

    python -m compactlm.release.upload <run>/release org/name [--dry-run] [--endpoint URL]

The upload is `HfApi.create_repo(exist_ok=True)` then `HfApi.upload_folder`. In huggingface_hub 1.33 that is the
resumable large upload: `upload_large_folder` is deprecated ("Use `upload_folder` instead", a FutureWarning), and
`upload_folder` resumes an interrupted upload by itself, with no local records:
- with `hf_xet` installed (the default), through Xet storage: it commits a large folder in several commits
  (" (part N)" added to the message) and a re-run skips committed files and deduplicates uploaded data;
- with HF_HUB_DISABLE_XET=1, through the plain Git LFS protocol: it asks the Hub which files go through LFS (the
  `preupload` endpoint), asks the LFS batch endpoint for each LFS object, PUTs only those the Hub does not hold yet,
  and makes one commit. A re-run after a kill sends again only the objects that had not arrived whole, because the
  batch endpoint answers without an upload action for an object the Hub already holds.
Nothing is written into the release folder (its SHA256SUMS stay valid); `release_files` lists what is sent, with
the library's own ignore patterns (.git, .cache/huggingface).

The token comes from the HF_TOKEN environment variable only (`token_from_env`). It is passed to `HfApi` in memory
and never written: this module calls no `login()`. The tests (tests/release/test_upload.py) run the LFS path
against a fake Hub that speaks that protocol (tests/fake_hub.py), kill an upload mid-transfer and resume it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import HfApi, constants
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects, validate_repo_id

from compactlm.errors import ConfigError

TOKEN_ENV = "HF_TOKEN"
COMMIT_MESSAGE = "Upload the release with compactlm"


@dataclass(frozen=True)
class ReleaseFile:
    """One file of a release: its path in the repository ('/'-separated) and its size in bytes."""

    path: str
    size: int


@dataclass
class UploadResult:
    """What an upload sent, or (dry run) would send: every file, and the commit's repository, revision and message."""

    repo_id: str
    revision: str
    endpoint: str
    dry_run: bool
    files: list[ReleaseFile] = field(default_factory=list)
    commit_message: str = COMMIT_MESSAGE
    commit_oid: str | None = None  # the commit made; None for a dry run

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def describe(self) -> str:
        """The listing a dry run prints: one line per file (size in bytes), then the commit."""
        width = max((len(f"{f.size:,}") for f in self.files), default=1)
        lines = [f"{f.size:>{width},} B  {f.path}" for f in self.files]
        verb = "would commit" if self.dry_run else "committed"
        head = f" as commit {self.commit_oid}" if self.commit_oid else ""
        lines.append(
            f"{verb} {len(self.files)} files, {self.total_bytes:,} B, to {self.endpoint}/{self.repo_id} "
            f"revision {self.revision}{head} with message '{self.commit_message}'"
        )
        return "\n".join(lines)


def check_repo_id(repo_id: str, key: str = "release.repo_id") -> str:
    """`repo_id` if it is a valid 'namespace/name' Hub model id (huggingface_hub's own validator), else ConfigError.

    The namespace is required: without it the Hub resolves the repository against the token's user, which a dry
    run cannot know without a network call.
    """
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ConfigError(f"{key}={repo_id!r} is not a valid Hub repo id: {err}") from None
    if repo_id.count("/") != 1:
        raise ConfigError(f"{key}={repo_id!r} is not a valid Hub repo id: give it as namespace/name (org/model-name)")
    return repo_id


def token_from_env(env: Mapping[str, str] | None = None) -> str:
    """The Hub token from HF_TOKEN (the only place it is read from), else ConfigError."""
    token = (os.environ if env is None else env).get(TOKEN_ENV, "").strip()
    if not token:
        raise ConfigError(
            f"{TOKEN_ENV} is not set: the upload reads the Hub token from the {TOKEN_ENV} environment variable only "
            "(a write token from https://huggingface.co/settings/tokens)"
        )
    return token


def release_files(folder: Path) -> list[ReleaseFile]:
    """Every file `upload_folder` sends from `folder`, sorted by path: all files but huggingface_hub's ignore
    patterns (.git, and the .cache/huggingface records of its downloads and older uploads)."""
    folder = Path(folder).resolve()
    relative = (p.relative_to(folder).as_posix() for p in folder.glob("**/*") if p.is_file())
    kept = filter_repo_objects(relative, ignore_patterns=list(DEFAULT_IGNORE_PATTERNS))
    return [ReleaseFile(path, (folder / path).stat().st_size) for path in sorted(kept)]


def upload_release(
    folder: Path,
    repo_id: str,
    token: str,
    *,
    dry_run: bool,
    endpoint: str | None = None,
    revision: str = constants.DEFAULT_REVISION,
    private: bool | None = None,
    commit_message: str = COMMIT_MESSAGE,
    only: list[str] | None = None,
) -> UploadResult:
    """Upload every file of `folder` to the model repository `repo_id` (created if missing), resuming an earlier try.

    dry_run: list the files and the commit, with no network call. `endpoint` defaults to HF_ENDPOINT (else
    huggingface.co). `only`: the folder's files to send (paths relative to it; the release stage passes what
    SHA256SUMS covers, so the runner's records in the stage folder stay home). Raises ConfigError, before any network call, for an invalid repo id, an empty token, a folder
    with nothing to upload, or HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) set.
    """
    check_repo_id(repo_id)
    if not token:
        raise ConfigError(f"{TOKEN_ENV} is empty: the upload needs a Hub write token")
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"release folder {folder} does not exist: nothing to upload")
    files = release_files(folder)
    if only is not None:
        files = [f for f in files if f.path in set(only)]
    if not files:
        raise ConfigError(f"release folder {folder} holds no file to upload")
    result = UploadResult(
        repo_id, revision, (endpoint or constants.ENDPOINT).rstrip("/"), dry_run, files, commit_message
    )
    if dry_run:
        return result
    if constants.HF_HUB_OFFLINE:
        raise ConfigError("HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set: the upload needs the Hub; unset it")
    api = HfApi(endpoint=endpoint, token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        repo_type="model",
        revision=revision,
        commit_message=commit_message,
        allow_patterns=[f.path for f in files],
    )
    result.commit_oid = info.oid
    return result


def main(argv: list[str] | None = None) -> int:
    """`python -m compactlm.release.upload FOLDER REPO_ID [--dry-run]`: upload (or list) a release; 2 on a refusal."""
    parser = argparse.ArgumentParser(prog="python -m compactlm.release.upload", description=main.__doc__)
    parser.add_argument("folder", type=Path, help="the release folder, e.g. runs/<run>/release")
    parser.add_argument("repo_id", help="the Hub model repository, namespace/name")
    parser.add_argument("--dry-run", action="store_true", help="list the files and the commit; no network call")
    parser.add_argument("--endpoint", default=None, help="the Hub's URL (default: HF_ENDPOINT, else huggingface.co)")
    parser.add_argument("--revision", default=constants.DEFAULT_REVISION, help="the branch to commit to")
    parser.add_argument("--message", default=COMMIT_MESSAGE, help="the commit message")
    args = parser.parse_args(argv)
    try:
        result = upload_release(
            args.folder, args.repo_id, token_from_env(), dry_run=args.dry_run, endpoint=args.endpoint,
            revision=args.revision, commit_message=args.message,
        )  # fmt: skip
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(result.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
