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
from service.capture import CaptureStore, CaptureWriter
from service.config import Settings
from service.enrolment import latest_version
from service.errors import ModelLoadError, ModelNotReady
from service.open_set import OpenSetPolicy, check_policy, policy_for
from service.predictor import Predictor
from service.schemas import ServiceStatus

log = logging.getLogger("oltr.service")
T = TypeVar("T")


class ServiceState:
    """The model being served plus everything needed to serve it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.predictor: Predictor | None = None
        self.status: ServiceStatus = ServiceStatus.LOADING
        self.admin_threshold: float | None = None
        self.batcher = MicroBatcher(
            max_batch_size=settings.max_batch_size,
            max_delay_s=settings.max_batch_delay_s,
            max_queue=settings.max_queue,
        )
        self.admission = Admission(settings, self.batcher)  # decoding has its own threads
        self.captures: CaptureStore | None = None
        self.capture_writer: CaptureWriter | None = None
        if settings.capture_dir is not None:
            self.captures = CaptureStore(settings.capture_dir, max_bytes=settings.capture_max_bytes)
            self.capture_writer = CaptureWriter(self.captures, settings.capture_sample_rate)
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="oltr-load")
        self._reload_lock = asyncio.Lock()
        self.enrol_lock = asyncio.Lock()
        """Held by an enrolment from reading the serving model to swapping in its successor."""
        self._warmup: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Load and check the model (errors are fatal), then finish warming up in background."""
        s = self.settings
        await self._open_captures()
        predictor = await self.in_thread(Predictor.load, self.startup_model_path(), s)
        check_policy(s, predictor.card, predictor.path)
        await self.in_thread(predictor.warm_up, s.max_batch_size, 1)
        self._install(predictor)
        self.batcher.start()
        self.status = ServiceStatus.WARMING_UP
        self._warmup = asyncio.get_running_loop().create_task(self._finish_warmup(predictor))

    def startup_model_path(self) -> Path:
        """``model_path``, or the newest enrolled version with ``serve_latest_enrolled``."""
        s = self.settings
        latest = latest_version(s.enrol_dir) if s.serve_latest_enrolled and s.enrol_dir else None
        if latest is not None:
            log.info("serving the latest enrolled version: %s", latest)
        return latest or s.model_path

    async def _open_captures(self) -> None:
        """Check the capture folder. A bad one does not stop the service: every capture then
        fails (counted) until the folder becomes writable."""
        if self.captures is None:
            return
        s = self.settings
        try:
            await self.in_thread(self.captures.open)
        except OSError as err:
            log.error(
                "capture folder %s is not usable (%s): unknown images will not be kept, "
                "each failure is counted",
                s.capture_dir,
                err,
            )
            return
        log.info(
            "capturing unknown images into %s (sample rate %g, cap %d bytes, %d bytes there)",
            s.capture_dir,
            s.capture_sample_rate,
            s.capture_max_bytes,
            self.captures.total_bytes,
        )

    async def _finish_warmup(self, predictor: Predictor) -> None:
        s = self.settings
        try:
            rounds = await self.in_thread(
                predictor.warm_up, s.max_batch_size, s.warmup_runs, s.warmup_min_s
            )
        except ModelLoadError:
            log.exception("warm-up failed; the service stays not ready")
            self.status = ServiceStatus.WARMUP_FAILED
            return
        self._install(predictor)  # providers re-read: a run-time fallback shows now
        self.status = ServiceStatus.READY
        log.info(
            "ready: model %s warmed up (%d rounds) on %s",
            predictor.version,
            rounds,
            predictor.providers.primary,
        )

    async def stop(self) -> None:
        """Stop taking requests, drain the batcher, release threads."""
        self.status = ServiceStatus.SHUTTING_DOWN
        if self._warmup is not None and not self._warmup.done():
            self._warmup.cancel()
        pending = self.batcher.depth
        await self.batcher.close()
        log.info("shutdown: batcher drained (%d images were still queued)", pending)
        self.admission.close()
        if self.capture_writer is not None:
            await self.in_thread(self.capture_writer.close)
        self._pool.shutdown(wait=True)

    @property
    def ready(self) -> bool:
        return self.status is ServiceStatus.READY

    def require_loaded(self) -> Predictor:
        """The loaded predictor, ready or not (ModelNotReady before the first load)."""
        if self.predictor is None:
            raise ModelNotReady("no model loaded yet")
        return self.predictor

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
            check_policy(s, candidate.card, candidate.path)
            await self.in_thread(candidate.warm_up, s.max_batch_size, s.warmup_runs)
            previous = self.predictor
            self.admin_threshold = None  # it belonged to the previous model
            self._install(candidate)
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
            len(predictor.enrolled.examples),
        )
        metrics.UNKNOWN_THRESHOLD.set(self.policy(predictor=predictor).threshold)

    # -- open-set policy ---------------------------------------------------------------------
    def policy(
        self, request_threshold: float | None = None, predictor: Predictor | None = None
    ) -> OpenSetPolicy:
        """The open-set policy for ``predictor`` (default: the serving one), see
        :mod:`service.open_set`. After a reload in between, a request's own model's card
        applies, and the admin threshold (which belongs to the serving model and is reset by
        reloads) does not."""
        predictor = predictor or self.require_loaded()
        admin = self.admin_threshold if predictor is self.predictor else None
        return policy_for(
            self.settings,
            predictor.card,
            admin_threshold=admin,
            request_threshold=request_threshold,
        )

    def set_admin_threshold(self, value: float | None) -> None:
        self.admin_threshold = value
        metrics.UNKNOWN_THRESHOLD.set(self.policy().threshold)

    # -- threads -------------------------------------------------------------------------------
    async def in_thread(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        """Run blocking work (model load, warm-up) in the pool, keeping the log context."""
        call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)


def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


StateDep = Annotated[ServiceState, Depends(get_state)]
