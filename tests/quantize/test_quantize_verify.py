"""FP8 / NVFP4 exports of a tiny llama made on CPU, read back without transformers and dequantized by hand."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import pydoc_sequences

from compactlm.quantize.ptq import export, quantize
from compactlm.quantize.verify import (
    BOUNDS,
    LayoutError,
    check_layout,
    compare,
    dequantize_nvfp4,
    e2m1_to_float,
    unpack_fp4,
)

# (format, kv_cache_fp8, exclude): FP8 keeps a whole layer in bf16, NVFP4 one kind of projection
CASES = {
    "fp8": ("fp8", True, ["model.layers.0.*"]),
    "nvfp4": ("nvfp4", False, ["*.down_proj"]),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def exported(request, tiny_llama_dir, tiny_tokenizer, tmp_path_factory):
    """(format, kv_cache_fp8, exclude, export folder, reference state dict, export() result)."""
    from compactlm.model.loading import load_model

    fmt, kv, exclude = CASES[request.param]
    model = load_model(tiny_llama_dir)
    reference = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model = quantize(model, pydoc_sequences(tiny_tokenizer, 8, 64), fmt, kv, exclude, 4, "cpu", progress=False)
    out = tmp_path_factory.mktemp(f"export-{fmt}") / "checkpoint"
    sizes = export(model, tiny_tokenizer, out)
    return fmt, kv, exclude, out, reference, sizes


def test_layout_is_what_tensorrt_llm_reads(exported):
    fmt, kv, _, out, _, sizes = exported
    summary = check_layout(out, fmt, kv_cache_fp8=kv)
    assert summary["quant_algo"] == {"fp8": "FP8", "nvfp4": "NVFP4"}[fmt]
    assert summary["kv_cache_quant_algo"] == ("FP8" if kv else None)
    assert summary["group_size"] == (16 if fmt == "nvfp4" else None)
    assert set(summary["quantized"]) == {fmt}
    assert {"tokenizer.json", "tokenizer_config.json", "model.safetensors"} <= set(sizes["files"])
    assert sizes["safetensors_bytes"] == (out / "model.safetensors").stat().st_size
    # every float weight left in the export was cast to bf16, as TensorRT-LLM expects next to FP8/NVFP4
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert not list(out.parent.glob(".checkpoint.*"))  # published atomically, no temp folder left
    with pytest.raises(LayoutError, match="quant_algo"):
        check_layout(out, "nvfp4" if fmt == "fp8" else "fp8")
    with pytest.raises(LayoutError, match="kv_cache_quant_algo"):
        check_layout(out, fmt, kv_cache_fp8=not kv)


def test_export_sizes(exported):
    """Quantized linears take 1 byte (FP8) or 0.5 + 1/16 byte (NVFP4 codes + e4m3 block scales) per weight,
    everything else 2 (bf16); per-tensor scales and the safetensors header add a few KB."""
    from fnmatch import fnmatchcase

    fmt, _, exclude, _, reference, sizes = exported
    assert sizes["bf16_bytes"] == 2 * sizes["parameters"]
    quantized = sum(
        v.numel()
        for k, v in reference.items()
        if k.startswith("model.layers.")
        and k.endswith("proj.weight")
        and not any(fnmatchcase(k[: -len(".weight")], p) for p in exclude)
    )
    per_weight = {"fp8": 1.0, "nvfp4": 0.5 + 1 / 16}[fmt]
    expected = sizes["bf16_bytes"] - quantized * (2 - per_weight)
    assert expected < sizes["safetensors_bytes"] < expected + 16_000, (expected, sizes)
    assert sizes["ratio_to_bf16"] == sizes["safetensors_bytes"] / sizes["bf16_bytes"] < 0.75


def test_dequantized_weights_match_within_the_format_bound(exported, tiny_llama_dir):
    fmt, _, _, out, reference, _ = exported
    report = compare(out, reference)
    assert report["passed"], [r for r in report["rows"] if not r["ok"]]
    assert compare(out, tiny_llama_dir)["rows"] == report["rows"]  # the reference may be the HF folder itself
    worst = report["max_rel_err"]
    assert 0.25 * BOUNDS[fmt] < worst[fmt] <= BOUNDS[fmt]  # really quantized, and within the bound
    assert worst["bfloat16"] <= 2**-8
    n_linear = 7 * 4
    assert sum(r["format"] == fmt for r in report["rows"]) == n_linear - (7 if fmt == "fp8" else 4)


def test_excluded_modules_stay_high_precision(exported):
    fmt, _, exclude, out, reference, _ = exported
    from fnmatch import fnmatchcase

    summary = check_layout(out, fmt, require_tokenizer=False)
    rows = {r["name"]: r for r in compare(out, reference)["rows"]}
    linears = [k[: -len(".weight")] for k in reference if k.startswith("model.layers.") and k.endswith("proj.weight")]
    for mod in linears:
        excluded = any(fnmatchcase(mod, p) for p in exclude)
        assert rows[f"{mod}.weight"]["format"] == ("bfloat16" if excluded else fmt), mod
        assert (mod in summary["high_precision"]) == excluded
        assert any(fnmatchcase(mod, p) for p in summary["exclude_modules"]) == excluded, summary["exclude_modules"]


@pytest.mark.parametrize(
    "target", ["model.layers.2.mlp.up_proj.weight_scale", "model.layers.3.self_attn.q_proj.weight_scale"]
)
def test_corrupted_scale_is_detected(exported, tmp_path, target):
    from safetensors.torch import load_file, save_file

    fmt, kv, _, out, reference, _ = exported
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    tensors = load_file(bad / "model.safetensors")
    scale = tensors[target]
    tensors[target] = (scale.float() * 2).to(scale.dtype)
    save_file(tensors, bad / "model.safetensors", metadata={"format": "pt"})
    check_layout(bad, fmt, kv_cache_fp8=kv)  # the layout is still fine ...
    report = compare(bad, reference)  # ... but the numbers are not
    assert not report["passed"]
    assert report["failures"] == [target.replace("_scale", "")]


def test_layout_rejects_a_quantized_module_listed_as_excluded(exported, tmp_path):
    fmt, kv, _, out, _, _ = exported
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    hq = json.loads((bad / "hf_quant_config.json").read_text())
    hq["quantization"]["exclude_modules"].append("model.layers.3.*")
    (bad / "hf_quant_config.json").write_text(json.dumps(hq))
    with pytest.raises(LayoutError, match=r"model\.layers\.3\..* is quantized but matches exclude_modules"):
        check_layout(bad, fmt, kv_cache_fp8=kv)


def test_e2m1_codes():
    codes = torch.arange(16, dtype=torch.uint8)
    grid = [0, 0.5, 1, 1.5, 2, 3, 4, 6]
    assert e2m1_to_float(codes).tolist() == grid + [-g for g in grid]
    assert unpack_fp4(torch.tensor([[0x21, 0x7F]], dtype=torch.uint8)).tolist() == [[1, 2, 15, 7]]


def test_nvfp4_decoding_agrees_with_modelopt():
    """Independent unpacking and scaling reproduce ModelOpt's own dequantization."""
    from modelopt.torch.quantization.qtensor.nvfp4_tensor import NVFP4QTensor

    torch.manual_seed(0)
    w = torch.randn(32, 64)
    qt, scale, scale_2 = NVFP4QTensor.quantize(w, 16)
    theirs = qt.dequantize(dtype=torch.float32, scale=scale, double_scale=scale_2, block_sizes={-1: 16})
    ours = dequantize_nvfp4(qt._quantized_data, scale, scale_2)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)  # same codes; only the product order differs
    assert (ours - w).norm() / w.norm() < BOUNDS["nvfp4"]


def _round_trip(model_dir, tokenizer, fmt, out, calib):
    from compactlm.model.loading import load_model

    model = load_model(model_dir)
    reference = {k: v.detach().clone() for k, v in model.state_dict().items()}  # before SmoothQuant/AWQ rescale
    model = quantize(model, calib, fmt, False, [], 4, "cpu", progress=False)
    sizes = export(model, tokenizer, out)
    return check_layout(out, fmt, kv_cache_fp8=False), compare(out, reference), sizes


def test_int8_smoothquant_round_trip(tiny_llama_dir, tiny_tokenizer, tmp_path):
    summary, report, _ = _round_trip(
        tiny_llama_dir, tiny_tokenizer, "int8_sq", tmp_path / "int8", pydoc_sequences(tiny_tokenizer, 4, 64)
    )
    assert summary["quant_algo"] == "W8A8_SQ_PER_CHANNEL" and summary["quantized"] == {"int8_sq": 28}
    assert report["passed"], report["failures"]
    assert 0 < report["max_rel_err"]["int8_sq"] <= BOUNDS["int8_sq"]


@pytest.mark.slow
def test_int4_awq_round_trip(tiny_tokenizer, tmp_path):
    """AWQ blocks are 128 wide, so the model needs hidden >= 128; awq_lite's search takes ~20 s on 2 cores."""
    from conftest import make_tiny_model

    folder = make_tiny_model(
        "llama",
        tmp_path / "m",
        tiny_tokenizer,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        head_dim=32,
    )
    summary, report, sizes = _round_trip(
        folder, tiny_tokenizer, "int4_awq", tmp_path / "int4", pydoc_sequences(tiny_tokenizer, 4, 32)
    )
    assert summary["quant_algo"] == "W4A16_AWQ" and summary["group_size"] == 128
    assert report["passed"], report["failures"]
    # the exporter folded AWQ's scales into the norms feeding q/k/v and gate/up; compare undid it
    assert sum(r["format"] == "folded" for r in report["rows"]) == 4
    assert sizes["ratio_to_bf16"] < 0.45


def test_nvfp4_export_of_every_architecture(tiny_model_dir, tiny_tokenizer, tmp_path):
    """Untied heads (mistral, qwen), q/k/v biases (qwen2) and q/k norms (qwen3) keep the layout valid."""
    summary, report, _ = _round_trip(
        tiny_model_dir, tiny_tokenizer, "nvfp4", tmp_path / "nvfp4", pydoc_sequences(tiny_tokenizer, 4, 32)
    )
    assert summary["quantized"] == {"nvfp4": 28}
    assert report["passed"], report["failures"]


@pytest.mark.parametrize("fmt", ["fp8", "nvfp4"])
def test_bf16_checkpoint_held_in_bf16_exports_the_float32_models_files(fmt, tiny_llama_dir, tiny_tokenizer, tmp_path):
    """The quantize stage keeps a bf16 checkpoint in bf16 on a float32 CPU, runs each block in float32 while it
    calibrates and quantizes each weight from float32: every exported tensor is bitwise that of the model loaded
    whole in float32, and the parameters are bf16 again after each block."""
    from safetensors.torch import load_file

    from compactlm.model.loading import load_model

    bf16 = tmp_path / "bf16"
    load_model(tiny_llama_dir).to(torch.bfloat16).save_pretrained(bf16)
    calib = pydoc_sequences(tiny_tokenizer, 8, 64)
    files = {}
    for held in (torch.float32, torch.bfloat16):
        model = load_model(bf16, dtype=held)
        model = quantize(model, calib, fmt, True, [], 4, "cpu", progress=False, compute_dtype=torch.float32)
        if held == torch.bfloat16:
            assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
        out = tmp_path / f"export-{held}"
        export(model, None, out, compute_dtype=torch.float32)
        files[held] = {k: v for p in sorted(out.glob("*.safetensors")) for k, v in load_file(str(p)).items()}
    full, half = files[torch.float32], files[torch.bfloat16]
    assert full.keys() == half.keys()
    for k in full:
        bits = [t.reshape(-1).view(torch.uint8) for t in (full[k], half[k])]
        assert full[k].dtype == half[k].dtype and torch.equal(*bits), k
