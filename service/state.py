"""Per-process service state: the serving model, its threshold policy, batcher and thread pool.

Lives on ``app.state.service``; created and torn down by the app's lifespan. The predictor is
swapped by one assignment (atomic on the event loop); requests keep the predictor they started
with, so a reload never changes a request half-way.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, TypeVar

from fastapi import Depends, Request

from service import metrics
from service.admission import Admission
from service.batching import MicroBatcher
from service.config import Settings
from service.errors import ModelLoadError, ModelNotReady
from service.predictor import Predictor

log = logging.getLogger("oltr.service")
T = TypeVar("T")


class ServiceState:
    """The model being served plus everything needed to serve it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.predictor: Predictor | None = None
        self.status = "loading"
        self.admin_threshold: float | None = None
        self.batcher = MicroBatcher(
            max_batch_size=settings.max_batch_size,
            max_delay_s=settings.max_batch_delay_s,
            max_queue=settings.max_queue,
        )
        self.admission = Admission(settings, self.batcher)  # decoding has its own threads
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="oltr-load")
        self._reload_lock = asyncio.Lock()
        self._warmup: asyncio.Task | None = None

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Load and check the model (errors are fatal), then finish warming up in background."""
        s = self.settings
        predictor = await self.in_thread(Predictor.load, s.model_path, s)
        self._check_score(predictor)
        await self.in_thread(predictor.warm_up, s.max_batch_size, 1)
        self._install(predictor)
        self.batcher.start()
        self.status = "warming_up"
        self._warmup = asyncio.get_running_loop().create_task(self._finish_warmup(predictor))

    async def _finish_warmup(self, predictor: Predictor) -> None:
        s = self.settings
        try:
            rounds = await self.in_thread(
                predictor.warm_up, s.max_batch_size, s.warmup_runs, s.warmup_min_s
            )
        except ModelLoadError:
            log.exception("warm-up failed; the service stays not ready")
            self.status = "warmup_failed"
            return
        self._install(predictor)  # providers re-read: a run-time fallback shows now
        self.status = "ready"
        log.info(
            "ready: model %s warmed up (%d rounds) on %s",
            predictor.version,
            rounds,
            predictor.providers.primary,
        )

    async def stop(self) -> None:
        """Stop taking requests, drain the batcher, release threads."""
        self.status = "shutting_down"
        if self._warmup is not None and not self._warmup.done():
            self._warmup.cancel()
        pending = self.batcher.depth
        await self.batcher.close()
        log.info("shutdown: batcher drained (%d images were still queued)", pending)
        self.admission.close()
        self._pool.shutdown(wait=True)

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    def require_predictor(self) -> Predictor:
        """The serving predictor, or ModelNotReady (503) before warm-up / during shutdown."""
        if not self.ready or self.predictor is None:
            raise ModelNotReady(f"model not ready (status: {self.status}); retry shortly")
        return self.predictor

    # -- model swaps -------------------------------------------------------------------------
    async def reload(self, path: Path) -> tuple[Predictor, Predictor | None]:
        """Load, check and warm up ``path``, then swap it in; on error the old model stays."""
        async with self._reload_lock:
            s = self.settings
            candidate = await self.in_thread(Predictor.load, path, s)
            self._check_score(candidate)
            await self.in_thread(candidate.warm_up, s.max_batch_size, s.warmup_runs)
            previous = self.predictor
            self._install(candidate)
            self.admin_threshold = None
            log.info(
                "reloaded: %s -> %s (%s)",
                previous.version if previous else None,
                candidate.version,
                path,
            )
            return candidate, previous

    def _install(self, predictor: Predictor) -> None:
        self.predictor = predictor
        choice = predictor.providers
        metrics.set_model_info(
            predictor.version,
            choice.primary,
            ",".join(choice.requested),
            choice.fallback,
            predictor.class_names,
        )
        metrics.UNKNOWN_THRESHOLD.set(self.threshold()[0])

    def _check_score(self, predictor: Predictor) -> None:
        s, card = self.settings, predictor.card
        if s.unknown_score == "combined" and card.unknown_score.name != "combined":
            raise ModelLoadError(
                f"OLTR_UNKNOWN_SCORE=combined but the card of {predictor.path} has no combined "
                f"score parameters (it calibrates {card.unknown_score.name!r})"
            )
        if s.unknown_score and s.unknown_score != card.unknown_score.name and s.threshold is None:
            raise ModelLoadError(
                f"OLTR_UNKNOWN_SCORE={s.unknown_score} but the card of {predictor.path} calibrates "
                f"{card.unknown_score.name!r}; its threshold does not apply: set OLTR_THRESHOLD too"
            )

    # -- open-set policy ---------------------------------------------------------------------
    def score_name(self, predictor: Predictor | None = None) -> str:
        """The unknown score of ``predictor`` (default: the serving one)."""
        card = (predictor or self.predictor).card
        return self.settings.unknown_score or card.unknown_score.name

    def score_params(self, predictor: Predictor | None = None) -> dict[str, float] | None:
        """The combined score's divisors from the card, when that is the score in use."""
        predictor = predictor or self.predictor
        return (
            predictor.card.unknown_score.params
            if self.score_name(predictor) == "combined"
            else None
        )

    def threshold(
        self, request_value: float | None = None, predictor: Predictor | None = None
    ) -> tuple[float, str]:
        """(threshold, source): this request > admin API > OLTR_THRESHOLD > model card.

        ``predictor`` is the model a request ran on (default: the serving one): after a reload
        in between, its own card applies, and the admin value (which belongs to the serving
        model and is reset by reloads) does not."""
        predictor = predictor or self.predictor
        if request_value is not None:
            return request_value, "request"
        if self.admin_threshold is not None and predictor is self.predictor:
            return self.admin_threshold, "admin"
        if self.settings.threshold is not None:
            return self.settings.threshold, "settings"
        return predictor.card.threshold, "card"

    def set_admin_threshold(self, value: float | None) -> None:
        self.admin_threshold = value
        metrics.UNKNOWN_THRESHOLD.set(self.threshold()[0])

    # -- threads -------------------------------------------------------------------------------
    async def in_thread(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        """Run blocking work (model load, warm-up) in the pool, keeping the log context."""
        call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)


def get_state(request: Request) -> ServiceState:
    return request.app.state.service


StateDep = Annotated[ServiceState, Depends(get_state)]
