"""Random Llama-3-proportioned checkpoints: sharded bf16 safetensors the loaders read, reproducible by seed."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from compactlm.model.loading import check_model_folder, count_parameters, load_model
from compactlm.model.synthetic import SHAPES, Shape, tensor_shapes, write_checkpoint
from compactlm.prune.slicing import checkpoint_files

TINY = Shape(hidden=256, ffn=896, layers=3, heads=2, kv_heads=1, vocab=384)


def test_written_checkpoint_is_sharded_bf16_and_loads(tmp_path, tiny_tokenizer):
    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    out = write_checkpoint(TINY, tmp_path / "ckpt", tmp_path / "tok", seed=3, shards=3)
    files = checkpoint_files(out)
    assert len(files) == 3 and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "tok"]
    check_model_folder(out)  # what the model stage checks: config, index, every shard complete
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tensor_shapes(TINY))
    assert (
        index["metadata"]["total_size"]
        == 2 * TINY.params()
        == sum(p.stat().st_size for p in files) - sum(8 + int.from_bytes(p.read_bytes()[:8], "little") for p in files)
    )
    model = load_model(out, dtype=torch.bfloat16)  # transformers reads the shards through the index
    assert count_parameters(model)["total"] == TINY.params()
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    assert model.model.layers[0].self_attn.k_proj.weight.shape == (128, 256)  # GQA: one 128-dim KV head
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=torch.tensor([[1, 5, 9]])).logits).all()
    # same seed, other shard count: the same tensors
    again = write_checkpoint(TINY, tmp_path / "again", tmp_path / "tok", seed=3, shards=1)
    a = {k: v for p in files for k, v in load_file(str(p)).items()}
    b = {k: v for p in checkpoint_files(again) for k, v in load_file(str(p)).items()}
    assert all(torch.equal(a[k], b[k]) for k in a)
    w = a["model.layers.1.mlp.up_proj.weight"].float()
    assert w.dtype == torch.float32 and abs(w.std().item() - 0.02) < 0.002


def test_shapes_have_llama3_proportions_and_their_nominal_sizes():
    nominal = {"135m": 135e6, "0.5b": 0.5e9, "1.5b": 1.5e9, "3b": 3e9, "7b": 7.4e9}
    for name, s in SHAPES.items():
        assert s.heads * s.head_dim == s.hidden and s.heads % s.kv_heads == 0 and s.kv_heads < s.heads
        assert s.ffn == s.hidden * 7 // 2
        assert abs(s.params() / nominal[name] - 1) < 0.06, (name, s.params())
