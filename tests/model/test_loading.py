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
