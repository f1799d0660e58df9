"""Routes that serve the UI's static files.

The files are few and named explicitly, so a request can only ever read one of them (no path
traversal to worry about). They are revalidated on every load (``no-cache`` plus the ETag that
FileResponse sets): without a bundler there are no content hashes in the file names, and an upgraded
control plane must not keep serving yesterday's script from the browser cache.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response

STATIC_DIR = Path(__file__).resolve().parent / "static"

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}

router = APIRouter(include_in_schema=False)


def _files() -> dict[str, Path]:
    return {p.name: p for p in STATIC_DIR.iterdir() if p.is_file() and p.suffix in _TYPES}


_FILES = _files()


def _serve(name: str) -> Response:
    path = _FILES.get(name)
    if path is None:
        return Response(b"not found\n", status_code=404, media_type="text/plain")
    return FileResponse(path, media_type=_TYPES[path.suffix], headers=_HEADERS)


@router.get("/")
async def index() -> Response:
    # The token (if any) travels in the query string only until the page's script stores it and
    # strips it from the address bar; the HTML itself is the same for everyone.
    return _serve("index.html")


@router.get("/ui/{name}")
async def static_file(name: str) -> Response:
    return _serve(name)
