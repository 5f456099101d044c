"""The classification path every wire format shares: admit + decode -> batcher -> decision ->
metrics (decode admission and the request deadline: :mod:`service.admission`).

``POST /classify`` (multipart / raw image) and ``POST /v2/models/{name}/infer`` (the Open
Inference Protocol) only translate their wire format into :class:`Upload` objects and the answer
back; everything between happens here, once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from service import metrics
from service.admission import Deadline
from service.capture import CaptureRecord, CaptureWriter
from service.logs import REQUEST_ID
from service.open_set import OpenSetPolicy
from service.postprocess import to_prediction
from service.predictor import Predictor
from service.schemas import ClassifyResponse, Prediction
from service.state import ServiceState
from service.uploads import Upload


async def classify_uploads(
    state: ServiceState, uploads: list[Upload], *, threshold: float | None, top_k: int
) -> ClassifyResponse:
    """Classify ``uploads`` on the serving model; ``threshold`` overrides it for this call."""
    predictor = state.require_predictor()
    metrics.IN_FLIGHT.inc(len(uploads))
    try:
        deadline = Deadline.start(state.settings.request_timeout_s)
        inputs = await state.admission.decode(uploads, predictor.preprocess_spec, deadline)
        rows = await state.batcher.submit(predictor, inputs, deadline.remaining())
    finally:
        metrics.IN_FLIGHT.dec(len(uploads))
    policy = state.policy(threshold, predictor)
    decision = policy.decide(rows)
    predictions = [
        to_prediction(
            row,
            predictor.class_names,
            score=float(score),
            unknown=bool(unknown),
            k=top_k,
            filename=upload.filename,
        )
        for row, score, unknown, upload in zip(
            rows, decision.scores, decision.unknown, uploads, strict=True
        )
    ]
    _record(predictions)
    if state.capture_writer is not None:
        _capture(state.capture_writer, uploads, predictions, rows, policy, predictor)
    return ClassifyResponse(
        model_version=predictor.version,
        unknown_score=policy.score,
        threshold=policy.threshold,
        threshold_source=policy.source,
        predictions=predictions,
    )


def _record(predictions: list[Prediction]) -> None:
    for p in predictions:
        metrics.IMAGES.labels(outcome="unknown" if p.unknown else "known").inc()
        metrics.PREDICTIONS.labels(label=p.label).inc()
        metrics.REACHABILITY.observe(p.reachability)
        metrics.CONFIDENCE.observe(p.confidence)


def _capture(
    writer: CaptureWriter,
    uploads: Sequence[Upload],
    predictions: Sequence[Prediction],
    rows: Sequence[Mapping[str, np.ndarray]],
    policy: OpenSetPolicy,
    predictor: Predictor,
) -> None:
    """Offer every image flagged unknown to capture (sampling and writing happen there)."""
    request_id = REQUEST_ID.get()
    for upload, p, row in zip(uploads, predictions, rows, strict=True):
        if not p.unknown:
            continue
        record = CaptureRecord(
            filename=upload.filename,
            content_type=upload.content_type,
            label=p.label,
            confidence=p.confidence,
            reachability=p.reachability,
            score=p.score,
            unknown_score=policy.score,
            threshold=policy.threshold,
            nearest_class=predictor.class_names[int(row["nearest_class"])],
            model_version=predictor.version,
            request_id=request_id,
        )
        writer.offer(upload.data, record)
