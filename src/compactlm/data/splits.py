"""Text sources, tokenization and packing into fixed-length train / validation / calibration splits.

Splits are made at the document level after a seeded shuffle, in the order validation → calibration →
train, so held-out perplexity never sees a document the model was calibrated or distilled on.
Each split is saved as an int32 array of shape [num_sequences, seq_len].
"""

from __future__ import annotations

import codecs
import glob
import itertools
import json
import os
import random
from array import array
from collections.abc import Iterable
from contextlib import ExitStack
from pathlib import Path
from pydoc_data.topics import topics
from typing import BinaryIO

import numpy as np
from numpy.lib import format as npformat
from tqdm import tqdm

from compactlm.config import ConfigError
from compactlm.data.schema import DataConfig
from compactlm.manifest import atomic_file, atomic_write_text

SPLITS = ("validation", "calibration", "train")


def expand_paths(cfg: DataConfig) -> list[Path]:
    """Every file named or matched by `data.paths`; errors name the pattern that matched nothing."""
    return expand_globs(cfg.paths, "data.paths")


def expand_globs(patterns: Iterable[str], key: str) -> list[Path]:
    """Every file named or matched by `patterns` (the config key `key`), in order; a pattern matching nothing
    is an error naming it."""
    out: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pattern)))
        if not matches:
            raise ConfigError(f"{key}: {pattern!r} matches no file")
        out.extend(Path(m) for m in matches)
    return out


def check_sources(cfg: DataConfig) -> None:
    """Fail before anything runs when a local data file is missing, is not UTF-8 text, holds no text, or (jsonl)
    has a line that is not a JSON object with `data.text_field`. Streams every file: they can be GBs."""
    if not cfg.reads_files():
        return
    for path in expand_paths(cfg):
        if not path.is_file():
            raise ConfigError(f"data.paths: {str(path)!r} is not a file")
        if cfg.kind == "jsonl":
            has_text = _check_jsonl(path, cfg.text_field)
        else:
            has_text = check_utf8_text(path, "data.paths")
        if not has_text:
            raise ConfigError(f"data.paths: {str(path)!r} is empty (data.kind={cfg.kind} needs text)")


CHUNK_BYTES = 1 << 20


def utf8_error(path: Path) -> tuple[int, int] | None:
    """(offset, value) of the first byte of `path` that is not valid UTF-8, or None; reads in binary chunks."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset = 0  # bytes of the file handed to the decoder so far
    with Path(path).open("rb") as f:
        while True:
            chunk = f.read(CHUNK_BYTES)
            pending = len(decoder.getstate()[0])  # bytes of an unfinished character held from the last chunk
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:  # e.object is the pending bytes + chunk
                return offset - pending + e.start, e.object[e.start]
            if not chunk:
                return None
            offset += len(chunk)


def _not_utf8(path: Path, key: str) -> ConfigError:
    where = utf8_error(path)
    detail = f"byte {where[0]}: 0x{where[1]:02x}" if where else "invalid byte"
    return ConfigError(
        f"{key}: {str(path)!r} is not UTF-8 text ({detail}); convert it to UTF-8 "
        f"(e.g. iconv -f cp1250 -t utf-8) or remove it from {key}"
    )


def check_utf8_text(path: Path, key: str) -> bool:
    """Decode `path` strictly as UTF-8, in chunks; True when it holds any non-blank text. The ConfigError names
    `key`, the file and the offset of its first bad byte."""
    has_text = False
    try:
        with Path(path).open(encoding="utf-8", errors="strict") as f:
            while chunk := f.read(CHUNK_BYTES):
                has_text = has_text or not chunk.isspace()
    except UnicodeDecodeError:
        raise _not_utf8(path, key) from None
    return has_text


def _check_jsonl(path: Path, text_field: str) -> bool:
    """Every non-empty line of a jsonl file is a JSON object with `text_field` (as read_documents reads it);
    True when one of them holds text."""
    has_text = False
    n = 0
    try:
        with path.open(encoding="utf-8", errors="strict") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    text = json.loads(line)[text_field]
                except (json.JSONDecodeError, KeyError, TypeError, IndexError) as e:
                    raise ConfigError(
                        f"data.paths: {str(path)!r} line {n} is not a JSON object with key "
                        f"data.text_field={text_field!r} ({type(e).__name__}: {e}); each non-empty line must be "
                        f'one, e.g. {{"{text_field}": "..."}}'
                    ) from None
                has_text = has_text or bool(text and str(text).strip())
    except UnicodeDecodeError:
        raise _not_utf8(path, "data.paths") from None
    return has_text


def _text_lines(f: BinaryIO):
    """(byte offset, bytes) of every line of a binary file as Python's text mode splits it (universal newlines:
    \n, \r\n and a lone \r each end a line), without the line ending. UTF-8 never has these bytes inside a
    character, so the bytes can be split before they are decoded."""
    pos = 0
    for raw in f:
        body = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1] if raw.endswith(b"\n") else raw
        start = pos
        for part in body.split(b"\r"):
            yield start, part
            start += len(part) + 1
        pos += len(raw)


class FileDocuments:
    """The documents of local text / jsonl files, read on demand: an index of (file, byte offset, byte length)
    per document is kept (24 bytes a document) instead of the text, so the source can be shuffled and split
    without holding it; ``docs[i]`` reads document i back, as the whole-text reading did."""

    def __init__(self, cfg: DataConfig):
        self.cfg = cfg
        self.paths = expand_paths(cfg)
        files, offsets, sizes = array("q"), array("q"), array("q")  # 8 bytes each a document while indexing
        total = sum(p.stat().st_size for p in self.paths)
        with tqdm(total=total, desc="[data] indexing", unit="B", unit_scale=True, mininterval=2) as bar:
            for k, path in enumerate(self.paths):
                with path.open("rb") as f:
                    for n, (off, line) in enumerate(_text_lines(f), 1):
                        if self._parse(line, path, n) is not None:
                            files.append(k)
                            offsets.append(off)
                            sizes.append(len(line))
                bar.update(path.stat().st_size)
        self.index = np.stack([np.frombuffer(a, np.int64) for a in (files, offsets, sizes)], axis=1)
        self._open: dict[int, BinaryIO] = {}

    def _parse(self, line: bytes, path: Path, n: int) -> str | None:
        """The document on one line, or None where the line holds none (blank, or an empty text field)."""
        text = line.decode("utf-8")
        if not text.strip():
            return None
        if self.cfg.kind == "text":
            return text.strip()
        try:
            text = json.loads(text)[self.cfg.text_field]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ConfigError(
                f"data.paths: {path}:{n} is not a JSON object with key data.text_field={self.cfg.text_field!r} ({e})"
            ) from None
        return str(text) if text and str(text).strip() else None

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> str:
        k, off, size = (int(v) for v in self.index[i])
        if k not in self._open:
            self._open[k] = self.paths[k].open("rb")  # read-only; closed by close()
        f = self._open[k]
        f.seek(off)
        text = self._parse(f.read(size), self.paths[k], 0)
        if text is None:
            raise ConfigError(f"data.paths: {self.paths[k]} changed while the data stage was reading it")
        return text

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def close(self) -> None:
        for f in self._open.values():
            f.close()
        self._open.clear()


def read_documents(cfg: DataConfig):
    """All documents of the source, in a stable order (shuffling happens in :func:`write_splits`): a list, or for
    local text / jsonl files a :class:`FileDocuments` that reads each document when it is asked for."""
    if cfg.kind == "pydoc":
        return [topics[k] for k in sorted(topics)]
    if cfg.reads_files():
        return FileDocuments(cfg)
    # kind == "hf": real datasets loading code; needs network or a local datasets cache.
    import datasets  # slow to import (pyarrow, fsspec), and only data.kind=hf uses it

    ds = datasets.load_dataset(cfg.hf_dataset, cfg.hf_subset, split=cfg.hf_split)
    if cfg.text_field not in ds.column_names:
        raise ConfigError(f"data.text_field={cfg.text_field!r} is not a column of {cfg.hf_dataset}: {ds.column_names}")
    limit = cfg.max_documents or len(ds)
    return [t for t in ds.select(range(min(limit, len(ds))))[cfg.text_field] if t and t.strip()]


class NpyRows:
    """Packed sequences written to an `.npy` file as they come, so no split is ever held whole in memory (a 7-11B
    run's train split is tens of GB): the data follows a header written for no rows, which `finish` rewrites in
    place with the final shape (numpy leaves room in the header for the first axis to grow)."""

    def __init__(self, f: BinaryIO, seq_len: int):
        self.f, self.seq_len, self.rows = f, seq_len, 0
        self._header = self._write_header()

    def _write_header(self) -> int:
        self.f.seek(0)
        header = {"descr": npformat.dtype_to_descr(np.dtype(np.int32)), "fortran_order": False}
        npformat.write_array_header_1_0(self.f, {**header, "shape": (self.rows, self.seq_len)})
        return self.f.tell()

    def append(self, row: np.ndarray) -> None:
        self.f.write(np.ascontiguousarray(row, dtype=np.int32).tobytes())
        self.rows += 1

    def finish(self) -> None:
        end = self.f.tell()
        if self._write_header() != self._header:
            raise RuntimeError(f"the .npy header of {self.rows} x {self.seq_len} rows no longer fits its place")
        self.f.seek(end)


def pack_rows(
    token_docs: Iterable[list[int]],
    seq_len: int,
    quotas: list[int | None],
    sinks: list,
    doc_counts: list[int] | None = None,
) -> None:
    """Pack tokenized documents into `len(quotas)` splits of seq_len-token sequences, filled in order, each
    sequence handed to its split's sink (`append(row)`, counting `rows`: an :class:`NpyRows`) as soon as it is
    complete.

    A split takes whole documents until it holds its quota of sequences (None: no limit); the rest of the
    document that completes a split is dropped, so no document straddles two splits. When `doc_counts` is
    given, it is filled with the number of documents each split consumed (in input order).
    """
    counts = [0] * len(quotas)
    i, buf, used = 0, np.zeros(0, np.int32), 0
    for doc in token_docs:
        if i >= len(quotas):
            break
        counts[i] += 1
        buf = np.concatenate([buf[used:], np.asarray(doc, dtype=np.int32)])
        used = 0
        while len(buf) - used >= seq_len and i < len(quotas):
            sinks[i].append(buf[used : used + seq_len])
            used += seq_len
            if quotas[i] is not None and sinks[i].rows >= quotas[i]:
                i, buf, used = i + 1, np.zeros(0, np.int32), 0
                break
    if doc_counts is not None:
        doc_counts[:] = counts


def write_splits(
    cfg: DataConfig, tokenizer, seed: int, folder: Path
) -> tuple[dict[str, str], dict[str, int], list[str]]:
    """Read, shuffle (seeded), tokenize and pack the source into the three splits, written straight to
    `<folder>/<split>.npy` as the sequences are packed, one sequence in memory at a time (nothing is renamed into
    place unless every split has its sequences); returns {split: file name}, {split: sequences} and
    the text of the documents the validation split was packed from.

    Those documents are held out: no token of them reaches the calibration or train split, so tasks built
    from their text (the evaluate stage's heldout_continuation) measure text no model of the run trained on.
    """
    names = {split: f"{split}.npy" for split in SPLITS}
    with ExitStack() as stack:
        sinks = []
        for split in SPLITS:
            tmp = stack.enter_context(atomic_file(Path(folder) / names[split]))
            f = stack.enter_context(open(tmp, "r+b", buffering=1 << 20))  # write-ok: atomic_file's new temporary
            sinks.append(NpyRows(f, cfg.seq_len))
        heldout = _split(cfg, tokenizer, seed, sinks)
        for sink in sinks:
            sink.finish()
    return names, {split: sink.rows for split, sink in zip(SPLITS, sinks)}, heldout


def _split(cfg: DataConfig, tokenizer, seed: int, sinks: list) -> list[str]:
    """Read, shuffle (seeded), tokenize and pack the source into `sinks` (validation, calibration, train); returns
    the held-out documents' text; ConfigError when a split got too few sequences."""
    docs = read_documents(cfg)
    # the documents' order is shuffled, not their text: random.shuffle's permutation depends only on the length,
    # so these are the splits a shuffled list of the texts gives
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    if cfg.max_documents:
        order = order[: cfg.max_documents]
    eos = tokenizer.eos_token_id
    texts = (docs[i] for i in order)
    token_docs = (ids + ([eos] if eos is not None else []) for ids in _tokenize(tokenizer, texts, len(order)))
    quotas = [cfg.validation_sequences, cfg.calibration_sequences, cfg.max_train_sequences]
    doc_counts: list[int] = []
    pack_rows(token_docs, cfg.seq_len, quotas, sinks, doc_counts)
    for split, want, sink in zip(SPLITS, quotas, sinks):
        have = sink.rows
        if (want is not None and have < want and split != "train") or have == 0:
            raise ConfigError(
                f"data={cfg.name}: only {have} {split} sequences of data.seq_len={cfg.seq_len} tokens could be "
                f"packed from {len(order)} documents (wanted {want or 'at least 1'}); add text or lower "
                f"data.validation_sequences / data.calibration_sequences / data.seq_len"
            )
    heldout = [docs[i] for i in order[: doc_counts[0]]]
    if isinstance(docs, FileDocuments):
        docs.close()
    return heldout


def save_heldout(docs: list[str], folder: Path) -> Path:
    """Write the held-out documents as `<folder>/heldout/documents.txt` (one line per paragraph)."""
    out = Path(folder) / "heldout" / "documents.txt"
    atomic_write_text(out, "\n\n".join(d.strip() for d in docs) + "\n")
    return out


def _tokenize(tokenizer, docs: Iterable[str], total: int, chunk: int = 256):
    """Token ids of each document, tokenized `chunk` documents at a time as they are read."""
    it = iter(docs)
    with tqdm(total=total, desc="[data] tokenizing", unit="doc", mininterval=2) as bar:
        while batch := list(itertools.islice(it, chunk)):
            yield from tokenizer(batch, add_special_tokens=False)["input_ids"]
            bar.update(len(batch))


def save_array(path: Path, arr: np.ndarray) -> None:
    """`np.save` to `path` through a temporary sibling (atomic_file: no link at `path` is followed)."""
    with atomic_file(path) as tmp, open(tmp, "r+b") as f:  # write-ok: atomic_file's own new temporary file
        np.save(f, arr)


def load_split(folder: Path, split: str, mmap: bool = True) -> np.ndarray:
    """An int32 array [num_sequences, seq_len] written by the data stage."""
    return np.load(Path(folder) / f"{split}.npy", mmap_mode="r" if mmap else None)
