"""compactlm.model.gguf_header reads the same values as gguf's own GGUFReader, without parsing the whole file."""

from __future__ import annotations

import pytest
from gguf import GGUFEndian, GGUFReader, GGUFValueType, GGUFWriter

from compactlm.model.gguf_header import gguf_metadata


def _write(path, endian):
    w = GGUFWriter(str(path), "llama", endianess=endian)
    w.add_string("general.license", "apache-2.0")
    w.add_array("general.languages", ["pl", "en"])
    w.add_uint32("llama.block_count", 30)
    w.add_int64("test.int64", -7)
    w.add_float32("llama.rope.freq_base", 500000.0)
    w.add_float64("test.float64", 0.125)
    w.add_bool("test.bool", True)
    w.add_array("tokenizer.ggml.scores", [0.5, -1.0, 2.0])
    w.add_array("tokenizer.ggml.tokens", ["<s>", "ą", "zażółć"])
    w.add_key_value("test.uint8", 255, GGUFValueType.UINT8)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    return path


@pytest.mark.parametrize("endian", [GGUFEndian.LITTLE, GGUFEndian.BIG], ids=["little", "big"])
def test_every_value_equals_what_gguf_reads(tmp_path, endian):
    path = _write(tmp_path / "m.gguf", endian)
    fields = GGUFReader(str(path)).fields
    keys = [k for k in fields if not k.startswith("GGUF.")]
    assert len(keys) >= 10
    assert gguf_metadata(path, keys) == {k: fields[k].contents() for k in keys}
    # one key among many, and a key the file lacks
    assert gguf_metadata(path, ["tokenizer.ggml.tokens", "no.such.key"]) == {
        "tokenizer.ggml.tokens": ["<s>", "ą", "zażółć"]
    }


def test_a_file_that_is_not_gguf_or_is_cut_short_is_refused(tmp_path):
    path = _write(tmp_path / "m.gguf", GGUFEndian.LITTLE)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[:60])
    with pytest.raises(ValueError, match="ends early"):
        gguf_metadata(cut, ["tokenizer.ggml.tokens"])
    other = tmp_path / "model.safetensors"
    other.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(ValueError, match="not a GGUF file"):
        gguf_metadata(other, ["general.license"])
