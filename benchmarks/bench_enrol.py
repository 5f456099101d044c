"""Enrolment without training: a new class into a trained model, before and after.

    python benchmarks/bench_enrol.py [--shots 1 5 10 20] [--draws 3] [--out FILE.json]
    python benchmarks/bench_enrol.py --scenario photos --model PHOTOS_MODEL/model.onnx \\
        --shots 5 20 [--retrain 20]

``digits`` (the default): the embedded default model knows digits 0-5 (split
``mnist-lt-seed0``); digit 6 is enrolled. ``photos``: a ``--preset photos`` model trained on the
CIFAR-10-LT-open split of the accuracy benchmark (airplane ... dog, ``--split``); *frog* is
enrolled. Examples of the new class come from the *open validation* images of that class
(neither training nor the open test set uses them); recognition is measured on its *open test*
images. Reported before and after, per number of examples (mean over ``--draws`` random
draws): the share of held-out new-class images labelled new and accepted; top-1 on the test
images of the old classes; the unknown rate of the other open test classes and of the
ImageNet photos in the shared data. Beside it, nearest class mean (cosine) on the same model's
embedding, and with ``--retrain N`` the model retrained by ``training.fit`` with the same N
images as a new known class (kept in ``--work``, keyed by the images: a second run reuses it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.shared_data import shared_data_dir  # noqa: E402
from oltr_contract.artifact import OUTPUT_NAMES  # noqa: E402
from oltr_contract.scores import compute_score, is_known  # noqa: E402
from service.config import DEFAULT_MAX_IMAGE_PIXELS  # noqa: E402
from service.discovery import l2_normalise  # noqa: E402
from service.enrolment import (  # noqa: E402
    REFERENCE_KEY,
    Artifact,
    Example,
    embed,
    enrol,
    with_reference,
)
from service.preprocessing import PreprocessSpec, image_to_input  # noqa: E402
from training.data.mnist import materialise_mnist, mnist_split_dir  # noqa: E402

CACHE = Path.home() / ".cache" / "oltr"
CIFAR_SPLIT = (
    CACHE / "bench-accuracy" / "work" / "quick" / "splits" / "cifar10_lt_open-seed0-d716c787"
)


@dataclass
class Scenario:
    """A model's split and the class to enrol into it (``class_of`` names an image's class)."""

    name: str
    new: str
    split: Path
    root: Path
    class_of: Callable[[str], str]
    fit_args: list[str] = field(default_factory=list)
    """What ``training.fit`` trained the model with (for ``--retrain``)."""
    test_per_class: int | None = None
    """Test images per old class (None: all); each one runs through every enrolled model."""

    @property
    def classes(self) -> list[str]:
        return (self.split / "classes.txt").read_text().split()


def digits() -> Scenario:
    root = materialise_mnist(CACHE)
    return Scenario("digits", "6", mnist_split_dir(CACHE, 0), root, lambda n: n.split("/")[0])


def cifar_photos(split: Path) -> Scenario:
    root = Path(json.loads((split / "summary.json").read_text())["root"])
    return Scenario(
        "photos", "frog", split, root, lambda n: Path(n).parts[-2], ["--preset", "photos"], 100
    )


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


@dataclass
class Sets:
    """The evaluation images: held-out new-class images, old-class test images with labels,
    and the open sets whose unknown rate is reported."""

    held_out: np.ndarray
    old: np.ndarray
    old_labels: np.ndarray
    open_sets: dict[str, np.ndarray]

    def all(self) -> dict[str, np.ndarray]:
        return {"held_out": self.held_out, "old": self.old, **self.open_sets}


def report(artifact: Artifact, sets: Sets, new_index: int) -> dict[str, float]:
    session = ort.InferenceSession(
        artifact.proto.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    top1, known = answers(session, artifact.card, sets.held_out)
    old_top1, _ = answers(session, artifact.card, sets.old)
    row = {
        "new_recognised_accepted": float(np.mean((top1 == new_index) & known)),
        "old_top1": float(np.mean(old_top1 == sets.old_labels)),
    }
    for name, pixels in sets.open_sets.items():
        _, accepted = answers(session, artifact.card, pixels)
        row[f"unknown_rate_{name}"] = float(1 - accepted.mean())
    return row


def unit_embeddings(base: Artifact, pixels: np.ndarray) -> np.ndarray:
    """The base model's ``embedding`` of ``pixels``, L2-normalised (what NCM compares)."""
    return l2_normalise(embed(base, base.head(), pixels)[0])


def ncm_baseline(
    train: tuple[np.ndarray, np.ndarray],
    examples: np.ndarray,
    unit: dict[str, np.ndarray],
    sets: Sets,
) -> dict[str, float]:
    """Nearest class mean (cosine) on the same model's unit ``embedding`` (computed once by
    :func:`unit_embeddings`): the twenty-line way to add a class. Class means from the training
    images, the new one from ``examples``; top-1 only (it has no unknown decision)."""
    feats, labels = train
    new_index = int(labels.max()) + 1
    means = [feats[labels == k].mean(0) for k in range(new_index)] + [examples.mean(0)]
    centres = l2_normalise(np.stack(means))
    top1 = {name: (unit[name] @ centres.T).argmax(1) for name in ("held_out", "old")}
    return {
        "new_recognised": float(np.mean(top1["held_out"] == new_index)),
        "old_top1": float(np.mean(top1["old"] == sets.old_labels)),
    }


def retrained(scenario: Scenario, examples: list[str], work: Path) -> Artifact:
    """The upper bound: ``training.fit`` (the model's own recipe) on the scenario's split with
    the new class made a known class from the same example images (val: 30 other open-val
    images of it; test: its held-out images), the other open classes unchanged."""
    key = hashlib.sha256(json.dumps([scenario.name, scenario.fit_args, examples]).encode())
    work = work / f"retrain-{scenario.name}-{key.hexdigest()[:12]}"
    model_dir = work / "model"
    if (model_dir / "model.onnx").is_file():  # trained before with the same images
        return Artifact.read(model_dir / "model.onnx")
    new, class_of = scenario.new, scenario.class_of
    lists = {name: read_list(scenario.split / f"{name}.txt") for name in ("train", "val", "test")}
    opens = {name: read_list(scenario.split / f"{name}.txt") for name in ("open_val", "open_test")}
    news = {name: [n for n, _ in rows if class_of(n) == new] for name, rows in opens.items()}
    spare = [n for n in news["open_val"] if n not in examples][:30]
    label = len(scenario.classes)
    lists["train"] += [(n, label) for n in examples]
    lists["val"] += [(n, label) for n in spare]
    lists["test"] += [(n, label) for n in news["open_test"]]
    for name, rows in opens.items():
        lists[name] = [(n, -1) for n, _ in rows if class_of(n) != new]
    out = work / "split"
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in lists.items():
        (out / f"{name}.txt").write_text("".join(f"{n} {lab}\n" for n, lab in rows))
    (out / "classes.txt").write_text("".join(f"{c}\n" for c in [*scenario.classes, new]))
    files = {name: f"{name}.txt" for name in lists}
    (out / "summary.json").write_text(json.dumps({"root": str(scenario.root), "files": files}))
    command = [
        sys.executable,
        "-m",
        "training.fit",
        *scenario.fit_args,
        "--run-dir",
        str(work / "run"),
        "data.kind=lists",
        f"data.split_dir={out}",
        f"export.out={model_dir}",
    ]
    subprocess.run(command, check=True, cwd=Path(__file__).resolve().parents[1])
    return Artifact.read(model_dir / "model.onnx")


def load_sets(scenario: Scenario, spec: PreprocessSpec) -> tuple[Sets, list[Path]]:
    """The evaluation sets and the pool of example images (open-val images of the new class)."""
    classes, class_of, root = scenario.classes, scenario.class_of, scenario.root

    def paths(list_file: str, keep: Callable[[str], bool]) -> list[str]:
        return [n for n, _ in read_list(scenario.split / list_file) if keep(class_of(n))]

    old_names: list[str] = []
    for name in classes:
        old_names += paths("test.txt", lambda c, name=name: c == name)[: scenario.test_per_class]
    others = "open_7_9" if scenario.name == "digits" else "near"
    sets = Sets(
        held_out=load(
            [root / n for n in paths("open_test.txt", lambda c: c == scenario.new)], spec
        )[0],
        old=load([root / n for n in old_names], spec)[0],
        old_labels=np.array([classes.index(class_of(n)) for n in old_names]),
        open_sets={
            others: load(
                [root / n for n in paths("open_test.txt", lambda c: c != scenario.new)], spec
            )[0],
            "photos": photos(spec),
        },
    )
    return sets, [root / n for n in paths("open_val.txt", lambda c: c == scenario.new)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=["digits", "photos"], default="digits")
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5, 10, 20])
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--model", type=Path, default=Path("models/default/model.onnx"))
    parser.add_argument("--split", type=Path, default=CIFAR_SPLIT, help="photos: the split")
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--retrain", type=int, metavar="N", help="also retrain with N examples (20 min or more)"
    )
    parser.add_argument("--work", type=Path, default=CACHE / "bench-enrol")
    args = parser.parse_args()

    scenario = digits() if args.scenario == "digits" else cifar_photos(args.split)
    base = Artifact.read(args.model)
    spec = base.preprocess_spec
    train = read_list(scenario.split / "train.txt")
    pixels, _ = load([scenario.root / n for n, _ in train], spec)
    train_labels = np.array([lab for _, lab in train])
    if REFERENCE_KEY not in base.card:
        base = with_reference(base, pixels, train_labels)
    sets, sources = load_sets(scenario, spec)
    new_index = len(scenario.classes)
    source_pixels, source_bytes = load(sources, spec)
    unit = {name: unit_embeddings(base, x) for name, x in sets.all().items()}
    unit_train, unit_sources = unit_embeddings(base, pixels), unit_embeddings(base, source_pixels)
    results: dict[str, object] = {"before": report(base, sets, new_index), "after": {}, "ncm": {}}
    rng = np.random.default_rng(0)
    first_picks: dict[int, np.ndarray] = {}
    for shots in args.shots:
        rows, baseline = [], []
        for _ in range(args.draws):
            pick = rng.choice(len(sources), size=shots, replace=False)
            first_picks.setdefault(shots, pick)
            examples = [Example.of(source_pixels[i], source_bytes[i]) for i in pick]
            rows.append(report(enrol(base, scenario.new, examples), sets, new_index))
            baseline.append(
                ncm_baseline((unit_train, train_labels), unit_sources[pick], unit, sets)
            )
        for key, found in (("after", rows), ("ncm", baseline)):
            mean = {k: float(np.mean([r[k] for r in found])) for k in found[0]}
            results[key][str(shots)] = mean  # type: ignore[index]
            print(key, shots, json.dumps({k: round(v, 3) for k, v in mean.items()}), flush=True)
    if args.retrain:  # the images of the first draw with as many examples
        pick = first_picks.get(args.retrain)
        if pick is None:
            pick = rng.choice(len(sources), size=args.retrain, replace=False)
        names = [str(sources[i].relative_to(scenario.root)) for i in pick]
        upper = report(retrained(scenario, names, args.work), sets, new_index)
        results["retrained"] = {str(args.retrain): upper}
        print("retrained", args.retrain, json.dumps({k: round(v, 3) for k, v in upper.items()}))
    print("before", json.dumps({k: round(v, 3) for k, v in results["before"].items()}))  # type: ignore[attr-defined]
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
