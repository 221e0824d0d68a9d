"""The API's interactive docs (`/docs`) served from the package, not a CDN.

FastAPI's default `/docs` page loads Swagger UI from cdn.jsdelivr.net, which
an agent on an isolated node cannot reach (the page stays blank). The assets
come from the ``swagger-ui-bundle`` wheel instead; without it `/docs` says
where the schema is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

__all__ = ["mount_api_docs"]

# The only files the page needs; nothing else of the bundle is served.
ASSETS: Final = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png")


def _bundle_dir() -> Path | None:
    try:
        import swagger_ui_bundle  # type: ignore[import-untyped]
    except ImportError:
        return None
    return Path(swagger_ui_bundle.swagger_ui_path)


def mount_api_docs(app: FastAPI) -> None:
    """`/docs` (Swagger UI) and `/docs/assets/NAME`; create the app with
    ``docs_url=None`` so FastAPI's CDN page is not registered too."""
    bundle = _bundle_dir()

    @app.get("/docs", include_in_schema=False)
    def docs() -> Response:
        if bundle is None:
            return HTMLResponse(
                "<p>Interactive docs need the swagger-ui-bundle package; "
                'the schema is at <a href="openapi.json">/openapi.json</a>.</p>'
            )
        # Relative URLs: they keep working behind a proxy that adds a prefix.
        return get_swagger_ui_html(
            openapi_url="openapi.json",
            title=f"{app.title} - API",
            swagger_js_url="docs/assets/swagger-ui-bundle.js",
            swagger_css_url="docs/assets/swagger-ui.css",
            swagger_favicon_url="docs/assets/favicon-32x32.png",
        )

    @app.get("/docs/assets/{name}", include_in_schema=False)
    def asset(name: str) -> Response:
        if bundle is None or name not in ASSETS:
            return JSONResponse({"detail": "no such asset"}, status_code=404)
        return FileResponse(bundle / name)
