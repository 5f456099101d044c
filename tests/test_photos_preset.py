"""`python -m training.fit --preset photos` on a folder of real photos, served by onnxruntime."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from benchmarks.shared_data import shared_data_dir
from training.fit import main

SHARED_DATA = shared_data_dir()
CIFAR_TEST = SHARED_DATA / "cifar10" / "test.tar.gz"
IMAGENET = SHARED_DATA / "imagenet-sample-open.tar.gz"
CLASSES = {"airplane": 12, "automobile": 6, "bird": 3}  # a long tail of real photos

pytestmark = [
    pytest.mark.slow,
    pytest.mark.data,
    pytest.mark.skipif(
        not (CIFAR_TEST.is_file() and IMAGENET.is_file()),
        reason=f"needs the real photos in {SHARED_DATA} (absent here)",
    ),
]


def _extract(archive: Path, wanted: dict[str, int], out: Path, skip: int = 0) -> None:
    """Images ``skip`` .. ``skip + wanted[folder]`` of each class folder of ``archive``."""
    seen = dict.fromkeys(wanted, 0)
    with tarfile.open(archive) as tar:
        for member in tar:
            parts = Path(member.name).parts
            if not (member.isfile() and len(parts) >= 2 and parts[-2] in wanted):
                continue
            seen[parts[-2]] += 1
            if skip < seen[parts[-2]] <= skip + wanted[parts[-2]]:
                target = out / parts[-2] / parts[-1]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())


@pytest.fixture(scope="module")
def photos_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("photos")
    _extract(CIFAR_TEST, CLASSES, base / "train")
    _extract(CIFAR_TEST, dict.fromkeys(CLASSES, 4), base / "test", skip=20)
    _extract(IMAGENET, {"imagenet-sample-open": 8}, base / "open")
    code = main(
        [
            "--preset",
            "photos",
            "--run-dir",
            str(base / "run"),
            "data.kind=folder",
            f"data.train={base / 'train'}",
            f"data.test={base / 'test'}",
            f"data.open_test={base / 'open'}",
            "stage1.epochs=1",
            "stage2.epochs=2",
            "stage1.batch_size=8",
            "stage2.batch_size=8",
            "eval.batch_size=16",
            f"export.out={base / 'model'}",
        ]
    )
    assert code == 0
    return base, base / "model"


def test_photos_preset_exports_a_cosine_reachability_model(photos_run) -> None:
    _, model_dir = photos_run
    card = json.loads((model_dir / "card.json").read_text())
    assert card["class_names"] == sorted(CLASSES)
    assert card["input_size"] == 224
    assert card["unknown_score"]["name"] == "reachability"
    trained = card["training_config"]["model"]
    assert (trained["backbone"], trained["reach_metric"]) == ("efficientnet_lite0", "cosine")
    assert trained["classifier_init"] == "centroids"


def test_photos_model_serves_its_classes_and_reach_is_a_cosine(photos_run) -> None:
    """On its own training photos the served model answers their classes; cosine distances lie
    in [0, 2], so reachability = 10 / d_min is at least 5 and distance at most 2."""
    base, model_dir = photos_run
    session = ort.InferenceSession(
        str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    correct, total = 0, 0
    for label, cls in enumerate(sorted(CLASSES)):
        for path in sorted((base / "train" / cls).iterdir()):
            pixels = np.asarray(Image.open(io.BytesIO(path.read_bytes())).convert("RGB"))
            image = np.asarray(Image.fromarray(pixels).resize((224, 224), Image.BILINEAR))
            out = dict(zip(names, session.run(None, {"image": image[None]}), strict=True))
            correct += int(np.argmax(out["probabilities"][0]) == label)
            total += 1
            assert 0.0 <= out["distance"][0] <= 2.0 and out["reachability"][0] >= 5.0
    assert correct / total >= 0.8, f"{correct}/{total} training photos answered right"
