"""recipe=prune_distill in-process, down to its release: the folder holds the distilled checkpoint, the FP8 export, the
GGUF file and its Modelfile, a card that huggingface_hub reads back and Chromium renders with its tables, and a
SHA256SUMS that sha256sum checks; a file changed after its stage recorded it is not released; HF_TOKEN is in no
file of the run."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess

import pytest
from browser import inspect_page, require_chromium
from conftest import make_gguf_ready_model
from helpers import compose
from huggingface_hub import ModelCard
from markdown_it import MarkdownIt

from compactlm.errors import ConfigError
from compactlm.launch.launcher import write_run_dir
from compactlm.launch.validate import to_config, validate
from compactlm.manifest import read_manifest
from compactlm.pipeline import CONFIG_FILE, STAGE_NAMES, run_stage
from compactlm.release.integrity import SUMS, check_sums

STAGES = ["model", "data", "importance", "prune", "distill", "quantize", "gguf", "evaluate", "release"]
TOKEN = "hf_compactlmTestTokenNeverWritten1234"


@pytest.mark.slow
def test_release_of_a_pruned_and_distilled_model(tmp_path, smol_tokenizer_dir, llama_cpp, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    teacher = make_gguf_ready_model("llama", tmp_path / "teacher", smol_tokenizer_dir, num_hidden_layers=4)
    (teacher / "README.md").write_text("---\nlicense: apache-2.0\nlanguage:\n- en\n---\n# tiny teacher\n")
    conf = to_config(
        compose(
            [
                "recipe=prune_distill",
                f"recipe.stages=[{','.join(STAGES)}]",
                "model=local",
                f"model.path={teacher}",
                "prune.model=null",
                "prune.export_config.num_layers=3",
                "prune.export_config.ffn_hidden_size=256",
                "data=pydoc",
                "data.max_documents=30",
                "data.seq_len=64",
                "data.validation_sequences=4",
                "data.calibration_sequences=4",
                "data.max_train_sequences=4",
                "distill.max_steps=2",
                "distill.micro_batch_size=2",
                "distill.global_batch_size=2",
                "engine.dtype=float32",
                "evaluate.generate_tokens=0",
                "gguf.types=[q8_0]",
                "gguf.teacher=false",
                "gguf.perplexity_chunks=2",
                "gguf.hf_check=false",
                "gguf.bench=false",
                "release.tags=[demo]",
                f"runs_root={tmp_path / 'runs'}",
            ]
        )
    )
    validate(conf, STAGE_NAMES)
    run_dir = write_run_dir(conf)
    for stage in STAGES:
        assert run_stage(stage, run_dir / CONFIG_FILE) == 0, stage
    rel = run_dir / "release"
    result = read_manifest(rel)["result"]
    assert (result["model"], result["license"], result["base_model_relation"]) == (
        "distilled",
        "apache-2.0",
        "finetune",
    )
    assert result["license_source"] == str(teacher / "README.md")
    names = {f["path"] for f in result["files"]}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "fp8/config.json"} <= names
    assert {"gguf/distilled-f16.gguf", "gguf/distilled-q8_0.gguf", "gguf/distilled-q8_0.Modelfile"} <= names
    assert result["modelfiles"] == ["gguf/distilled-f16.Modelfile", "gguf/distilled-q8_0.Modelfile"]
    # hard links to the stages' own files, nothing that points anywhere
    assert (rel / "gguf" / "distilled-q8_0.gguf").samefile(run_dir / "gguf" / "distilled" / "distilled-q8_0.gguf")
    assert not any(p.is_symlink() for p in rel.rglob("*"))
    # SHA256SUMS: every released file, checked by sha256sum itself
    assert sorted(line.split("  ")[1] for line in (rel / SUMS).read_text().splitlines()) == sorted(names)
    if shutil.which("sha256sum"):
        r = subprocess.run(["sha256sum", "--strict", "-c", SUMS], cwd=rel, capture_output=True, text=True)
        assert r.returncode == 0 and r.stdout.count(": OK") == len(names), r.stdout + r.stderr
    assert set(check_sums(rel)) == names

    # the card: huggingface_hub reads its metadata back; its figures are the run's
    text = (rel / "README.md").read_text()
    data = ModelCard(text).data
    assert (data.license, data.pipeline_tag, data.library_name, data.language) == (
        "apache-2.0",
        "text-generation",
        "transformers",
        ["en"],
    )
    assert {"compactlm", "pruned", "distillation", "fp8", "gguf", "demo"} <= set(data.tags)
    assert data.get("base_model") is None  # a local teacher has no Hub id: left out, not guessed
    prune = read_manifest(run_dir / "prune")["result"]
    distill = read_manifest(run_dir / "distill")["result"]
    assert "| layers | 4 | 3 |" in text
    assert (
        f"{prune['params_after']['total']:,} ({(prune['params_after']['total'] / prune['params_before']['total'] - 1) * 100:+.1f}%)"
        in text
    )
    assert f"{distill['steps']:,} steps, {distill['tokens']:,} tokens" in text
    ppl = read_manifest(run_dir / "evaluate")["result"]["models"]["distilled"]["perplexity"]
    assert "| distilled | " in text and f"{ppl:.3f}" in text
    assert "## Speed" not in text  # nothing measured speed in this run: no speed table
    assert "ollama create" in text and "trtllm-serve model/fp8" in text
    command = json.loads((run_dir / "launch.json").read_text())["command"]  # what write_run_dir recorded
    # (under pytest-xdist the recorded command is the worker's `-c`: compare the whole line, not a trailing word)
    assert "## Reproduce" in text and f"\npython {shlex.join(command)}\n" in text
    modelfile = (rel / "gguf" / "distilled-q8_0.Modelfile").read_text()
    assert "FROM ./distilled-q8_0.gguf" in modelfile and "<|im_start|>" in modelfile

    # Chromium renders the card (CommonMark with GitHub tables, as the Hub renders them) with its tables
    require_chromium()
    page = tmp_path / "card.html"
    page.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>"
        + MarkdownIt("commonmark").enable("table").render(text.split("\n---\n", 1)[1])
        + "</body></html>"
    )
    tables = inspect_page(page).tables
    headers = [t[0] for t in tables]
    assert ["", "teacher", "this model"] in headers
    assert any(h[:3] == ["model", "params", "perplexity"] for h in headers)
    assert any(h[:3] == ["file", "type", "size MiB"] for h in headers)
    assert all(len(row) == len(t[0]) for t in tables for row in t)

    # the token is read from the environment only: it is in no file of the run
    for p in run_dir.rglob("*"):
        if p.is_file() and not p.is_symlink():
            assert TOKEN.encode() not in p.read_bytes(), p

    # a file changed after its stage recorded it: the release refuses to publish it
    gguf = run_dir / "gguf" / "distilled" / "distilled-q8_0.gguf"
    (rel / "gguf" / "distilled-q8_0.gguf").unlink()  # the link shares the bytes: break it before the change
    blob = bytearray(gguf.read_bytes())
    blob[-1] ^= 1
    gguf.write_bytes(bytes(blob))
    with pytest.raises(
        ConfigError, match="refusing to publish: distilled-q8_0.gguf from gguf:distilled does not match"
    ):
        run_stage("release", run_dir / CONFIG_FILE)
    assert "manifest.json" not in {p.name for p in rel.iterdir()}
