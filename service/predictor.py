"""One onnxruntime session plus its model card: load, validate the contract, warm up, run.

The ONNX artifact contract (:mod:`oltr_contract.artifact`): input ``image`` uint8
[N, C, C, 3]; outputs ``logits``, ``probabilities``, ``reachability``, ``distance``,
``nearest_class``, ``embedding``; the card JSON in metadata key ``oltr.card``. A file that
breaks it raises :class:`ModelLoadError` naming the file and the problem, so a bad reload never
replaces a good model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from oltr_contract.artifact import CARD_KEY, INPUT_NAME, OUTPUT_NAMES
from service.card import ModelCard, parse_card
from service.config import Settings, provider_list
from service.enrolment import ENROLMENT_KEY, Enrolled
from service.errors import ModelLoadError
from service.preprocessing import PreprocessSpec

log = logging.getLogger("oltr.service")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


@dataclass(frozen=True)
class ProviderChoice:
    """What was asked for (setting and resolved list) versus what the session got."""

    setting: str
    requested: tuple[str, ...]
    active: tuple[str, ...]

    @property
    def primary(self) -> str:
        return self.active[0] if self.active else "none"

    @property
    def fallback(self) -> bool:
        """CUDA was asked for but the session does not use it."""
        return CUDA in self.requested and CUDA not in self.active


def resolve_providers(setting: str) -> list[str]:
    """auto: CUDA then CPU when this onnxruntime build has CUDA, else CPU; or the explicit list."""
    explicit = provider_list(setting)
    if explicit is None:
        available = ort.get_available_providers()
        return [CUDA, CPU] if CUDA in available else [CPU]
    return explicit if CPU in explicit else [*explicit, CPU]


class Predictor:
    """A loaded, validated model; ``run`` is thread-safe (onnxruntime sessions are)."""

    def __init__(self, session: ort.InferenceSession, card: ModelCard, path: Path, setting: str):
        self.session = session
        self.card = card
        self.path = path
        self._setting = setting
        self._requested = tuple(resolve_providers(setting))

    @classmethod
    def load(cls, path: Path, settings: Settings) -> Predictor:
        """Create the session and check the contract; ModelLoadError names file and problem."""
        path = Path(path)
        try:
            found = path.is_file()
        except OSError as err:  # e.g. a name too long: still the caller's bad path
            raise ModelLoadError(f"model file not usable: {path} ({err.strerror})") from err
        if not found:
            raise ModelLoadError(f"model file not found: {path}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = settings.intra_op_threads
        options.inter_op_num_threads = settings.inter_op_threads
        options.log_severity_level = 3
        # No busy-waiting between ops: the decode threads and the event loop need the cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        try:
            session = ort.InferenceSession(
                str(path), options, providers=resolve_providers(settings.providers)
            )
        except Exception as err:  # noqa: BLE001 -- onnxruntime raises assorted types
            raise ModelLoadError(f"{path}: onnxruntime cannot load it: {err}") from err
        try:
            card = parse_card(session.get_modelmeta().custom_metadata_map.get(CARD_KEY), str(path))
            _check_signature(session, card, path)
        except ValueError as err:
            raise ModelLoadError(str(err)) from err
        predictor = cls(session, card, path, settings.providers)
        predictor._log_providers()
        return predictor

    @property
    def version(self) -> str:
        return self.card.version

    @property
    def class_names(self) -> list[str]:
        return self.card.class_names

    @property
    def enrolled(self) -> Enrolled:
        """Which classes were added by enrolment (the card's ``enrolment`` record)."""
        record = (self.card.model_extra or {}).get(ENROLMENT_KEY)
        return Enrolled.of(record, len(self.class_names))

    @property
    def input_size(self) -> int:
        return self.card.input_size

    @property
    def preprocess_spec(self) -> PreprocessSpec:
        return PreprocessSpec.of(self.card)

    @property
    def providers(self) -> ProviderChoice:
        """Read live: onnxruntime may drop a failing provider at run time."""
        return ProviderChoice(self._setting, self._requested, tuple(self.session.get_providers()))

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 [N, C, C, 3] -> the six outputs, shape-checked."""
        values = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch})
        outputs = dict(zip(OUTPUT_NAMES, values, strict=True))
        _check_outputs(outputs, len(batch), len(self.class_names))
        return outputs

    def warm_up(self, max_batch_size: int, runs: int, min_seconds: float = 0.0) -> int:
        """Run zero batches of sizes 1, 2 (the batch axis really is dynamic) and
        ``max_batch_size``, for at least ``runs`` rounds and ``min_seconds``; returns the number
        of rounds. Raises ModelLoadError when the model fails or returns wrong shapes."""
        c = self.input_size
        sizes = sorted({1, 2, max_batch_size})
        batches = [np.zeros((n, c, c, 3), dtype=np.uint8) for n in sizes]
        start, rounds = time.perf_counter(), 0
        while rounds < runs or time.perf_counter() - start < min_seconds:
            for batch in batches:
                try:
                    self.run(batch)
                except Exception as err:  # noqa: BLE001 -- onnxruntime or shape failure
                    raise ModelLoadError(
                        f"{self.path}: inference fails on a batch of {len(batch)}: {err}"
                    ) from err
            rounds += 1
        return rounds

    def _log_providers(self) -> None:
        choice = self.providers
        if choice.fallback:
            log.warning(
                "provider fallback: requested %s but the session runs on %s (%s)",
                ",".join(choice.requested),
                ",".join(choice.active),
                self.path,
            )
        else:
            log.info(
                "model %s on %s (requested %s)",
                self.version,
                choice.primary,
                ",".join(choice.requested),
            )


def _check_signature(session: ort.InferenceSession, card: ModelCard, path: Path) -> None:
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
        names = [i.name for i in inputs]
        raise ValueError(f"{path}: expected one input named {INPUT_NAME!r}, found {names}")
    spec = inputs[0]
    if spec.type != "tensor(uint8)":
        raise ValueError(f"{path}: input {INPUT_NAME!r} must be uint8, found {spec.type}")
    c = card.input_size
    shape = list(spec.shape)
    dynamic_n = len(shape) == 4 and not (isinstance(shape[0], int) and shape[0] > 0)
    if not dynamic_n or shape[1:] != [c, c, 3]:
        raise ValueError(
            f"{path}: input {INPUT_NAME!r} must be [N, {c}, {c}, 3] with N dynamic "
            f"(card input_size {c}), found {shape}"
        )
    outputs = {o.name: o for o in session.get_outputs()}
    missing = [n for n in OUTPUT_NAMES if n not in outputs]
    if missing:
        raise ValueError(f"{path}: missing outputs {missing}; found {sorted(outputs)}")
    k = outputs["logits"].shape[-1] if len(outputs["logits"].shape) == 2 else None
    if isinstance(k, int) and k != len(card.class_names):
        raise ValueError(
            f"{path}: logits have {k} classes, the card has {len(card.class_names)} class_names"
        )


def _check_outputs(outputs: dict[str, np.ndarray], n: int, k: int) -> None:
    expected = {
        "logits": (n, k),
        "probabilities": (n, k),
        "reachability": (n,),
        "distance": (n,),
        "nearest_class": (n,),
    }
    for name, shape in expected.items():
        if outputs[name].shape != shape:
            raise ValueError(f"output {name!r} has shape {outputs[name].shape}, expected {shape}")
    if outputs["embedding"].ndim != 2 or outputs["embedding"].shape[0] != n:
        raise ValueError(f"output 'embedding' has shape {outputs['embedding'].shape}")
