"""Enrolment without training: digit 6 into the embedded default model, before and after.

    python benchmarks/bench_enrol.py [--shots 1 5 10 20] [--draws 3] [--out docs/enrol.json]

The default model knows digits 0-5 (split ``mnist-lt-seed0``). Examples of the new class come
from the *open validation* 6s (neither training nor the open test set uses them); recognition
is measured on the *open test* 6s. Reported before and after, per number of examples (mean over
``--draws`` random draws): the share of held-out 6s labelled 6 and accepted; top-1 on the test
images of 0-5; the unknown rate of the open test 7-9s and of the ImageNet photos in the shared
data. The imprint reference is computed from the model's training images.
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.shared_data import shared_data_dir  # noqa: E402
from oltr_contract.artifact import OUTPUT_NAMES  # noqa: E402
from oltr_contract.scores import compute_score, is_known  # noqa: E402
from service.enrol import spec_of  # noqa: E402
from service.enrolment import Artifact, Example, enrol, with_reference  # noqa: E402
from service.preprocessing import PreprocessSpec, image_to_input  # noqa: E402
from training.data.mnist import materialise_mnist, mnist_split_dir  # noqa: E402

CACHE = Path.home() / ".cache" / "oltr"
MAX_PIXELS = 40_000_000
NEW = 6


def read_list(path: Path) -> list[tuple[str, int]]:
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return [(name, int(label)) for name, label in rows]


def load(paths: list[Path], spec: PreprocessSpec) -> tuple[np.ndarray, list[bytes]]:
    data = [p.read_bytes() for p in paths]
    return np.stack([image_to_input(d, spec, max_pixels=MAX_PIXELS) for d in data]), data


def photos(spec: PreprocessSpec, n: int = 400) -> np.ndarray:
    tar_path = shared_data_dir() / "imagenet-sample-open.tar.gz"
    out = []
    with tarfile.open(tar_path, "r:gz") as tar:
        for member in tar:
            if member.isfile() and member.name.lower().endswith((".jpeg", ".jpg")):
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                out.append(image_to_input(data, spec, max_pixels=MAX_PIXELS))
                if len(out) == n:
                    break
    return np.stack(out)


def answers(artifact: Artifact, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 class and the accept decision of the card's unknown score and threshold."""
    session = ort.InferenceSession(
        artifact.proto.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    parts = [
        session.run(list(OUTPUT_NAMES), {"image": pixels[i : i + 64]})
        for i in range(0, len(pixels), 64)
    ]
    outputs = {n: np.concatenate([p[j] for p in parts]) for j, n in enumerate(OUTPUT_NAMES)}
    score = artifact.card["unknown_score"]
    values = compute_score(score["name"], outputs, score.get("params"))
    return outputs["logits"].argmax(axis=1), is_known(values, artifact.card["threshold"])


def report(artifact: Artifact, sets: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    top1, known = answers(artifact, sets["held_out_6"][0])
    old_top1, _ = answers(artifact, sets["test_0_5"][0])
    row = {
        "new_recognised_accepted": float(np.mean((top1 == NEW) & known)),
        "old_top1": float(np.mean(old_top1 == sets["test_0_5"][1])),
    }
    for name in ("open_7_9", "photos"):
        _, accepted = answers(artifact, sets[name][0])
        row[f"unknown_rate_{name}"] = float(1 - accepted.mean())
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5, 10, 20])
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--model", type=Path, default=Path("models/default/model.onnx"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    root, split = materialise_mnist(CACHE), mnist_split_dir(CACHE, 0)
    base = Artifact.read(args.model)
    spec = spec_of(base)
    train = read_list(split / "train.txt")
    pixels, _ = load([root / n for n, _ in train], spec)
    base = with_reference(base, pixels, np.array([lab for _, lab in train]))

    def subset(list_file: str, keep: set[int]) -> tuple[list[Path], np.ndarray]:
        rows = [(n, lab) for n, lab in read_list(split / list_file) if int(n.split("/")[0]) in keep]
        return [root / n for n, _ in rows], np.array([int(n.split("/")[0]) for n, _ in rows])

    sources, _ = subset("open_val.txt", {NEW})
    test_paths, test_labels = subset("test.txt", set(range(6)))
    sets = {
        "held_out_6": (load(subset("open_test.txt", {NEW})[0], spec)[0], np.array([])),
        "test_0_5": (load(test_paths, spec)[0], test_labels),
        "open_7_9": (load(subset("open_test.txt", {7, 8, 9})[0], spec)[0], np.array([])),
        "photos": (photos(spec), np.array([])),
    }
    source_pixels, source_bytes = load(sources, spec)
    results: dict[str, object] = {"before": report(base, sets), "after": {}}
    rng = np.random.default_rng(0)
    for shots in args.shots:
        rows = []
        for _ in range(args.draws):
            pick = rng.choice(len(sources), size=shots, replace=False)
            examples = [Example.of(source_pixels[i], source_bytes[i]) for i in pick]
            rows.append(report(enrol(base, str(NEW), examples), sets))
        mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        results["after"][str(shots)] = mean  # type: ignore[index]
        print(shots, json.dumps({k: round(v, 3) for k, v in mean.items()}), flush=True)
    print("before", json.dumps({k: round(v, 3) for k, v in results["before"].items()}))  # type: ignore[attr-defined]
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
