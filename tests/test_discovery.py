"""Discovery (service.discovery, python -m service.discover): hand-computed helpers, and the CLI
on real MNIST digits 6-9, which the default model never saw (it knows 0-5)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from _service_fixtures import DEFAULT_MODEL, REPO, mnist_digits, png_bomb_header
from PIL import Image
from sklearn.metrics import adjusted_rand_score

from service import discover as discover_cli
from service.config import load_settings
from service.discovery import (
    candidate_files,
    cluster,
    discover,
    group_name,
    image_id,
    l2_normalise,
    median_distance,
    relabel,
)
from service.predictor import Predictor
from training.data.folders import scan_class_folders

PER_DIGIT = 40


def test_relabel_numbers_groups_by_size_and_drops_small_ones_and_noise() -> None:
    raw = np.array([5, 5, 1, 1, 1, -1, 7, 9, 9])
    assert relabel(raw, 2).tolist() == [2, 2, 1, 1, 1, 0, 0, 3, 3]  # 5 before 9: first seen
    assert relabel(raw, 3).tolist() == [0, 0, 1, 1, 1, 0, 0, 0, 0]


def test_l2_normalise_and_median_distance_by_hand() -> None:
    assert l2_normalise(np.array([[3.0, 4.0], [0.0, 0.0]])).tolist() == [[0.6, 0.8], [0, 0]]
    # pairs: (a, b) 1 - 0 = 1, (a, c) 1 - 1 = 0, (b, c) 1 -> median 1
    rows = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    assert median_distance(rows) == pytest.approx(1.0)
    # 0.6/0.8 vs 1/0: cos = 0.6 -> distance 0.4; with three points: 0.4, 0.4, 0 -> 0.4
    rows = np.array([[1.0, 0.0], [0.6, 0.8], [1.0, 0.0]])
    assert median_distance(rows) == pytest.approx(0.4)


def test_cluster_finds_two_obvious_groups_and_leaves_strays() -> None:
    rng = np.random.default_rng(0)
    a = l2_normalise(np.array([1.0, 0.0, 0.0]) + rng.normal(0, 0.02, (6, 3)))
    b = l2_normalise(np.array([0.0, 1.0, 0.0]) + rng.normal(0, 0.02, (4, 3)))
    stray = np.array([[0.0, 0.0, 1.0]])
    labels = cluster(np.concatenate([a, b, stray]))
    assert labels.tolist() == [1] * 6 + [2] * 4 + [0]
    assert cluster(a[:2]).tolist() == [0, 0]  # fewer images than the smallest group


def test_group_names_sort_in_order() -> None:
    assert group_name(3, 12) == "group-03" and group_name(7, 150) == "group-007"


def test_ids_are_capture_ids_or_relative_paths(tmp_path: Path) -> None:
    capture = tmp_path / ("ab" * 32 + ".png")
    assert image_id(capture, tmp_path) == "ab" * 32
    assert image_id(tmp_path / "x" / "seven.png", tmp_path) == "x/seven.png"


def test_candidates_skip_sidecars_and_hidden_files(tmp_path: Path) -> None:
    for name in ("ab" * 32 + ".png", "ab" * 32 + ".json", ".tmp", "notes.json", "sub/x.jpg"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = [p.relative_to(tmp_path).as_posix() for p in candidate_files(tmp_path)]
    assert found == ["ab" * 32 + ".png", "notes.json", "sub/x.jpg"]


@pytest.fixture(scope="module")
def discovered(tmp_path_factory):
    if not DEFAULT_MODEL.is_file():
        pytest.skip("needs the committed default model (models/default)")
    root = tmp_path_factory.mktemp("discover")
    source = root / "unknowns"
    (source / "more").mkdir(parents=True)
    truth = {}
    for i, (data, digit) in enumerate(mnist_digits(range(6, 10), per_digit=PER_DIGIT)):
        name = f"{i:04d}.png" if i % 5 else f"more/{i:04d}.png"  # nested folders too
        (source / name).write_bytes(data)
        truth[name] = digit
    (source / "notes.txt").write_text("not an image")
    (source / "cut.png").write_bytes(mnist_digits([6])[0][0][:60])  # truncated PNG
    (source / "bomb.png").write_bytes(png_bomb_header(50_000, 50_000))
    out = root / "out"
    cmd = [sys.executable, "-m", "service.discover", str(source), "--out", str(out)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return source, out, truth, done


@pytest.mark.slow
def test_new_digits_come_out_in_separate_groups(discovered) -> None:
    _, out, truth, _ = discovered
    doc = json.loads((out / "groups.json").read_text())
    label_of = {}
    for g in doc["groups"]:
        for image in g["ids"]:
            label_of[image] = g["group"]
    names = sorted(truth)
    digits = np.array([truth[n] for n in names])
    groups = np.array([label_of.get(n, -1 - i) for i, n in enumerate(names)])  # strays: own
    ari = adjusted_rand_score(digits, groups)
    grouped = sum(g["size"] for g in doc["groups"])
    majority = sum(Counter(truth[i] for i in g["ids"]).most_common(1)[0][1] for g in doc["groups"])
    purity = majority / grouped
    majors = {
        d: Counter(g for n, g in zip(names, groups, strict=True) if truth[n] == d)
        for d in range(6, 10)
    }
    # measured: ARI 0.45, purity 0.75, four digits with four different majority groups
    assert ari >= 0.3, ari
    assert purity >= 0.65, purity
    assert grouped >= 0.8 * len(truth)
    assert len({m.most_common(1)[0][0] for m in majors.values()}) >= 3, majors


@pytest.mark.slow
def test_unreadable_files_are_skipped_and_listed(discovered) -> None:
    _, out, truth, done = discovered
    doc = json.loads((out / "groups.json").read_text())
    skipped = {Path(s["file"]).name: s["reason"] for s in doc["skipped"]}
    assert set(skipped) == {"notes.txt", "cut.png", "bomb.png"}
    assert "not an image" in skipped["notes.txt"]
    assert "truncated" in skipped["cut.png"] or "corrupt" in skipped["cut.png"]
    assert "pixels" in skipped["bomb.png"]
    assert doc["images"] == len(truth)
    assert "notes.txt" in done.stderr


@pytest.mark.slow
def test_group_folders_are_class_folders_of_copies(discovered) -> None:
    source, out, _, _ = discovered
    doc = json.loads((out / "groups.json").read_text())
    classes = scan_class_folders(out)  # what training.make_split / fit read
    assert sorted(classes) == [g["folder"] for g in doc["groups"]]
    for g in doc["groups"]:
        copies = sorted(p.name for p in classes[g["folder"]])
        assert copies == sorted(i.replace("/", "__") for i in g["ids"])
        for image in g["ids"][:3]:
            assert (out / g["folder"] / image.replace("/", "__")).read_bytes() == (
                source / image
            ).read_bytes()


@pytest.mark.slow
def test_contact_sheets_are_pngs_of_the_groups(discovered) -> None:
    _, out, _, _ = discovered
    doc = json.loads((out / "groups.json").read_text())
    for g in doc["groups"]:
        with Image.open(out / g["contact_sheet"]) as sheet:
            assert sheet.format == "PNG"
            shown = min(g["size"], 100)
            columns = min(10, int(np.ceil(np.sqrt(shown))))
            rows = int(np.ceil(shown / columns))
            assert sheet.size == (columns * 96, 20 + rows * 96)
            assert np.asarray(sheet.convert("L"))[20:].std() > 10  # digits drawn, not blank


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["does-not-exist", "--out", "OUT"], "not a folder"),
        (["SRC", "--out", "SRC/inside"], "must not be inside"),
        (["SRC", "--out", "FULL"], "not an empty folder"),
        (["SRC", "--out", "OUT", "--relative-cut", "0"], "--relative-cut"),
    ],
)
def test_cli_refuses_bad_arguments(
    tmp_path: Path,
    args: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "SRC").mkdir()
    (tmp_path / "FULL").mkdir()
    (tmp_path / "FULL" / "x").write_text("x")
    monkeypatch.chdir(tmp_path)
    assert discover_cli.main(args) == 2
    assert message in capsys.readouterr().err


def test_max_images_takes_the_newest(tmp_path: Path) -> None:
    if not DEFAULT_MODEL.is_file():
        pytest.skip("needs the committed default model (models/default)")
    for i, (data, _) in enumerate(mnist_digits(range(6), per_digit=1)):
        path = tmp_path / f"{5 - i}.png"  # names sort the other way round from their age
        path.write_bytes(data)
        os.utime(path, ns=(i * 10**9, i * 10**9))
    model = Predictor.load(DEFAULT_MODEL, load_settings(providers="cpu"))
    found = discover(tmp_path, model, max_images=4)
    assert [p.name for p in found.files] == ["0.png", "1.png", "2.png", "3.png"]
    assert found.model_version == model.version and len(found.labels) == 4
