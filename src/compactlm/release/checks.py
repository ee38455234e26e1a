"""The release stage's launch-time checks: one ConfigError line, naming the key, the value and what is allowed,
before anything is written or submitted. Torch-free (the launcher calls them)."""

from __future__ import annotations

import os

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from compactlm.errors import ConfigError
from compactlm.release.teacher import release_license, teacher_meta
from compactlm.stages import where

STAGE = "release"
TOKEN_ENV = "HF_TOKEN"


def check(conf, shape: dict | None = None) -> None:
    """The registry's launch-time check of the release stage (compactlm.stages): see check_release."""
    check_release(conf)


def check_release(conf) -> None:
    """Every refusal of a run with a release stage: position, something to release, repo id, token, license."""
    stages = list(conf.recipe.stages)
    if STAGE not in stages:
        return
    if stages[-1] != STAGE:
        raise ConfigError(
            f"recipe.stages={stages}: release must be the last stage (it releases what the stages before it made)"
        )
    check_something_to_release(conf)
    check_repo(conf)
    if not conf.cluster.is_remote():  # a cluster's model folder is not on this machine
        check_license(conf)


def check_something_to_release(conf) -> None:
    r, stages = conf.release, set(conf.recipe.stages)
    parts = {
        "release.hf (a student checkpoint)": r.hf and bool(stages & set(where(student=True))),
        "release.export (the quantize stage)": r.export and "quantize" in stages,
        "release.gguf (the gguf stage)": r.gguf and "gguf" in stages,
    }
    if not any(parts.values()):
        raise ConfigError(
            f"recipe={conf.recipe.name} has a release stage but nothing to release: its stages "
            f"({', '.join(s for s in conf.recipe.stages if s != STAGE)}) make no student, quantized export or GGUF "
            f"file ({'; '.join(parts)}); add prune/distill, quantize or gguf to recipe.stages, or drop release"
        )


def check_repo(conf) -> None:
    """release.repo_id is a Hub repo id (huggingface_hub's own validator); an upload needs HF_TOKEN."""
    repo = conf.release.repo_id
    if repo is None:
        return
    try:
        validate_repo_id(repo)
    except HFValidationError as e:
        raise ConfigError(f"release.repo_id={repo!r} is not a Hub repo id ({e}); give org/name") from None
    if not os.environ.get(TOKEN_ENV, "").strip():
        raise ConfigError(
            f"release.repo_id={repo!r} needs a Hub token in the environment variable {TOKEN_ENV} (read from there "
            f"only, never written): export {TOKEN_ENV}=hf_..., or leave release.repo_id unset"
        )


def check_license(conf) -> None:
    """The release's license is given or readable from the teacher here; a Hub id not downloaded yet is read by the
    stage, from the README.md the model stage downloads."""
    if conf.release.license:
        return
    meta = teacher_meta(conf.model)
    if meta is None and conf.model.source == "hf" and not conf.model.is_local():
        return
    release_license(None, meta, conf.model)
