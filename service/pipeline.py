"""The classification path every wire format shares: decode -> batcher -> decision -> metrics.

``POST /classify`` (multipart / raw image) and ``POST /v2/models/{name}/infer`` (the Open
Inference Protocol) only translate their wire format into :class:`Upload` objects and the answer
back; everything between happens here, once.
"""

from __future__ import annotations

import asyncio

import numpy as np

from service import metrics
from service.errors import ServiceError
from service.postprocess import to_prediction
from service.preprocessing import PreprocessSpec, image_to_input
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
        with state.batcher.expecting(len(uploads)):
            inputs = await asyncio.gather(
                *(_prepare(state, predictor.preprocess_spec, u) for u in uploads)
            )
        rows = await state.batcher.submit(predictor, inputs, state.settings.request_timeout_s)
    finally:
        metrics.IN_FLIGHT.dec(len(uploads))
    value, source = state.threshold(threshold, predictor)
    score_name = state.score_name(predictor)
    predictions = [
        to_prediction(
            row,
            predictor.class_names,
            score_name=score_name,
            score_params=state.score_params(predictor),
            threshold=value,
            k=top_k,
            filename=upload.filename,
        )
        for row, upload in zip(rows, uploads, strict=True)
    ]
    _record(predictions)
    return ClassifyResponse(
        model_version=predictor.version,
        unknown_score=score_name,
        threshold=value,
        threshold_source=source,
        predictions=predictions,
    )


async def _prepare(state: ServiceState, spec: PreprocessSpec, upload: Upload) -> np.ndarray:
    """Decode + preprocess off the event loop; errors name the file."""
    try:
        return await state.in_thread(
            image_to_input, upload.data, spec, max_pixels=state.settings.max_image_pixels
        )
    except ServiceError as err:
        if upload.filename is not None:
            err.message = f"file {upload.filename!r}: {err.message}"
        raise


def _record(predictions: list[Prediction]) -> None:
    for p in predictions:
        metrics.IMAGES.labels(outcome="unknown" if p.unknown else "known").inc()
        metrics.PREDICTIONS.labels(label=p.label).inc()
        metrics.REACHABILITY.observe(p.reachability)
        metrics.CONFIDENCE.observe(p.confidence)
