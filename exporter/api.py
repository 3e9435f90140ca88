"""HTTP transport served by the Streamlit process (``st.App(routes=...)``, Starlette).

A thin layer over ``exporter.services``: it finds out who is asking, calls one service, and
turns the portal's errors into one JSON shape with the matching status code. Downloads are
streamed from disk by Starlette's ``FileResponse`` (Range, If-Range, ETag, 206/416), never
held in memory.
"""

from __future__ import annotations

import dataclasses
import json
from functools import cache
from typing import Any

import swagger_ui_bundle
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from exporter import openapi, services
from exporter.config import Settings, parse_size
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
from exporter.exports import ExportRequest, ExportView, archive_bytes_estimate
from exporter.privacy import LEVELS, PrivacyLevel

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
    """The caller's e-mail: a bearer token, else the proxy's header, else the development
    user in development. (Blocking: call it from a thread.)"""
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return services.token_owner(config, auth[7:].strip())
    email = request.headers.get(USER_HEADER, "").strip().lower()
    if email:
        return email
    if config.is_development and config.dev_user:
        return config.dev_user
    raise NotSignedIn("Not signed in: open the portal through your institution's sign-in")


class InvalidRequest(PortalError):
    """The request body does not fit: ``fields`` names each bad field and why."""

    def __init__(self, message: str, fields: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.fields = fields or {}


def error_response(exc: PortalError) -> JSONResponse:
    """Every portal error as ``{"error": {"type", "message"[, "fields"]}}`` with its code."""
    if isinstance(exc, InvalidRequest):
        body: dict[str, Any] = {"type": "InvalidRequest", "message": str(exc)}
        if exc.fields:
            body["fields"] = exc.fields
        return JSONResponse({"error": body}, status_code=422)
    status = next((code for cls, code in STATUS.items() if isinstance(exc, cls)), 400)
    return JSONResponse(
        {"error": {"type": type(exc).__name__, "message": str(exc)}}, status_code=status
    )


async def download(request: Request) -> Response:
    """``GET /api/<project>/exports/<id>/download/[<part>]``: the archive, resumable."""
    config = settings()
    try:
        email = await run_in_threadpool(identity, request, config)
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


# --- JSON endpoints ------------------------------------------------------------------

MAX_OFFSET = 2**31 - 1  # beyond any list; bigger numbers overflow the databases' integers
_LIST_FIELDS = ("folders", "patients", "tags", "modalities", "kinds")
_BODY_FIELDS = {*_LIST_FIELDS, "tag_mode", "not_exported", "name", "notes", "options"}
# The on/off options: every boolean a request has.
_FLAG_OPTIONS = tuple(f.name for f in dataclasses.fields(ExportRequest) if f.type == "bool")
_OPTION_FIELDS = {"compression", "part_size", "privacy", *_FLAG_OPTIONS}


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise InvalidRequest("The body is not JSON: send a JSON object") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The body must be a JSON object")
    return body


def export_request(body: dict[str, Any]) -> ExportRequest:
    """An ExportRequest from a JSON body, naming every field that does not fit."""
    bad: dict[str, str] = {}
    for key in body.keys() - _BODY_FIELDS:
        bad[key] = "unknown field"
    for key in _LIST_FIELDS:
        value = body.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            bad[key] = "must be a list of strings"
    for key in ("tag_mode", "name", "notes"):
        if key in body and not isinstance(body[key], str):
            bad[key] = "must be a string"
    if "not_exported" in body and not isinstance(body["not_exported"], bool):
        bad["not_exported"] = "must be true or false"
    options = body.get("options", {})
    if not isinstance(options, dict):
        bad["options"] = "must be an object"
        options = {}
    for key in options.keys() - _OPTION_FIELDS:
        bad[f"options.{key}"] = "unknown option"
    for key in _FLAG_OPTIONS:
        if key in options and not isinstance(options[key], bool):
            bad[f"options.{key}"] = "must be true or false"
    if "compression" in options and options["compression"] not in ("store", "fast", "small"):
        bad["options.compression"] = "must be store, fast or small"
    if "privacy" in options and options["privacy"] not in LEVELS:
        bad["options.privacy"] = f"must be {', '.join(LEVELS)}"
    part_size = options.get("part_size")
    if part_size is not None:
        try:
            part_size = parse_size(str(part_size)) if not isinstance(part_size, bool) else None
        except PortalError:
            part_size = None
        if part_size is None:
            bad["options.part_size"] = "must be a size in bytes or like '4GiB'"
    if bad:
        raise InvalidRequest("Some fields do not fit: see 'fields'", bad)
    try:
        selection = services.parse_selection(
            body.get("folders"), body.get("patients"), body.get("tags"),
            body.get("tag_mode", "any"), body.get("modalities"), body.get("kinds"),
            bool(body.get("not_exported", False)),
        )  # fmt: skip
    except InvalidSelection as exc:
        raise InvalidRequest(str(exc), {"tag_mode": str(exc)}) from None
    return ExportRequest(
        selection=selection,
        name=body.get("name", ""),
        notes=body.get("notes", ""),
        compression=options.get("compression", "fast"),
        part_size=part_size or None,
        privacy=options.get("privacy", PrivacyLevel.PSEUDONYMISED.value),
        **{key: options[key] for key in _FLAG_OPTIONS if key in options},  # else the defaults
    )


def export_json(view: ExportView, base: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(view), default=str))
    url = f"{base}/api/{view.project}/exports/{view.id}/"
    data["url"] = url
    data["progress"] = round(view.progress, 4)
    if view.status == "completed":
        data["downloads"] = (
            [f"{url}download/{p.number}" for p in view.parts]
            if len(view.parts) > 1
            else [f"{url}download/"]
        )
    return data


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


async def _call(request: Request, work: Any) -> Response:
    """Identify the caller, run ``work(settings, email)`` in a thread, map errors."""
    config = settings()
    try:
        email = await run_in_threadpool(identity, request, config)
        return await run_in_threadpool(work, config, email)
    except PortalError as exc:
        return error_response(exc)


async def _call_with_body(request: Request, work: Any) -> Response:
    """Parse the body into an ExportRequest, then ``work(settings, email, project, body)``."""
    project = request.path_params["project"]
    try:
        body = export_request(await _body(request))
    except PortalError as exc:
        return error_response(exc)
    return await _call(request, lambda config, email: work(config, email, project, body))


async def create_export(request: Request) -> Response:
    """``POST /api/<project>/exports/create/``: 202 with the export's id, status and URL."""

    def work(config: Settings, email: str, project: str, body: ExportRequest) -> Response:
        view = services.create_export(config, email, project, body)
        data = export_json(view, _base(request))
        return JSONResponse(data, status_code=202, headers={"Location": data["url"]})

    return await _call_with_body(request, work)


async def estimate(request: Request) -> Response:
    """``POST /api/<project>/estimate/``: counts, bytes and whether create would be refused."""

    def work(config: Settings, email: str, project: str, body: ExportRequest) -> Response:
        check = services.preflight_export(config, email, project, body)
        est = check.estimate
        return JSONResponse(
            {
                "patient_count": est.patient_count,
                "patients_selected": est.patients_selected,
                "file_count": est.file_count,
                "bytes": est.total_bytes,
                "archive_bytes_estimate": archive_bytes_estimate(est, body.compression),
                "by_modality": [dataclasses.asdict(m) for m in est.by_modality],
                "quota_left": check.quota_left,
                "would_be_refused": check.refusal is not None,
                "refusal": check.refusal,
            }
        )

    return await _call_with_body(request, work)


async def preview(request: Request) -> Response:
    """``POST /api/<project>/preview/``: the DICOM header changes the export would make, for
    one file per selected series (old values for data managers only)."""

    def work(config: Settings, email: str, project: str, body: ExportRequest) -> Response:
        found = services.preview_export(config, email, project, body)
        return JSONResponse(json.loads(json.dumps(dataclasses.asdict(found))))

    return await _call_with_body(request, work)


async def list_exports(request: Request) -> Response:
    """``GET /api/<project>/exports/?status=&limit=&offset=``, newest first."""
    project = request.path_params["project"]
    try:
        limit = int(request.query_params.get("limit", 50))
        offset = int(request.query_params.get("offset", 0))
        if not (1 <= limit <= 500 and 0 <= offset <= MAX_OFFSET):
            raise ValueError
    except ValueError:
        return error_response(
            InvalidRequest(
                f"limit must be 1 to 500 and offset 0 to {MAX_OFFSET}", {"limit": "1..500"}
            )
        )
    status = request.query_params.get("status") or None

    def work(config: Settings, email: str) -> Response:
        views = services.list_exports(config, email, project, status, limit + 1, offset)
        items = [export_json(v, _base(request)) for v in views[:limit]]
        more = len(views) > limit
        return JSONResponse(
            {
                "items": items,
                "limit": limit,
                "offset": offset,
                "next_offset": offset + limit if more else None,
            }
        )

    return await _call(request, work)


def _export_action(action: Any, status_code: int = 200) -> Any:
    async def endpoint(request: Request) -> Response:
        project = request.path_params["project"]
        export_id = request.path_params["export_id"]

        def work(config: Settings, email: str) -> Response:
            view = services.get_export(config, email, export_id)
            if view.project != project:
                raise NotFound(f"No export {export_id!r} that you can see")
            if action is not None:
                view = action(config, email, export_id)
            return JSONResponse(export_json(view, _base(request)), status_code=status_code)

        return await _call(request, work)

    return endpoint


DOCS_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Export Portal API</title>
<link rel="stylesheet" href="/api/docs/static/swagger-ui.css"></head>
<body><div id="ui"></div>
<script src="/api/docs/static/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/api/openapi.json", dom_id: "#ui"});</script>
</body></html>"""


async def openapi_json(request: Request) -> Response:
    """``GET /api/openapi.json``: the API description."""
    return JSONResponse(openapi.document())


async def docs(request: Request) -> Response:
    """``GET /api/docs``: interactive documentation (Swagger UI, served from a wheel)."""
    return HTMLResponse(DOCS_PAGE)


def routes() -> list[BaseRoute]:
    """The portal's HTTP routes (under /api, outside Streamlit's reserved prefixes)."""
    exports_base = "/api/{project:str}/exports"
    one = exports_base + "/{export_id:str}"
    return [
        Route(exports_base + "/create/", create_export, methods=["POST"]),
        Route(exports_base + "/", list_exports, methods=["GET"]),
        Route(one + "/", _export_action(None), methods=["GET"]),
        Route(one + "/", _export_action(services.delete_export), methods=["DELETE"]),
        Route(one + "/cancel/", _export_action(services.cancel_export), methods=["POST"]),
        Route(one + "/download/", download, methods=["GET", "HEAD"]),
        Route(one + "/download/{part:int}", download, methods=["GET", "HEAD"]),
        Route("/api/{project:str}/estimate/", estimate, methods=["POST"]),
        Route("/api/{project:str}/preview/", preview, methods=["POST"]),
        Route("/api/openapi.json", openapi_json, methods=["GET"]),
        Route("/api/docs", docs, methods=["GET"]),
        Mount("/api/docs/static", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path)),
    ]
