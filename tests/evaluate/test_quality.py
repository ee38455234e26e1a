"""The evaluate stage's figures do not depend on how many CPU threads computed them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_config

from compactlm.evaluate.quality import quality


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_kl_and_perplexity_are_the_same_on_one_thread_and_on_two(threads):
    """A float32 sum over sequences × positions × vocabulary is split between threads, so its rounding moved with
    the thread count (the demo's KL to the teacher differed in the 7th digit between a 1-thread and a 2-thread
    run). Rows are summed over the vocabulary one by one and the rows in float64, so the split does not matter."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    vocab = 2048  # 4 × 63 positions × 2048 entries: large enough for PyTorch to split a reduction between threads
    models = {
        label: AutoModelForCausalLM.from_config(tiny_config("llama", vocab_size=vocab)).eval()
        for label in ("teacher", "student")
    }
    ids = np.random.default_rng(0).integers(0, vocab, size=(4, 64))
    got = {}
    for n in (1, 2):
        torch.set_num_threads(n)
        got[n] = quality(models, "teacher", ids, batch_size=4, device="cpu", progress=False)
    for label in models:
        for key in ("loss", "kl_to_teacher", "top1_agreement"):
            if key in got[1][label]:
                assert got[1][label][key] == got[2][label][key], (label, key)
    assert got[1]["student"]["kl_to_teacher"] > 0


@pytest.mark.parametrize("tied", [False, True])
def test_a_bf16_model_computing_in_float32_scores_as_the_float32_model(tied, tmp_path):
    """gguf's hf_check (and quantize's fake-quant perplexity) hold a bf16 checkpoint in bf16 and run each block in
    float32 (compactlm.model.loading.computing_in): every figure is that of the model loaded whole in float32."""
    from transformers import AutoModelForCausalLM

    from compactlm.model.loading import computing_in, load_model

    torch.manual_seed(0)
    config = tiny_config("llama", tie_word_embeddings=tied)
    AutoModelForCausalLM.from_config(config).to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "other")
    ids = np.random.default_rng(0).integers(3, config.vocab_size, (4, 24)).astype(np.int32)
    other = load_model(tmp_path / "other")
    full = quality({"ref": load_model(tmp_path / "bf16"), "other": other}, "ref", ids, 2, "cpu", progress=False)
    held = load_model(tmp_path / "bf16", dtype=torch.bfloat16)
    with computing_in(torch.float32, held):
        half = quality({"ref": held, "other": other}, "ref", ids, 2, "cpu", progress=False)
    assert {p.dtype for p in held.parameters()} == {torch.bfloat16}
    for label in full:
        for key in ("loss", "kl_to_teacher", "top1_agreement"):
            assert full[label].get(key) == half[label].get(key), (label, key)
