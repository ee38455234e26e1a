"""Minitron importance on tiny random decoders: hook scores equal a from-scratch reference, depth selection."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TINY, build_tiny_model
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from compactlm.arch import adapter_for, decoder_layers
from compactlm.prune.importance import (
    ImportanceScores,
    add_lm_loss_scores,
    collect_importance,
    lm_loss_block_scores,
    select_layers,
)
from compactlm.prune.plots import plot_depth, plot_width

ARCHS = sorted(TINY)


def tiny_model(model_type: str, seed: int = 0, **overrides):
    """A random tiny model in eval mode, weights scaled like conftest's so layers differ measurably."""
    return build_tiny_model(model_type, seed, **overrides)


def random_batches(shapes=((2, 12), (3, 12), (1, 20)), seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 384, s, generator=g) for s in shapes]


@torch.no_grad()
def manual_forward(model, adapter, ids):
    """Re-derive every hooked activation with an explicit forward (own attention math, eager, causal).

    Returns (per-layer dicts of x_in, ln1, o_in, ln2, mlp_in, x_out — all [B, T, C]; logits [B, T, V]).
    """
    cfg = model.config
    n_heads, kv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    backbone = getattr(model, adapter.backbone)
    x = getattr(backbone, adapter.embed)(ids)
    B, T, _ = x.shape
    pos = torch.arange(T)[None].expand(B, T)
    cos, sin = backbone.rotary_emb(x, pos)
    causal = torch.full((T, T), float("-inf")).triu(1)
    acts = []
    for layer in decoder_layers(model, adapter):
        attn, mlp = getattr(layer, adapter.attn), getattr(layer, adapter.mlp)
        ln1 = getattr(layer, adapter.input_norm)(x)
        q = getattr(attn, adapter.q_proj)(ln1).view(B, T, n_heads, hd)
        k = getattr(attn, adapter.k_proj)(ln1).view(B, T, kv, hd)
        v = getattr(attn, adapter.v_proj)(ln1).view(B, T, kv, hd)
        if adapter.qk_norm:
            q, k = getattr(attn, adapter.qk_norm[0])(q), getattr(attn, adapter.qk_norm[1])(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        k, v = k.repeat_interleave(n_heads // kv, dim=1), v.repeat_interleave(n_heads // kv, dim=1)
        w = torch.softmax(q @ k.transpose(-1, -2) * hd**-0.5 + causal, dim=-1)
        o_in = (w @ v).transpose(1, 2).reshape(B, T, n_heads * hd)
        h = x + getattr(attn, adapter.o_proj)(o_in)
        ln2 = getattr(layer, adapter.post_attn_norm)(h)
        mlp_in = mlp.act_fn(getattr(mlp, adapter.gate_proj)(ln2)) * getattr(mlp, adapter.up_proj)(ln2)
        out = h + getattr(mlp, adapter.down_proj)(mlp_in)
        acts.append(dict(x_in=x, ln1=ln1, o_in=o_in, ln2=ln2, mlp_in=mlp_in, x_out=out))
        x = out
    logits = getattr(model, adapter.lm_head)(getattr(backbone, adapter.final_norm)(x))
    return acts, logits


def l2_over_samples(per_batch: list[torch.Tensor]) -> torch.Tensor:
    """The documented formula: per sample mean over seq of |a|, then one L2 norm over all samples."""
    per_sample = torch.cat([a.abs().mean(dim=1) for a in per_batch])  # [N, C]
    return per_sample.double().pow(2).sum(dim=0).sqrt().float()


def reference_scores(model, adapter, batches) -> ImportanceScores:
    cfg = model.config
    runs = [manual_forward(model, adapter, ids) for ids in batches]
    for ids, (_, logits) in zip(batches, runs):  # the manual forward IS the model
        torch.testing.assert_close(logits, model(ids).logits, rtol=1e-4, atol=1e-4)
    L = cfg.num_hidden_layers
    per = lambda key, i: [acts[i][key] for acts, _ in runs]  # noqa: E731
    hidden = sum(l2_over_samples(per("ln1", i)) + l2_over_samples(per("ln2", i)) for i in range(L))
    ffn = torch.stack([l2_over_samples(per("mlp_in", i)) for i in range(L)])
    heads = torch.stack(
        [l2_over_samples(per("o_in", i)).view(cfg.num_attention_heads, cfg.head_dim).norm(dim=-1) for i in range(L)]
    )
    depth = []
    for i in range(L):
        total = 0.0
        for acts, _ in runs:
            a, b = acts[i]["x_in"], acts[i]["x_out"]
            cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
            total += float(1 - cos.mean())
        depth.append(total)
    return ImportanceScores(
        hidden=hidden, ffn=ffn, heads=heads, depth=torch.tensor(depth), num_samples=sum(b.shape[0] for b in batches)
    )


@pytest.mark.parametrize("arch", ARCHS)
def test_hook_scores_equal_reference_formula(arch):
    model, adapter = tiny_model(arch), adapter_for(arch)
    batches = random_batches()
    got = collect_importance(model, adapter, iter(batches), progress=False)  # a one-shot iterator is enough
    ref = reference_scores(model, adapter, batches)
    assert got.num_samples == ref.num_samples == 6
    for name in ("hidden", "ffn", "heads", "depth"):
        g, r = getattr(got, name), getattr(ref, name)
        assert g.shape == r.shape and g.dtype == torch.float32, name
        assert torch.allclose(g, r, rtol=1e-5, atol=1e-7), (name, (g - r).abs().max())


def test_collect_leaves_model_as_it_was():
    model, adapter = tiny_model("qwen3"), adapter_for("qwen3")
    model.train()
    ids = random_batches()[0]
    with torch.no_grad():
        model.eval()
        before = model(ids).logits
        model.train()
    collect_importance(model, adapter, random_batches(), progress=False)
    assert model.training
    hooks = [m for m in model.modules() if m._forward_hooks or m._forward_pre_hooks]
    assert hooks == []
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)


def test_collect_rejects_empty_batches():
    with pytest.raises(ValueError, match="no calibration batches"):
        collect_importance(tiny_model("llama"), adapter_for("llama"), [], progress=False)


def test_scores_save_load_roundtrip(tmp_path):
    s = ImportanceScores(
        hidden=torch.rand(8),
        ffn=torch.rand(3, 12),
        heads=torch.rand(3, 4),
        depth=torch.rand(3),
        num_samples=7,
        depth_lm_loss={0: 5.5, 1: 5.25},
        depth_lm_loss_block_size=2,
        extra={"lm_loss_full": 5.0},
    )
    path = s.save(tmp_path / "sub" / "scores.safetensors")
    t = ImportanceScores.load(path)
    for name in ("hidden", "ffn", "heads", "depth"):
        assert torch.equal(getattr(s, name), getattr(t, name))
    assert (t.num_samples, t.depth_lm_loss, t.depth_lm_loss_block_size, t.extra) == (
        7,
        {0: 5.5, 1: 5.25},
        2,
        {"lm_loss_full": 5.0},
    )
    assert sorted(p.name for p in path.parent.iterdir()) == ["scores.safetensors"]  # no temp file left
    bare = ImportanceScores(
        hidden=torch.rand(8), ffn=torch.rand(3, 12), heads=torch.rand(3, 4), depth=torch.rand(3), num_samples=1
    )
    assert ImportanceScores.load(bare.save(tmp_path / "bare.safetensors")).depth_lm_loss is None


def _scores_with_depth(depth, lm=None, block=None):
    L = len(depth)
    return ImportanceScores(
        hidden=torch.ones(4),
        ffn=torch.ones(L, 4),
        heads=torch.ones(L, 2),
        depth=torch.tensor(depth),
        num_samples=1,
        depth_lm_loss=lm,
        depth_lm_loss_block_size=block,
    )


def test_select_layers_block_influence_drops_lowest_not_necessarily_contiguous():
    s = _scores_with_depth([0.5, 0.1, 0.9, 0.2, 0.3])
    assert select_layers(s, 3) == [0, 2, 4]
    assert select_layers(s, 5) == [0, 1, 2, 3, 4]
    assert select_layers(s, 1) == [2]
    # ties keep the earlier layer (ModelOpt's stable descending sort)
    assert select_layers(_scores_with_depth([0.2, 0.2, 0.2, 0.9]), 2) == [0, 3]
    with pytest.raises(ValueError, match="num_layers=0"):
        select_layers(s, 0)


def test_select_layers_lm_loss_drops_best_contiguous_block():
    s = _scores_with_depth([0.5, 0.1, 0.9, 0.2, 0.3], lm={0: 6.0, 1: 5.8, 2: 5.1, 3: 5.4}, block=2)
    assert select_layers(s, 3, "lm_loss") == [0, 1, 4]
    with pytest.raises(ValueError, match="blocks of 1 layers"):
        select_layers(s, 4, "lm_loss")  # scores were for blocks of 2
    with pytest.raises(ValueError, match="not allowed"):
        select_layers(s, 3, "random")


def test_identity_layer_has_lowest_block_influence_and_lm_loss():
    model, adapter = tiny_model("llama", rms_norm_eps=1e-12), adapter_for("llama")
    layer = decoder_layers(model, adapter)[2]
    with torch.no_grad():  # layer 2 adds nothing to the residual stream
        getattr(layer.self_attn, adapter.o_proj).weight.zero_()
        getattr(layer.mlp, adapter.down_proj).weight.zero_()
    batches = random_batches()
    scores = collect_importance(model, adapter, batches, progress=False)
    assert scores.depth.argmin() == 2 and scores.depth[2] < 1e-5 < scores.depth.sort().values[1]
    assert select_layers(scores, 3) == [0, 1, 3]
    add_lm_loss_scores(scores, model, adapter, batches, block_size=1, progress=False)
    assert sorted(scores.depth_lm_loss) == [0, 1, 2, 3]
    # skipping an identity layer leaves the loss exactly where it was
    assert scores.depth_lm_loss[2] == pytest.approx(scores.extra["lm_loss_full"], abs=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_lm_loss_block_scores_match_a_truncated_copy_and_restore_model(arch):
    model, adapter = tiny_model(arch), adapter_for(arch)
    batches = random_batches(((2, 10), (2, 10)))
    layers, n, types = (
        decoder_layers(model, adapter),
        model.config.num_hidden_layers,
        model.config.layer_types if hasattr(model.config, "layer_types") else None,
    )
    with torch.no_grad():
        before = model(batches[0]).logits
    got = lm_loss_block_scores(model, adapter, batches, block_size=2, progress=False)
    assert sorted(got) == [0, 1, 2]
    # restored: same ModuleList object, same config, same function
    assert decoder_layers(model, adapter) is layers and model.config.num_hidden_layers == n
    assert getattr(model.config, "layer_types", None) == types
    with torch.no_grad():
        assert torch.equal(model(batches[0]).logits, before)
    # block 1 (layers 1, 2) skipped == a deep copy with those layers removed
    ref = copy.deepcopy(model)
    backbone = getattr(ref, adapter.backbone)
    setattr(backbone, adapter.layers, torch.nn.ModuleList([decoder_layers(ref, adapter)[i] for i in (0, 3)]))
    ref.config.num_hidden_layers = 2
    if types is not None:
        ref.config.layer_types = [types[0], types[3]]
    with torch.no_grad():
        want = sum(float(ref(input_ids=b, labels=b, use_cache=False).loss) for b in batches) / len(batches)
    assert got[1] == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError, match="block_size=4"):
        lm_loss_block_scores(model, adapter, batches, block_size=4, progress=False)


def test_plots_write_png_files(tmp_path):
    s = _scores_with_depth([0.5, 0.1, 0.9], lm={0: 6.0, 1: 5.5}, block=2)
    s.extra["lm_loss_full"] = 5.2
    s.ffn, s.heads, s.hidden = torch.rand(3, 16), torch.rand(3, 4), torch.rand(32)
    for fn, name in ((plot_depth, "depth.png"), (plot_width, "width.png")):
        path = fn(s, tmp_path / "plots" / name)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plot_depth(_scores_with_depth([0.5, 0.1]), tmp_path / "plain.png")  # no lm_loss panel
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["depth.png", "width.png"]
