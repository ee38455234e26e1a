"""The card's metadata passes huggingface_hub's ModelCardData/ModelCard and reads back; what a run did not measure
has no section (the figures here are inputs of the test, as a run's results would give them)."""

from __future__ import annotations

import pytest
from huggingface_hub import ModelCard

from compactlm.errors import ConfigError
from compactlm.evaluate.schema import EvaluateResult, ModelScores
from compactlm.gguf.schema import GGUFFile, GGUFResult
from compactlm.model.schema import ModelResult
from compactlm.release import card as cards
from compactlm.results import Architecture, ParamCounts

ARCH = Architecture("llama", 576, 1536, 30, 9, 3, 49152)
PARAMS = ParamCounts(total=134_515_008, embedding=28_311_552, without_lm_head=134_515_008)


def _facts(**kw) -> cards.CardFacts:
    results = {
        "model": ModelResult(name="smollm2_135m", architecture=ARCH, params=PARAMS),
        "gguf": GGUFResult(
            llama_cpp={"version": "llama-cpp-python 0.3.36"},
            student="teacher",
            outtype="f16",
            files=[
                GGUFFile("teacher", "f16", "teacher/teacher-f16.gguf", 270_000_000, 16.0, {"F16": 200}, 1.0),
                GGUFFile(
                    "teacher",
                    "q8_0",
                    "teacher/teacher-q8_0.gguf",
                    144_000_000,
                    8.5,
                    {"Q8_0": 200},
                    0.53,
                    perplexity={"perplexity": 12.5, "stderr": 0.1, "chunks": 4, "ctx": 256},
                ),
            ],
            params={"teacher": PARAMS},
        ),
        "evaluate": EvaluateResult(
            device="cpu",
            dtype="bfloat16",
            threads=2,
            validation_sequences=24,
            models={"teacher": ModelScores(perplexity=12.0, loss=2.48, tokens=6144, params=PARAMS)},
        ),
    }
    base = dict(
        name="quantize_smollm2",
        model="teacher",
        results=results,
        license="apache-2.0",
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
        relation=cards.relation("teacher"),
        teacher_name="smollm2_135m",
        language=["en"],
        data_name="pydoc",
        gguf_files=["gguf/teacher-q8_0.gguf"],
    )
    return cards.CardFacts(**{**base, **kw})


def test_the_metadata_reads_back_through_huggingface_hub():
    text = cards.render(_facts())
    data = ModelCard(text).data
    assert data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and data.get("base_model_relation") == "quantized"
    assert (data.license, data.pipeline_tag, data.library_name) == ("apache-2.0", "text-generation", "transformers")
    assert {"compactlm", "gguf", "ollama"} <= set(data.tags) and "pruned" not in data.tags
    assert cards.relation("distilled") == "finetune"


def test_only_what_was_measured_is_shown():
    text = cards.render(_facts())
    assert "| `gguf/teacher-q8_0.gguf` | q8_0 | 137.3 | 8.50 | 12.500 | - | llama-perplexity |" in text
    for absent in ("## Architecture", "## Speed", "TensorRT-LLM", "## Reproduce", "Distillation"):
        assert absent not in text, absent  # the teacher is released as is; nothing measured speed; no export
    text = cards.render(_facts(command=["launch.py", "recipe=quantize", "model.path=/my models/x"], git_sha="abc1234"))
    assert "python launch.py recipe=quantize 'model.path=/my models/x'" in text and "`abc1234`" in text


def test_a_language_the_hub_refuses_is_refused():
    with pytest.raises(ConfigError, match="release.language contains 'English'"):
        cards.render(_facts(language=["English"]))
