"""compactlm.bench.speed on tiny random models: shapes, exact token counts, cache paths and the ratio arithmetic.

Nothing here asserts on wall time: only that timings exist, are positive and are consistent with each other.
"""

from __future__ import annotations

import time

import pytest
import torch
from conftest import TINY, build_tiny_model

from compactlm.bench import speed as bench
from compactlm.model.loading import count_parameters

SHAPE = dict(prompt_tokens=12, new_tokens=5, device="cpu", repeats=2)


@pytest.fixture(scope="module")
def tiny_llama():
    return build_tiny_model("llama")


def test_prompt_ids_are_deterministic_distinct_rows(tiny_tokenizer):
    a = bench.prompt_ids(tiny_tokenizer, 16, 4)
    b = bench.prompt_ids(tiny_tokenizer, 16, 4)
    assert tuple(a.shape) == (4, 16) and a.dtype == torch.long
    assert a.equal(b)
    assert len({tuple(row.tolist()) for row in a}) == 4  # each row its own slice of the text
    short = bench.prompt_ids(tiny_tokenizer, 50, 3, text="abc")  # text repeated when too short
    assert tuple(short.shape) == (3, 50)


@pytest.mark.parametrize("model_type", sorted(TINY))
@pytest.mark.parametrize("batch_size", [1, 4])
def test_generation_speed_static_cache(model_type, batch_size, tiny_tokenizer):
    model = build_tiny_model(model_type)
    r = bench.generation_speed(model, tiny_tokenizer, batch_size=batch_size, **SHAPE)
    assert r["cache"] == "static" and r["cache_fallback_reason"] is None
    assert r["output_tokens"] == batch_size * SHAPE["new_tokens"]
    assert (r["batch_size"], r["prompt_tokens"], r["new_tokens"]) == (batch_size, 12, 5)
    assert len(r["runs"]) == 2 and r["warmup"] == 1
    assert r["ttft_ms"] > 0 and r["tpot_ms"] > 0 and r["output_tokens_per_s"] > 0 and r["cpu_ms"] > 0
    assert r["ttft_ms"] + r["tpot_ms"] * (SHAPE["new_tokens"] - 1) <= r["total_ms"] * 1.0001
    assert r["output_tokens_per_s"] == pytest.approx(r["output_tokens"] / (r["total_ms"] / 1e3))
    best = min(r["runs"], key=lambda x: x["total_ms"])
    assert r["total_ms"] == best["total_ms"]
    cfg = model.config  # K and V, fp32, every layer, for every position but the last (never fed back)
    assert r["kv_cache_bytes"] == (
        2 * cfg.num_hidden_layers * batch_size * cfg.num_key_value_heads * (12 + 5 - 1) * cfg.head_dim * 4
    )
    assert r["weights_bytes"] == 4 * count_parameters(model)["total"]
    assert r["peak_memory_bytes"] > 0 and r["peak_memory_increase_bytes"] >= 0 and r["memory_method"]
    assert not hasattr(model, "_cache")  # the static cache generate keeps on the model is released


def test_static_and_dynamic_caches_generate_the_same_tokens(tiny_llama, tiny_tokenizer):
    ids = bench.prompt_ids(tiny_tokenizer, 12, 4)
    static = bench._generate_once(tiny_llama, ids, 6, 0, "static")
    dynamic = bench._generate_once(tiny_llama, ids, 6, 0, None)
    assert static["cache_type"] == "StaticCache" and dynamic["cache_type"] == "DynamicCache"
    assert tuple(static["sequences"].shape) == (4, 18)
    assert static["sequences"].equal(dynamic["sequences"])
    del tiny_llama._cache


def test_exact_token_count_even_when_eos_is_the_greedy_choice(tiny_tokenizer):
    model = build_tiny_model("qwen2")
    with torch.no_grad():  # EOS (id 2) is the argmax everywhere: plain greedy would stop after one token
        model.lm_head.weight.zero_()
        model.lm_head.bias = torch.nn.Parameter(torch.zeros(model.config.vocab_size))
        model.lm_head.bias[2] = 1.0
    model.config.eos_token_id = model.generation_config.eos_token_id = 2
    r = bench.generation_speed(model, tiny_tokenizer, batch_size=2, static_cache=False, **SHAPE)
    assert r["output_tokens"] == 10 and r["cache"] == "dynamic"


def test_dynamic_cache_path(tiny_llama, tiny_tokenizer):
    r = bench.generation_speed(tiny_llama, tiny_tokenizer, batch_size=4, static_cache=False, **SHAPE)
    assert r["cache"] == "dynamic" and r["cache_fallback_reason"] is None
    # the dynamic cache holds the prompt and every new token but the last (its K/V is never computed)
    cfg = tiny_llama.config
    assert r["kv_cache_bytes"] == 2 * cfg.num_hidden_layers * 4 * 2 * (12 + 4) * 16 * 4


def test_static_cache_failure_falls_back_to_dynamic(tiny_llama, tiny_tokenizer, monkeypatch):
    original = bench._generate_once

    def no_static(model, ids, new_tokens, pad, cache_implementation):
        if cache_implementation == "static":
            raise NotImplementedError("static cache not supported here")
        return original(model, ids, new_tokens, pad, cache_implementation)

    monkeypatch.setattr(bench, "_generate_once", no_static)
    r = bench.generation_speed(tiny_llama, tiny_tokenizer, batch_size=1, **SHAPE)
    assert r["cache"] == "dynamic"
    assert r["cache_fallback_reason"] == "NotImplementedError: static cache not supported here"
    assert len(r["runs"]) == 2


def test_single_new_token_has_no_tpot(tiny_llama, tiny_tokenizer):
    r = bench.generation_speed(
        tiny_llama, tiny_tokenizer, prompt_tokens=8, new_tokens=1, batch_size=1, device="cpu", repeats=1
    )
    assert r["tpot_ms"] is None and r["output_tokens"] == 1


@pytest.mark.parametrize("key,value", [("prompt_tokens", 0), ("new_tokens", 0), ("batch_size", 0), ("repeats", 0)])
def test_rejects_bad_shapes(tiny_llama, tiny_tokenizer, key, value):
    kw = {**SHAPE, "batch_size": 1, key: value}
    with pytest.raises(ValueError, match=f"{key}=0"):
        bench.generation_speed(tiny_llama, tiny_tokenizer, **kw)


def test_peak_memory_sees_an_allocation_inside_the_block():
    with bench.PeakMemory("cpu") as mem:
        x = torch.ones(64, 2**20 // 4)  # 64 MiB of touched float32
        del x
    assert mem.increase_bytes >= 60 * 2**20
    assert mem.peak_bytes >= mem.before_bytes + mem.increase_bytes - 1


def test_peak_memory_sampling_fallback(monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "_CLEAR_REFS", tmp_path / "missing" / "clear_refs")  # unwritable -> sample
    with bench.PeakMemory("cpu") as mem:
        x = torch.ones(32, 2**20 // 4)  # 32 MiB, held long enough for the 1 ms sampler
        time.sleep(0.05)
        del x
    assert mem.method == "VmRSS sampled every 1 ms"
    assert mem.increase_bytes >= 30 * 2**20


def _result(tokens_per_s, ttft, tpot, **kw):
    return dict(
        output_tokens_per_s=tokens_per_s,
        ttft_ms=ttft,
        tpot_ms=tpot,
        peak_memory_bytes=1000,
        kv_cache_bytes=100,
        weights_bytes=400,
        batch_size=1,
        prompt_tokens=64,
        new_tokens=32,
        device="cpu",
        dtype="float32",
        cache="static",
        **kw,
    )


def test_compare_ratios():
    teacher, student = _result(50.0, 40.0, 18.3), _result(75.0, 30.0, 12.2)
    student.update(peak_memory_bytes=700, kv_cache_bytes=80, weights_bytes=266)
    c = bench.compare(teacher, student, 11_040, 7_360)
    assert c["tokens_per_s_ratio"] == pytest.approx(1.5)
    assert c["tpot_ratio"] == pytest.approx(12.2 / 18.3)
    assert c["decode_speedup"] == pytest.approx(18.3 / 12.2)
    assert c["ttft_ratio"] == pytest.approx(0.75)
    assert c["ideal_speedup"] == pytest.approx(1.5)
    assert c["params_ratio"] == pytest.approx(7_360 / 11_040)
    assert c["fraction_of_ideal"] == pytest.approx((18.3 / 12.2) / 1.5)
    assert (c["peak_memory_ratio"], c["kv_cache_ratio"], c["weights_ratio"]) == pytest.approx((0.7, 0.8, 0.665))


def test_params_read_per_token_tied_and_untied():
    tied = {"total": 1000, "embedding": 300, "without_lm_head": 1000}
    untied = {"total": 1300, "embedding": 300, "without_lm_head": 1000}
    assert bench.params_read_per_token(tied) == 1000  # the tied table is read in full for the logits
    assert bench.params_read_per_token(untied) == 1000  # the input table is only gathered from
    assert bench.params_read_per_token(42) == 42
    c = bench.compare(
        _result(1, 1, 1), _result(1, 1, 1), tied, {"total": 500, "embedding": 300, "without_lm_head": 500}
    )
    assert c["ideal_speedup"] == pytest.approx(2.0)


def test_compare_refuses_different_shapes():
    with pytest.raises(ValueError, match="batch_size=1 for the teacher but 8"):
        bench.compare(_result(1, 1, 1), _result(1, 1, 1) | {"batch_size": 8}, 2, 1)


def test_compare_on_real_measurements(tiny_tokenizer):
    teacher, student = build_tiny_model("llama"), build_tiny_model("llama", num_hidden_layers=2, intermediate_size=48)
    kw = dict(SHAPE, batch_size=1, repeats=1)
    rt = bench.generation_speed(teacher, tiny_tokenizer, **kw)
    rs = bench.generation_speed(student, tiny_tokenizer, **kw)
    c = bench.compare(rt, rs, count_parameters(teacher), count_parameters(student))
    assert c["ideal_speedup"] > 1 and c["weights_ratio"] < 1 and c["kv_cache_ratio"] == pytest.approx(0.5)
    assert c["tokens_per_s_ratio"] > 0 and c["fraction_of_ideal"] > 0
