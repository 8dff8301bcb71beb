"""``GET /call``: the page a browser user talks to an agent from (``billing/web``: the
official ``livekit-client`` SDK, pinned in ``package.json`` and bundled by ``setup.sh``
with esbuild; nothing comes from a CDN). The page asks for the user's API key and agent,
gets a token from ``POST /v1/tokens`` and joins the room."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response

from billing.api.errors import ServiceUnavailable

router = APIRouter(tags=["calls"], include_in_schema=False)

WEB_DIR = Path(__file__).resolve().parents[2] / "web"
BUNDLE = WEB_DIR / "dist" / "call.js"
PAGE_HEADERS = {
    # its own script and style only; it connects to the sidecar and to the LiveKit
    # server (wherever the token says), and plays the agent's audio
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self' ws: wss: http: https:; media-src 'self' blob: mediastream:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Cache-Control": "no-cache",
}


@router.get("/call")
def call_page() -> Response:
    return FileResponse(WEB_DIR / "call.html", media_type="text/html", headers=PAGE_HEADERS)


@router.get("/call/call.css")
def call_style() -> Response:
    return FileResponse(WEB_DIR / "call.css", media_type="text/css", headers=PAGE_HEADERS)


@router.get("/call/call.js")
def call_script() -> Response:
    if not BUNDLE.is_file():
        raise ServiceUnavailable(
            "the call page is not built: run ./setup.sh (it needs Node.js and npm)",
            reason="page_not_built",
        )
    return FileResponse(BUNDLE, media_type="text/javascript", headers=PAGE_HEADERS)
