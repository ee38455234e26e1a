"""ModelOpt PTQ on tiny models: exclusions, format support, deploy checks, fake-quant perplexity on CPU."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import pydoc_sequences

from compactlm.config import ConfigError
from compactlm.quantize.formats import check_deploy_support, check_forward_support, forward_supported, parse_sm
from compactlm.quantize.ptq import QuantizeSpec, build_quant_cfg, check_exclude, excluded_weight_modules, quantize


@pytest.fixture(scope="module")
def llama(tiny_llama_dir):
    from compactlm.model.loading import load_model

    return load_model(tiny_llama_dir)


def test_exclude_pattern_matching_nothing_names_the_key(llama):
    with pytest.raises(ConfigError, match=r"quantize\.exclude.*'model\.layers\.99\.\*'"):
        check_exclude(llama, ["*lm_head*", "model.layers.99.*"])
    with pytest.raises(ConfigError, match="quantize.exclude"):
        quantize(llama, np.zeros((1, 8), np.int32), "fp8", False, ["*nonexistent*"], 1, "cpu", progress=False)


def test_exclude_resolves_containers_to_weight_owning_modules(llama):
    hits = check_exclude(llama, ["*lm_head*"])
    assert hits == {"*lm_head*": ["lm_head"]}
    mods = excluded_weight_modules(llama, ["model.layers.1", "*.down_proj"])
    assert "model.layers.1.self_attn.q_proj" in mods and "model.layers.1.input_layernorm" in mods
    assert "model.layers.0.mlp.down_proj" in mods and "model.layers.0.mlp.up_proj" not in mods


def test_quant_cfg_is_a_copy_with_kv_and_exclusions():
    import modelopt.torch.quantization as mtq

    before = len(mtq.FP8_DEFAULT_CFG["quant_cfg"])
    cfg = build_quant_cfg("fp8", True, ["model.layers.0.mlp.down_proj"])
    names = [e["quantizer_name"] for e in cfg["quant_cfg"]]
    assert "*[kv]_bmm_quantizer" in names
    assert names[-1] == "model.layers.0.mlp.down_proj.*_quantizer" and cfg["quant_cfg"][-1]["enable"] is False
    assert len(mtq.FP8_DEFAULT_CFG["quant_cfg"]) == before  # ModelOpt's preset is untouched
    assert "*[kv]_bmm_quantizer" not in [e["quantizer_name"] for e in build_quant_cfg("nvfp4", False)["quant_cfg"]]


@pytest.mark.parametrize(
    "gpu, sm",
    [
        ("H100", 90),
        ("NVIDIA H200", 90),
        ("dgx_h200", 90),
        ("sm_90", 90),
        ("9.0", 90),
        ((10, 0), 100),
        ("B200", 100),
        ("GB200", 100),
        ("L40S", 89),
        ("A100", 80),
        ("A10", 86),
        ("sm_100a", 100),
        (120, 120),
    ],
)
def test_parse_sm(gpu, sm):
    assert parse_sm(gpu)[0] == sm


def test_deploy_support_nvfp4_needs_blackwell():
    assert check_deploy_support("fp8", "H100") == 90
    assert check_deploy_support("nvfp4", "B200") == 100
    for gpu in ("H100", "NVIDIA H200", "sm_90"):
        with pytest.raises(ConfigError, match=r"quantize\.format=nvfp4 cannot be served.*Blackwell.*format=fp8"):
            check_deploy_support("nvfp4", gpu)
    with pytest.raises(ConfigError, match=r"FP8 needs Ada or Hopper"):
        check_deploy_support("fp8", "A100")
    with pytest.raises(ConfigError, match=r"quantize\.deploy_gpu='tpu-v5'"):
        check_deploy_support("fp8", "tpu-v5")
    with pytest.raises(ConfigError, match=r"quantize\.format='int3'.*fp8, nvfp4"):
        check_deploy_support("int3", "H100")


def test_forward_support():
    assert forward_supported("fp8", "cpu") and forward_supported("int8_sq", "cpu")
    assert forward_supported("nvfp4", "cuda:0") and not forward_supported("nvfp4", "cpu")
    with pytest.raises(ConfigError, match=r"quantize\.format=nvfp4.*needs cuda"):
        check_forward_support("nvfp4", "cpu")


def test_spec_validation():
    assert QuantizeSpec(format="nvfp4", deploy_gpu="b200").format == "nvfp4"
    with pytest.raises(ConfigError, match=r"quantize\.format='fp6'"):
        QuantizeSpec(format="fp6")
    with pytest.raises(ConfigError, match=r"quantize\.format=nvfp4 cannot be served on quantize\.deploy_gpu='h100'"):
        QuantizeSpec(format="nvfp4", deploy_gpu="h100")
    with pytest.raises(ConfigError, match=r"quantize\.batch_size=0"):
        QuantizeSpec(batch_size=0)
    with pytest.raises(ConfigError, match=r"quantize\.export_dtype='float32'"):
        QuantizeSpec(export_dtype="float32")
    with pytest.raises(ConfigError, match=r"quantize\.exclude"):
        QuantizeSpec(exclude=[""])


def test_fp8_fake_quant_perplexity_close_to_unquantized(tiny_llama_dir, tiny_tokenizer):
    from compactlm.model.loading import load_model
    from compactlm.quantize.verify import fake_quant_quality

    calib, valid = pydoc_sequences(tiny_tokenizer, 24, 64)[:16], pydoc_sequences(tiny_tokenizer, 24, 64)[16:]
    reference = load_model(tiny_llama_dir)
    model = quantize(load_model(tiny_llama_dir), calib, "fp8", True, ["*lm_head*"], 8, "cpu", progress=False)
    out = fake_quant_quality(model, valid, "fp8", 8, "cpu", reference=reference, progress=False)
    ref, q = out["reference"], out["quantized"]
    # FP8 weights and activations err by ~3% per tensor; on this 4-layer model the loss moves by well under 2%
    assert abs(q["loss"] - ref["loss"]) < 0.02 * ref["loss"], (ref, q)
    assert q["perplexity"] != ref["perplexity"]  # the quantizers are really in the forward
    assert q["top1_agreement"] > 0.8
    with pytest.raises(ConfigError, match="nvfp4"):
        fake_quant_quality(model, valid, "nvfp4", 8, "cpu")


@pytest.mark.gpu
def test_nvfp4_fake_quant_perplexity_on_cuda(tiny_llama_dir, tiny_tokenizer):
    """NVFP4's fake-quantized forward asserts CUDA tensors; on a GPU its perplexity stays near bf16's."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from compactlm.model.loading import load_model
    from compactlm.quantize.verify import fake_quant_quality

    seqs = pydoc_sequences(tiny_tokenizer, 24, 64)
    reference = load_model(tiny_llama_dir, device="cuda")
    model = quantize(load_model(tiny_llama_dir, device="cuda"), seqs[:16], "nvfp4", True, [], 8, "cuda", progress=False)
    out = fake_quant_quality(model, seqs[16:], "nvfp4", 8, "cuda", reference=reference, progress=False)
    assert abs(out["quantized"]["loss"] - out["reference"]["loss"]) < 0.1 * out["reference"]["loss"], out
