"""The release stage: `<run>/release/` holds what a user publishes, assembled from what the run's manifests say
exists, each file verified against the SHA-256 its stage recorded:

    README.md                  the model card (release/card.py), every figure from a stage's result
    config.json, *.safetensors, tokenizer files, chat template, generation_config.json
                               the final Hugging Face checkpoint (not for a release of the teacher itself)
    <format>/                  the quantize stage's FP8/NVFP4 unified checkpoint
    gguf/<model>-<type>.gguf   the gguf stage's files of the final model
    gguf/<model>-<type>.Modelfile   Ollama, one per GGUF file (release/ollama.py)
    SHA256SUMS                 sha256sum's format, every file above

With `release.repo_id` the folder is checked against SHA256SUMS and handed to compactlm.release.upload.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer

from compactlm import stages
from compactlm.errors import ConfigError
from compactlm.manifest import atomic_write_text, file_digest
from compactlm.model.gguf_header import gguf_metadata
from compactlm.pipeline import StageContext, StageOutput
from compactlm.release import card as cards
from compactlm.release.integrity import SUMS, check_sums, place, released_files, verify, write_sums
from compactlm.release.ollama import TemplateNotTranslatable, modelfile
from compactlm.release.schema import ReleaseConfig, ReleaseFile, ReleaseResult
from compactlm.release.teacher import base_model, release_license, teacher_meta
from compactlm.release.upload import upload_release
from compactlm.results import TEACHER, result_of, student_label

CARD = "README.md"
# Files of a checkpoint folder that the release writes itself
OWN = {CARD, SUMS}


class ReleaseStage:
    name = "release"
    # model: the teacher's license and Hub id; data: the name of the data the card cites
    reads = ("release", "model", "data")
    keep = ()

    def run(self, ctx: StageContext) -> StageOutput:
        cfg: ReleaseConfig = ctx.cfg.release
        models = {k: v for k, v in ctx.models().items() if k != stages.model_labels()["quantize"]}
        label = student_label(models) or TEACHER
        results = {task: result_of(task, m) for task, m in ctx.upstream.items()}
        meta = teacher_meta(ctx.cfg.model, models[TEACHER])
        license_, license_source = release_license(cfg.license, meta, ctx.cfg.model)
        out, placed = ctx.stage_dir, []
        if cfg.hf and label != TEACHER:
            placed += self.checkpoint(ctx, label)
        export = self.export(ctx, results) if cfg.export else None
        placed += export[1] if export else []
        ggufs = self.gguf(ctx, results, label) if cfg.gguf else []
        placed += ggufs
        if not placed:
            raise ConfigError(
                f"release: nothing to release from {', '.join(ctx.upstream)} (release.hf={cfg.hf}, "
                f"release.export={cfg.export}, release.gguf={cfg.gguf}); add a stage that makes a model"
            )
        modelfiles = self.modelfiles(ctx, models[label], [f for f in ggufs if f.path.endswith(".gguf")])
        launch = _launch_record(ctx.run_dir)
        facts = cards.CardFacts(
            name=ctx.run_dir.name,
            model=label,
            results=results,
            license=license_,
            license_name=meta.license_name if meta and not cfg.license else None,
            license_link=meta.license_link if meta and not cfg.license else None,
            base_model=base_model(cfg.base_model, ctx.cfg.model),
            relation=cards.relation(label),
            teacher_name=results["model"].name if results.get("model") else ctx.cfg.model.name,
            language=list(cfg.language) or (meta.language if meta else []),
            tags=list(cfg.tags),
            data_name=ctx.cfg.data.name,
            command=launch.get("command"),
            git_sha=launch.get("git_sha"),
            hf_folder=any(f.path == "config.json" for f in placed),
            export_folder=export[0] if export else None,
            gguf_files=[f.path for f in ggufs if f.path.endswith(".gguf")],
            repo_id=cfg.repo_id,
        )
        atomic_write_text(out / CARD, cards.render(facts))
        written = [_own(out, CARD)] + [_own(out, m) for m in modelfiles]
        files = sorted(placed + written, key=lambda f: f.path)
        write_sums(out, {f.path: f.sha256 for f in files})
        result = ReleaseResult(
            model=label,
            license=license_,
            license_source=license_source,
            base_model=facts.base_model,
            base_model_relation=facts.relation,
            files=files,
            modelfiles=modelfiles,
            total_bytes=sum(f.size_bytes for f in files),
        )
        print(f"[release] {out}: {result.summary()}", flush=True)
        if cfg.repo_id:
            result.upload = self.upload(out, cfg)
        # one output per top-level entry (the folder itself would count the manifest written after it)
        tops = sorted({Path(f.path).parts[0] for f in files} | {SUMS})
        return StageOutput(result, outputs={name: name for name in tops})

    def checkpoint(self, ctx: StageContext, label: str) -> list[ReleaseFile]:
        """The final model's Hugging Face folder, file by file, at the top of the release."""
        stage = next(s for s, lab in stages.model_labels().items() if lab == label and s in ctx.upstream)
        return self.take(ctx, stage, "checkpoint", Path("."), skip=OWN)

    def export(self, ctx: StageContext, results: dict[str, Any]) -> tuple[str, list[ReleaseFile]] | None:
        q = results.get("quantize")
        if q is None:
            return None
        return q.format, self.take(ctx, "quantize", "export", Path(q.format), skip=OWN)

    def gguf(self, ctx: StageContext, results: dict[str, Any], label: str) -> list[ReleaseFile]:
        """The gguf stage's files of the released model (its teacher reference file stays in the run)."""
        g = results.get("gguf")
        if g is None:
            return []
        if g.student != label:
            print(
                f"[release] the gguf stage converted {g.student}, not the released {label}: no GGUF files", flush=True
            )
            return []
        names = {f.file.rsplit("/", 1)[-1] for f in g.files if f.model == label}
        return self.take(ctx, "gguf", label, Path("gguf"), only=names)

    def take(
        self, ctx: StageContext, stage: str, key: str, dest: Path, skip: set[str] = frozenset(), only: set[str] = None
    ) -> list[ReleaseFile]:
        """Every file of output `key` of `stage` (or those named in `only`), placed under `dest` of the release and
        verified against the stage's manifest record."""
        src = ctx.upstream_output(stage, key)
        records = ctx.upstream[stage]["output_files"][key]
        out = []
        for rel, record in sorted(records.items()):
            if rel in skip or (only is not None and rel not in only):
                continue
            path = dest / rel
            place(src / rel if rel else src, ctx.stage_dir / path, ctx.run_dir)
            digest = verify(ctx.stage_dir / path, record, f"{stage}:{key}")
            out.append(ReleaseFile(str(path), record["size"], digest, source=f"{stage}:{key}/{rel}"))
        return out

    def modelfiles(self, ctx: StageContext, folder: Path, ggufs: list[ReleaseFile]) -> list[str]:
        """An Ollama Modelfile beside each GGUF file, with the released model's chat template."""
        if not ggufs:
            return []
        tokenizer = AutoTokenizer.from_pretrained(folder)
        out = []
        for f in ggufs:
            path = ctx.stage_dir / f.path
            add_bos = _gguf_flag(path, "tokenizer.ggml.add_bos_token")
            try:
                text = modelfile(path.name, tokenizer, add_bos)
            except TemplateNotTranslatable as e:
                raise ConfigError(
                    f"release.gguf=true: the chat template of {folder} cannot be written as an Ollama template ({e}); "
                    "use release.gguf=false"
                ) from None
            name = str(Path(f.path).with_suffix(".Modelfile"))
            atomic_write_text(ctx.stage_dir / name, text)
            out.append(name)
        return out

    def upload(self, folder: Path, cfg: ReleaseConfig) -> dict[str, Any]:
        check_sums(folder)  # nothing leaves the machine unless every file still matches SHA256SUMS
        sent = [p.as_posix() for p in released_files(folder)]  # the release, never the runner's records beside it
        r = upload_release(folder, cfg.repo_id, os.environ.get("HF_TOKEN", ""), dry_run=cfg.dry_run, only=sent)
        return dataclasses.asdict(r) if dataclasses.is_dataclass(r) else dict(r)


def _own(folder: Path, name: str) -> ReleaseFile:
    path = folder / name
    return ReleaseFile(name, path.stat().st_size, file_digest(path))


def _gguf_flag(path: Path, key: str) -> bool:
    return bool(gguf_metadata(path, (key,)).get(key, False))


def _launch_record(run_dir: Path) -> dict[str, Any]:
    """launch.json (the command and git SHA) when the run folder has it (a cluster run keeps it where it was
    launched)."""
    try:
        return json.loads((run_dir / "launch.json").read_text())
    except (OSError, ValueError):
        return {}
