"""The long-tail split builder, the make_split command and the embedded MNIST default."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from training import make_split
from training.config import DataConfig
from training.data import (
    DataError,
    ImageDataset,
    SplitSpec,
    build_split,
    load_split,
    profile_counts,
    shot_group,
    train_transform,
)
from training.data.mnist import _build_once, materialise_mnist, mnist_split_dir
from training.data.split import SPLIT_NAMES
from training.samplers import ClassAwareSampler

# --- count profiles (hand-computed) -----------------------------------------------------------


def test_profile_counts_hand_computed() -> None:
    # Pareto, K=3, max=100, min=4, alpha=2: c = (100/4)**(1/2) - 1 = 4;
    # middle class x=0.5: 100 * (1 + 4*0.5)**-2 = 100/9 = 11.1 -> 11.
    assert profile_counts(3, profile="pareto", max_count=100, min_count=4, alpha=2) == [100, 11, 4]
    # Exponential: 100 * (4/100)**0.5 = 100 * 0.2 = 20.
    assert profile_counts(3, profile="exp", max_count=100, min_count=4) == [100, 20, 4]
    # Pareto, K=6, 400..5, alpha=6: c = 80**(1/6) - 1 = 1.0757; x = 0.2: (1.2151)**-6 = 0.3107
    # -> 124.3; x = 0.4: 0.1168 -> 46.7; x = 0.6: 0.0504 -> 20.2; x = 0.8: 0.0241 -> 9.6.
    assert profile_counts(6, profile="pareto", max_count=400, min_count=5) == [
        400, 124, 47, 20, 10, 5
    ]  # fmt: skip
    # Exponential, K=6: 400 / 80**0.2 = 400 / 2.4022 = 166.5 -> 167; 400 / 5.7708 = 69.3;
    # 400 / 13.863 = 28.9; 400 / 33.30 = 12.0.
    assert profile_counts(6, profile="exp", max_count=400, min_count=5) == [
        400, 167, 69, 29, 12, 5
    ]  # fmt: skip
    assert profile_counts(1, profile="pareto", max_count=50, min_count=5) == [50]


@pytest.mark.parametrize("profile", ["pareto", "exp"])
@pytest.mark.parametrize("k", [2, 6, 10, 100])
def test_profile_counts_monotone_from_max_to_min(profile: str, k: int) -> None:
    counts = profile_counts(k, profile=profile, max_count=1280, min_count=5, alpha=6)
    assert counts[0] == 1280 and counts[-1] == 5 and len(counts) == k
    assert all(a >= b for a, b in zip(counts, counts[1:], strict=False))


def test_profile_counts_rejects_bad_range() -> None:
    with pytest.raises(DataError, match="min"):
        profile_counts(3, profile="pareto", max_count=5, min_count=10)


def test_shot_group_boundaries() -> None:
    # Paper thresholds: many > 100, few < 20, medium 20..100 inclusive.
    assert [shot_group(n) for n in (101, 100, 20, 19)] == ["many", "medium", "medium", "few"]
    assert shot_group(100, many_shot=99) == "many"


# --- build_split (pure) -----------------------------------------------------------------------

KNOWN = tuple("abcdef")


def _source(per_class: int, names: str = "abcdefgh", prefix: str = "src") -> dict[str, list[str]]:
    return {c: [f"{prefix}/{c}/{i:04d}.png" for i in range(per_class)] for c in names}


def _spec(**kw) -> SplitSpec:
    base = dict(known=KNOWN, open=("g", "h"), max_count=400, min_count=5, val_per_class=10)
    return SplitSpec(**{**base, "test_per_class": 20, **kw})


def test_build_split_counts_balance_and_disjointness() -> None:
    built = build_split(_source(450), _spec())
    train = Counter(y for _, y in built.splits["train"])
    counts = [train[i] for i in range(6)]
    assert counts == built.train_counts
    assert sorted(counts, reverse=True) == [400, 124, 47, 20, 10, 5]
    assert Counter(y for _, y in built.splits["val"]) == dict.fromkeys(range(6), 10)
    assert Counter(y for _, y in built.splits["test"]) == dict.fromkeys(range(6), 20)
    # Open classes: 450 images each, half to open_val, half to open_test.
    assert len(built.splits["open_val"]) == len(built.splits["open_test"]) == 450
    assert {y for _, y in built.splits["open_val"] + built.splits["open_test"]} == {-1}
    paths = [p for name in SPLIT_NAMES for p, _ in built.splits[name]]
    assert len(paths) == len(set(paths))  # no image in two splits
    for name in ("train", "val", "test"):  # labels match the class folder of each path
        assert all(p.split("/")[1] == KNOWN[y] for p, y in built.splits[name])
    groups = dict(zip(built.train_counts, built.shot_groups, strict=True))
    assert groups == {400: "many", 124: "many", 47: "medium", 20: "medium", 10: "few", 5: "few"}


def test_build_split_deterministic_per_seed() -> None:
    a = build_split(_source(450), _spec(seed=3))
    b = build_split(_source(450), _spec(seed=3))
    c = build_split(_source(450), _spec(seed=4))
    assert a.splits == b.splits and a.train_counts == b.train_counts
    assert a.splits["train"] != c.splits["train"]


def test_build_split_default_test_is_largest_balanced() -> None:
    # 430 images per class: the 400-image class leaves 430 - 400 - 10 = 20 for test.
    built = build_split(_source(430), _spec(test_per_class=None))
    assert built.test_per_class == 20
    assert Counter(y for _, y in built.splits["test"]) == dict.fromkeys(range(6), 20)


def test_build_split_with_test_source() -> None:
    test_source = _source(30, prefix="tst")
    built = build_split(_source(420), _spec(test_per_class=None, open_per_class=7), test_source)
    assert built.test_per_class == 30
    assert all(p.startswith("tst/") for p, _ in built.splits["test"])
    assert all(p.startswith("src/") for p, _ in built.splits["train"] + built.splits["val"])
    # Open: open_val from the source, open_test from the test source, 7 per class each.
    assert all(p.startswith("src/") for p, _ in built.splits["open_val"])
    assert all(p.startswith("tst/") for p, _ in built.splits["open_test"])
    assert len(built.splits["open_val"]) == len(built.splits["open_test"]) == 14


def test_build_split_not_enough_images_names_class() -> None:
    source = _source(450)
    source["c"] = source["c"][:30]
    with pytest.raises(DataError, match="class 'c' has 30 images but the split needs"):
        build_split(source, _spec(seed=0, min_count=20, max_count=21))
    with pytest.raises(DataError, match="source has no class 'zz'"):
        build_split(_source(450), _spec(known=("a", "zz")))


def test_split_spec_rejects_overlap() -> None:
    with pytest.raises(DataError, match="both known and open: a"):
        SplitSpec(known=("a", "b"), open=("a",))


# --- make_split command on real files ---------------------------------------------------------


def _image_tree(root: Path, per_class: dict[str, int]) -> Path:
    for cls, n in per_class.items():
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("L", (4, 4), i).save(root / cls / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def image_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("src")
    _image_tree(base / "train", {"ant": 30, "bee": 30, "cow": 30, "owl": 12})
    _image_tree(base / "test", {"ant": 6, "bee": 6, "cow": 6, "owl": 5})
    return base


def _cli(source: Path, out: Path, *extra: str) -> int:
    argv = ["--source", str(source / "train"), "--test-source", str(source / "test")]
    argv += ["--out", str(out), "--open", "owl", "--max", "20", "--min", "2", "--val-per-class"]
    return make_split.main([*argv, "2", *extra])


def test_make_split_writes_loadable_split(image_source: Path, tmp_path: Path) -> None:
    assert _cli(image_source, tmp_path / "s0") == 0
    summary = json.loads((tmp_path / "s0" / "summary.json").read_text())
    assert summary["root"] == str(image_source)
    assert summary["sizes"]["test"] == 18  # 6 per known class (all the test source has)
    # 3 classes, 20..2, alpha 6: c = 10**(1/6) - 1 = 0.4678; x=0.5: 20 * 1.2339**-6 = 5.68 -> 6.
    assert sorted(summary["train_counts"].values()) == [2, 6, 20]
    assert (tmp_path / "s0" / "classes.txt").read_text() == "ant\nbee\ncow\n"
    split = load_split(DataConfig(kind="lists", split_dir=str(tmp_path / "s0")))
    assert split.class_names == ["ant", "bee", "cow"]
    assert split.train_counts == [summary["train_counts"][c] for c in split.class_names]
    assert all(p.is_file() for s in (split.train, split.test, split.open_test) for p, _ in s)
    assert len(split.open_val) == 12 and len(split.open_test) == 5
    assert {p.parent.parent.name for p, _ in split.test} == {"test"}


def test_make_split_deterministic_files(image_source: Path, tmp_path: Path) -> None:
    for out, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        assert _cli(image_source, tmp_path / out, "--seed", seed) == 0
    for name in (*SPLIT_NAMES, "classes"):
        file = f"{name}.txt"
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()
    assert (tmp_path / "a/train.txt").read_bytes() != (tmp_path / "c/train.txt").read_bytes()


def test_make_split_reports_shortage(
    image_source: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert _cli(image_source, tmp_path / "x", "--test-per-class", "9") == 2
    assert "has 6 test images but the split needs 9" in capsys.readouterr().err
    assert _cli(image_source, tmp_path / "y", "--max", "40") == 2
    assert "has 30 images but the split needs 42" in capsys.readouterr().err


# --- the embedded MNIST default ---------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("cache")
    materialise_mnist(cache)
    return cache


def test_mnist_images_materialised(mnist_cache: Path) -> None:
    folder = mnist_cache / "mnist5k"
    assert sorted(p.name for p in folder.iterdir()) == [str(d) for d in range(10)]
    assert sum(1 for _ in folder.rglob("*.png")) == 5000
    assert all(sum(1 for _ in (folder / str(d)).iterdir()) == 500 for d in range(10))
    image = Image.open(next((folder / "7").iterdir()))
    assert image.size == (28, 28) and image.mode == "L"
    assert np.asarray(image).max() > 200  # real strokes, not blank
    assert materialise_mnist(mnist_cache) == folder  # idempotent, no rebuild
    assert not [p for p in mnist_cache.iterdir() if p.name.startswith(".")]


def test_mnist_default_split(mnist_cache: Path) -> None:
    split = load_split(DataConfig(cache_dir=str(mnist_cache), split_seed=0))
    assert split.class_names == ["0", "1", "2", "3", "4", "5"]
    assert sorted(split.train_counts, reverse=True) == [400, 124, 47, 20, 10, 5]
    assert set(split.shot_groups()) == {"many", "medium", "few"}
    assert Counter(y for _, y in split.val) == dict.fromkeys(range(6), 30)
    assert Counter(y for _, y in split.test) == dict.fromkeys(range(6), 70)
    assert len(split.open_val) == len(split.open_test) == 1000
    assert {p.parent.name for p, _ in split.open_val + split.open_test} == set("6789")
    everything = [p for s in (split.train, split.val, split.test, split.open_val, split.open_test)
                  for p, _ in s]  # fmt: skip
    assert len(everything) == len(set(everything))
    assert all(p.parent.name == split.class_names[y] for p, y in split.train + split.test)


def test_mnist_split_deterministic(mnist_cache: Path) -> None:
    first = mnist_split_dir(mnist_cache, 0)
    before = {n: (first / f"{n}.txt").read_bytes() for n in SPLIT_NAMES}
    shutil.rmtree(first)
    rebuilt = mnist_split_dir(mnist_cache, 0)
    assert {n: (rebuilt / f"{n}.txt").read_bytes() for n in SPLIT_NAMES} == before
    other = mnist_split_dir(mnist_cache, 1)
    assert (other / "train.txt").read_bytes() != before["train"]


def test_build_once_keeps_the_winner_of_a_race(tmp_path: Path) -> None:
    target = tmp_path / "thing"

    def build(tmp: Path) -> None:
        (tmp / "mine").write_text("loser")
        target.mkdir()  # another process finishes first
        (target / "theirs").write_text("winner")

    assert _build_once(target, build) == target
    assert [p.name for p in target.iterdir()] == ["theirs"]
    assert [p.name for p in tmp_path.iterdir()] == ["thing"]  # the temporary folder is gone


def test_default_pipeline_feeds_a_dataloader_with_workers(mnist_cache: Path) -> None:
    cfg = DataConfig(cache_dir=str(mnist_cache))
    split = load_split(cfg)
    dataset = ImageDataset(split.train, train_transform(cfg), on_corrupt=cfg.on_corrupt)
    sampler = ClassAwareSampler(dataset.labels, batch_size=24, n_per_class=4)
    loader = DataLoader(dataset, batch_size=24, sampler=sampler, num_workers=2)
    images, labels = next(iter(loader))
    assert images.shape == (24, 3, 32, 32) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1 and images.max() > 0.5
    assert len(loader) == 606 // 24  # 400+124+47+20+10+5 = 606 training digits
    assert all(len(set(labels[i : i + 4].tolist())) == 1 for i in range(0, 24, 4))
