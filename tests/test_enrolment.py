"""Enrolment without training: the head's constants (hand values), the graph edit on the real
default model, the card, the CLI twin."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from _service_fixtures import mnist_digits, solid

from oltr_contract.artifact import OUTPUT_NAMES
from service import enrol as enrol_cli
from service.enrolment import (
    REFERENCE_KEY,
    Artifact,
    Example,
    enrol,
    latest_version,
    remove,
    write_version,
)
from service.errors import (
    ClassExists,
    ClassNotFound,
    EnrolmentUnavailable,
    InvalidClassName,
    TrainedClass,
)
from service.head_surgery import SILENT_BIAS, NewClass, class_rows, imprint, locate_head
from service.preprocessing import PreprocessSpec, image_to_input

DEFAULT = Path(__file__).resolve().parents[1] / "models" / "default" / "model.onnx"


# -- hand-computed values -----------------------------------------------------------------------


def test_class_rows_per_role() -> None:
    new = NewClass(centroid=np.array([3.0, 4.0], np.float32), direction=np.array([0.0, 2.0]))
    np.testing.assert_allclose(class_rows(new, "distance_centroids", "l2"), [3, 4])
    np.testing.assert_allclose(class_rows(new, "distance_centroids", "cosine"), [0.6, 0.8])
    np.testing.assert_allclose(class_rows(new, "memory_centroids", "cosine"), [3, 4])
    np.testing.assert_allclose(class_rows(new, "hallucinator_weight", "l2"), [0, 0])
    np.testing.assert_allclose(class_rows(new, "hallucinator_bias", "l2"), [SILENT_BIAS])
    np.testing.assert_allclose(class_rows(new, "classifier", "l2"), [0, 1])


def test_imprint_keeps_only_what_the_trained_classes_and_the_mean_lack() -> None:
    # unit inputs (1,1,1)/sqrt3 and (1,1,-1)/sqrt3: mean (1,1,0)/sqrt3; trained direction e1 and
    # reference e3 are projected out, leaving (0,1,0)/sqrt3 -> unit e2
    inputs = np.array([[2, 2, 2], [1, 1, -1]], np.float32)
    new = imprint(
        np.array([[1.0, 0, 0], [3.0, 2, 0]], np.float32),
        inputs,
        reference=np.array([0, 0, 0.5], np.float32),
        trained_directions=np.array([[1.0, 0, 0]], np.float32),
    )
    np.testing.assert_allclose(new.centroid, [2, 1, 0])
    np.testing.assert_allclose(new.direction, [0, 1, 0], atol=1e-6)


def test_imprint_gives_back_the_shared_component_the_trained_directions_hold() -> None:
    # the same examples; trained directions (0.6, 0, 0.8) and (-0.6, 0, 0.8), reference e3:
    # e1 and e3 are projected out -> n = e2; b = mean(0.8, 0.8) = 0.8 ->
    # d = 0.8 e3 + sqrt(1 - 0.64) e2 = (0, 0.6, 0.8)
    new = imprint(
        np.array([[1.0, 0, 0], [3.0, 2, 0]], np.float32),
        np.array([[2, 2, 2], [1, 1, -1]], np.float32),
        reference=np.array([0, 0, 2.0], np.float32),
        trained_directions=np.array([[0.6, 0, 0.8], [-0.6, 0, 0.8]], np.float32),
    )
    np.testing.assert_allclose(new.direction, [0, 0.6, 0.8], atol=1e-6)


def test_imprint_needs_an_example() -> None:
    with pytest.raises(ValueError, match="at least one"):
        imprint(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32), np.zeros(3), np.eye(3))


# -- the real default model -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def base() -> Artifact:
    return Artifact.read(DEFAULT)


def _pixels(artifact: Artifact, data: list[bytes]) -> np.ndarray:
    spec = artifact.preprocess_spec
    return np.stack([image_to_input(d, spec, max_pixels=10**7) for d in data])


def _run(artifact: Artifact, pixels: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(
        artifact.proto.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    return dict(zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), {"image": pixels}), strict=True))


@pytest.fixture(scope="module")
def digits() -> dict[int, list[bytes]]:
    out: dict[int, list[bytes]] = {}
    for data, label in mnist_digits(range(10), per_digit=12):
        out.setdefault(label, []).append(data)
    return out


@pytest.fixture(scope="module")
def with_six(base: Artifact, digits: dict[int, list[bytes]]) -> Artifact:
    six = digits[6][:10]
    examples = [Example.of(p, d) for p, d in zip(_pixels(base, six), six, strict=True)]
    return enrol(base, "6", examples)


def test_the_default_head_is_found_by_role(base: Artifact) -> None:
    head = locate_head(base.proto, 6)
    shapes = {s.role: s.axis for s in head.slots}
    assert shapes == {
        "distance_centroids": 1,
        "memory_centroids": 0,
        "hallucinator_weight": 0,
        "hallucinator_bias": 0,
        "classifier": 1,
    }


def test_enrolled_model_answers_old_images_as_before_unless_the_new_class_wins(
    base: Artifact, with_six: Artifact, digits: dict[int, list[bytes]]
) -> None:
    old = _pixels(base, [d for k in range(6) for d in digits[k]])
    before, after = _run(base, old), _run(with_six, old)
    assert after["logits"].shape == (len(old), 7)
    wins = after["logits"].argmax(1) == 6
    near = after["nearest_class"] == 6  # the new centroid is nearest: reach (and scale) change
    np.testing.assert_allclose(
        after["logits"][~near, :6], before["logits"][~near], rtol=1e-5, atol=1e-5
    )
    keep = ~wins & ~near
    assert keep.sum() >= len(old) // 2  # the comparison below covers most images
    np.testing.assert_array_equal(after["logits"].argmax(1)[keep], before["logits"].argmax(1)[keep])
    np.testing.assert_allclose(
        after["reachability"][~near], before["reachability"][~near], rtol=1e-6
    )
    np.testing.assert_allclose(after["embedding"], before["embedding"], rtol=1e-6)


def test_examples_come_back_as_the_new_class(
    with_six: Artifact, digits: dict[int, list[bytes]]
) -> None:
    out = _run(with_six, _pixels(with_six, digits[6][:10]))
    assert (out["logits"].argmax(1) == 6).mean() >= 0.8


def test_card_records_the_class(base: Artifact, with_six: Artifact) -> None:
    card = with_six.card
    assert card["class_names"] == [*base.class_names, "6"]
    assert card["train_counts"][-1] == 10 and card["shot_groups"][-1] == "enrolled"
    record = card["enrolment"]
    assert record["base_classes"] == 6
    (cls,) = record["classes"]
    assert cls["name"] == "6" and cls["parent_version"] == base.version
    assert len(cls["examples"]) == 10 and all(len(h) == 64 for h in cls["examples"])
    assert with_six.version != base.version
    assert with_six.card[REFERENCE_KEY] == base.card[REFERENCE_KEY]


def test_removing_gives_back_the_parents_answers(
    base: Artifact, with_six: Artifact, digits: dict[int, list[bytes]]
) -> None:
    back = remove(with_six, "6")
    assert back.class_names == base.class_names and "enrolment" not in back.card
    images = _pixels(base, [d for k in range(10) for d in digits[k][:3]])
    for name, value in _run(back, images).items():
        np.testing.assert_array_equal(value, _run(base, images)[name], err_msg=name)


def test_refusals(base: Artifact, with_six: Artifact) -> None:
    some = [Example.of(np.zeros((32, 32, 3), np.uint8), b"x")]
    with pytest.raises(ClassExists):
        enrol(base, "3", some)
    with pytest.raises(InvalidClassName, match="class name"):
        enrol(base, "../etc", some)
    with pytest.raises(TrainedClass):
        remove(with_six, "0")
    with pytest.raises(ClassNotFound):
        remove(with_six, "7")
    bare = Artifact(base.proto, {k: v for k, v in base.card.items() if k != REFERENCE_KEY})
    with pytest.raises(EnrolmentUnavailable, match="service.enrol reference"):
        enrol(bare, "6", some)


def test_versions_and_latest(tmp_path: Path, with_six: Artifact) -> None:
    assert latest_version(tmp_path) is None
    path = write_version(with_six, tmp_path)
    assert path == tmp_path / with_six.version / "model.onnx"
    assert latest_version(tmp_path) == path
    assert json.loads((path.parent / "card.json").read_text())["version"] == with_six.version


# -- the CLI twin ---------------------------------------------------------------------------------


def test_cli_add_list_remove(tmp_path: Path, digits: dict[int, list[bytes]], capsys) -> None:
    folder = tmp_path / "sevens"
    folder.mkdir()
    for i, data in enumerate(digits[7][:5]):
        (folder / f"{i}.png").write_bytes(data)
    out = tmp_path / "with-7"
    args = ["add", "--model", str(DEFAULT), "--name", "7", "--images", str(folder)]
    assert enrol_cli.main([*args, "--out", str(out)]) == 0
    assert enrol_cli.main(["list", "--model", str(out / "model.onnx")]) == 0
    assert "7  (enrolled)" in capsys.readouterr().out
    back = tmp_path / "back"
    remove_args = ["remove", "--model", str(out / "model.onnx"), "--name", "7"]
    assert enrol_cli.main([*remove_args, "--out", str(back)]) == 0
    assert Artifact.read(back / "model.onnx").class_names == [str(k) for k in range(6)]


def test_cli_refuses_a_bad_image_and_writes_nothing(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "good.png").write_bytes(solid((0, 0, 0)))
    (folder / "broken.png").write_bytes(b"not a png at all")
    out = tmp_path / "out"
    args = ["add", "--model", str(DEFAULT), "--name", "x", "--images", str(folder), "--out"]
    assert enrol_cli.main([*args, str(out)]) == 1
    assert "broken.png" in capsys.readouterr().err
    assert not out.exists()


def test_preprocess_spec_of_the_card(base: Artifact) -> None:
    assert base.preprocess_spec == PreprocessSpec(32, 32, "bilinear")


# -- the photos preset's head: cosine reachability, no memory ----------------------------------


# 17 classes x 512: above the 8,192 elements the exporter folds by default (training.export)
@pytest.mark.parametrize("k", [3, 17])
def test_a_cosine_head_without_memory_takes_a_class(tmp_path: Path, k: int) -> None:
    torch = pytest.importorskip("torch")
    from training.config import ModelConfig
    from training.export import export_onnx
    from training.models import build_model

    torch.manual_seed(0)
    cfg = ModelConfig(reach_metric="cosine", memory=False, attention=False, fc_add=False)
    net = build_model(cfg, num_classes=k, input_size=32, stage="oltr").eval()
    with torch.no_grad():
        net.head.centroids.uniform_(0, 1)
    card = {
        "class_names": [f"c{i}" for i in range(k)],
        "input_size": 32,
        "preprocess": {"resize_shorter": 32, "crop": 32},
        "unknown_score": {"name": "reachability"},
        "threshold": 1.0,
        "training_config": {"model": cfg.model_dump(mode="json")},
    }
    path = export_onnx(net, tmp_path, card)
    base = Artifact.read(path)
    head = locate_head(base.proto, k)
    assert {s.role for s in head.slots} == {"distance_centroids", "classifier"}
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (12, 32, 32, 3), dtype=np.uint8)
    base.card[REFERENCE_KEY] = {"classifier_input_mean": [0.0] * 512}
    examples = [Example.of(p, p.tobytes()) for p in pixels[:4]]
    new = enrol(base, "d", examples)
    before, after = _run(base, pixels), _run(new, pixels)
    near = after["nearest_class"] == k
    np.testing.assert_allclose(after["logits"][~near, :k], before["logits"][~near], rtol=1e-5)
    np.testing.assert_allclose(after["distance"][~near], before["distance"][~near], rtol=1e-6)
    # cosine distance of the examples to the new (unit) centroid, by hand from the embeddings
    emb = after["embedding"][:4]
    centre = emb.mean(0) / np.linalg.norm(emb.mean(0))
    by_hand = 1 - (emb / np.linalg.norm(emb, axis=1, keepdims=True)) @ centre
    won = after["nearest_class"][:4] == k
    assert won.any()
    np.testing.assert_allclose(
        after["distance"][:4][won], np.maximum(by_hand, 1e-6)[won], atol=1e-5
    )
    assert np.all(after["distance"][:4] <= np.maximum(by_hand, 1e-6) + 1e-5)
    back = remove(new, "d")
    np.testing.assert_array_equal(_run(back, pixels)["logits"], before["logits"])
