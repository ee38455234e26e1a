"""The streamed prune (tensor by tensor from safetensors, no model built) writes what slicing a loaded model writes."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY, build_tiny_model
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM

from compactlm.arch import adapter_for
from compactlm.model.loading import load_model, storage_dtype, upcast_while_running
from compactlm.model.params import count_on_meta
from compactlm.prune.importance import collect_importance
from compactlm.prune.slicing import checkpoint_files, prune_model, save_pruned, stream_prune

SMALLER = {"hidden_size": 48, "ffn_hidden_size": 64, "num_attention_heads": 2, "num_layers": 3}


def tensors(folder):
    out = {}
    for path in checkpoint_files(folder):
        out.update(load_file(str(path)))
    return out


@pytest.mark.parametrize("shard_bytes", [1 << 30, 20_000], ids=["one-file", "sharded"])
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("arch", sorted(TINY))
def test_stream_prune_matches_slicing_the_loaded_model_bitwise(arch, tied, shard_bytes, tmp_path, tiny_tokenizer):
    model, adapter = build_tiny_model(arch, tie_word_embeddings=tied), adapter_for(arch)
    ids = torch.randint(3, 384, (2, 16), generator=torch.Generator().manual_seed(1))
    scores = collect_importance(model, adapter, [ids], progress=False)
    # the teacher itself sharded (several safetensors files + index), as released checkpoints are
    model.save_pretrained(tmp_path / "teacher", max_shard_size="40KB")
    assert len(checkpoint_files(tmp_path / "teacher")) > 1

    streamed = stream_prune(
        tmp_path / "teacher", scores, SMALLER, tmp_path / "streamed", tokenizer=tiny_tokenizer, shard_bytes=shard_bytes
    )
    prune_model(model, adapter, scores, SMALLER, "block_influence")
    save_pruned(model, tiny_tokenizer, tmp_path / "loaded")

    new, old = tensors(tmp_path / "streamed"), tensors(tmp_path / "loaded")
    assert sorted(new) == sorted(old)
    for name in old:
        assert new[name].dtype == old[name].dtype and torch.equal(new[name], old[name]), name
    assert (len(checkpoint_files(tmp_path / "streamed")) > 1) == (shard_bytes == 20_000)
    if shard_bytes == 20_000:  # what transformers reads: every tensor in the index, total_size in bytes
        index = json.loads((tmp_path / "streamed" / "model.safetensors.index.json").read_text())
        assert sorted(index["weight_map"]) == sorted(old)
        assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in old.values())
    a, b = AutoConfig.from_pretrained(tmp_path / "streamed"), AutoConfig.from_pretrained(tmp_path / "loaded")
    keys = (
        "hidden_size",
        "intermediate_size",
        "num_attention_heads",
        "num_hidden_layers",
        "head_dim",
        "num_key_value_heads",
        "tie_word_embeddings",
        "layer_types",
    )
    assert {k: getattr(a, k, None) for k in keys} == {k: getattr(b, k, None) for k in keys}
    assert streamed["after"] == count_on_meta(a) and streamed["kept_layers"] == sorted(streamed["kept_layers"])
    assert streamed["before"]["total"] > streamed["after"]["total"]
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "streamed", dtype=torch.float32).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loaded", "streamed", "teacher"]  # no temp folder left


def test_stream_prune_keeps_the_checkpoint_dtype(tmp_path, tiny_tokenizer):
    model, adapter = build_tiny_model("mistral"), adapter_for("mistral")
    scores = collect_importance(model, adapter, [torch.randint(3, 384, (2, 16))], progress=False)
    model.to(torch.bfloat16).save_pretrained(tmp_path / "teacher")
    stream_prune(tmp_path / "teacher", scores, SMALLER, tmp_path / "out")
    assert {t.dtype for t in tensors(tmp_path / "out").values()} == {torch.bfloat16}


def test_stream_prune_refuses_a_tensor_it_cannot_slice(tmp_path, tiny_tokenizer):
    model, adapter = build_tiny_model("llama", tie_word_embeddings=False), adapter_for("llama")
    scores = collect_importance(model, adapter, [torch.randint(3, 384, (2, 16))], progress=False)
    model.save_pretrained(tmp_path / "teacher")
    path = tmp_path / "teacher" / "model.safetensors"
    extra = load_file(str(path))
    extra["model.layers.0.mlp.extra_proj.weight"] = torch.zeros(4, 4)
    save_file(extra, str(path), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="extra_proj"):
        stream_prune(tmp_path / "teacher", scores, SMALLER, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bf16_checkpoint_upcast_block_by_block_scores_exactly_as_float32(tmp_path):
    """The importance stage keeps a bf16 checkpoint in bf16 on a float32 CPU and upcasts one block at a time:
    the scores are those of the model loaded whole in float32."""
    model, adapter = build_tiny_model("qwen3"), adapter_for("qwen3")
    model.to(torch.bfloat16).save_pretrained(tmp_path / "teacher")
    assert storage_dtype(tmp_path / "teacher", "float32") == "bfloat16"
    assert storage_dtype(tmp_path / "teacher", "bfloat16") == "bfloat16"
    ids = [torch.randint(3, 384, (2, 16), generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    full = collect_importance(load_model(tmp_path / "teacher", dtype=torch.float32), adapter, ids, progress=False)
    half = load_model(tmp_path / "teacher", dtype=torch.bfloat16)
    body = half.model
    with upcast_while_running([body.embed_tokens, *body.layers, body.norm], torch.float32):
        streamed = collect_importance(half, adapter, ids, progress=False)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}  # back to bf16 after every block
    for field in ("hidden", "ffn", "heads", "depth"):
        assert torch.equal(getattr(streamed, field), getattr(full, field)), field
