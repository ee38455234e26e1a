"""Chosen metadata values of a GGUF file, read from its header alone.

gguf's `GGUFReader` parses every metadata field and maps every tensor: for SmolLM2-135M that is 5.6 s, nearly all
of it the 49,152-entry tokenizer arrays, to read one license string. The launcher reads the teacher's license and
languages before anything runs, and the release stage reads a flag of each GGUF it ships, so both read only the
keys they need here: the key/value section is walked in file order, values not wanted are skipped (a fixed-size
array in one seek), and reading stops after the last wanted key. Value types are gguf's own `GGUFValueType`;
values come back as `ReaderField.contents()` gives them (str, int, float, bool, list). Torch-free.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

from gguf import GGUF_MAGIC, GGUFValueType

_SCALAR = {
    GGUFValueType.UINT8: "B",
    GGUFValueType.INT8: "b",
    GGUFValueType.UINT16: "H",
    GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I",
    GGUFValueType.INT32: "i",
    GGUFValueType.FLOAT32: "f",
    GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "Q",
    GGUFValueType.INT64: "q",
    GGUFValueType.FLOAT64: "d",
}


class _Header:
    def __init__(self, f: BinaryIO, order: str, path: Path) -> None:
        self.f, self.order, self.path = f, order, path

    def unpack(self, fmt: str) -> Any:
        size = struct.calcsize(self.order + fmt)
        raw = self.f.read(size)
        if len(raw) != size:
            raise ValueError(f"{self.path}: the GGUF header ends early (a truncated file)")
        return struct.unpack(self.order + fmt, raw)[0]

    def string(self, keep: bool) -> str | None:
        n = self.unpack("Q")
        if not keep:
            self.f.seek(n, 1)
            return None
        return self.f.read(n).decode("utf-8")

    def value(self, vtype: int, keep: bool) -> Any:
        vtype = GGUFValueType(vtype)
        if vtype == GGUFValueType.STRING:
            return self.string(keep)
        if vtype == GGUFValueType.ARRAY:
            etype, count = GGUFValueType(self.unpack("I")), self.unpack("Q")
            if not keep and etype in _SCALAR:
                self.f.seek(count * struct.calcsize(self.order + _SCALAR[etype]), 1)
                return None
            items = [self.value(etype, keep) for _ in range(count)]
            return items if keep else None
        fmt = _SCALAR[vtype]
        if not keep:
            self.f.seek(struct.calcsize(self.order + fmt), 1)
            return None
        return self.unpack(fmt)


def gguf_metadata(path: str | Path, keys: Iterable[str]) -> dict[str, Any]:
    """{key: value} for each of `keys` in the GGUF file's metadata; a key the file lacks is left out.

    Raises ValueError for a file that is not GGUF (version 2 or later, either byte order) or is cut short."""
    path = Path(path)
    wanted = set(keys)
    out: dict[str, Any] = {}
    with open(path, "rb") as f:
        if struct.unpack("<I", f.read(4).ljust(4, b"\0"))[0] != GGUF_MAGIC:
            raise ValueError(f"{path}: not a GGUF file (no GGUF magic)")
        raw = f.read(4)
        order = "<" if struct.unpack("<I", raw.ljust(4, b"\0"))[0] & 0xFFFF else ">"  # as GGUFReader tells
        h = _Header(f, order, path)
        if struct.unpack(order + "I", raw)[0] < 2:
            raise ValueError(f"{path}: GGUF version 1 is not read (32-bit lengths); convert it again")
        h.unpack("Q")  # tensor count
        for _ in range(h.unpack("Q")):
            if wanted <= out.keys():
                break
            key = h.string(keep=True)
            value = h.value(h.unpack("I"), keep=key in wanted)
            if key in wanted:
                out[key] = value
    return out
