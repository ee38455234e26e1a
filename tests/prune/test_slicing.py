"""Slicing tiny random decoders: identity at full size, zeroed units removed, reloadable checkpoints, validation."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import TINY, build_tiny_model, llama3_rope, tiny_config, write_hub_layout
from transformers import AutoConfig, AutoModelForCausalLM

from compactlm.arch import adapter_for, decoder_layers
from compactlm.config import ConfigError
from compactlm.prune.importance import ImportanceScores, collect_importance
from compactlm.prune.slicing import (
    prune_model,
    save_pruned,
    stream_prune,
    top_heads_per_group,
    top_k_sorted,
    validate_export_config,
)

ARCHS = sorted(TINY)
SMALLER = {"hidden_size": 48, "ffn_hidden_size": 64, "num_attention_heads": 2, "num_layers": 3}


def tiny_model(model_type: str, seed: int = 0, **overrides):
    """A random tiny model in eval mode, weights scaled like conftest's so layers differ measurably."""
    return build_tiny_model(model_type, seed, **overrides)


def batches(n: int = 2, shape=(2, 16), seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 384, shape, generator=g) for _ in range(n)]


@torch.no_grad()
def logits(model, ids):
    return model(input_ids=ids, use_cache=False).logits


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() counts a tied matrix once


def own_sizes(cfg) -> dict[str, int]:
    return {
        "hidden_size": cfg.hidden_size,
        "ffn_hidden_size": cfg.intermediate_size,
        "num_attention_heads": cfg.num_attention_heads,
        "num_layers": cfg.num_hidden_layers,
    }


@pytest.mark.parametrize("export", [own_sizes, lambda cfg: {}], ids=["own-sizes", "empty"])
def test_prune_to_own_sizes_is_identity(tiny_model_dir, export):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    adapter = adapter_for(model.config.model_type)
    ids = batches(1)[0]
    before, params = logits(model, ids), n_params(model)
    scores = collect_importance(model, adapter, batches(), progress=False)
    prune_model(model, adapter, scores, export(model.config), "block_influence")
    assert (logits(model, ids) - before).abs().max() < 1e-5
    assert n_params(model) == params


def _zero_heads_columns(o_proj, heads, head_dim):
    for h in heads:
        o_proj.weight[:, h * head_dim : (h + 1) * head_dim] = 0


@pytest.mark.parametrize("arch", ARCHS)
def test_units_with_zero_activations_are_the_ones_removed(arch):
    """Zero some hidden channels, FFN neurons and a whole layer; they score 0 and pruning them changes nothing.

    Query heads share their KV head's values, so a single head's o_proj input cannot be made exactly zero
    without zeroing its whole group; instead the lowest-scoring head of each group is made inert (its
    o_proj columns zeroed) after scoring — removing it must not change the logits either.
    """
    model = tiny_model(arch, rms_norm_eps=1e-12)  # eps ~0 so the RMSNorm rescale below is exact
    adapter = adapter_for(arch)
    cfg = model.config
    H, I, L, hd = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.head_dim  # noqa: E741 (the paper's symbols)
    g = torch.Generator().manual_seed(3)
    dead_ch = torch.randperm(H, generator=g)[:8].sort().values
    dead_ffn = [torch.randperm(I, generator=g)[:16].sort().values for _ in range(L)]
    backbone, layers = getattr(model, adapter.backbone), decoder_layers(model, adapter)
    identity_layer = 2
    with torch.no_grad():
        # Hidden channels: zero in the embedding, in every norm's weight, and in every write to the residual.
        getattr(backbone, adapter.embed).weight[:, dead_ch] = 0
        getattr(backbone, adapter.final_norm).weight[dead_ch] = 0
        for i, layer in enumerate(layers):
            attn, mlp = getattr(layer, adapter.attn), getattr(layer, adapter.mlp)
            getattr(layer, adapter.input_norm).weight[dead_ch] = 0
            getattr(layer, adapter.post_attn_norm).weight[dead_ch] = 0
            getattr(attn, adapter.o_proj).weight[dead_ch] = 0
            getattr(mlp, adapter.down_proj).weight[dead_ch] = 0
            getattr(mlp, adapter.up_proj).weight[dead_ffn[i]] = 0  # act(gate) * 0 = 0 at down_proj's input
            if i == identity_layer:
                getattr(attn, adapter.o_proj).weight.zero_()
                getattr(mlp, adapter.down_proj).weight.zero_()

    scores = collect_importance(model, adapter, batches(), progress=False)
    alive_ch = torch.ones(H, dtype=torch.bool)
    alive_ch[dead_ch] = False
    assert torch.all(scores.hidden[dead_ch] == 0) and torch.all(scores.hidden[alive_ch] > 0)
    for i in range(L):
        assert torch.all(scores.ffn[i, dead_ffn[i]] == 0) and (scores.ffn[i] > 0).sum() == I - 16
    assert scores.depth.argmin() == identity_layer

    kv = cfg.num_key_value_heads
    inert = [top_heads_per_group(-scores.heads[i], kv, kv).tolist() for i in range(L)]  # lowest head per group
    with torch.no_grad():
        for i, layer in enumerate(layers):
            _zero_heads_columns(getattr(getattr(layer, adapter.attn), adapter.o_proj), inert[i], hd)

    ids = batches(1, (2, 20), seed=7)[0]
    before = logits(model, ids)
    kept_layer_objects = [layers[i] for i in range(L) if i != identity_layer]
    export = {"hidden_size": H - 8, "ffn_hidden_size": I - 16, "num_attention_heads": 2, "num_layers": L - 1}
    prune_model(model, adapter, scores, export, "block_influence")

    # The removed units are exactly the dead ones.
    assert list(decoder_layers(model, adapter)) == kept_layer_objects
    assert torch.all(getattr(backbone, adapter.embed).weight.abs().sum(0) > 0)  # no dead channel left
    for layer in decoder_layers(model, adapter):
        up = getattr(getattr(layer, adapter.mlp), adapter.up_proj).weight
        assert up.shape == (I - 16, H - 8) and torch.all(up.abs().sum(1) > 0)
        o = getattr(getattr(layer, adapter.attn), adapter.o_proj).weight.view(H - 8, 2, hd)
        assert torch.all(o.abs().sum(dim=(0, 2)) > 0)  # no inert head left
    # RMSNorm now averages over H-8 channels instead of H (ModelOpt does not compensate); undo that
    # factor here so the function can be compared exactly.
    with torch.no_grad():
        scale = math.sqrt(H / (H - 8))
        getattr(backbone, adapter.final_norm).weight.mul_(scale)
        for layer in decoder_layers(model, adapter):
            getattr(layer, adapter.input_norm).weight.mul_(scale)
            getattr(layer, adapter.post_attn_norm).weight.mul_(scale)
    after = logits(model, ids)
    assert (after - before).abs().max() < 1e-5


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("arch", ARCHS)
def test_pruned_checkpoint_reloads_generates_and_counts(arch, tied, tmp_path, tiny_tokenizer):
    model, adapter = tiny_model(arch, tie_word_embeddings=tied), adapter_for(arch)
    scores = collect_importance(model, adapter, batches(), progress=False)
    prune_model(model, adapter, scores, SMALLER, "block_influence")
    out = save_pruned(model, tiny_tokenizer, tmp_path / "pruned")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned"]  # no temp folder left behind
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()

    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    c = loaded.config
    assert (c.hidden_size, c.intermediate_size, c.num_attention_heads, c.num_hidden_layers) == (48, 64, 2, 3)
    assert (c.head_dim, c.num_key_value_heads, c.tie_word_embeddings) == (16, 2, tied)
    assert (loaded.lm_head.weight is loaded.model.embed_tokens.weight) == tied
    if getattr(c, "layer_types", None) is not None:
        assert len(c.layer_types) == 3
    assert [getattr(layer, adapter.attn).layer_idx for layer in decoder_layers(loaded, adapter)] == [0, 1, 2]
    ids = batches(1)[0]
    assert torch.allclose(logits(loaded, ids), logits(model, ids), atol=1e-6, rtol=0)

    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(out))
    assert n_params(loaded) == n_params(model) == n_params(meta)

    prompt = tiny_tokenizer("The string module", return_tensors="pt")
    gen = loaded.generate(**prompt, max_new_tokens=6, do_sample=False, pad_token_id=tiny_tokenizer.pad_token_id)
    assert gen.shape[1] == prompt["input_ids"].shape[1] + 6
    # the KV cache path (layer_idx after depth pruning) agrees with a full forward for the first new token
    assert gen[0, -6] == logits(loaded, prompt["input_ids"])[0, -1].argmax()
    assert isinstance(tiny_tokenizer.decode(gen[0]), str)


def test_a_llama31_checkpoint_pruned_keeps_its_rope_for_transformers_4_and_5(tmp_path, tiny_tokenizer):
    """A Llama-3.1-style teacher (config.json as on the Hub: rope_theta 500000, llama3 rope_scaling) pruned: the
    pruned config.json has the keys transformers 4.x reads equal to the teacher's, beside transformers 5's."""
    teacher = tmp_path / "teacher"
    build_tiny_model(
        "llama", tie_word_embeddings=False, max_position_embeddings=131072, **llama3_rope()
    ).save_pretrained(teacher)
    hub = write_hub_layout(teacher, llama3_rope())
    model, adapter = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32).eval(), adapter_for("llama")
    scores = collect_importance(model, adapter, batches(), progress=False)
    prune_model(model, adapter, scores, SMALLER, "block_influence")
    out = save_pruned(model, tiny_tokenizer, tmp_path / "pruned")
    saved = json.loads((out / "config.json").read_text())
    assert (saved["rope_theta"], saved["rope_scaling"]) == (hub["rope_theta"], hub["rope_scaling"])
    assert saved["rope_parameters"] == {**hub["rope_scaling"], "rope_theta": hub["rope_theta"]}
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert torch.equal(loaded.model.rotary_emb.inv_freq, model.model.rotary_emb.inv_freq)
    ids = batches(1)[0]
    assert torch.allclose(logits(loaded, ids), logits(model, ids), atol=1e-6, rtol=0)
    # the prune stage's path (tensor by tensor from the safetensors files) writes the same config.json
    streamed = stream_prune(teacher, scores, SMALLER, tmp_path / "streamed")
    assert streamed["config"].num_hidden_layers == saved["num_hidden_layers"]
    assert json.loads((tmp_path / "streamed" / "config.json").read_text()) == saved


def test_prune_with_lm_loss_depth_drops_lowest_loss_block():
    model, adapter = tiny_model("qwen2"), adapter_for("qwen2")
    scores = collect_importance(model, adapter, batches(), progress=False)
    scores.depth_lm_loss, scores.depth_lm_loss_block_size = {0: 6.0, 1: 5.0, 2: 5.5}, 2
    layers = list(decoder_layers(model, adapter))
    prune_model(model, adapter, scores, {"num_layers": 2}, "lm_loss")
    assert list(decoder_layers(model, adapter)) == [layers[0], layers[3]]
    assert [layer.self_attn.layer_idx for layer in decoder_layers(model, adapter)] == [0, 1]
    assert model.config.num_hidden_layers == 2 and len(model.config.layer_types) == 2


def test_heads_are_chosen_within_each_kv_group_and_kv_heads_kept():
    s = torch.tensor([0.1, 0.9, 0.5, 0.2, 0.8, 0.7, 0.05, 0.6])  # 8 heads, 2 KV groups of 4
    assert top_heads_per_group(s, 2, 4).tolist() == [1, 2, 4, 5]
    assert top_heads_per_group(s, 2, 2).tolist() == [1, 4]
    assert top_heads_per_group(s, 2, 8).tolist() == list(range(8))
    assert top_k_sorted(torch.tensor([3.0, 1.0, 2.0, 3.0]), 2).tolist() == [0, 3]

    model, adapter = tiny_model("llama", num_attention_heads=8, num_key_value_heads=2, head_dim=8), adapter_for("llama")
    scores = collect_importance(model, adapter, batches(), progress=False)
    scores.heads[:] = s  # every layer: heads 1, 2 | 4, 5 win
    attn = decoder_layers(model, adapter)[0].self_attn
    q_before, k_before = attn.q_proj.weight.clone(), attn.k_proj.weight.clone()
    prune_model(model, adapter, scores, {"num_attention_heads": 4}, "block_influence")
    keep = torch.cat([torch.arange(h * 8, h * 8 + 8) for h in (1, 2, 4, 5)])
    assert torch.equal(attn.q_proj.weight, q_before[keep]) and torch.equal(attn.k_proj.weight, k_before)
    assert attn.num_key_value_groups == 2 and model.config.num_attention_heads == 4
    assert logits(model, batches(1)[0]).shape == (2, 16, 384)


@pytest.mark.parametrize(
    "export, message",
    [
        ({"ffn_hidden_size": 20000}, "prune.export_config.ffn_hidden_size=20000 exceeds the model's 96"),
        ({"hidden_size": 65}, "prune.export_config.hidden_size=65 exceeds the model's 64"),
        ({"num_layers": 5}, "prune.export_config.num_layers=5 exceeds the model's 4"),
        ({"num_layers": 0}, "prune.export_config.num_layers=0 must be an integer >= 1"),
        ({"hidden_size": -8}, "prune.export_config.hidden_size=-8 must be an integer >= 1"),
        ({"ffn_hidden_size": 0}, "prune.export_config.ffn_hidden_size=0 must be an integer >= 1"),
        (
            {"num_attention_heads": 3},
            "prune.export_config.num_attention_heads=3 is not divisible by the model's num_key_value_heads=2",
        ),
        ({"num_attention_heads": 8}, "prune.export_config.num_attention_heads=8 exceeds the model's 4"),
        ({"hidden_size": 32.5}, "prune.export_config.hidden_size=32.5 must be an integer"),
        ({"num_layers": True}, "prune.export_config.num_layers=True must be an integer"),
        ({"num_heads": 2}, "prune.export_config.num_heads is not a known size"),
    ],
)
def test_invalid_export_config_names_the_key(export, message):
    cfg = tiny_config("mistral")
    with pytest.raises(ConfigError) as e:
        validate_export_config(export, cfg)
    assert message in str(e.value)


def test_valid_export_configs_pass_and_prune_model_validates():
    cfg = tiny_config("mistral")
    validate_export_config({}, cfg)
    validate_export_config({"hidden_size": 1, "ffn_hidden_size": 96, "num_attention_heads": 2, "num_layers": 1}, cfg)
    validate_export_config({"hidden_size": None}, cfg)
    model, adapter = tiny_model("mistral"), adapter_for("mistral")
    scores = collect_importance(model, adapter, batches(1), progress=False)
    with pytest.raises(ConfigError, match="ffn_hidden_size=97"):
        prune_model(model, adapter, scores, {"ffn_hidden_size": 97}, "block_influence")
    wrong = ImportanceScores(
        hidden=torch.ones(32), ffn=scores.ffn, heads=scores.heads, depth=scores.depth, num_samples=1
    )
    with pytest.raises(ValueError, match="`hidden` have shape"):
        prune_model(model, adapter, wrong, {"hidden_size": 16}, "block_influence")
