"""The FastAPI application: ``create_app(settings)``; the model loads in the lifespan.

``uvicorn service.app:app`` reads the module attribute ``app``, which is built on first access
(PEP 562 ``__getattr__``) from the environment: importing this module creates nothing and
loads no model.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service import __version__
from service.config import Settings, SettingsError, load_settings
from service.errors import install_handlers
from service.logs import configure_logging
from service.middleware import RequestContextMiddleware
from service.routes import admin, captures, classes, classify, health, model, ui, v2
from service.state import ServiceState

log = logging.getLogger("oltr.service")

DESCRIPTION = """Open long-tailed image recognition (OLTR). `POST /classify` returns, per image,
the most likely known class, its probability, the OLTR reachability and an `unknown` flag
(the configured open-set score below the threshold). Errors are JSON:
`{"error": {"code", "message", "request_id"}}`."""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the model (fatal on error), warm up in background, drain the batcher on exit."""
    state = ServiceState(app.state.settings)
    app.state.service = state
    try:
        await state.start()
    except Exception as err:
        log.error("start-up failed: %s", err)
        await state.stop()
        raise
    try:
        yield
    finally:
        await state.stop()


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app (cheap: routes and middleware only); ``settings`` default to the env."""
    settings = settings or load_settings()
    configure_logging(settings)
    app = FastAPI(
        title="OLTR image classification",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_handlers(app)
    app.include_router(classify.router)
    app.include_router(model.router)
    app.include_router(health.router)
    app.include_router(v2.router)
    if settings.admin_token is not None:
        app.include_router(admin.router)
        app.include_router(classes.router)
        app.include_router(captures.router)
    if settings.ui:
        app.include_router(ui.router)
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.max_upload_bytes)
    return app


_app: FastAPI | None = None


def __getattr__(name: str) -> FastAPI:
    """``service.app.app``: built from the environment on first access, then cached."""
    global _app
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _app is None:
        try:
            _app = create_app(load_settings())
        except SettingsError as err:
            raise SystemExit(f"oltr service: {err}") from err
    return _app
