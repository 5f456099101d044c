"""Training's evaluation and the service's HTTP answer agree on every image, for every score.

The same real ONNX outputs (the default model on real known and open digits and, with
../shared/data, real photos) go through training's evaluation path (ScoreCollector, the
combined score, the decision rule) and through a real uvicorn service (one image per batch,
so its outputs are the very ones computed here): the scores must be equal to the last bit and
the unknown flags identical.
"""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from _service_fixtures import (
    DEFAULT_MODEL,
    card_of,
    imagenet_photos,
    mnist_digits,
    running_service,
)

from oltr_contract.artifact import OUTPUT_NAMES
from oltr_contract.scores import COMBINED, SCORE_NAMES, is_known
from service.config import Settings
from service.predictor import Predictor
from service.preprocessing import PreprocessSpec, image_to_input
from training.scoring import apply_combined, scored_outputs

pytestmark = pytest.mark.slow
MAX_PIXELS = 40_000_000


@pytest.fixture(scope="module")
def images() -> list[tuple[str, bytes, int]]:
    """(name, bytes, label): digits 0-5 are known, 6-9 and photos open (-1)."""
    digits = [
        (f"digit{y}_{i}.png", data, y if y < 6 else -1)
        for i, (data, y) in enumerate(mnist_digits(range(10), per_digit=4))
    ]
    return digits + [(name, data, -1) for name, data in imagenet_photos(16)]


@pytest.fixture(scope="module")
def onnx_outputs(images) -> dict[str, np.ndarray]:
    """The artifact's outputs per image, one image per run as the service will run them."""
    if not DEFAULT_MODEL.is_file():
        pytest.skip("models/default/model.onnx is absent")
    settings = Settings(model_path=DEFAULT_MODEL, providers="cpu", max_batch_size=1)
    predictor = Predictor.load(DEFAULT_MODEL, settings)
    p = predictor.card.preprocess
    spec = PreprocessSpec(p.resize_shorter, p.crop, p.interpolation)
    runs = [
        predictor.run(image_to_input(data, spec, max_pixels=MAX_PIXELS)[None])
        for _, data, _ in images
    ]
    return {name: np.concatenate([r[name] for r in runs]) for name in OUTPUT_NAMES}


@pytest.fixture(scope="module")
def training_view(images, onnx_outputs) -> tuple[dict[str, np.ndarray], dict]:
    """Every score of every image as training's evaluation computes it from these outputs."""
    labels = np.array([label for _, _, label in images])
    scored = scored_outputs({**onnx_outputs, "labels": labels})
    card = card_of(DEFAULT_MODEL)
    apply_combined({"all": scored}, card["unknown_score"]["params"])
    return scored.scores, card


def _served(env: dict[str, str], images, tmp_path) -> list[dict]:
    full_env = {
        "OLTR_MODEL_PATH": str(DEFAULT_MODEL),
        "OLTR_PROVIDERS": "cpu",
        "OLTR_MAX_BATCH_SIZE": "1",
        "OLTR_WARMUP_RUNS": "1",
        **env,
    }
    with (
        running_service(full_env, tmp_path / "service.log") as service,
        httpx.Client(base_url=service.url, timeout=60) as client,
    ):
        answers = []
        for name, data, _ in images:
            r = client.post("/classify", files=[("file", (name, data, "image/octet-stream"))])
            assert r.status_code == 200, r.text
            answers.append(r.json())
        return answers


@pytest.mark.parametrize("score", SCORE_NAMES)
def test_training_and_service_give_the_same_score_and_decision(
    score, images, onnx_outputs, training_view, tmp_path
):
    scores, card = training_view
    expected = scores[score]
    if score == COMBINED:
        assert card["unknown_score"]["name"] == COMBINED
        threshold, env = card["threshold"], {}
    else:  # a threshold inside the range, so that both decisions occur
        threshold = float(np.median(expected))
        env = {"OLTR_UNKNOWN_SCORE": score, "OLTR_THRESHOLD": repr(threshold)}
    known = is_known(expected, threshold)
    assert 0 < known.sum() < len(known), "every image on one side: the test could not tell"

    answers = _served(env, images, tmp_path)
    assert {(a["unknown_score"], a["threshold"]) for a in answers} == {(score, threshold)}
    served = [a["predictions"][0] for a in answers]
    # The service ran on the outputs computed here (to the last bit):
    assert [p["reachability"] for p in served] == onnx_outputs["reachability"].tolist()
    assert [p["confidence"] for p in served] == onnx_outputs["probabilities"].max(1).tolist()
    # ... and answers with training's score and decision, for every image:
    assert [p["score"] for p in served] == expected.tolist()
    assert [p["unknown"] for p in served] == (~known).tolist()
