"""GET /v1/model: what is being served, how, and with which open-set threshold."""

from __future__ import annotations

from fastapi import APIRouter

from service.schemas import ErrorResponse, ModelInfo, ProviderInfo, UnknownScoreInfo
from service.state import StateDep

router = APIRouter(prefix="/v1", tags=["model"])


@router.get(
    "/model",
    response_model=ModelInfo,
    responses={503: {"model": ErrorResponse, "description": "No model loaded yet"}},
    summary="The served model: classes, input size, score, threshold, execution provider",
)
async def model_info(state: StateDep) -> ModelInfo:
    predictor = state.require_loaded()
    card = predictor.card
    policy = state.policy()
    choice = predictor.providers
    return ModelInfo(
        name=state.settings.model_name,
        version=predictor.version,
        path=str(predictor.path),
        created=card.created,
        class_names=card.class_names,
        input_size=card.input_size,
        preprocess=card.preprocess.model_dump(),
        unknown_score=UnknownScoreInfo(
            name=policy.score,
            definition=policy.definition,
            threshold=policy.threshold,
            threshold_source=policy.source,
            card_threshold=card.threshold,
            params=policy.params,
        ),
        provider=choice.primary,
        providers=ProviderInfo(
            setting=choice.setting,
            requested=list(choice.requested),
            active=list(choice.active),
            fallback=choice.fallback,
        ),
        max_batch_size=state.settings.max_batch_size,
        card=card.model_dump(mode="json"),
    )
