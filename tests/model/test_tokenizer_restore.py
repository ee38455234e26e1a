"""The SmolLM2 tokenizer rebuilt from GGUF by transformers gets its byte-level decoder back (model stage), without
changing a single token id, so that llama.cpp's converter recognises it."""

from __future__ import annotations

import json

from compactlm.model.loading import restore_byte_level

TEXT = "Hello wörld!\n  The capital of France is Paris. 你好 <|im_start|>assistant\n"


def test_the_gguf_tokenizer_decodes_byte_level_and_encodes_the_same(smol_tokenizer_dir, tmp_path):
    from transformers import AutoTokenizer

    tok = json.loads((smol_tokenizer_dir / "tokenizer.json").read_text())
    assert tok["pre_tokenizer"]["type"] == "ByteLevel"
    assert tok["decoder"]["type"] == "ByteLevel" and tok["model"]["byte_fallback"] is False
    # what transformers writes before the fix: a SentencePiece-style decoder on a byte-level BPE
    before = tmp_path / "before"
    before.mkdir()
    for f in smol_tokenizer_dir.iterdir():
        (before / f.name).write_bytes(f.read_bytes())
    broken = {
        **tok,
        "decoder": {"type": "Sequence", "decoders": [{"type": "ByteFallback"}, {"type": "Fuse"}]},
        "model": {**tok["model"], "byte_fallback": True},
    }
    (before / "tokenizer.json").write_text(json.dumps(broken, ensure_ascii=False))
    ids = AutoTokenizer.from_pretrained(before).encode(TEXT)
    restore_byte_level(before / "tokenizer.json")
    fixed = AutoTokenizer.from_pretrained(before)
    assert fixed.encode(TEXT) == ids and fixed.decode(ids) == TEXT


def test_other_tokenizers_are_left_alone(tmp_path):
    spm = {
        "pre_tokenizer": {"type": "Metaspace"},
        "model": {"type": "BPE", "byte_fallback": True},
        "decoder": {"type": "Sequence", "decoders": []},
    }
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spm))
    restore_byte_level(path)
    assert json.loads(path.read_text()) == spm
