"""GGUF export with the real llama.cpp (converter, quantizer, perplexity, batched bench) on tiny models, and the
file read back both by the gguf package and by transformers' dequantizing loader."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from conftest import SPM_VOCAB, llama3_rope, make_gguf_ready_model, make_llama3_model

from compactlm.config import ConfigError
from compactlm.gguf import convert as gg
from compactlm.gguf.measure import perplexity, serving_speed

# model_type -> general.architecture llama.cpp writes (Mistral's decoder is llama's), with SmolLM2's tokenizer.
# Qwen2/Qwen3 are in FAMILIES below, with a SentencePiece tokenizer: transformers gives a qwen2 folder its own
# Qwen2Tokenizer, whose pre-tokenizer fingerprint llama.cpp only knows with Qwen's real vocabulary.
GGUF_ARCH = {"llama": "llama", "mistral": "llama"}
# Each family's quirks on a tiny random checkpoint (hidden 256, 2 layers, 4 heads over 2 KV heads) with the
# SentencePiece tokenizer (vocab 1024): name -> (model_type, config, general.architecture llama.cpp writes).
# Llama-3.x are built by make_llama3_model (config.json in the Hub's layout).
FAMILIES = {
    "llama-3.1": ("llama", dict(factor=8.0, tie_word_embeddings=False), "llama"),  # llama3 RoPE, untied
    "llama-3.2": ("llama", dict(factor=32.0, tie_word_embeddings=True), "llama"),  # llama3 RoPE, tied
    # head_dim given explicitly: 4 heads x 32 = 128, not hidden 256 (Mistral-NeMo: 32 x 128 against 5120)
    "mistral-nemo": ("mistral", dict(head_dim=32, tie_word_embeddings=False, rope_theta=1000000.0), "llama"),
    "qwen2.5": ("qwen2", dict(tie_word_embeddings=True, rope_theta=1000000.0), "qwen2"),  # q/k/v biases
    "qwen3": ("qwen3", dict(tie_word_embeddings=False, rope_theta=1000000.0), "qwen3"),  # q/k norms
}


@pytest.fixture(scope="module")
def llama_f16(tmp_path_factory, llama_cpp, gguf_llama_dir):
    """The tiny llama converted once for the tests below (each conversion starts a Python with torch)."""
    folder = tmp_path_factory.mktemp("llama-f16")
    return gg.convert(llama_cpp, gguf_llama_dir, folder / "m-f16.gguf", "f16", folder / "convert.log")


def _family_source(family: str, folder, tokenizer_dir):
    model_type, kw, _ = FAMILIES[family]
    if family.startswith("llama-3"):
        return make_llama3_model(folder, tokenizer_dir, vocab_size=SPM_VOCAB, **kw)
    return make_gguf_ready_model(model_type, folder, tokenizer_dir, vocab_size=SPM_VOCAB, **kw)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_f16(request, tmp_path_factory, llama_cpp, spm_tokenizer_dir):
    """(family, source checkpoint, its f16 GGUF), converted once per family."""
    folder = tmp_path_factory.mktemp(request.param)
    src = _family_source(request.param, folder / "src", spm_tokenizer_dir)
    return request.param, src, gg.convert(llama_cpp, src, folder / "m-f16.gguf", "f16", folder / "convert.log")


def _with_config(src, dest, **changes):
    """A copy of checkpoint `src` whose config.json has `changes` (None: key removed)."""
    shutil.copytree(src, dest)
    cfg = json.loads((dest / "config.json").read_text())
    cfg.update(changes)
    (dest / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if v is not None}))
    return dest


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


@pytest.mark.parametrize("model_type", sorted(GGUF_ARCH))
def test_each_architecture_converts_verifies_and_loads_back(model_type, tmp_path, llama_cpp, smol_tokenizer_dir):
    from transformers import AutoModelForCausalLM

    src = make_gguf_ready_model(model_type, tmp_path / "src", smol_tokenizer_dir)
    log = tmp_path / "convert.log"
    f16 = gg.convert(llama_cpp, src, tmp_path / "m-f16.gguf", "f16", log)
    info = gg.inspect(f16)
    assert info["architecture"] == GGUF_ARCH[model_type]
    gg.check_against_source(info, src, f16.name)  # metadata, shapes, weight count, tokenizer, chat template
    assert info["elements"] == gg.param_counts(src)["total"]
    assert info["vocab"] == 49152 and info["chat_template"] == gg.chat_template(src)
    q8 = gg.quantize(llama_cpp, f16, tmp_path / "m-q8_0.gguf", "q8_0", 2, tmp_path / "quantize.log")
    q8_info = gg.inspect(q8)
    gg.check_against_source(q8_info, src, q8.name)
    assert q8_info["tensor_types"].get("Q8_0", 0) >= 7 * 2  # every 2-D weight of both blocks
    assert 8 < q8_info["bits_per_weight"] < 9 and q8_info["size_bytes"] < 0.6 * info["size_bytes"]
    # read back through transformers (dequantized): the f16 file is the source model to f16 rounding
    ids = torch.randint(0, 49152, (2, 24), generator=torch.Generator().manual_seed(0))
    ref = _logits(AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval(), ids)
    back = _logits(gg.load_dequantized(f16), ids)
    assert (back - ref).abs().max() < 0.05 * ref.abs().max()
    q8_back = _logits(gg.load_dequantized(q8), ids)
    assert (q8_back - ref).abs().max() < 0.1 * ref.abs().max()


def test_each_family_converts_verifies_and_loads_back_with_its_rope(family_f16, tmp_path, llama_cpp):
    """Llama-3.1/3.2 (llama3 RoPE scaling: llama.cpp adds rope_freqs), Mistral-NeMo (explicit head_dim), Qwen2.5
    (biases, tied), Qwen3 (q/k norms): every file matches its source, weight for weight and in its RoPE."""
    from transformers import AutoConfig, AutoModelForCausalLM

    family, src, f16 = family_f16
    model_type, kw, arch = FAMILIES[family]
    cfg = json.loads((src / "config.json").read_text())
    info = gg.inspect(f16)
    assert info["architecture"] == arch and info["vocab"] == SPM_VOCAB
    gg.check_against_source(info, src, f16.name)  # shapes, weights (generated tensors aside), RoPE, tokenizer
    generated = sum(math.prod(info["tensors"][t]) for t in gg.GENERATED if t in info["tensors"])
    assert info["elements"] - generated == gg.param_counts(src)["total"]
    assert info["metadata"]["rope.freq_base"] == AutoConfig.from_pretrained(src).rope_parameters["rope_theta"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    if family.startswith("llama-3"):  # one divisor per rotary pair: 1 for the fastest, the factor for the slowest
        freqs = info["rope_freqs"]
        assert len(freqs) == generated == head_dim // 2
        assert freqs[0] == 1.0 and freqs[-1] == kw["factor"] and len(set(freqs)) > 2
    else:
        assert info["rope_freqs"] is None and generated == 0
    q8 = gg.quantize(llama_cpp, f16, tmp_path / "m-q8_0.gguf", "q8_0", 2, tmp_path / "quantize.log")
    q8_info = gg.inspect(q8)
    gg.check_against_source(q8_info, src, q8.name)
    assert q8_info["rope_freqs"] == info["rope_freqs"]  # kept in float32 by the quantizer
    # read back by transformers: the source's weights and the source's RoPE frequencies
    ref = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    back = gg.load_dequantized(f16, source=src)
    assert torch.equal(back.model.rotary_emb.inv_freq, ref.model.rotary_emb.inv_freq)
    ids = torch.randint(0, SPM_VOCAB, (2, 24), generator=torch.Generator().manual_seed(0))
    want = _logits(ref, ids)
    assert (_logits(back, ids) - want).abs().max() < 0.05 * want.abs().max()
    if family.startswith("llama-3"):  # transformers' GGUF loader alone would drop the llama3 scaling
        with pytest.raises(gg.GGUFMismatch, match="rope_freqs.weight, which transformers' GGUF loader ignores"):
            gg.load_dequantized(f16)


@pytest.mark.parametrize("family_f16", ["llama-3.1", "mistral-nemo"], indirect=True)  # with rope_freqs, without
def test_a_file_whose_rope_differs_from_its_source_fails(family_f16, tmp_path):
    family, src, f16 = family_f16
    info = gg.inspect(f16)
    if family == "llama-3.1":
        cases = {
            "other factor": (
                dict(rope_scaling={**llama3_rope(32.0)["rope_scaling"]}, rope_parameters=None),
                "RoPE frequencies differ from the source's llama3 RoPE by up to",
            ),
            "no scaling": (
                dict(rope_scaling=None, rope_parameters=None),
                "the file has rope_freqs.weight, the source has no RoPE scaling",
            ),
            "other theta": (
                dict(rope_theta=10000.0, rope_parameters=None),
                "llama.rope.freq_base is 500000, the source's rope_theta is 10000",
            ),
        }
    else:
        cases = {
            "llama3 scaling": (
                dict(llama3_rope(8.0), rope_theta=1000000.0, rope_parameters=None),
                "the file has no rope_freqs.weight, so llama.cpp would run without",
            )
        }
    for name, (changes, message) in cases.items():
        other = _with_config(src, tmp_path / name.replace(" ", "-"), **changes)
        with pytest.raises(gg.GGUFMismatch, match=message):
            gg.check_against_source(info, other, f16.name)


def test_k_quants_where_rows_allow_and_sizes_shrink(tmp_path, llama_cpp, gguf_llama_dir, llama_f16):
    log = tmp_path / "log"
    infos = {
        t: gg.inspect(gg.quantize(llama_cpp, llama_f16, tmp_path / f"m-{t}.gguf", t, 2, log))
        for t in ("q8_0", "q6_k", "q4_k_m")
    }
    assert "Q6_K" in infos["q6_k"]["tensor_types"] and "Q4_K" in infos["q4_k_m"]["tensor_types"]
    bpw = [infos[t]["bits_per_weight"] for t in ("q8_0", "q6_k", "q4_k_m")]
    # strictly smaller at each step (the tied embedding, most of a tiny model, stays Q6_K in q4_k_m)
    assert bpw[0] > bpw[1] > bpw[2], bpw
    for t, info in infos.items():
        gg.check_against_source(info, gguf_llama_dir, t)


def test_a_file_that_disagrees_with_its_source_fails(tmp_path, llama_f16, gguf_llama_dir, smol_tokenizer_dir):
    f16 = llama_f16
    other = make_gguf_ready_model(
        "llama", tmp_path / "other", smol_tokenizer_dir, num_hidden_layers=3, intermediate_size=768
    )
    with pytest.raises(gg.GGUFMismatch) as e:
        gg.check_against_source(gg.inspect(f16), other, f16.name)
    msg = str(e.value)
    assert "llama.block_count is 2, the source has 3" in msg and "feed_forward_length is 512" in msg
    (other / "chat_template.jinja").write_text("{{ messages }}")
    shutil.copy2(gguf_llama_dir / "config.json", other / "config.json")
    with pytest.raises(gg.GGUFMismatch, match="chat template was not carried over"):
        gg.check_against_source(gg.inspect(f16), other, f16.name)


def test_a_failed_tool_leaves_no_file_under_the_final_name(tmp_path, llama_cpp, llama_f16):
    with pytest.raises(RuntimeError, match="llama-quantize failed"):
        gg.quantize(llama_cpp, llama_f16, tmp_path / "m-bad.gguf", "not_a_type", 2, tmp_path / "log")
    assert [p.name for p in tmp_path.iterdir()] == ["log"]  # neither m-bad.gguf nor its temporary


def test_sources_llama_cpp_cannot_take_are_refused_before_anything_runs(tmp_path, gguf_llama_dir):
    gpt2 = tmp_path / "gpt2"
    shutil.copytree(gguf_llama_dir, gpt2)
    cfg = json.loads((gpt2 / "config.json").read_text())
    (gpt2 / "config.json").write_text(json.dumps({**cfg, "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ConfigError, match="GGUF export converts LlamaForCausalLM"):
        gg.check_source(gpt2)
    bare = tmp_path / "bare"
    shutil.copytree(gguf_llama_dir, bare)
    (bare / "tokenizer.json").unlink()
    with pytest.raises(ConfigError, match="has no tokenizer"):
        gg.check_source(bare)


def test_llama_cpp_perplexity_and_serving_speed(tmp_path, llama_cpp, llama_f16):
    from pydoc_data.topics import topics

    f16 = llama_f16
    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(list(topics.values())[:10]))
    ppl = perplexity(llama_cpp, f16, text, ctx=64, threads=2, log_file=tmp_path / "ppl.log", chunks=4)
    assert ppl["chunks"] == 4 and ppl["ctx"] == 64
    assert 1 < ppl["perplexity"] < 49152 * 10  # a random model: finite, near-uniform
    speed = serving_speed(
        llama_cpp,
        f16,
        prompt_tokens=16,
        new_tokens=4,
        concurrency=[1, 2],
        threads=2,
        repeats=1,
        log_file=tmp_path / "bench.log",
    )
    assert sorted(speed) == [1, 2]
    for c, row in speed.items():
        assert row["new_tokens"] == 4 and row["prompt_tokens"] == 16
        assert row["output_tokens_per_s"] > 0 and row["ttft_ms"] > 0
        assert row["tpot_ms"] == pytest.approx(c * 1e3 / row["output_tokens_per_s"], rel=1e-3)


def test_a_tokenizer_llama_cpp_does_not_know_is_a_config_error(tmp_path, llama_cpp, tiny_llama_dir):
    with pytest.raises(ConfigError, match="does not know the tokenizer of .*recipe.stages"):
        gg.convert(llama_cpp, tiny_llama_dir, tmp_path / "t.gguf", "f16", tmp_path / "log")
    assert not any(tmp_path.glob("*.gguf")) and not any(tmp_path.glob(".*.tmp"))
