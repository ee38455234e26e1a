"""Teacher-logit cache: the teacher's top-k log-probabilities per token, computed once, then memory-mapped.

Layout of one split's cache folder (`<cache_dir>/<split>/`):
    values.npy    [num_sequences, seq_len, k] float16 or float32: log softmax(teacher logits / T) at the ids
    indices.npy   [num_sequences, seq_len, k] int32: the teacher's k most likely token ids, most likely first
    tail.npy      [num_sequences, seq_len] float32: log of the teacher's probability mass outside those ids
    meta.json     what it was computed from (teacher and data digests, k, T, dtype, shape); written last

Row i of the cache belongs to row i of the split, so the trainer looks teacher outputs up by the same
sequence index it reads tokens with. A folder is reused only when its meta.json matches exactly;
otherwise it is rebuilt under a temporary name and renamed into place. Every process runs the teacher
on its share of each chunk (FSDP-sharded teachers need all ranks in every forward); rank 0 gathers the
results and is the only writer. Size: num_sequences × seq_len × (k × (2 or 4 + 4) + 4) bytes.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from compactlm.distill.losses import teacher_topk
from compactlm.distill.parallel import DistEnv, barrier, broadcast_object
from compactlm.manifest import atomic_write_json, publish_dir

CACHE_DTYPES = {"float16": np.float16, "float32": np.float32}
META = "meta.json"
FORMAT = 1
"""Bumped whenever the files change meaning; a cache of another format is rebuilt."""


@dataclass
class TeacherCache:
    """Read-only view of one split's cache."""

    values: np.ndarray
    """[num_sequences, seq_len, k] teacher log-probs at `temperature`."""
    indices: np.ndarray
    """[num_sequences, seq_len, k] int32 token ids."""
    tail: np.ndarray
    """[num_sequences, seq_len] float32 log of the teacher's mass outside `indices`."""
    meta: dict

    def lookup(self, rows: np.ndarray, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log-probs [B, S, k] float32, ids [B, S, k] int64, tail [B, S] float32) of sequence `rows`."""

        def get(a, dtype):
            return torch.from_numpy(np.ascontiguousarray(a[rows])).to(device, dtype)

        return get(self.values, torch.float32), get(self.indices, torch.int64), get(self.tail, torch.float32)


def open_cache(folder: Path) -> TeacherCache:
    folder = Path(folder)
    meta = json.loads((folder / META).read_text())
    return TeacherCache(
        *(np.load(folder / f"{name}.npy", mmap_mode="r") for name in ("values", "indices", "tail")), meta
    )


def _read_meta(folder: Path) -> dict | None:
    try:
        return json.loads((Path(folder) / META).read_text())
    except (OSError, json.JSONDecodeError):
        return None


@torch.no_grad()
def build_cache(
    teacher,
    tokens: np.ndarray,
    folder: Path,
    meta: dict,
    *,
    micro_batch_size: int,
    env: DistEnv,
    autocast=nullcontext,
    progress: bool = True,
) -> None:
    """Run `teacher` over every row of `tokens` [N, S] and write its top-k cache to `folder` (rank 0 writes).

    `meta` must hold `topk`, `temperature` and `dtype` (a key of CACHE_DTYPES); it is stored as meta.json.
    All ranks must call this; each computes `micro_batch_size` rows per chunk of `world × micro` rows.
    """
    n, seq_len = tokens.shape
    k, temperature, np_dtype = meta["topk"], meta["temperature"], CACHE_DTYPES[meta["dtype"]]
    torch_dtype = torch.float16 if np_dtype == np.float16 else torch.float32
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    if env.is_main:
        for stale in folder.parent.glob(f".{folder.name}.tmp*"):  # left by a killed build; can be large
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir(parents=True)
        values = np.lib.format.open_memmap(tmp / "values.npy", mode="w+", dtype=np_dtype, shape=(n, seq_len, k))
        indices = np.lib.format.open_memmap(tmp / "indices.npy", mode="w+", dtype=np.int32, shape=(n, seq_len, k))
        tail = np.lib.format.open_memmap(tmp / "tail.npy", mode="w+", dtype=np.float32, shape=(n, seq_len))
    chunk = env.world * micro_batch_size
    teacher.eval()
    bar = tqdm(
        total=n,
        desc=f"[distill] teacher cache {folder.name}",
        unit="seq",
        mininterval=2,
        disable=not (progress and env.is_main),
    )
    for start in range(0, n, chunk):
        # Every rank runs a full micro-batch (rows past the end repeat row 0) so collectives line up.
        rows = np.arange(start + env.rank * micro_batch_size, start + (env.rank + 1) * micro_batch_size)
        rows = np.where(rows < n, rows, 0)
        ids = torch.from_numpy(np.ascontiguousarray(tokens[rows])).to(env.device, torch.long)
        with autocast():
            logits = teacher(input_ids=ids, use_cache=False).logits
        parts = list(teacher_topk(logits, k, temperature))
        parts[0] = parts[0].to(torch_dtype)
        if env.distributed:
            for j, x in enumerate(parts):
                got = [torch.empty_like(x) for _ in range(env.world)]
                dist.all_gather(got, x)
                parts[j] = torch.cat(got)
        if env.is_main:
            stop = min(start + chunk, n)
            for out, x in zip((values, indices, tail), parts):
                out[start:stop] = x[: stop - start].cpu().numpy()
        bar.update(min(chunk, n - start))
    bar.close()
    if env.is_main:
        for out in (values, indices, tail):
            out.flush()
        del values, indices, tail
        atomic_write_json(tmp / META, meta)
        publish_dir(tmp, folder)
    barrier(env)


def ensure_cache(
    teacher_loader,
    tokens: np.ndarray,
    folder: Path,
    meta: dict,
    *,
    micro_batch_size: int,
    env: DistEnv,
    autocast=nullcontext,
    progress: bool = True,
    build: bool = True,
) -> TeacherCache:
    """Open the cache in `folder` when its meta.json equals `meta`, else build it first.

    `teacher_loader()` is called only when a build is needed, so a valid cache never loads the teacher.
    `build=False` (a cache another task built and others read at the same time) raises instead of rebuilding.
    """
    meta = {**meta, "format": FORMAT, "shape": [int(x) for x in tokens.shape] + [int(meta["topk"])]}
    found = _read_meta(folder)
    fresh = broadcast_object(found == meta, env)
    if not fresh and not build:
        differs = sorted(k for k in meta if (found or {}).get(k) != meta[k])
        raise RuntimeError(
            f"the teacher cache {folder} was not built for this use (differs in: "
            f"{', '.join(differs) or 'everything: it is missing'}); re-run the stage that builds it"
        )
    if not fresh:
        teacher = teacher_loader()
        build_cache(
            teacher,
            tokens,
            folder,
            meta,
            micro_batch_size=micro_batch_size,
            env=env,
            autocast=autocast,
            progress=progress,
        )
        del teacher
    return open_cache(folder)
