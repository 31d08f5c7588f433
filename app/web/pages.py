"""HTML pages (the dashboard at ``/``, Swagger UI at ``/docs``), static assets and the favicon.

Everything a page loads comes from this package: no CDN, no outside request, no build step. The
pages carry a Content-Security-Policy that allows scripts, styles, images and connections from
this origin only and no inline script, so an injected ``<script>`` or a third-party asset cannot
run even if some text slipped through unescaped.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
STATIC_URL = "/static"
# data: images: Swagger UI's icons are inline SVG data URIs. blob: lets the dashboard save a
# checkpoint it fetched with the Authorization header (a plain link could not send the key).
CSP = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data: blob:",
    "connect-src 'self'",
    "font-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def page(name: str) -> HTMLResponse:
    """One of the package's HTML pages with the security headers."""
    return HTMLResponse((STATIC / name).read_text(encoding="utf-8"), headers=SECURITY_HEADERS)


async def dashboard() -> HTMLResponse:
    return page("index.html")


async def docs() -> HTMLResponse:
    return page("docs.html")


async def favicon() -> Response:
    return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml",
                        headers={"Cache-Control": "max-age=86400"})


def install(app: FastAPI) -> None:
    """Add ``/``, ``/docs``, ``/favicon.ico`` and ``/static`` to the app. Create the app with
    ``docs_url=None, redoc_url=None``: FastAPI's own docs pages load Swagger UI from a CDN."""
    app.add_api_route("/", dashboard, include_in_schema=False)
    app.add_api_route("/docs", docs, include_in_schema=False)
    app.add_api_route("/favicon.ico", favicon, include_in_schema=False)
    app.mount(STATIC_URL, StaticFiles(directory=STATIC), name="static")
