"""How models are read from a local folder."""

from __future__ import annotations

from pathlib import Path


def test_weights_read_unmapped_are_the_files_and_no_file_stays_mapped(tmp_path):
    """quantize reads a bf16 checkpoint's weights into the process's own memory, so that the export frees each
    weight as it converts it: the same values, every parameter read (tied ones once), no file left mapped."""
    import torch
    from conftest import tiny_config
    from transformers import AutoModelForCausalLM

    from compactlm.model.loading import load_model, read_weights_unmapped

    torch.manual_seed(0)
    folder = tmp_path / "bf16"
    AutoModelForCausalLM.from_config(tiny_config("llama", tie_word_embeddings=True)).to(torch.bfloat16).save_pretrained(
        folder, max_shard_size="100KB"
    )
    assert len(list(folder.glob("*.safetensors"))) > 1
    model = load_model(folder, dtype=torch.bfloat16)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def mapped() -> int:
        return sum(str(folder) in line for line in Path("/proc/self/maps").read_text().splitlines())

    assert mapped() > 0  # transformers maps the files and the bf16 weights are views of them
    assert read_weights_unmapped(model, folder) == len(dict(model.named_parameters()))
    assert mapped() == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert read_weights_unmapped(load_model(folder), folder) == 0  # float32 from bf16: converted, never mapped


def test_tensor_file_reads_what_safetensors_wrote_without_mapping_it(tmp_path):
    import pytest
    import torch
    from safetensors.torch import load_file, save_file

    from compactlm.model.tensorfile import TensorFile

    tensors = {
        "w": torch.randn(3, 5, dtype=torch.bfloat16),
        "q": torch.randn(4, 4).to(torch.float8_e4m3fn),
        "scale": torch.tensor(0.25),
        "packed": torch.arange(6, dtype=torch.uint8),
        "ids": torch.arange(3, dtype=torch.int64),
    }
    path = tmp_path / "t.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    expected = {k: v.clone() for k, v in load_file(str(path)).items()}  # load_file's own tensors map the file
    with TensorFile(path) as f:
        assert sorted(f.keys()) == sorted(tensors) and f.metadata == {"format": "pt"}
        assert f.dtype("q") == "F8_E4M3" and f.shape("w") == (3, 5) and f.shape("scale") == ()
        for name, t in expected.items():
            got = f.get(name)
            bits = [x.reshape(-1).view(torch.uint8) for x in (got, t)]
            assert got.dtype == t.dtype and got.shape == t.shape and torch.equal(*bits), name
        assert str(path) not in Path("/proc/self/maps").read_text()
    path.write_bytes(path.read_bytes()[:-4])  # the last tensor cut short
    with TensorFile(path) as f, pytest.raises(ValueError, match="ends inside tensor"):
        for name in f.keys():
            f.get(name)
