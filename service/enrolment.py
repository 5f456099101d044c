"""Enrolment: a new model version with one class more (or one enrolled class less), no training.

The examples are decoded as ``/classify`` decodes them and run through the model; the class's
centroid and classifier direction come from their outputs (:mod:`service.head_surgery`) and are
written into a copy of the graph as constants. The card gains the class name, its example count
and an ``enrolment`` record (base class count, per class: example hashes, parent version, time).
Each version is written to ``MODELS_DIR/<version>/`` (``model.onnx`` + ``card.json``, atomically)
and ``MODELS_DIR/LATEST`` names the newest, for ``OLTR_SERVE_LATEST_ENROLLED``.

Removing an enrolled class deletes its rows again: removing the last one enrolled gives back the
parent's graph and version.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort

from oltr_contract.artifact import CARD_KEY, OUTPUT_NAMES
from oltr_contract.atomic import write_bytes_atomic, write_text_atomic
from oltr_contract.graph_version import model_version
from service.card import parse_card
from service.errors import (
    ClassExists,
    ClassNotFound,
    EnrolmentUnavailable,
    InvalidClassName,
    TrainedClass,
)
from service.head_surgery import (
    Head,
    HeadLayoutError,
    Metric,
    add_class,
    class_inputs_probe,
    imprint,
    locate_head,
    remove_class,
    trained_directions,
    unit_rows,
)
from service.preprocessing import PreprocessSpec

MODEL_FILE = "model.onnx"
CARD_FILE = "card.json"
LATEST_FILE = "LATEST"
CLASS_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}$")
ENROLLED_GROUP = "enrolled"
ENROLMENT_KEY = "enrolment"
"""Card key of the enrolment record: base class count and, per enrolled class, its examples."""
REFERENCE_KEY = "imprint_reference"
"""Card key: the class-balanced mean of the unit classifier inputs over the training images,
which enrolment centres new classes on (:func:`service.head_surgery.imprint`)."""
BATCH = 32


@dataclass(frozen=True)
class Enrolled:
    """What a card's ``enrolment`` record says: how many classes were trained (the first
    ``base_classes``) and, per enrolled class name, how many images it was learnt from."""

    base_classes: int
    examples: dict[str, int]

    @classmethod
    def of(cls, record: Mapping[str, Any] | None, num_classes: int) -> Enrolled:
        record = record or {}
        return cls(
            int(record.get("base_classes", num_classes)),
            {c["name"]: len(c["examples"]) for c in record.get("classes", [])},
        )


@dataclass(frozen=True)
class Example:
    """One enrolment image: its model input (uint8 [C, C, 3]) and the sha256 of its bytes."""

    pixels: npt.NDArray[np.uint8]
    sha256: str

    @classmethod
    def of(cls, pixels: npt.NDArray[np.uint8], data: bytes) -> Example:
        return cls(pixels, hashlib.sha256(data).hexdigest())


@dataclass
class Artifact:
    """A model in memory: the graph and its card (plain JSON)."""

    proto: onnx.ModelProto
    card: dict[str, Any]

    @classmethod
    def read(cls, path: Path) -> Artifact:
        proto = onnx.load(str(path))
        props = {p.key: p.value for p in proto.metadata_props}
        if CARD_KEY not in props:
            raise EnrolmentUnavailable(f"{path}: no model card; not an OLTR export")
        return cls(proto, json.loads(props[CARD_KEY]))

    @property
    def class_names(self) -> list[str]:
        return list(self.card["class_names"])

    @property
    def version(self) -> str:
        return str(self.card["version"])

    @property
    def base_classes(self) -> int:
        """How many classes the model was trained with (the rest were enrolled)."""
        return Enrolled.of(self.card.get(ENROLMENT_KEY), len(self.class_names)).base_classes

    @property
    def preprocess_spec(self) -> PreprocessSpec:
        """How images are decoded for this model (the card's preprocessing)."""
        return PreprocessSpec.of(parse_card(json.dumps(self.card), "model card"))

    def head(self) -> Head:
        try:
            return locate_head(self.proto, len(self.class_names))
        except HeadLayoutError as err:
            raise EnrolmentUnavailable(
                f"this model's graph cannot take new classes: {err}"
            ) from err

    def reference(self) -> npt.NDArray[np.float32]:
        """The card's imprint reference; EnrolmentUnavailable when the card has none."""
        record = self.card.get(REFERENCE_KEY)
        if not record:
            raise EnrolmentUnavailable(
                f"model {self.version} has no {REFERENCE_KEY!r} in its card: add one from its "
                "training images with `python -m service.enrol reference`"
            )
        return np.asarray(record["classifier_input_mean"], dtype=np.float32)

    def metric(self) -> Metric:
        model_cfg = (self.card.get("training_config") or {}).get("model") or {}
        return "cosine" if model_cfg.get("reach_metric") == "cosine" else "l2"


def check_class_name(name: str, existing: list[str]) -> None:
    """InvalidClassName for a malformed name, ClassExists for a taken one."""
    if not CLASS_NAME.match(name):
        raise InvalidClassName(
            "class name must be 1-64 characters: letters, digits, space, '_', '.', '-', "
            "starting with a letter or digit"
        )
    if name in existing:
        raise ClassExists(f"the model already has a class named {name!r}")


def embed(artifact: Artifact, head: Head, pixels: npt.NDArray[np.uint8]) -> tuple[Any, Any]:
    """The examples' ``embedding`` and classifier inputs, from a CPU session of the graph."""
    probe = class_inputs_probe(artifact.proto, head)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    names = ["embedding", head.classifier_input]
    parts = [
        session.run(names, {"image": pixels[i : i + BATCH]}) for i in range(0, len(pixels), BATCH)
    ]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def enrol(artifact: Artifact, name: str, examples: list[Example]) -> Artifact:
    """A new artifact with class ``name`` learnt from ``examples`` (the input is not changed)."""
    check_class_name(name, artifact.class_names)
    if not examples:
        raise ValueError("enrolment needs at least one image")
    head, reference = artifact.head(), artifact.reference()
    pixels = np.stack([e.pixels for e in examples])
    embeddings, class_inputs = embed(artifact, head, pixels)
    proto = _copy(artifact.proto)
    new = imprint(embeddings, class_inputs, reference, trained_directions(proto, head))
    add_class(proto, head, new, artifact.metric())
    card = _card_with_class(artifact, name, [e.sha256 for e in examples])
    enrolled = _stamped(proto, card)
    check_outputs(enrolled, pixels[:BATCH])
    return enrolled


def with_reference(
    artifact: Artifact, pixels: npt.NDArray[np.uint8], labels: npt.NDArray[np.int64]
) -> Artifact:
    """``artifact`` with the imprint reference of its training images ``pixels`` (labels =
    class indices) in its card: the mean over classes of each class's mean unit classifier
    input. Only the card changes, so the version stays."""
    present = sorted(set(labels.tolist()))
    if not present or min(present) < 0 or max(present) >= len(artifact.class_names):
        raise ValueError("reference labels must be class indices of the model")
    _, class_inputs = embed(artifact, artifact.head(), pixels)
    units = unit_rows(class_inputs)
    mean = np.mean([units[labels == k].mean(axis=0) for k in present], axis=0)
    record = {"classifier_input_mean": mean.astype(float).tolist(), "images": len(pixels)}
    return _stamped(_copy(artifact.proto), {**artifact.card, REFERENCE_KEY: record})


def remove(artifact: Artifact, name: str) -> Artifact:
    """A new artifact without the enrolled class ``name``."""
    names = artifact.class_names
    if name not in names:
        raise ClassNotFound(f"the model has no class named {name!r}")
    index = names.index(name)
    if index < artifact.base_classes:
        raise TrainedClass(f"{name!r} is a trained class; only enrolled classes can be removed")
    proto = _copy(artifact.proto)
    remove_class(proto, artifact.head(), index)
    return _stamped(proto, _card_without_class(artifact, index))


def _copy(proto: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    return out


def _card_with_class(artifact: Artifact, name: str, hashes: list[str]) -> dict[str, Any]:
    card = dict(artifact.card)
    record = dict(card.get(ENROLMENT_KEY) or {"base_classes": len(artifact.class_names)})
    record["classes"] = [
        *record.get("classes", []),
        {
            "name": name,
            "examples": hashes,
            "parent_version": artifact.version,
            "enrolled_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    ]
    card[ENROLMENT_KEY] = record
    card["class_names"] = [*artifact.class_names, name]
    for key, value in (("train_counts", len(hashes)), ("shot_groups", ENROLLED_GROUP)):
        if card.get(key) is not None:
            card[key] = [*card[key], value]
    return card


def _card_without_class(artifact: Artifact, index: int) -> dict[str, Any]:
    card = dict(artifact.card)
    name = artifact.class_names[index]
    for key in ("class_names", "train_counts", "shot_groups"):
        if card.get(key) is not None:
            card[key] = [v for i, v in enumerate(card[key]) if i != index]
    record = dict(card[ENROLMENT_KEY])
    record["classes"] = [c for c in record.get("classes", []) if c["name"] != name]
    if record["classes"]:
        card[ENROLMENT_KEY] = record
    else:
        del card[ENROLMENT_KEY]
    return card


def _stamped(proto: onnx.ModelProto, card: dict[str, Any]) -> Artifact:
    """Set the card's version to the new graph's and embed the card as the export does."""
    card = {**card, "version": model_version(proto)}
    text = json.dumps(card, indent=2, allow_nan=False)
    parse_card(text, "enrolled model")  # the service must be able to serve what it writes
    onnx.helper.set_model_props(proto, {CARD_KEY: text})
    onnx.checker.check_model(proto)
    return Artifact(proto, card)


def check_outputs(artifact: Artifact, pixels: npt.NDArray[np.uint8]) -> None:
    """Run the new graph on ``pixels``: every output present, K columns, finite."""
    session = ort.InferenceSession(
        artifact.proto.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    outputs = dict(
        zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), {"image": pixels}), strict=True)
    )
    k = len(artifact.class_names)
    if outputs["logits"].shape != (len(pixels), k) or not np.isfinite(outputs["logits"]).all():
        raise EnrolmentUnavailable("the edited graph gives wrong logits; nothing was written")


def write_model(artifact: Artifact, folder: Path) -> Path:
    """Write ``folder/model.onnx`` and ``folder/card.json`` atomically; return the model path."""
    write_bytes_atomic(folder / MODEL_FILE, artifact.proto.SerializeToString())
    write_text_atomic(folder / CARD_FILE, json.dumps(artifact.card, indent=2, allow_nan=False))
    return folder / MODEL_FILE


def write_version(artifact: Artifact, models_dir: Path) -> Path:
    """Write ``MODELS_DIR/<version>/`` and point ``MODELS_DIR/LATEST`` at it."""
    path = write_model(artifact, models_dir / artifact.version)
    write_text_atomic(models_dir / LATEST_FILE, artifact.version + "\n")
    return path


def latest_version(models_dir: Path) -> Path | None:
    """The model LATEST names in ``models_dir``, or None when there is none."""
    pointer = models_dir / LATEST_FILE
    if not pointer.is_file():
        return None
    path = models_dir / pointer.read_text().strip() / MODEL_FILE
    return path if path.is_file() else None
