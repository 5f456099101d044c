"""The default model's /classify answers are exactly those recorded before the open-set code
was moved into oltr_contract (tests/_default_answers.py records them): same scores to the last
bit, same unknown flags, same everything, for every score name, on real digits and photos."""

from __future__ import annotations

import json

import pytest
from _default_answers import FIXTURE, images, record_all
from _service_fixtures import DEFAULT_MODEL, IMAGENET_TAR, card_of

pytestmark = [pytest.mark.slow, pytest.mark.data]


def test_answers_are_bit_identical_to_the_recorded_ones(tmp_path):
    recorded = json.loads(FIXTURE.read_text())
    version = recorded["card"]["digits"][0]["model_version"]
    if card_of(DEFAULT_MODEL)["version"] != version:
        pytest.skip(f"models/default is no longer {version}: re-record tests/_default_answers.py")
    named = images()
    if not named["photos"]:
        pytest.skip(f"{IMAGENET_TAR} is absent")
    assert record_all(tmp_path, named) == recorded
