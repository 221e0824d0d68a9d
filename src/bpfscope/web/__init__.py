"""The agent's built-in web view: a static page and its JS modules.

The page holds no data: it reads the same /api endpoints (with the same
bearer token) from the browser. Assets are served only from this package
(no CDN, nothing fetched from elsewhere) under a strict Content-Security-Policy
that allows no inline script or style.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from typing import Final

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

__all__ = ["CSP", "mount_web"]

CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
ASSET_NAME: Final = re.compile(r"^[a-z0-9_-]+\.(js|css|svg)$")


@cache
def _asset(name: str) -> bytes | None:
    path = resources.files(__package__).joinpath("static", name)
    return path.read_bytes() if path.is_file() else None


def _send(name: str) -> Response:
    body = _asset(name)
    if body is None:
        return JSONResponse({"detail": f"no such asset: {name}"}, status_code=404)
    media = TYPES[name[name.rindex(".") :]]
    return Response(body, media_type=media, headers=HEADERS)


def mount_web(app: FastAPI) -> None:
    """Add `/` (the page) and `/ui/NAME` (its assets) to the agent's app."""

    @app.get("/", include_in_schema=False)
    def index() -> Response:
        return _send("index.html")

    @app.get("/ui/{name}", include_in_schema=False)
    def asset(name: str) -> Response:
        # Only plain file names: no path can reach outside static/.
        if not ASSET_NAME.match(name):
            return JSONResponse({"detail": "no such asset"}, status_code=404)
        return _send(name)
