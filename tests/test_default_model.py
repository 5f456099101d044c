"""The committed default model: it loads without torch's help, its card is complete, it
matches the config `make default-model` trains with, and it recognises real digits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from oltr_contract.artifact import OUTPUT_NAMES
from oltr_contract.scores import compute_score
from training.config import FitConfig, load_config
from training.data import eval_transform, load_image, load_split

MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "default"
# The overrides `make default-model` passes to `python -m training.fit`.
DEFAULT_OVERRIDES = ["export.out=models/default"]
CARD_FIELDS = {
    "version",
    "created",
    "class_names",
    "input_size",
    "preprocess",
    "unknown_score",
    "threshold",
    "calibration",
    "train_counts",
    "shot_groups",
    "evaluation",
    "training_config",
}


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    return ort.InferenceSession(str(MODEL_DIR / "model.onnx"), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def card(session) -> dict:
    return json.loads(session.get_modelmeta().custom_metadata_map["oltr.card"])


def test_card_in_the_graph_equals_the_sidecar(card):
    assert card == json.loads((MODEL_DIR / "card.json").read_text())


def test_card_is_complete(card):
    assert set(card) >= CARD_FIELDS
    assert card["class_names"] == [str(d) for d in range(6)]
    assert len(card["train_counts"]) == len(card["shot_groups"]) == 6
    assert {"many", "medium", "few"} == set(card["shot_groups"])
    assert card["preprocess"]["layout"] == "NHWC uint8 RGB"
    assert card["calibration"]["target_known_accept"] == 0.95
    assert card["unknown_score"]["higher_is_known"] is True
    assert {"plain", "oltr"} <= set(card["evaluation"])


def test_card_matches_the_training_config(card):
    # read by today's FitConfig: a field added since the export takes its default
    recorded = FitConfig.model_validate(card["training_config"]).model_dump(mode="json")
    assert recorded == load_config(overrides=DEFAULT_OVERRIDES).model_dump(mode="json")
    assert card["input_size"] == card["training_config"]["data"]["input_size"]


def test_graph_contract(session, card):
    (image,) = session.get_inputs()
    assert (image.name, image.type) == ("image", "tensor(uint8)")
    size = card["input_size"]
    assert image.shape[1:] == [size, size, 3]
    assert [o.name for o in session.get_outputs()] == list(OUTPUT_NAMES)


def _scores(session, card, samples) -> tuple[np.ndarray, np.ndarray]:
    """Predicted classes and the card's unknown score, computed from the graph's outputs."""
    transform = eval_transform(load_config(overrides=DEFAULT_OVERRIDES).data)
    batch = np.stack(
        [
            (transform(load_image(path)) * 255).round().byte().permute(1, 2, 0).numpy()
            for path, _ in samples
        ]
    )
    outputs = dict(
        zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), {"image": batch}), strict=True)
    )
    score = card["unknown_score"]
    return outputs["logits"].argmax(1), compute_score(score["name"], outputs, score["params"])


def test_held_out_digits_are_recognised_and_open_digits_rejected_more_often(session, card):
    split = load_split(load_config(overrides=DEFAULT_OVERRIDES).data)
    preds, known_scores = _scores(session, card, split.test)
    labels = np.array([label for _, label in split.test])
    assert float((preds == labels).mean()) > 0.85
    _, open_scores = _scores(session, card, split.open_test[:400])
    known_reject = float((known_scores < card["threshold"]).mean())
    open_reject = float((open_scores < card["threshold"]).mean())
    assert known_reject < 0.1
    assert open_reject > 2 * known_reject
