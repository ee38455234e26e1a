"""FLOPs counted from the config equal twice the multiply-adds of the instantiated model's matmuls."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from compactlm.bench.flops import PROBE_SHAPES, distill_flops_per_token, forward_flops_per_token, matmul_peak


@pytest.mark.parametrize("model_type,tied", [("llama", False), ("qwen3", True), ("mistral", False)])
def test_forward_flops_are_twice_the_linear_weights_plus_attention(model_type, tied):
    kw = dict(
        vocab_size=1000,
        hidden_size=128,
        intermediate_size=352,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=48,
        tie_word_embeddings=tied,
    )
    cfg = AutoConfig.for_model(model_type, **kw)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    seq = 256
    attention = 2 * 2 * seq * 4 * 48 * 3  # QK^T and AV, per layer, per token
    assert forward_flops_per_token({**kw, "model_type": model_type}, seq) == 2 * linear + attention


def test_distillation_counts_teacher_forward_and_student_forward_backward():
    t = dict(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=2)
    s = {**t, "num_hidden_layers": 2}
    assert distill_flops_per_token(t, s, 32) == forward_flops_per_token(t, 32) + 3 * forward_flops_per_token(s, 32)


def test_matmul_probe_reports_a_positive_rate_and_its_shape():
    peak = matmul_peak("float32", "cpu", seconds=0.3)
    assert peak["flops"] > 0 and peak["shape"] in PROBE_SHAPES
