"""ClassAwareSampler: group structure, balance, per-class cycles, epochs and sharding."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from training.samplers import ClassAwareSampler

# 263 samples: class 0 has 200, class 1 50, class 2 10, class 3 3 (a long tail).
LABELS = [0] * 200 + [1] * 50 + [2] * 10 + [3] * 3


def _sampler(**kw) -> ClassAwareSampler:
    return ClassAwareSampler(LABELS, **{"batch_size": 16, "n_per_class": 4, **kw})


def test_epoch_length() -> None:
    # 263 // 16 = 16 batches -> 256 samples.
    assert len(_sampler()) == 256
    assert len(list(_sampler())) == 256


def test_batches_hold_whole_per_class_groups() -> None:
    indices = list(_sampler())
    for start in range(0, len(indices), 4):
        assert len({LABELS[i] for i in indices[start : start + 4]}) == 1
    for start in range(0, len(indices), 16):  # each batch: 4 groups of 4, every group one class
        batch = Counter(LABELS[i] for i in indices[start : start + 16])
        assert all(n % 4 == 0 for n in batch.values())


def test_rare_classes_drawn_as_often_as_common_ones() -> None:
    indices = list(_sampler(seed=5))
    # 64 groups over a 4-class cycle that visits each class once per pass: 16 groups each,
    # i.e. exactly 256 / 4 = 64 draws per class although class 0 has 67x the images of class 3.
    assert Counter(LABELS[i] for i in indices) == {0: 64, 1: 64, 2: 64, 3: 64}
    # Class 3's own cycle (3 images) wraps and reshuffles: 64 = 21 * 3 + 1 -> 22, 21, 21.
    assert sorted(Counter(i for i in indices if LABELS[i] == 3).values()) == [21, 21, 22]
    # Class 0 (200 images) never wraps: 64 distinct images.
    assert len({i for i in indices if LABELS[i] == 0}) == 64


def test_seed_and_epoch_control_the_order() -> None:
    sampler = _sampler(seed=1)
    first = list(sampler)
    assert list(sampler) == first  # same epoch, same order
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first
    assert list(_sampler(seed=2)) == second  # seeded by seed + epoch
    sampler.set_epoch(0)
    assert list(sampler) == first


@pytest.mark.parametrize("replicas", [2, 4])
def test_distributed_shards_are_disjoint_and_cover(replicas: int) -> None:
    shards = [list(_sampler(num_replicas=replicas, rank=r, seed=7)) for r in range(replicas)]
    sequence = _sampler(num_replicas=replicas, rank=0, seed=7).global_indices()
    assert all(len(s) == 256 // replicas for s in shards)
    # Re-interleave group by group: the shards together are exactly the global sequence.
    groups = [[s[i : i + 4] for i in range(0, len(s), 4)] for s in shards]
    rebuilt = [i for step in zip(*groups, strict=True) for group in step for i in group]
    assert rebuilt == sequence
    for shard in shards:  # each rank still sees whole per-class groups
        for start in range(0, len(shard), 4):
            assert len({LABELS[i] for i in shard[start : start + 4]}) == 1


def test_works_as_dataloader_sampler() -> None:
    dataset = TensorDataset(torch.tensor(LABELS))
    loader = DataLoader(dataset, batch_size=8, sampler=_sampler(batch_size=8, n_per_class=2))
    batches = [b[0] for b in loader]
    assert len(batches) == 263 // 8
    assert all(b.shape == (8,) and torch.equal(b[0::2], b[1::2]) for b in batches)


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="fewer than one batch"):
        ClassAwareSampler([0, 1, 2], batch_size=4)
    with pytest.raises(ValueError, match="labels must be >= 0"):
        ClassAwareSampler([0, -1] * 10, batch_size=4)
    with pytest.raises(ValueError, match="rank 2"):
        ClassAwareSampler(LABELS, batch_size=4, num_replicas=2, rank=2)
