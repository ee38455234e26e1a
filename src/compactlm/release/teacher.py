"""What the release inherits from the teacher: its license and languages, read from its model card (README.md, with
huggingface_hub's own parser) or from its GGUF metadata (`general.license`, `general.languages`), and its Hub id.
Torch-free: the launcher reads the same before anything runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from huggingface_hub import ModelCard, try_to_load_from_cache

from compactlm.config import hub_id_like
from compactlm.errors import ConfigError
from compactlm.model.gguf_header import gguf_metadata
from compactlm.model.loading import gguf_package_file
from compactlm.model.schema import ModelConfig


@dataclass
class TeacherMeta:
    """The teacher's card metadata that a release inherits."""

    license: Optional[str] = None
    license_name: Optional[str] = None
    license_link: Optional[str] = None
    language: list[str] = field(default_factory=list)
    source: str = ""
    """Where it was read: the README.md or GGUF file."""


def from_card(readme: Path) -> TeacherMeta:
    """License and languages from a model card's YAML header (empty when it has none)."""
    data = ModelCard.load(readme, ignore_metadata_errors=True).data
    lang = data.language or []
    return TeacherMeta(
        license=data.license,
        license_name=data.get("license_name"),
        license_link=data.get("license_link"),
        language=[lang] if isinstance(lang, str) else list(lang),
        source=str(readme),
    )


def from_gguf(path: Path) -> TeacherMeta:
    """License and languages from a GGUF file's `general.*` metadata."""
    meta = gguf_metadata(path, ("general.license", "general.languages"))
    lang = meta.get("general.languages") or []
    return TeacherMeta(license=meta.get("general.license") or None, language=list(lang), source=str(path))


def teacher_meta(model: ModelConfig, folder: Optional[Path] = None) -> Optional[TeacherMeta]:
    """The teacher's metadata, from the first source that exists: the README.md of `folder` (the model stage's
    checkpoint) or of a local model.path, the packaged GGUF file (model.source=gguf_package), the README.md of a Hub
    id already in the local Hugging Face cache. None: nothing to read here (a Hub id not downloaded yet)."""
    candidates = [Path(folder) / "README.md"] if folder is not None else []
    if model.source == "hf" and model.is_local():
        candidates.append(Path(model.path).expanduser() / "README.md")
    for readme in candidates:
        if readme.is_file():
            return from_card(readme)
    if model.source == "gguf_package":
        return from_gguf(gguf_package_file(model))
    if model.source == "hf" and not model.is_local() and hub_id_like(model.path):
        cached = try_to_load_from_cache(model.path, "README.md", revision=model.revision)
        if isinstance(cached, str):
            return from_card(Path(cached))
    return None if folder is None else TeacherMeta(source=str(Path(folder) / "README.md"))


def release_license(given: Optional[str], meta: Optional[TeacherMeta], model: ModelConfig) -> tuple[str, str]:
    """(license, where it came from): release.license, else the teacher's; ConfigError when neither is known."""
    if given:
        return given, "release.license"
    if meta is not None and meta.license:
        return meta.license, meta.source
    where = meta.source if meta is not None else f"model.path={model.path!r}"
    raise ConfigError(
        f"release.license=None and the teacher's license cannot be read ({where} has no license); give it: "
        "release.license=<Hub license id, e.g. apache-2.0>"
    )


def base_model(given: Optional[str], model: ModelConfig) -> Optional[str]:
    """The card's base_model: release.base_model, else model.path when it is a Hub id (not a local folder)."""
    if given:
        return given
    if model.source == "hf" and not model.is_local() and hub_id_like(model.path) and "/" in model.path:
        return model.path
    return None
