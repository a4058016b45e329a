"""Balanced P x K batches, seeded per epoch, sharded by rank."""

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metrix.datasets import DataError
from metrix.training.sampler import PKSampler, RandomBatchSampler, build_sampler


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(2, 40), min_size=4, max_size=30),
    k=st.integers(2, 5),
    p=st.integers(2, 4),
    seed=st.integers(0, 1000),
)
def test_every_batch_is_p_classes_times_k_images(counts, k, p, seed):
    labels = [c for c, n in enumerate(counts) for _ in range(n)]
    sampler = PKSampler(labels, p * k, k, seed=seed)
    batches = sampler.global_batches()
    assert len(batches) == len(sampler)
    for batch in batches:
        per_class = Counter(labels[i] for i in batch)
        assert len(batch) == p * k and len(per_class) == p and set(per_class.values()) == {k}
    used = Counter(i for batch in batches for i in batch)
    # Each image appears about once per epoch; only classes topped up to a multiple of K repeat.
    assert all(n <= 1 + (k - 1) for n in used.values())
    # Most of the data is used (groups left over when only clashing classes remain are dropped).
    assert sum(len(b) for b in batches) >= len(labels) - (p * k) * (1 + max(counts) // k)


def test_seeded_and_reshuffled_every_epoch():
    labels = [c for c in range(20) for _ in range(10)]
    a, b = PKSampler(labels, 20, 5, seed=3), PKSampler(labels, 20, 5, seed=3)
    assert a.global_batches() == b.global_batches()
    first = a.global_batches()
    a.set_epoch(1)
    assert a.global_batches() != first
    assert PKSampler(labels, 20, 5, seed=4).global_batches() != first


def test_ranks_take_disjoint_slices_of_the_same_global_batches():
    labels = [c for c in range(12) for _ in range(random.Random(c).randint(4, 15))]
    whole = PKSampler(labels, 24, 4, seed=1).global_batches()
    shards = [list(PKSampler(labels, 24, 4, seed=1, rank=r, world_size=3)) for r in range(3)]
    for i, batch in enumerate(whole):
        parts = [shard[i] for shard in shards]
        assert sorted(sum(parts, [])) == sorted(batch) and all(len(part) == 8 for part in parts)


@pytest.mark.parametrize(
    "batch, k, match",
    [(10, 4, "multiple"), (12, 1, "K >= 2"), (40, 2, "needs 20 classes per batch, but the training split has only 6")],
)
def test_batches_that_cannot_be_filled(batch, k, match):
    labels = [c for c in range(6) for _ in range(5)]
    with pytest.raises(DataError, match=match):
        PKSampler(labels, batch, k)


@pytest.mark.parametrize("n, batch, world", [(100, 10, 1), (103, 10, 2), (57, 8, 4)])
def test_random_batches_use_each_image_at_most_once_and_drop_the_short_one(n, batch, world):
    sampler = RandomBatchSampler(n, batch, seed=2)
    batches = sampler.global_batches()
    used = [i for b in batches for i in b]
    assert len(batches) == n // batch == len(sampler) and all(len(b) == batch for b in batches)
    assert len(set(used)) == len(used) == n - n % batch
    shards = [list(RandomBatchSampler(n, batch, seed=2, rank=r, world_size=world)) for r in range(world)]
    for i, whole in enumerate(batches):
        assert sorted(sum((shard[i] for shard in shards), [])) == sorted(whole)


def test_random_batches_are_seeded_and_reshuffled_every_epoch():
    a, b = RandomBatchSampler(50, 10, seed=1), RandomBatchSampler(50, 10, seed=1)
    assert a.global_batches() == b.global_batches()
    first = a.global_batches()
    a.set_epoch(1)
    assert a.global_batches() != first
    assert RandomBatchSampler(50, 10, seed=2).global_batches() != first


def test_random_batches_leave_anchors_without_positives():
    """The point of the paper's random batches on CUB: many anchors have no positive in their
    batch (balanced batches give every anchor K - 1)."""
    labels = [c for c in range(50) for _ in range(40)]
    batches = build_sampler("random", labels, 100, 5, seed=0).global_batches()
    lonely = [sum(Counter(labels[i] for i in b)[labels[i]] == 1 for i in b) for b in batches]
    assert sum(lonely) / (100 * len(batches)) > 0.05
    balanced = build_sampler("balanced", labels, 100, 5, seed=0).global_batches()
    assert all(min(Counter(labels[i] for i in b).values()) == 5 for b in balanced)


@pytest.mark.parametrize("n, batch, world, match", [(10, 20, 1, "between 2 and the 10"), (30, 10, 3, "split evenly")])
def test_random_batches_that_cannot_be_made(n, batch, world, match):
    with pytest.raises(DataError, match=match):
        RandomBatchSampler(n, batch, world_size=world)
