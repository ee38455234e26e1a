"""One safetensors file read with plain file reads, tensor by tensor, instead of a memory map.

    with TensorFile(path) as f:
        for name in f.keys():
            w = f.get(name)          # a new tensor in the process's own memory; nothing stays mapped

safetensors' `safe_open` maps the file: every page read stays resident (and counted in the process's RSS) until
the file is closed, so reading a whole checkpoint through it holds the checkpoint's bytes however few tensors are
kept. Here only the tensors the caller keeps hold memory (the kernel's page cache is not the process's). The
layout read is safetensors' own: an 8-byte little-endian header length, a JSON header of name -> {dtype, shape,
data_offsets}, then the data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DTYPES = {
    "BF16": "bfloat16",
    "F16": "float16",
    "F32": "float32",
    "F64": "float64",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "U8": "uint8",
    "I8": "int8",
    "I16": "int16",
    "I32": "int32",
    "I64": "int64",
    "BOOL": "bool",
}
"""safetensors dtype code -> torch dtype name."""


class TensorFile:
    """The tensors of one safetensors file, each read when asked for (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._f = self.path.open("rb")
        length = int.from_bytes(self._f.read(8), "little")
        header: dict[str, Any] = json.loads(self._f.read(length))
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self.info = header
        self._base = 8 + length

    def keys(self) -> list[str]:
        return list(self.info)

    def dtype(self, name: str) -> str:
        """The safetensors dtype code: BF16, F32, F8_E4M3, U8, ..."""
        return self.info[name]["dtype"]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.info[name]["shape"])

    def torch_dtype(self, name: str):
        import torch  # heavy: only where a tensor is read

        code = self.dtype(name)
        if code not in DTYPES:
            raise ValueError(f"{self.path}: tensor {name!r} has dtype {code}, which compactlm does not read")
        return getattr(torch, DTYPES[code])

    def get(self, name: str):
        """Tensor `name` in newly allocated memory."""
        import torch  # heavy: only where a tensor is read

        begin, end = self.info[name]["data_offsets"]
        out = torch.empty(self.shape(name), dtype=self.torch_dtype(name))
        raw = out.reshape(-1).view(torch.uint8)
        if raw.numel() != end - begin:
            raise ValueError(
                f"{self.path}: tensor {name!r} holds {end - begin} bytes, its shape and dtype say {raw.numel()}"
            )
        self._f.seek(self._base + begin)
        if self._f.readinto(raw.numpy()) != raw.numel():
            raise ValueError(f"{self.path} ends inside tensor {name!r}")
        return out

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> TensorFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
