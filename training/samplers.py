"""Class-aware sampling for stage 2 (method notes section 6; the authors' ClassAwareSampler).

Classes are visited in a shuffled cycle; each visit takes ``n_per_class`` consecutive samples
from that class's own shuffled cycle. Every cycle reshuffles when it wraps, so rare classes
repeat their images while common ones are subsampled, and every class is drawn about equally
often. An epoch has ``len(labels) // batch_size`` batches. The order is seeded by
``seed + epoch`` (call :meth:`ClassAwareSampler.set_epoch` each epoch).

Distributed: every rank builds the same global sequence and takes every ``num_replicas``-th
group of ``n_per_class`` (groups ``rank, rank + R, ...``), so shards are disjoint, interleaved,
and each rank's batches still hold whole per-class groups.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence

from torch.utils.data import Sampler


class _Cycle:
    """Endless iteration over ``items`` that reshuffles at the start of every pass."""

    def __init__(self, items: Sequence[int], rng: random.Random) -> None:
        self.items = list(items)
        self.rng = rng
        self.pos = len(self.items)

    def take(self, n: int) -> list[int]:
        out = []
        for _ in range(n):
            if self.pos == len(self.items):
                self.rng.shuffle(self.items)
                self.pos = 0
            out.append(self.items[self.pos])
            self.pos += 1
        return out


class ClassAwareSampler(Sampler[int]):
    """Yields dataset indices in per-class groups of ``n_per_class`` (pass ``dataset.labels``)."""

    def __init__(
        self,
        labels: Sequence[int],
        *,
        batch_size: int,
        n_per_class: int = 4,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if batch_size < 1 or n_per_class < 1:
            raise ValueError(
                f"batch_size ({batch_size}) and n_per_class ({n_per_class}) must be >= 1"
            )
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, num_replicas={num_replicas})")
        if any(y < 0 for y in labels):
            raise ValueError("labels must be >= 0 (open-set images do not belong in training)")
        self.by_class: dict[int, list[int]] = {}
        for index, label in enumerate(labels):
            self.by_class.setdefault(int(label), []).append(index)
        self.num_samples = (len(labels) // batch_size) * batch_size
        if self.num_samples == 0:
            raise ValueError(f"{len(labels)} samples are fewer than one batch of {batch_size}")
        self.batch_size = batch_size
        self.n_per_class = n_per_class
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch; the order is seeded by ``seed + epoch``."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples // self.num_replicas

    def global_indices(self) -> list[int]:
        """The whole epoch's sequence, before sharding (a multiple of ``n_per_class`` long)."""
        groups_per_rank = math.ceil(len(self) / self.n_per_class)
        rng = random.Random(self.seed + self.epoch)
        classes = _Cycle(sorted(self.by_class), rng)
        members = {c: _Cycle(idx, rng) for c, idx in sorted(self.by_class.items())}
        sequence = []
        for _ in range(groups_per_rank * self.num_replicas):
            sequence += members[classes.take(1)[0]].take(self.n_per_class)
        return sequence

    def shard(self, sequence: Sequence[int]) -> list[int]:
        """This rank's groups of ``sequence`` (``rank, rank + R, ...``), cut to ``len(self)``."""
        n, r = self.n_per_class, self.num_replicas
        mine = [
            index
            for start in range(self.rank * n, len(sequence), n * r)
            for index in sequence[start : start + n]
        ]
        return mine[: len(self)]

    def __iter__(self) -> Iterator[int]:
        return iter(self.shard(self.global_indices()))
