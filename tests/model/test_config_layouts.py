"""config.json carries RoPE in both layouts: the keys transformers 4.x reads (top-level rope_theta, rope_scaling)
equal the teacher's, and transformers 5 (installed here) still reads the same rope_parameters and frequencies."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import llama3_rope, tiny_config, write_hub_layout
from transformers import AutoConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from compactlm.model.config_layouts import with_both_rope_layouts, write_both_rope_layouts

# Each family's RoPE as its config.json on the Hub has it (transformers 4.x's layout).
TEACHERS = {
    "llama-3.1": ("llama", llama3_rope(8.0)),
    "llama-3.2": ("llama", llama3_rope(32.0)),
    "mistral-nemo": ("mistral", {"rope_theta": 1000000.0}),
    "qwen2.5": ("qwen2", {"rope_theta": 1000000.0, "rope_scaling": None}),
    "qwen3": ("qwen3", {"rope_theta": 1000000.0, "rope_scaling": None}),
}


def _inv_freq(folder):
    cfg = AutoConfig.from_pretrained(folder)
    return LlamaRotaryEmbedding(cfg).inv_freq  # the rotary module's own computation from rope_parameters


@pytest.mark.parametrize("family", sorted(TEACHERS))
def test_a_saved_config_has_the_teachers_rope_in_both_layouts(family, tmp_path):
    model_type, rope = TEACHERS[family]
    teacher = tmp_path / "teacher"
    tiny_config(model_type, max_position_embeddings=131072).save_pretrained(teacher)
    hub = write_hub_layout(teacher, rope)
    loaded = AutoConfig.from_pretrained(teacher)
    out = tmp_path / "saved"
    loaded.save_pretrained(out)  # what every stage's save_pretrained writes: transformers 5's layout alone
    assert "rope_theta" not in json.loads((out / "config.json").read_text())
    write_both_rope_layouts(out)
    saved = json.loads((out / "config.json").read_text())
    # the keys transformers 4.x reads: the teacher's, value for value
    assert saved["rope_theta"] == hub["rope_theta"]
    assert saved["rope_scaling"] == hub.get("rope_scaling")
    # transformers 5 reads the same settings and computes the same frequencies
    assert saved["rope_parameters"] == loaded.rope_parameters
    assert AutoConfig.from_pretrained(out).rope_parameters == loaded.rope_parameters
    assert torch.equal(_inv_freq(out), _inv_freq(teacher))
    if family.startswith("llama"):  # llama3 scaling really is in play: plain RoPE at 500000 differs
        plain = 1.0 / (500000.0 ** (torch.arange(0, 16, 2, dtype=torch.float32) / 16))
        assert not torch.allclose(_inv_freq(out), plain)


def test_rewriting_is_idempotent_and_a_4x_layout_is_left_as_is(tmp_path):
    cfg = tiny_config("llama", **llama3_rope()).to_dict()
    once = with_both_rope_layouts(cfg)
    assert with_both_rope_layouts(once) == once
    hub = {"model_type": "llama", **llama3_rope()}
    assert with_both_rope_layouts(hub) == hub


def test_per_layer_type_rope_has_no_4x_layout_and_is_refused():
    cfg = {
        "rope_parameters": {
            "full_attention": {"rope_type": "default", "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
        }
    }
    with pytest.raises(ValueError, match="per-layer-type RoPE has no transformers 4.x layout"):
        with_both_rope_layouts(cfg)
