"""Operations endpoints: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service import metrics
from service.schemas import Health, Readiness
from service.state import StateDep

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Not ready yet, or shutting down"}},
    summary="Readiness: 200 only once the model is loaded and warmed up",
)
async def readyz(state: StateDep) -> JSONResponse:
    predictor = state.predictor
    body = Readiness(
        ready=state.ready,
        status=state.status,
        model_version=predictor.version if predictor else None,
    )
    headers = None if state.ready else {"Retry-After": "1"}
    return JSONResponse(body.model_dump(), status_code=200 if state.ready else 503, headers=headers)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def prometheus_metrics(state: StateDep) -> Response:
    metrics.QUEUE_DEPTH.set(state.batcher.depth)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
