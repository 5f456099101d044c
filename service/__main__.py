"""``python -m service``: validate settings, then serve with uvicorn (graceful SIGTERM).

HTTP is uvicorn's httptools protocol with the service's limits (:mod:`service.http_limits`)."""

from __future__ import annotations

import sys

import uvicorn

from service.app import create_app
from service.config import SettingsError, load_settings
from service.http_limits import protocol_for
from service.logs import log_config


def main() -> int:
    try:
        settings = load_settings()
    except SettingsError as err:
        print(f"oltr service: {err}", file=sys.stderr)
        return 2
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=log_config(settings),
        log_level=settings.log_level,
        timeout_graceful_shutdown=settings.shutdown_timeout_s,  # type: ignore[arg-type]  # float ok
        http=protocol_for(settings),
        timeout_keep_alive=settings.keepalive_timeout_s,  # type: ignore[arg-type]
        lifespan="on",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
