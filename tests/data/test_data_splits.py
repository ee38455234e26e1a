"""Reading, packing and splitting text; real Polish text from ../shared/data/polish/."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import POLISH, needs_polish
from helpers import pack

from compactlm.config import ConfigError
from compactlm.data.schema import DataConfig
from compactlm.data.splits import NpyRows, load_split, read_documents, write_splits


def test_pack_fills_splits_in_order_without_straddling_documents():
    docs = [[i] * 10 for i in range(1, 8)]  # 7 docs of 10 tokens, token value = doc id
    val, cal, train = pack(iter(docs), seq_len=4, quotas=[2, 1, None])
    assert val.shape == (2, 4) and cal.shape == (1, 4)
    # doc 1 fills validation (2 x 4 tokens), its last 2 tokens are dropped, not carried into calibration
    assert set(val.ravel()) == {1} and set(cal.ravel()) == {2}
    assert not set(train.ravel()) & {1, 2}


def build_splits(cfg: DataConfig, tokenizer, seed: int, folder) -> dict[str, np.ndarray]:
    names, sequences, _ = write_splits(cfg, tokenizer, seed, folder)
    assert names == {"validation": "validation.npy", "calibration": "calibration.npy", "train": "train.npy"}
    arrays = {split: load_split(folder, split, mmap=False) for split in names}
    assert {split: len(a) for split, a in arrays.items()} == sequences
    return arrays


def test_pydoc_splits_are_deterministic_and_disjoint(tiny_tokenizer, tmp_path):
    cfg = DataConfig(name="pydoc", kind="pydoc", seq_len=64, validation_sequences=8, calibration_sequences=8)
    a = build_splits(cfg, tiny_tokenizer, seed=1, folder=tmp_path / "a")
    b = build_splits(cfg, tiny_tokenizer, seed=1, folder=tmp_path / "b")
    c = build_splits(cfg, tiny_tokenizer, seed=2, folder=tmp_path / "c")
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
    arrays = build_splits(cfg, tiny_tokenizer, seed=0, folder=tmp_path)
    assert arrays["train"].shape == (16, 32)
    text = tiny_tokenizer.decode(arrays["validation"][0])
    assert text.strip()


def test_jsonl_reads_the_text_field_and_reports_bad_lines(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"text": "ala ma kota"}) + "\n\n" + json.dumps({"body": "x"}) + "\n")
    cfg = DataConfig(name="j", kind="jsonl", paths=[str(p)])
    with pytest.raises(ConfigError, match=r"d.jsonl:3 is not a JSON object with key data.text_field='text'"):
        read_documents(cfg)
    p.write_text(json.dumps({"text": "ala ma kota"}) + "\n")
    assert list(read_documents(cfg)) == ["ala ma kota"]


def test_too_little_text_names_the_keys(tiny_tokenizer, tmp_path):
    p = tmp_path / "short.txt"
    p.write_text("krótki tekst\n")
    cfg = DataConfig(name="short", kind="text", paths=[str(p)], seq_len=64)
    with pytest.raises(ConfigError, match="data.validation_sequences"):
        write_splits(cfg, tiny_tokenizer, 0, tmp_path / "splits")
    assert not (tmp_path / "splits").exists() or not any((tmp_path / "splits").iterdir())  # no split half-written


def test_splits_are_written_row_by_row_into_one_npy(tmp_path):
    """The data stage never holds a split whole: rows go to the file as they are packed, and the header written for
    zero rows is rewritten in place with the final count; numpy reads the file back, memory-mapped or not."""
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 2**31 - 1, size=(1000, 48), dtype=np.int32)
    path = tmp_path / "train.npy"
    with open(path, "w+b") as f:
        sink = NpyRows(f, 48)
        for row in rows:
            sink.append(row)
        sink.finish()
    assert sink.rows == 1000
    assert np.array_equal(np.load(path), rows)
    mapped = np.load(path, mmap_mode="r")
    assert mapped.shape == (1000, 48) and mapped.dtype == np.int32 and np.array_equal(mapped, rows)
    assert path.stat().st_size == 128 + rows.nbytes  # one header and the rows, nothing else


@pytest.mark.parametrize("kind", ["text", "jsonl"])
def test_file_documents_are_the_lines_text_mode_reads(kind, tmp_path):
    """The text / jsonl source is indexed by byte offsets and read back one document at a time: the documents are
    those Python's text mode (universal newlines) gives, for \n, \r\n and lone \r endings, blank lines and
    non-ASCII text."""
    lines = ["Zażółć gęślą jaźń", "  ", "drugi\tdokument ", "", "trzeci — ostatni", "x"]
    if kind == "jsonl":
        lines = [json.dumps({"text": t}, ensure_ascii=False) if t.strip() else t for t in lines[:-1]]
        lines.append(json.dumps({"text": ""}))
    raw = "\r\n".join(lines[:3]).encode() + b"\r" + "\n".join(lines[3:]).encode()
    (tmp_path / "a.txt").write_bytes(raw)
    (tmp_path / "b.txt").write_bytes(b"ostatni plik\n" if kind == "text" else b'{"text": "plik b"}\n')
    cfg = DataConfig(name="f", kind=kind, paths=[str(tmp_path / "*.txt")])
    expected = []
    for path in sorted(tmp_path.glob("*.txt")):
        for line in path.open(encoding="utf-8"):
            text = line.strip() if kind == "text" else (json.loads(line)["text"] if line.strip() else "")
            if text and text.strip():
                expected.append(text)
    docs = read_documents(cfg)
    assert len(docs) == len(expected) >= 4
    assert [docs[i] for i in reversed(range(len(docs)))] == expected[::-1]
    assert list(docs) == expected
    docs.close()


def test_a_file_source_splits_as_a_shuffled_list_of_its_texts(tiny_tokenizer, tmp_path):
    """Only the documents' order is shuffled (FileDocuments): the held-out documents are the first ones of the
    seeded shuffle of the whole list of texts, as when the text was read whole and shuffled."""
    import random
    from pydoc_data.topics import topics

    texts = [" ".join(topics[k].split()) for k in sorted(topics)]
    (tmp_path / "docs.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    cfg = DataConfig(name="f", kind="text", paths=[str(tmp_path / "docs.txt")], seq_len=64, max_train_sequences=8)
    _, _, heldout = write_splits(cfg, tiny_tokenizer, 3, tmp_path)
    random.Random(3).shuffle(texts)
    assert heldout and heldout == texts[: len(heldout)]
