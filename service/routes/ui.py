"""The web page (mounted only when OLTR_UI is true): static files from ``service/ui/``.

Only the files named in :data:`UI_FILES` are served (no path from the request reaches the
file system). Every page response carries a Content-Security-Policy that allows scripts,
styles and connections from this origin only (no inline script or style) and images from this
origin, ``blob:`` and ``data:`` (thumbnails of the user's own files and of fetched captures).
The page holds no secret: its admin parts send the token the user types, as any client does.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import RedirectResponse, Response

UI_DIR = Path(__file__).resolve().parents[1] / "ui"
UI_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob: data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}

router = APIRouter(tags=["ui"], include_in_schema=False)


@cache
def _file_bytes(name: str) -> bytes:
    return (UI_DIR / name).read_bytes()


def ui_file(name: str) -> Response:
    """One of :data:`UI_FILES` with the page's security headers; 404 for any other name."""
    media_type = UI_FILES.get(name)
    if media_type is None:
        raise HTTPException(404, f"no file {name!r} in the page")
    return Response(_file_bytes(name), media_type=media_type, headers=SECURITY_HEADERS)


@router.get("/ui")
async def ui_redirect() -> RedirectResponse:
    """``/ui`` -> ``/ui/`` (relative, so the page also works under a path prefix)."""
    return RedirectResponse("ui/", status_code=308, headers=SECURITY_HEADERS)


@router.get("/ui/")
async def ui_index() -> Response:
    return ui_file("index.html")


@router.get("/ui/{name}")
async def ui_asset(name: str) -> Response:
    return ui_file(name)
