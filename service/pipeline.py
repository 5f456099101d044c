"""The classification path every wire format shares: admit + decode -> batcher -> decision ->
metrics (decode admission and the request deadline: :mod:`service.admission`).

``POST /classify`` (multipart / raw image) and ``POST /v2/models/{name}/infer`` (the Open
Inference Protocol) only translate their wire format into :class:`Upload` objects and the answer
back; everything between happens here, once.
"""

from __future__ import annotations

from service import metrics
from service.admission import Deadline
from service.postprocess import to_prediction
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
