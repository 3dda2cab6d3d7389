"""The clinician page at / and the offline Swagger UI at /docs (neither in the schema)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from skincli.serve.errors import ApiError

STATIC_DIR = Path(str(resources.files("skincli") / "static"))

router = APIRouter(include_in_schema=False)


def swagger_ui_dir() -> Path | None:
    """Swagger UI 5's files from the fastapi-offline package, so /docs works offline."""
    try:
        folder = Path(str(resources.files("fastapi_offline") / "static"))
    except ModuleNotFoundError:
        return None
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>skin API: interactive documentation</title>
<link rel="stylesheet" href="/docs-assets/swagger-ui.css">
<link rel="icon" type="image/png" href="/docs-assets/favicon.png">
</head><body><div id="swagger-ui"></div>
<script src="/docs-assets/swagger-ui-bundle.js"></script>
<script src="/static/docs.js"></script>
</body></html>
"""


@router.get("/docs")
async def docs(request: Request) -> Response:
    if request.app.state.docs_assets is None:  # looked up once, when the app was built
        raise ApiError("not_found", "Swagger UI is not installed: pip install "
                       "fastapi-offline (the schema is at /openapi.json)")
    # Swagger UI sets inline styles and data: images; scripts stay 'self' only.
    return HTMLResponse(DOCS_PAGE, headers={
        "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                                   "style-src 'self' 'unsafe-inline'; script-src 'self'; "
                                   "connect-src 'self'; frame-ancestors 'none'",
        "Referrer-Policy": "no-referrer"})


@router.get("/")
async def index() -> Response:
    page = STATIC_DIR / "index.html"
    if not page.is_file():
        raise ApiError("not_found", "The web page is not installed")
    return FileResponse(page, media_type="text/html", headers={
        "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
                                   "style-src 'self'; script-src 'self'; "
                                   "connect-src 'self'; frame-ancestors 'none'",
        "Referrer-Policy": "no-referrer"})
