"""Admin API (mounted only when OLTR_ADMIN_TOKEN is set; bearer auth): reload, threshold."""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request

from oltr_contract.scores import threshold_problem
from service.errors import Forbidden, InvalidThreshold, Unauthorized
from service.schemas import (
    ErrorResponse,
    ReloadRequest,
    ReloadResponse,
    ThresholdRequest,
    ThresholdResponse,
)
from service.state import StateDep


def require_admin(request: Request, state: StateDep) -> None:
    """401 without a bearer token, 403 with a wrong one (constant-time comparison)."""
    expected = state.settings.admin_token
    assert expected is not None  # the router is only mounted with a token
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("admin endpoints need 'Authorization: Bearer <token>'")
    if not hmac.compare_digest(token.strip().encode(), expected.get_secret_value().encode()):
        raise Forbidden("admin token rejected")


AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "No bearer token"},
    403: {"model": ErrorResponse, "description": "Wrong token"},
}
router = APIRouter(
    prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)], responses=AUTH_ERRORS
)


@router.post(
    "/reload",
    response_model=ReloadResponse,
    responses={422: {"model": ErrorResponse, "description": "Bad model file; old model serves"}},
    summary="Load a model file and swap it in atomically",
)
async def reload_model(body: ReloadRequest, state: StateDep) -> ReloadResponse:
    new, previous = await state.reload(Path(body.path))
    return ReloadResponse(
        previous_version=previous.version if previous else "",
        version=new.version,
        path=str(new.path),
        provider=new.providers.primary,
    )


@router.put(
    "/threshold",
    response_model=ThresholdResponse,
    responses={422: {"model": ErrorResponse, "description": "Not a number in the score's range"}},
    summary="Set (or with null, reset) the unknown threshold until the next reload",
)
async def put_threshold(body: ThresholdRequest, state: StateDep) -> ThresholdResponse:
    state.require_predictor()
    if body.threshold is not None:
        problem = threshold_problem(state.policy().score, body.threshold)
        if problem:
            raise InvalidThreshold(problem)
    state.set_admin_threshold(body.threshold)
    policy = state.policy()
    return ThresholdResponse(
        unknown_score=policy.score, threshold=policy.threshold, threshold_source=policy.source
    )
