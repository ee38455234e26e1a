"""Which training sequences each optimizer step, process and micro-batch sees.

The order is a pure function of (seed, sample position): epoch e visits the sequences in the order
`np.random.default_rng([seed, e]).permutation(n)`, and the stream of epochs is cut into global batches
of `global_batch_size` sequences (a batch may straddle two epochs). A checkpoint therefore only needs
the position (samples consumed), and the global batch is the same for any number of processes: each
process takes its own contiguous slice of it, then splits the slice into micro-batches.
"""

from __future__ import annotations

import numpy as np


class SequenceOrder:
    """Deterministic, epoch-wise shuffled order of `n` training sequences."""

    def __init__(self, n: int, seed: int):
        if n < 1:
            raise ValueError("the training split holds no sequences")
        self.n, self.seed = n, seed
        self._epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._perm

    def indices(self, start: int, count: int) -> np.ndarray:
        """Sequence indices at sample positions [start, start + count), int64 [count]."""
        out = np.empty(count, dtype=np.int64)
        done = 0
        while done < count:
            epoch, offset = divmod(start + done, self.n)
            take = min(count - done, self.n - offset)
            out[done : done + take] = self._permutation(epoch)[offset : offset + take]
            done += take
        return out

    def global_batch(self, step: int, global_batch_size: int) -> np.ndarray:
        """The `global_batch_size` sequence indices of optimizer step `step` (0-based)."""
        return self.indices(step * global_batch_size, global_batch_size)


def rank_slice(batch: np.ndarray, rank: int, world: int) -> np.ndarray:
    """This process's contiguous, disjoint share of a global batch (len(batch) must divide by world)."""
    per = len(batch) // world
    return batch[rank * per : (rank + 1) * per]


def micro_batches(indices: np.ndarray, micro_batch_size: int) -> list[np.ndarray]:
    """Consecutive chunks of `micro_batch_size` indices (the last one may be shorter)."""
    return [indices[i : i + micro_batch_size] for i in range(0, len(indices), micro_batch_size)]


def padded_shard(n: int, rank: int, world: int) -> tuple[np.ndarray, np.ndarray]:
    """Strided share of n items for evaluation, padded so every process runs the same number of batches.

    Returns (indices [ceil(n / world)], weights [same] with 0.0 on padding rows, which repeat index 0).
    Equal lengths matter under FSDP, where every forward is a collective.
    """
    per = -(-n // world)
    idx = np.arange(per, dtype=np.int64) * world + rank
    weight = (idx < n).astype(np.float32)
    return np.where(idx < n, idx, 0), weight
