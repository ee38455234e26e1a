"""Reading, packing and splitting text; real Polish text from ../shared/data/polish/."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import POLISH, needs_polish

from compactlm.config import ConfigError
from compactlm.data.schema import DataConfig
from compactlm.data.splits import build_splits, load_split, pack, read_documents, save_splits


def test_pack_fills_splits_in_order_without_straddling_documents():
    docs = [[i] * 10 for i in range(1, 8)]  # 7 docs of 10 tokens, token value = doc id
    val, cal, train = pack(iter(docs), seq_len=4, quotas=[2, 1, None])
    assert val.shape == (2, 4) and cal.shape == (1, 4)
    # doc 1 fills validation (2 x 4 tokens), its last 2 tokens are dropped, not carried into calibration
    assert set(val.ravel()) == {1} and set(cal.ravel()) == {2}
    assert not set(train.ravel()) & {1, 2}


def test_pydoc_splits_are_deterministic_and_disjoint(tiny_tokenizer):
    cfg = DataConfig(name="pydoc", kind="pydoc", seq_len=64, validation_sequences=8, calibration_sequences=8)
    a = build_splits(cfg, tiny_tokenizer, seed=1)
    b = build_splits(cfg, tiny_tokenizer, seed=1)
    c = build_splits(cfg, tiny_tokenizer, seed=2)
    for split in a:
        assert np.array_equal(a[split], b[split])
        assert a[split].dtype == np.int32 and a[split].shape[1] == 64
    assert not np.array_equal(a["validation"], c["validation"])
    rows = {tuple(r) for r in a["train"]}
    assert not any(tuple(r) in rows for r in a["validation"])


@needs_polish
def test_polish_text_files(tiny_tokenizer, tmp_path):
    cfg = DataConfig(
        name="pl",
        kind="text",
        paths=[str(POLISH / "*.txt")],
        seq_len=32,
        validation_sequences=4,
        calibration_sequences=4,
        max_train_sequences=16,
    )
    docs = read_documents(cfg)
    assert len(docs) == 3018 and any("ż" in d or "ą" in d for d in docs)
    arrays = build_splits(cfg, tiny_tokenizer, seed=0)
    assert arrays["train"].shape == (16, 32)
    names = save_splits(arrays, tmp_path)
    assert names == {"validation": "validation.npy", "calibration": "calibration.npy", "train": "train.npy"}
    assert np.array_equal(load_split(tmp_path, "train"), arrays["train"])
    text = tiny_tokenizer.decode(arrays["validation"][0])
    assert text.strip()


def test_jsonl_reads_the_text_field_and_reports_bad_lines(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"text": "ala ma kota"}) + "\n\n" + json.dumps({"body": "x"}) + "\n")
    cfg = DataConfig(name="j", kind="jsonl", paths=[str(p)])
    with pytest.raises(ConfigError, match=r"d.jsonl:3 is not a JSON object with key data.text_field='text'"):
        read_documents(cfg)
    p.write_text(json.dumps({"text": "ala ma kota"}) + "\n")
    assert read_documents(cfg) == ["ala ma kota"]


def test_too_little_text_names_the_keys(tiny_tokenizer, tmp_path):
    p = tmp_path / "short.txt"
    p.write_text("krótki tekst\n")
    cfg = DataConfig(name="short", kind="text", paths=[str(p)], seq_len=64)
    with pytest.raises(ConfigError, match="data.validation_sequences"):
        build_splits(cfg, tiny_tokenizer, seed=0)
