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
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.shared_data import shared_data_dir  # noqa: E402
from oltr_contract.artifact import OUTPUT_NAMES  # noqa: E402
from oltr_contract.scores import compute_score, is_known  # noqa: E402
from service.config import DEFAULT_MAX_IMAGE_PIXELS  # noqa: E402
from service.discovery import l2_normalise  # noqa: E402
from service.enrolment import Artifact, Example, embed, enrol, with_reference  # noqa: E402
from service.preprocessing import PreprocessSpec, image_to_input  # noqa: E402
from training.data.mnist import materialise_mnist, mnist_split_dir  # noqa: E402

CACHE = Path.home() / ".cache" / "oltr"
NEW = 6


def read_list(path: Path) -> list[tuple[str, int]]:
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return [(name, int(label)) for name, label in rows]


def load(paths: list[Path], spec: PreprocessSpec) -> tuple[np.ndarray, list[bytes]]:
    data = [p.read_bytes() for p in paths]
    return np.stack(
        [image_to_input(d, spec, max_pixels=DEFAULT_MAX_IMAGE_PIXELS) for d in data]
    ), data


def photos(spec: PreprocessSpec, n: int = 400) -> np.ndarray:
    tar_path = shared_data_dir() / "imagenet-sample-open.tar.gz"
    out = []
    with tarfile.open(tar_path, "r:gz") as tar:
        for member in tar:
            if member.isfile() and member.name.lower().endswith((".jpeg", ".jpg")):
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                out.append(image_to_input(data, spec, max_pixels=DEFAULT_MAX_IMAGE_PIXELS))
                if len(out) == n:
                    break
    return np.stack(out)


def answers(
    session: ort.InferenceSession, card: dict, pixels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 class and the accept decision of the card's unknown score and threshold."""
    parts = [
        session.run(list(OUTPUT_NAMES), {"image": pixels[i : i + 64]})
        for i in range(0, len(pixels), 64)
    ]
    outputs = {n: np.concatenate([p[j] for p in parts]) for j, n in enumerate(OUTPUT_NAMES)}
    score = card["unknown_score"]
    values = compute_score(score["name"], outputs, score.get("params"))
    return outputs["logits"].argmax(axis=1), is_known(values, card["threshold"])


def report(artifact: Artifact, sets: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    session = ort.InferenceSession(
        artifact.proto.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    top1, known = answers(session, artifact.card, sets["held_out_6"][0])
    old_top1, _ = answers(session, artifact.card, sets["test_0_5"][0])
    row = {
        "new_recognised_accepted": float(np.mean((top1 == NEW) & known)),
        "old_top1": float(np.mean(old_top1 == sets["test_0_5"][1])),
    }
    for name in ("open_7_9", "photos"):
        _, accepted = answers(session, artifact.card, sets[name][0])
        row[f"unknown_rate_{name}"] = float(1 - accepted.mean())
    return row


def unit_embeddings(base: Artifact, pixels: np.ndarray) -> np.ndarray:
    """The base model's ``embedding`` of ``pixels``, L2-normalised (what NCM compares)."""
    return l2_normalise(embed(base, base.head(), pixels)[0])


def ncm_baseline(
    train: tuple[np.ndarray, np.ndarray],
    examples: np.ndarray,
    sets: dict[str, np.ndarray],
    test_labels: np.ndarray,
) -> dict[str, float]:
    """Nearest class mean (cosine) on the same model's unit ``embedding`` (computed once by
    :func:`unit_embeddings`): the twenty-line way to add a class. Class means from the training
    images, the new one from ``examples``; top-1 only (it has no unknown decision)."""
    feats, labels = train
    means = [feats[labels == k].mean(0) for k in range(NEW)] + [examples.mean(0)]
    centres = l2_normalise(np.stack(means))
    top1 = {name: (x @ centres.T).argmax(1) for name, x in sets.items()}
    return {
        "new_recognised": float(np.mean(top1["held_out_6"] == NEW)),
        "old_top1": float(np.mean(top1["test_0_5"] == test_labels)),
    }


def retrained(split: Path, root: Path, examples: list[str], work: Path) -> Artifact:
    """The upper bound: ``training.fit`` (default config) on the default split with 6 made a
    known class from the same example images (val: 30 other open-val 6s; test: the held-out
    6s), the other open digits unchanged."""
    lists = {name: read_list(split / f"{name}.txt") for name in ("train", "val", "test")}
    opens = {name: read_list(split / f"{name}.txt") for name in ("open_val", "open_test")}
    sixes = {name: [n for n, _ in rows if n.startswith(f"{NEW}/")] for name, rows in opens.items()}
    spare = [n for n in sixes["open_val"] if n not in examples][:30]
    lists["train"] += [(n, NEW) for n in examples]
    lists["val"] += [(n, NEW) for n in spare]
    lists["test"] += [(n, NEW) for n in sixes["open_test"]]
    for name, rows in opens.items():
        lists[name] = [(n, -1) for n, _ in rows if not n.startswith(f"{NEW}/")]
    out = work / "split"
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in lists.items():
        (out / f"{name}.txt").write_text("".join(f"{n} {lab}\n" for n, lab in rows))
    (out / "classes.txt").write_text("".join(f"{k}\n" for k in range(NEW + 1)))
    files = {name: f"{name}.txt" for name in lists}
    (out / "summary.json").write_text(json.dumps({"root": str(root), "files": files}))
    model_dir = work / "model"
    command = [
        sys.executable,
        "-m",
        "training.fit",
        "--run-dir",
        str(work / "run"),
        "data.kind=lists",
        f"data.split_dir={out}",
        f"export.out={model_dir}",
    ]
    subprocess.run(command, check=True, cwd=Path(__file__).resolve().parents[1])
    return Artifact.read(model_dir / "model.onnx")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5, 10, 20])
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--model", type=Path, default=Path("models/default/model.onnx"))
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--retrain", type=int, metavar="N", help="also retrain with N examples (about 20 min)"
    )
    parser.add_argument("--work", type=Path, default=CACHE / "bench-enrol")
    args = parser.parse_args()

    root, split = materialise_mnist(CACHE), mnist_split_dir(CACHE, 0)
    base = Artifact.read(args.model)
    spec = base.preprocess_spec
    train = read_list(split / "train.txt")
    pixels, _ = load([root / n for n, _ in train], spec)
    train_labels = np.array([lab for _, lab in train])
    base = with_reference(base, pixels, train_labels)

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
    unit = {name: unit_embeddings(base, x) for name, (x, _) in sets.items()}
    unit_train, unit_sources = unit_embeddings(base, pixels), unit_embeddings(base, source_pixels)
    results: dict[str, object] = {"before": report(base, sets), "after": {}, "ncm": {}}
    rng = np.random.default_rng(0)
    first_picks: dict[int, np.ndarray] = {}
    for shots in args.shots:
        rows, baseline = [], []
        for _ in range(args.draws):
            pick = rng.choice(len(sources), size=shots, replace=False)
            first_picks.setdefault(shots, pick)
            examples = [Example.of(source_pixels[i], source_bytes[i]) for i in pick]
            rows.append(report(enrol(base, str(NEW), examples), sets))
            baseline.append(
                ncm_baseline(
                    (unit_train, train_labels), unit_sources[pick], unit, sets["test_0_5"][1]
                )
            )
        for key, found in (("after", rows), ("ncm", baseline)):
            mean = {k: float(np.mean([r[k] for r in found])) for k in found[0]}
            results[key][str(shots)] = mean  # type: ignore[index]
            print(key, shots, json.dumps({k: round(v, 3) for k, v in mean.items()}), flush=True)
    if args.retrain:  # the images of the first draw with as many examples
        pick = first_picks.get(args.retrain)
        if pick is None:
            pick = rng.choice(len(sources), size=args.retrain, replace=False)
        names = [str(sources[i].relative_to(root)) for i in pick]
        upper = report(retrained(split, root, names, args.work), sets)
        results["retrained"] = {str(args.retrain): upper}
        print("retrained", args.retrain, json.dumps({k: round(v, 3) for k, v in upper.items()}))
    print("before", json.dumps({k: round(v, 3) for k, v in results["before"].items()}))  # type: ignore[attr-defined]
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
