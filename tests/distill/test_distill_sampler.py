"""Data order: deterministic from the seed, epoch-wise permutations, the same global batch for any world size."""

import numpy as np

from compactlm.distill.sampler import SequenceOrder, micro_batches, padded_shard, rank_slice


def test_order_is_a_seeded_permutation_per_epoch():
    a, b = SequenceOrder(10, seed=3), SequenceOrder(10, seed=3)
    stream = a.indices(0, 30)
    np.testing.assert_array_equal(stream, b.indices(0, 30))
    for epoch in range(3):
        assert sorted(stream[epoch * 10 : (epoch + 1) * 10]) == list(range(10))
    assert not np.array_equal(stream[:10], stream[10:20])
    assert not np.array_equal(stream[:10], SequenceOrder(10, seed=4).indices(0, 10))
    # Random access (what a resumed run does) gives the same indices as reading from the start.
    np.testing.assert_array_equal(SequenceOrder(10, seed=3).indices(17, 8), stream[17:25])


def test_global_batch_straddles_epochs_and_splits_disjointly_over_ranks():
    order = SequenceOrder(6, seed=0)
    batch = order.global_batch(1, 4)  # sample positions 4..7: two from epoch 0, two from epoch 1
    np.testing.assert_array_equal(batch, order.indices(4, 4))
    for world in (1, 2, 4):
        shards = [rank_slice(batch, r, world) for r in range(world)]
        np.testing.assert_array_equal(np.concatenate(shards), batch)
    assert [len(m) for m in micro_batches(np.arange(5), 2)] == [2, 2, 1]


def test_padded_shard_covers_every_item_once_with_equal_lengths():
    n, world = 7, 3
    seen = []
    for r in range(world):
        idx, w = padded_shard(n, r, world)
        assert len(idx) == 3
        seen += list(idx[w > 0])
    assert sorted(seen) == list(range(n))
