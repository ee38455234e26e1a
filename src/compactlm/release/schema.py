"""The release stage's config and result dataclasses. Torch-free: the launcher, config.py and results.py import it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from compactlm.errors import ConfigError

# The Hub's `base_model_relation` values (https://huggingface.co/docs/hub/model-cards#specifying-a-base-model).
BASE_MODEL_RELATIONS = ("adapter", "merge", "quantized", "finetune")


@dataclass
class ReleaseConfig:
    """What the release stage puts in `<run>/release/` and where it publishes it."""

    license: Optional[str] = None
    """Hub license id of the release (apache-2.0, llama3.1, other, ...); None: inherited from the teacher (its
    README.md card, or its GGUF metadata `general.license`); a teacher whose license cannot be read is refused."""
    base_model: Optional[str] = None
    """Hub id of the teacher for the card's `base_model`; None: model.path when it is a Hub id, else left out."""
    language: list[str] = field(default_factory=list)
    """ISO 639 codes for the card; empty: the teacher's (README.md `language`, GGUF `general.languages`)."""
    tags: list[str] = field(default_factory=list)
    """Extra Hub tags, after the ones the stage sets (compactlm, pruned, distilled, gguf, ...)."""
    hf: bool = True
    """Include the final Hugging Face checkpoint (safetensors, config, tokenizer, chat template)."""
    export: bool = True
    """Include the quantize stage's FP8/NVFP4 export, in `release/<format>/`."""
    gguf: bool = True
    """Include the gguf stage's files of the final model, each with its Ollama Modelfile."""
    repo_id: Optional[str] = None
    """Hub repo (org/name) to upload the release to; the token is read from HF_TOKEN only. None: no upload."""
    dry_run: bool = False
    """With repo_id: list every file and the commit the upload would make, send nothing."""

    def __post_init__(self) -> None:
        for key in ("language", "tags"):
            value = getattr(self, key)
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
                raise ConfigError(f"release.{key}={value!r} must be a list of non-empty strings")
        if self.license is not None and (not self.license or any(c.isspace() for c in self.license)):
            raise ConfigError(
                f"release.license={self.license!r} is not a Hub license id (lower-case, no spaces: apache-2.0, mit, "
                "llama3.1, other; https://huggingface.co/docs/hub/repositories-licenses)"
            )
        if not (self.hf or self.export or self.gguf):
            raise ConfigError("release.hf, release.export and release.gguf are all false: nothing would be released")


@dataclass
class ReleaseFile:
    """One file of the release folder."""

    path: str
    """Relative to the release folder."""
    size_bytes: int
    sha256: str
    source: Optional[str] = None
    """`<stage>:<output>/<file>` it was taken from, verified against that stage's manifest; None: written here."""


@dataclass
class ReleaseResult:
    """release stage: the folder to publish, its card metadata, and the upload when one was asked for."""

    model: str
    """Label of the released model (distilled, dpo, ..., or teacher for recipe=quantize)."""
    license: str
    license_source: str
    """Where the license came from: release.license, the teacher's README.md or its GGUF metadata."""
    base_model: Optional[str]
    base_model_relation: str
    files: list[ReleaseFile]
    modelfiles: list[str]
    """Ollama Modelfiles written, one per GGUF file."""
    total_bytes: int
    upload: Optional[dict] = None
    """What compactlm.release.upload.upload_release returned (repo, commit, files sent), when repo_id was set."""

    def summary(self) -> str:
        up = f", uploaded to {self.upload.get('repo_id')}" if self.upload else ""
        return (
            f"{self.model}: {len(self.files)} files, {self.total_bytes / 2**20:.1f} MiB, license {self.license}, "
            f"{len(self.modelfiles)} Modelfiles{up}"
        )
