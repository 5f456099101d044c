"""GET /v1/model: what is being served, how, and with which open-set threshold."""

from __future__ import annotations

from fastapi import APIRouter

from service.card import ModelCard
from service.errors import ModelNotReady
from service.postprocess import SCORE_DEFINITIONS
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
    predictor = state.predictor
    if predictor is None:
        raise ModelNotReady("no model loaded yet")
    card = predictor.card
    threshold, source = state.threshold()
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
            name=state.score_name(),
            definition=_definition(state.score_name(), card),
            threshold=threshold,
            threshold_source=source,
            card_threshold=card.threshold,
            params=state.score_params(),
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


def _definition(name: str, card: ModelCard) -> str:
    if name == card.unknown_score.name and card.unknown_score.definition:
        return card.unknown_score.definition
    return SCORE_DEFINITIONS[name]
