"""Training batches, reshuffled every epoch from (seed, epoch).

PKSampler: balanced batches of P classes x K images each; a class with fewer than K images is
topped up by repeating its own images. RandomBatchSampler: plain shuffled batches, the paper's
choice for CUB and Cars (many anchors then have no positive in their batch). With several
processes (DDP) every rank draws the same global batches and takes its own slice of each, so
the global batch is the same whatever the number of processes.
"""

from __future__ import annotations

import random
from collections import defaultdict, deque
from collections.abc import Iterator, Sequence

from ..datasets.base import DataError

SAMPLERS = ("balanced", "random")


class BatchSampler:
    """What both samplers share: the epoch, and each rank's slice of every global batch."""

    seed: int
    rank: int
    world_size: int
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_batches(self) -> list[list[int]]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches():
            yield batch[self.rank :: self.world_size]

    def __len__(self) -> int:
        return len(self.global_batches())


class RandomBatchSampler(BatchSampler):
    """Every image once per epoch in a random order, cut into batches; the last, short batch is
    dropped."""

    def __init__(self, num_samples: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        if not 2 <= batch_size <= num_samples:
            raise DataError(f"batch size {batch_size} must lie between 2 and the {num_samples} training images")
        if batch_size % world_size:
            raise DataError(f"batch size {batch_size} does not split evenly over {world_size} processes")
        self.num_samples, self.batch_size = num_samples, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size

    def global_batches(self) -> list[list[int]]:
        order = list(range(self.num_samples))
        random.Random(f"{self.seed}:{self.epoch}").shuffle(order)
        size = self.batch_size
        return [order[i : i + size] for i in range(0, self.num_samples - size + 1, size)]


class PKSampler(BatchSampler):
    def __init__(
        self,
        labels: Sequence[int],
        batch_size: int,
        samples_per_class: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if not 2 <= samples_per_class <= batch_size or batch_size % samples_per_class:
            raise DataError(
                f"batch size {batch_size} must be a multiple of the images per class K = {samples_per_class} (K >= 2)"
            )
        by_class = defaultdict(list)
        for index, label in enumerate(labels):
            by_class[label].append(index)
        self.classes_per_batch = batch_size // samples_per_class
        if self.classes_per_batch > len(by_class):
            raise DataError(
                f"batch size {batch_size} with {samples_per_class} images per class needs "
                f"{self.classes_per_batch} classes per batch, but the training split has only {len(by_class)}; "
                "lower --batch-size or raise --samples-per-class"
            )
        if batch_size % world_size:
            raise DataError(f"batch size {batch_size} does not split evenly over {world_size} processes")
        self.by_class = dict(by_class)
        self.batch_size, self.samples_per_class = batch_size, samples_per_class
        self.seed, self.rank, self.world_size = seed, rank, world_size

    def global_batches(self) -> list[list[int]]:
        rng = random.Random(f"{self.seed}:{self.epoch}")
        k = self.samples_per_class
        groups = []  # (label, K indices)
        for label in sorted(self.by_class):
            indices = self.by_class[label][:]
            rng.shuffle(indices)
            if len(indices) % k:
                indices += rng.choices(self.by_class[label], k=k - len(indices) % k)
            groups += [(label, indices[i : i + k]) for i in range(0, len(indices), k)]
        rng.shuffle(groups)

        # Fill batches of P distinct classes; a group whose class is already in the batch waits
        # at the back of the queue. Stop when every waiting group clashes with the open batch.
        queue, batches, current, waited = deque(groups), [], {}, 0
        while queue and waited < len(queue):
            label, group = queue.popleft()
            if label in current:
                queue.append((label, group))
                waited += 1
                continue
            current[label], waited = group, 0
            if len(current) == self.classes_per_batch:
                batches.append([i for g in current.values() for i in g])
                current = {}
        return batches


class DistinctRepeats(BatchSampler):
    """Another sampler's batches, with the j-th repeat of an index within a batch given as
    index + j * num_samples: the dataset or feature cache then serves each repeat as a view of
    its own (training without labels, where an image's positives are its own views)."""

    def __init__(self, sampler: BatchSampler, num_samples: int):
        self.sampler, self.num_samples = sampler, num_samples
        self.seed, self.rank, self.world_size = sampler.seed, sampler.rank, sampler.world_size

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.sampler.set_epoch(epoch)

    def global_batches(self) -> list[list[int]]:
        batches = []
        for batch in self.sampler.global_batches():
            seen: dict[int, int] = defaultdict(int)
            distinct = []
            for index in batch:
                distinct.append(index + seen[index] * self.num_samples)
                seen[index] += 1
            batches.append(distinct)
        return batches


def build_sampler(
    kind: str,
    labels: Sequence[int],
    batch_size: int,
    samples_per_class: int,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> BatchSampler:
    if kind == "random":
        return RandomBatchSampler(len(labels), batch_size, seed, rank, world_size)
    return PKSampler(labels, batch_size, samples_per_class, seed, rank, world_size)
