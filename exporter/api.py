"""HTTP transport served by the Streamlit process (``st.App(routes=...)``, Starlette).

A thin layer over ``exporter.services``: it finds out who is asking, calls one service, and
turns the portal's errors into one JSON shape with the matching status code. Downloads are
streamed from disk by Starlette's ``FileResponse`` (Range, If-Range, ETag, 206/416), never
held in memory.
"""

from __future__ import annotations

from functools import cache

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from exporter import services
from exporter.config import Settings
from exporter.errors import (
    Gone,
    InvalidSelection,
    InvalidState,
    LimitExceeded,
    NotFound,
    NotSignedIn,
    PermissionDenied,
    PortalError,
)

USER_HEADER = "X-Forwarded-User"  # the reverse proxy's; same as .streamlit/config.toml
STATUS = {
    NotSignedIn: 401,
    PermissionDenied: 403,
    NotFound: 404,
    InvalidState: 409,
    Gone: 410,
    LimitExceeded: 413,
    InvalidSelection: 422,
}


@cache
def settings() -> Settings:
    return Settings.load()


def identity(request: Request, config: Settings) -> str:
    """The caller's e-mail: the proxy's header, else the development user in development."""
    email = request.headers.get(USER_HEADER, "").strip().lower()
    if email:
        return email
    if config.is_development and config.dev_user:
        return config.dev_user
    raise NotSignedIn("Not signed in: open the portal through your institution's sign-in")


def error_response(exc: PortalError) -> JSONResponse:
    """Every portal error as ``{"error": {"type", "message"}}`` with its status code."""
    status = next((code for cls, code in STATUS.items() if isinstance(exc, cls)), 400)
    return JSONResponse(
        {"error": {"type": type(exc).__name__, "message": str(exc)}}, status_code=status
    )


async def download(request: Request) -> Response:
    """``GET /api/<project>/exports/<id>/download/[<part>]``: the archive, resumable."""
    config = settings()
    try:
        email = identity(request, config)
        part = request.path_params.get("part")
        detail = {"range": request.headers["range"]} if "range" in request.headers else {}
        target = await run_in_threadpool(
            services.download_target,
            config,
            email,
            request.path_params["project"],
            request.path_params["export_id"],
            part,
            detail,
        )
    except PortalError as exc:
        return error_response(exc)
    return FileResponse(
        target.path,
        media_type="application/zip",
        filename=target.filename,
        headers={"Cache-Control": "private, no-store"},
    )


def routes() -> list[BaseRoute]:
    """The portal's HTTP routes (under /api, outside Streamlit's reserved prefixes)."""
    base = "/api/{project:str}/exports/{export_id:str}/download"
    return [
        Route(base + "/", download, methods=["GET", "HEAD"]),
        Route(base + "/{part:int}", download, methods=["GET", "HEAD"]),
    ]
