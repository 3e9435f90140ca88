"""HTTP transport served by the Streamlit process (``st.App(routes=...)``, Starlette).

A thin layer over ``exporter.services``: it finds out who is asking, calls one service, and
turns the portal's errors into one JSON shape with the matching status code. Downloads are
streamed from disk by Starlette's ``FileResponse`` (Range, If-Range, ETag, 206/416), never
held in memory.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    MalformedRangeHeader,
    RangeNotSatisfiable,
    Response,
)
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from exporter import schemas, services
from exporter.access.accounts import SLUG_RE
from exporter.api import guard, openapi
from exporter.config import Settings, parse_size
from exporter.errors import (
    ConfigError,
    Gone,
    InvalidInput,
    InvalidSelection,
    InvalidState,
    LimitExceeded,
    NotEnoughSpace,
    NotFound,
    NotSignedIn,
    PermissionDenied,
    PortalError,
)
from exporter.records.exports import archive_bytes_estimate, request_problems, text_problem
from exporter.schemas import LEVELS, ExportRequest, ExportView, PrivacyLevel
from exporter.store.models import ExportStatus

MIN_PART_BYTES = 1024 * 1024  # ExportOptions refuses smaller parts
USER_HEADER = "X-Forwarded-User"  # the reverse proxy's; same as .streamlit/config.toml
STATUS = {
    NotSignedIn: 401,
    PermissionDenied: 403,
    NotFound: 404,
    InvalidState: 409,
    Gone: 410,
    LimitExceeded: 413,
    InvalidInput: 422,  # InvalidSelection, InvalidOption, InvalidValue
    # The server lacks room, not the request sense: 507 Insufficient Storage (RFC 4918) says
    # so to clients and monitoring alike; the same request may succeed once space is freed.
    NotEnoughSpace: 507,
}


@cache
def settings() -> Settings:
    return Settings.load()


def identity(request: Request, config: Settings) -> str:
    """The caller's e-mail: a bearer token, else the proxy's header, else the development
    user in development. (Blocking: call it from a thread.)

    Which addresses may send the header is ``exporter.api.guard``'s to check, in front of this.
    """
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return services.token_owner(config, auth[7:].strip())
    users = request.headers.getlist(USER_HEADER)
    if len(users) > 1 or any("," in user for user in users):
        # Never pick one of two: a client's own header may be among them.
        raise NotSignedIn(
            "X-Forwarded-User came more than once: the proxy must set exactly one "
            "(see docs/production.md)"
        )
    email = users[0].strip().lower() if users else ""
    if email:
        if len(email) > 254 or not email.isprintable():
            raise NotSignedIn("X-Forwarded-User is not an e-mail address: check the proxy")
        return email
    if config.is_development and config.dev_user:
        return config.dev_user
    raise NotSignedIn("Not signed in: open the portal through your institution's sign-in")


class InvalidRequest(PortalError):
    """The request body does not fit: ``fields`` names each bad field and why."""

    def __init__(self, message: str, fields: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.fields = fields or {}


class RequestTooLarge(InvalidRequest):
    """The request body is over ``MAX_REQUEST_BODY`` (HTTP 413)."""


def error_response(exc: PortalError) -> JSONResponse:
    """Every portal error as ``{"error": {"type", "message"[, "fields"]}}`` with its code."""
    if isinstance(exc, InvalidRequest):
        body: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
        if exc.fields:
            body["fields"] = exc.fields
        return JSONResponse(
            {"error": body}, status_code=413 if isinstance(exc, RequestTooLarge) else 422
        )
    status = next((code for cls, code in STATUS.items() if isinstance(exc, cls)), 400)
    return JSONResponse(
        {"error": {"type": type(exc).__name__, "message": str(exc)}}, status_code=status
    )


async def download(request: Request) -> Response:
    """``GET /api/<project>/exports/<id>/download/[<part>]``: the archive, resumable.

    Parts are numbered from 1. A HEAD request is answered the same way but not recorded as
    a download; the audit keeps a parsed, bounded form of the Range header.
    """
    config = settings()
    export_id = request.path_params["export_id"]
    wanted = request.headers.get("range")
    try:
        email = await run_in_threadpool(identity, request, config)
        target = await run_in_threadpool(
            services.download_target,
            config,
            email,
            _project(request),
            export_id,
            request.path_params.get("part"),
            wanted,
            False,  # recorded below, once it is clear that bytes are sent
        )
        verdict = _range_verdict(wanted, target.size)
        if verdict == "unsatisfiable":
            message = (
                f"The range {(wanted or '')[:40]!r} starts beyond the file ({target.size} "
                "bytes): ask for bytes=0- or a range within the file"
            )
            return JSONResponse(
                {"error": {"type": "RangeNotSatisfiable", "message": message}},
                status_code=416,
                headers={"Content-Range": f"bytes */{target.size}"},
            )
        if request.method != "HEAD":
            await run_in_threadpool(
                services.record_download, config, email, export_id, target.part, wanted
            )
    except PortalError as exc:
        return error_response(exc)
    response_class = FileResponse if verdict == "range" else _WholeFile
    return response_class(
        target.path,
        media_type="application/zip",
        filename=target.filename,
        headers={"Cache-Control": "private, no-store"},
    )


_RANGE_SPEC = re.compile(r"([0-9]*)-([0-9]*)")


def _range_verdict(header: str | None, size: int) -> str:
    """``range`` (serve it: 206), ``whole`` (no Range, or one to ignore: another unit or
    unreadable, RFC 9110 14.2; 200 with the whole file) or ``unsatisfiable`` (416). Judged
    by Starlette's own parser, so that what is served is what was judged."""
    if header is None:
        return "whole"
    unit, _, specs = header.partition("=")
    pieces = [_RANGE_SPEC.fullmatch(p.strip()) for p in specs.split(",")]
    if unit.strip().lower() != "bytes" or not all(
        m and (m[1] or m[2]) and not (m[1] and m[2] and int(m[2]) < int(m[1])) for m in pieces
    ):
        return "whole"  # not a byte-range-set as RFC 9110 14.1.2 writes it
    try:
        FileResponse._parse_range_header(header, size)
    except MalformedRangeHeader:
        return "whole"
    except RangeNotSatisfiable:
        return "unsatisfiable"
    return "range"


class _WholeFile(FileResponse):
    """The whole file, whatever Range the request carried (one the portal ignores)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in (b"range", b"if-range")]
        await super().__call__({**scope, "headers": headers}, receive, send)


def _project(request: Request) -> str:
    """The project slug of the path; one that no project can have is not found at once
    (and is echoed only in part)."""
    slug = request.path_params["project"]
    if not SLUG_RE.match(slug):
        raise NotFound(f"No project {slug[:64]!r} that you can access")
    return str(slug)


# --- JSON endpoints ------------------------------------------------------------------

MAX_OFFSET = 2**31 - 1  # beyond any list; bigger numbers overflow the databases' integers
_LIST_FIELDS = ("folders", "patients", "tags", "modalities", "kinds")
_BODY_FIELDS = {*_LIST_FIELDS, "tag_mode", "not_exported", "name", "notes", "options", "study"}


def _study(body: dict[str, Any], bad: dict[str, str]) -> schemas.StudyFilter:
    """The body's ``study`` filter (an object), or a problem under ``bad["study"]``."""
    value = body.get("study")
    if value is None:
        return schemas.StudyFilter()
    if not isinstance(value, dict):
        bad["study"] = "must be an object: date_from, date_to, " + ", ".join(
            schemas.STUDY_TEXT_FIELDS
        )
        return schemas.StudyFilter()
    try:
        return schemas.StudyFilter.parse(value)
    except InvalidSelection as exc:
        bad["study"] = str(exc)
        return schemas.StudyFilter()


# The on/off options: every boolean a request has.
_FLAG_OPTIONS = tuple(f.name for f in dataclasses.fields(ExportRequest) if f.type == "bool")
_OPTION_FIELDS = {"compression", "part_size", "privacy", *_FLAG_OPTIONS}
_STATUSES = tuple(status.value for status in ExportStatus)


# A JSON string, skipped whole: possessive, so an unterminated one costs one scan, not one per
# quote after it.
_JSON_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+(?:"|\Z)', re.DOTALL)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_ONE_KIND = bytes.maketrans(b"{}", b"[]")  # depth is the same whichever kind a level is


def nesting_over(data: bytes, limit: int) -> bool:
    """Whether lists and objects in the JSON text ``data`` nest deeper than ``limit`` (or
    their brackets do not pair up), told before parsing it: strings are cut out, then each
    round removes the empty pairs, which is one level of every part of the tree. All of it
    is C-speed scans of the body, where ``json.loads`` recurses once per level in C."""
    brackets = _JSON_STRING.sub(b"", data).translate(_ONE_KIND, _NOT_BRACKET)
    for _ in range(limit):
        if not brackets:
            return False
        peeled = brackets.replace(b"[]", b"")
        if len(peeled) == len(brackets):
            return True  # nothing pairs up: not JSON
        brackets = peeled
    return bool(brackets)


async def _body(request: Request, config: Settings) -> dict[str, Any]:
    """The request's JSON object: at most ``MAX_REQUEST_BODY`` bytes, counted as they arrive
    (a missing or wrong Content-Length, or a chunked body, changes nothing), UTF-8, nested
    at most ``MAX_NESTING`` deep. Anything else is a 413 or 422 saying which limit."""
    limit = config.max_body_bytes
    too_large = RequestTooLarge(
        f"The body is larger than {limit} bytes (MAX_REQUEST_BODY): select by folder or tag "
        "instead of listing every patient, or split the request",
        {"body": f"at most {limit} bytes"},
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and len(declared) < 20 and int(declared) > limit:
        raise too_large  # said so up front: not read at all
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    data = b"".join(chunks)
    if nesting_over(data, config.max_nesting):
        raise InvalidRequest(
            f"The body is not JSON, or nests lists and objects deeper than {config.max_nesting} "
            "levels (MAX_NESTING): send one JSON object of lists and options",
            {"body": f"nested at most {config.max_nesting} levels"},
        )
    try:
        body = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidRequest(
            "The body is not UTF-8: send JSON encoded as UTF-8", {"body": "not UTF-8"}
        ) from None
    except json.JSONDecodeError as exc:
        raise InvalidRequest(
            f"The body is not JSON ({exc.msg} at character {exc.pos}): send a JSON object",
            {"body": "not JSON"},
        ) from None
    except (ValueError, RecursionError):  # a number of over 4,300 digits; a deep nest
        raise InvalidRequest(
            "The body is not JSON that the portal reads: send a JSON object",
            {"body": "not JSON"},
        ) from None
    if not isinstance(body, dict):
        raise InvalidRequest("The body must be a JSON object", {"body": "must be an object"})
    return body


def _shown(key: Any) -> str:
    """A field name as an error may echo it: short, and text that can be encoded."""
    text = str(key)
    if len(text) > 64 or text_problem(text) is not None:
        return ascii(text[:64])
    return text


def _text_problems(body: dict[str, Any]) -> dict[str, str]:
    """Every field holding a string (as a key, a value or a list entry) that cannot be
    stored as text: a lone surrogate, a control character (notes may keep line breaks)."""
    bad: dict[str, str] = {}
    for key, value in body.items():
        field = _shown(key)
        why = text_problem(str(key))
        if why is not None:
            bad[field] = f"the field name {why}"
            continue
        if isinstance(value, dict):
            for option, choice in value.items():
                why = text_problem(str(option))
                if why is None and isinstance(choice, str):
                    why = text_problem(choice)
                if why is not None:
                    bad[f"{field}.{_shown(option)}"] = why
        entries = value if isinstance(value, list) else [value]
        for n, entry in enumerate(entries):
            if isinstance(entry, str):
                why = text_problem(entry, multiline=key == "notes")
                if why is not None:
                    bad[field] = f"entry {n + 1} {why}" if isinstance(value, list) else why
                    break
    return bad


def export_request(body: dict[str, Any], config: Settings) -> ExportRequest:
    """An ExportRequest from a JSON body, naming every field that does not fit (its type,
    its text, or a limit: ``MAX_LIST_ITEMS``, ``MAX_NOTES_LENGTH``, ``MAX_NAME_LENGTH``)."""
    bad = _text_problems(body)
    if bad:  # nothing below may echo, compare or store such a string
        raise InvalidRequest("Some fields hold text that cannot be stored: see 'fields'", bad)
    for key in list(body.keys() - _BODY_FIELDS)[:20]:
        bad[_shown(key)] = "unknown field"
    for key in _LIST_FIELDS:
        value = body.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            bad[key] = "must be a list of strings"
        elif len(value) > config.max_list_items:
            bad[key] = (
                f"has {len(value)} entries, more than {config.max_list_items} (MAX_LIST_ITEMS): "
                "select by folder or tag instead"
            )
    for key in ("tag_mode", "name", "notes"):
        if key in body and not isinstance(body[key], str):
            bad[key] = "must be a string"
    if "not_exported" in body and not isinstance(body["not_exported"], bool):
        bad["not_exported"] = "must be true or false"
    study = _study(body, bad)
    options = body.get("options", {})
    if not isinstance(options, dict):
        bad["options"] = "must be an object"
        options = {}
    for key in list(options.keys() - _OPTION_FIELDS)[:20]:
        bad[f"options.{_shown(key)}"] = "unknown option"
    for key in _FLAG_OPTIONS:
        if key in options and not isinstance(options[key], bool):
            bad[f"options.{key}"] = "must be true or false"
    if "compression" in options and options["compression"] not in ("store", "fast", "small"):
        bad["options.compression"] = "must be store, fast or small"
    if "privacy" in options and options["privacy"] not in LEVELS:
        bad["options.privacy"] = f"must be {', '.join(LEVELS)}"
    part_size = options.get("part_size")
    if part_size is not None:
        why = "must be a size in bytes or like '4GiB'"
        try:
            if isinstance(part_size, bool) or not isinstance(part_size, int | float | str):
                raise ConfigError(why)
            if isinstance(part_size, float) and not part_size.is_integer():
                raise ConfigError(f"{why}: {part_size} is not a whole number of bytes")
            part_size = parse_size(str(part_size))
            if 0 < part_size < MIN_PART_BYTES:
                raise ConfigError(
                    f"{why}: at least 1 MiB ({MIN_PART_BYTES} bytes), or 0 for one part"
                )
        except ConfigError as exc:  # parse_size raises nothing else
            bad["options.part_size"] = f"{why}: {exc}" if str(exc) != why else why
            part_size = None
    if bad:
        raise InvalidRequest("Some fields do not fit: see 'fields'", bad)
    try:
        selection = schemas.parse_selection(
            body.get("folders"),
            body.get("patients"),
            body.get("tags"),
            body.get("tag_mode", "any"),
            body.get("modalities"),
            body.get("kinds"),
            bool(body.get("not_exported", False)),
            study=study,
        )
    except InvalidSelection as exc:
        raise InvalidRequest(str(exc), {"tag_mode": str(exc)}) from None
    request = ExportRequest(
        selection=selection,
        name=body.get("name", ""),
        notes=body.get("notes", ""),
        compression=options.get("compression", "fast"),
        part_size=part_size or None,
        privacy=options.get("privacy", PrivacyLevel.PSEUDONYMISED.value),
        **{key: options[key] for key in _FLAG_OPTIONS if key in options},  # else the defaults
    )
    limits = request_problems(
        request, config.max_list_items, config.max_notes_length, config.max_name_length
    )
    if limits:
        raise InvalidRequest("Some fields are over the portal's limits: see 'fields'", limits)
    return request


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


async def _call_with_body(request: Request, work: Any, parse: Any = None) -> Response:
    """Parse the body (into an ExportRequest, or with ``parse(body, settings)``), then
    ``work(settings, email, project, body)``."""
    config = settings()
    try:
        # Who is asking first: an anonymous caller gets 401 without the body being read.
        email = await run_in_threadpool(identity, request, config)
        project = _project(request)
        body = (parse or export_request)(await _body(request, config), config)
        return await run_in_threadpool(work, config, email, project, body)
    except PortalError as exc:
        return error_response(exc)


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
                "refusal": check.refusal.message if check.refusal else None,
                "refusal_reason": check.refusal.reason.value if check.refusal else None,
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


def _whole_number(
    request: Request, name: str, default: int, low: int, high: int, bad: dict[str, str]
) -> int:
    """The query parameter ``name`` as a number from ``low`` to ``high``; else ``default``,
    with why in ``bad``. ASCII digits only: ``int()`` also takes other scripts' digits, "_"
    and thousands of digits."""
    text = request.query_params.get(name, str(default)).strip()
    if text.isascii() and text.isdigit() and len(text) <= 10 and low <= int(text) <= high:
        return int(text)
    bad[name] = f"must be a whole number from {low} to {high}"
    return default


async def list_exports(request: Request) -> Response:
    """``GET /api/<project>/exports/?status=&limit=&offset=``, newest first."""
    try:
        project = _project(request)
    except PortalError as exc:
        return error_response(exc)
    bad: dict[str, str] = {}
    limit = _whole_number(request, "limit", 50, 1, 500, bad)
    offset = _whole_number(request, "offset", 0, 0, MAX_OFFSET, bad)
    status = request.query_params.get("status") or None
    if status is not None and status not in _STATUSES:
        bad["status"] = f"must be one of {', '.join(_STATUSES)}"
    if bad:
        return error_response(
            InvalidRequest(
                f"Some parameters do not fit (limit 1 to 500, offset 0 to {MAX_OFFSET}, status "
                "an export status): see 'fields'",
                bad,
            )
        )

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
        try:
            project = _project(request)
        except PortalError as exc:
            return error_response(exc)
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


# --- releases (data managers) ------------------------------------------------------

_RELEASE_FIELDS = {
    *_LIST_FIELDS,
    "tag_mode",
    "not_released",
    "destination",
    "archive",
    "name",
    "notes",
    "options",
    "study",
}
_RELEASE_FLAGS = ("shift_dates", "clean_descriptors", "skip_changed", "move_out")


def release_request(body: dict[str, Any], config: Settings) -> schemas.ReleaseRequest:
    """A ReleaseRequest from a JSON body, naming every field that does not fit."""
    bad = _text_problems(body)
    if bad:
        raise InvalidRequest("Some fields hold text that cannot be stored: see 'fields'", bad)
    for key in list(body.keys() - _RELEASE_FIELDS)[:20]:
        bad[_shown(key)] = "unknown field"
    for key in _LIST_FIELDS:
        value = body.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            bad[key] = "must be a list of strings"
        elif len(value) > config.max_list_items:
            bad[key] = f"has more than {config.max_list_items} entries (MAX_LIST_ITEMS)"
    destination = body.get("destination")
    if not isinstance(destination, str) or not SLUG_RE.match(destination):
        bad["destination"] = "must be the slug of a project you manage"
    archive = body.get("archive")
    if archive is not None and (not isinstance(archive, str) or not SLUG_RE.match(archive)):
        bad["archive"] = "must be null or the slug of a project you manage"
    for key, limit in (
        ("tag_mode", 8),
        ("name", config.max_name_length),
        ("notes", config.max_notes_length),
    ):
        if key in body and not isinstance(body[key], str):
            bad[key] = "must be a string"
        elif len(body.get(key, "")) > limit:
            bad[key] = f"is longer than {limit} characters: shorten it"
    if "not_released" in body and not isinstance(body["not_released"], bool):
        bad["not_released"] = "must be true or false"
    study = _study(body, bad)
    options = body.get("options", {})
    if not isinstance(options, dict):
        bad["options"] = "must be an object"
        options = {}
    for key in list(options.keys() - {"privacy", *_RELEASE_FLAGS})[:20]:
        bad[f"options.{_shown(key)}"] = "unknown option"
    for key in _RELEASE_FLAGS:
        if key in options and not isinstance(options[key], bool):
            bad[f"options.{key}"] = "must be true or false"
    if "privacy" in options and options["privacy"] not in schemas.RELEASE_LEVELS:
        bad["options.privacy"] = f"must be {' or '.join(schemas.RELEASE_LEVELS)}"
    if bad:
        raise InvalidRequest("Some fields do not fit: see 'fields'", bad)
    try:
        selection = schemas.parse_selection(
            body.get("folders"),
            body.get("patients"),
            body.get("tags"),
            body.get("tag_mode", "any"),
            body.get("modalities"),
            body.get("kinds"),
            not_released_to=str(destination) if body.get("not_released") else "",
            study=study,
        )
    except InvalidSelection as exc:
        raise InvalidRequest(str(exc), {"tag_mode": str(exc)}) from None
    return schemas.ReleaseRequest(
        selection,
        destination=str(destination),
        archive=archive,
        name=body.get("name", ""),
        notes=body.get("notes", ""),
        privacy=options.get("privacy", PrivacyLevel.PSEUDONYMISED.value),
        **{key: options[key] for key in _RELEASE_FLAGS if key in options},
    )


def release_json(view: schemas.ReleaseView, base: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(view), default=str))
    url = f"{base}/api/{view.project}/releases/{view.id}/"
    data["url"] = url
    data["progress"] = round(view.progress, 4)
    data["log"] = url + "log/"
    data["changes"] = url + "changes/"
    return data


async def create_release(request: Request) -> Response:
    """``POST /api/<project>/releases/create/``: 202 with the release's id and URL."""

    def work(config: Settings, email: str, project: str, body: schemas.ReleaseRequest) -> Response:
        view = services.create_release(config, email, project, body)
        return JSONResponse(release_json(view, _base(request)), status_code=202)

    return await _call_with_body(request, work, release_request)


async def list_releases(request: Request) -> Response:
    """``GET /api/<project>/releases/?limit=``: releases out of the project, newest first."""
    try:
        project = _project(request)
    except PortalError as exc:
        return error_response(exc)
    bad: dict[str, str] = {}
    limit = _whole_number(request, "limit", 50, 1, 500, bad)
    if bad:
        return error_response(InvalidRequest("limit must be 1 to 500: see 'fields'", bad))

    def work(config: Settings, email: str) -> Response:
        views = services.list_releases(config, email, project, limit)
        return JSONResponse({"items": [release_json(v, _base(request)) for v in views]})

    return await _call(request, work)


def _release_action(action: Any = None, csv_name: str | None = None) -> Any:
    async def endpoint(request: Request) -> Response:
        try:
            project = _project(request)
        except PortalError as exc:
            return error_response(exc)
        release_id = request.path_params["release_id"]

        def work(config: Settings, email: str) -> Response:
            view = services.get_release(config, email, release_id)
            if view.project != project:
                raise NotFound(f"No release {release_id[:40]!r} that you can see")
            if csv_name is not None:
                fetch = (
                    services.release_log
                    if csv_name == "release_log.csv"
                    else (services.release_changes)
                )
                return Response(
                    fetch(config, email, release_id),
                    media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{csv_name}"'},
                )
            if action is not None:
                view = action(config, email, release_id)
            return JSONResponse(release_json(view, _base(request)))

        return await _call(request, work)

    return endpoint


async def patient_links(request: Request) -> Response:
    """``GET /api/<project>/releases/links/``: the source's patients and the destination
    patients they became (data managers of the source only)."""
    try:
        project = _project(request)
    except PortalError as exc:
        return error_response(exc)

    def work(config: Settings, email: str) -> Response:
        rows = services.patient_links(config, email, project)
        return JSONResponse({"items": [dataclasses.asdict(r) for r in rows]})

    return await _call(request, work)


async def file_history(request: Request) -> Response:
    """``GET /api/<project>/files/history/?path=``: the versions releases wrote of a file."""
    config = settings()
    try:
        email = await run_in_threadpool(identity, request, config)
        project = _project(request)
        bad: dict[str, str] = {}
        path = _field_text(dict(request.query_params), "path", bad, 2048, required=True)
        _refuse_fields(bad)
        versions = await run_in_threadpool(services.file_history, config, email, project, str(path))
        data = json.loads(json.dumps([dataclasses.asdict(v) for v in versions], default=str))
        return JSONResponse({"versions": data})
    except PortalError as exc:
        return error_response(exc)


# Swagger UI 5 (4.x cannot read OpenAPI 3.1), its static files from the swagger-ui-py wheel;
# found without importing the package (its import wires up web frameworks).
_SPEC = importlib.util.find_spec("swagger_ui")
if _SPEC is None or not _SPEC.submodule_search_locations:  # pragma: no cover - install
    raise ImportError("Swagger UI is missing: pip install -r requirements.txt")
SWAGGER_UI = str(Path(next(iter(_SPEC.submodule_search_locations))) / "static")
DOCS_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Export Portal API</title>
<link rel="stylesheet" href="/api/docs/static/swagger-ui.css"></head>
<body><div id="ui"></div>
<script src="/api/docs/static/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/api/openapi.json", dom_id: "#ui", validatorUrl: null});</script>
</body></html>"""


# --- curation (data managers) ------------------------------------------------------

MAX_CURATION_FIELD = 64  # a keyword (the longest DICOM keyword has 64 characters) or a tag
MAX_CURATION_VALUE = 10_240  # LT's limit; longer values are refused by the VR check anyway
MAX_CURATION_ID = 2**31 - 1


def edit_json(edit: schemas.CuratedValue) -> dict[str, Any]:
    data = dataclasses.asdict(edit)
    data["at"] = edit.at.isoformat()
    return data


def _field_text(
    body: dict[str, Any],
    key: str,
    bad: dict[str, str],
    limit: int,
    *,
    required: bool,
    nullable: bool = False,
    multiline: bool = False,
) -> str | None:
    value = body.get(key)
    if value is None:
        if key in body and not nullable:
            bad[key] = "must be text"
        elif key not in body and required:
            bad[key] = "is required"
        return None
    if not isinstance(value, str):
        bad[key] = "must be text" + (" or null" if nullable else "")
        return None
    problem = text_problem(value, multiline=multiline)
    if problem is not None:
        bad[key] = problem
    elif len(value) > limit:
        bad[key] = f"is {len(value)} characters, more than {limit}"
    return value


def _field_whole(value: Any, key: str, bad: dict[str, str]) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CURATION_ID:
        bad[key] = f"must be a whole number from 1 to {MAX_CURATION_ID}"
        return None
    return value


def _only_fields(body: dict[str, Any], allowed: set[str], bad: dict[str, str]) -> None:
    for key in body:
        if key not in allowed:
            shown = str(key)[:64] if text_problem(str(key)) is None else "(a key that is not text)"
            bad[shown] = "unknown field"


def _refuse_fields(bad: dict[str, str]) -> None:
    if bad:
        raise InvalidRequest("Some fields do not fit: see 'fields'", bad)


def parse_edit(
    body: dict[str, Any], config: Settings
) -> tuple[list[schemas.Target], str, str | None]:
    """``{"patients": [...], "series": ..., "file_id": ..., "field": ..., "value": ...}`` as
    the targets, the field and the value (None: clear)."""
    bad: dict[str, str] = {}
    _only_fields(body, {"patients", "series", "file_id", "field", "value"}, bad)
    patients = body.get("patients")
    if (
        not isinstance(patients, list)
        or not patients
        or not all(isinstance(p, str) for p in patients)
    ):
        bad["patients"] = "must be a list of one or more patient labels"
        patients = []
    elif len(patients) > config.max_list_items:
        bad["patients"] = f"has {len(patients)} entries, more than {config.max_list_items}"
    else:
        for number, label in enumerate(patients, start=1):
            problem = text_problem(label)
            if problem is not None or len(label) > 1024:
                bad["patients"] = f"entry {number} {problem or 'is longer than 1024 characters'}"
                break
    series = _field_text(body, "series", bad, 1024, required=False, nullable=True)
    file_id = _field_whole(body.get("file_id"), "file_id", bad)
    field = _field_text(body, "field", bad, MAX_CURATION_FIELD, required=True)
    if "value" not in body:
        bad["value"] = "is required (null clears the curation)"
    value = _field_text(
        body, "value", bad, MAX_CURATION_VALUE, required=False, nullable=True, multiline=True
    )
    _refuse_fields(bad)
    return schemas.targets(list(patients), series, file_id), str(field), value


def parse_rows(body: dict[str, Any]) -> list[schemas.CurationRow]:
    """``{"rows": [{"patient", "series", "field", "value"}, ...]}`` as import rows."""
    bad: dict[str, str] = {}
    _only_fields(body, {"rows"}, bad)
    rows = body.get("rows")
    if not isinstance(rows, list) or not rows:
        bad["rows"] = "must be a list of one or more rows"
        rows = []
    elif len(rows) > schemas.MAX_CURATION_ROWS:
        bad["rows"] = f"has {len(rows)} rows, more than {schemas.MAX_CURATION_ROWS}"
        rows = []
    found: list[schemas.CurationRow] = []
    for number, row in enumerate(rows, start=1):
        where: dict[str, str] = {}
        if not isinstance(row, dict):
            bad[f"rows[{number}]"] = "must be an object"
            continue
        _only_fields(row, {"patient", "series", "field", "value"}, where)
        patient = _field_text(row, "patient", where, 1024, required=True)
        series = _field_text(row, "series", where, 1024, required=False, nullable=True)
        field = _field_text(row, "field", where, MAX_CURATION_FIELD, required=True)
        value = _field_text(row, "value", where, MAX_CURATION_VALUE, required=True, multiline=True)
        for key, why in where.items():
            bad[f"rows[{number}].{key}"] = why
        if not where and patient and field and value is not None:
            found.append(schemas.CurationRow(number, patient, series or "", field, value))
        elif not where:
            bad[f"rows[{number}]"] = "needs a patient, a field and a value"
        if len(bad) >= 20:
            break
    _refuse_fields(bad)
    return found


def parse_restore(body: dict[str, Any], config: Settings) -> int:
    """``{"value_id": N}``: the id of an edit in the history."""
    bad: dict[str, str] = {}
    _only_fields(body, {"value_id"}, bad)
    value_id = _field_whole(body.get("value_id"), "value_id", bad)
    if value_id is None:
        bad.setdefault("value_id", "is required: the id of an edit in the history")
    _refuse_fields(bad)
    return int(value_id or 0)


async def curation_set(request: Request) -> Response:
    """``POST /api/<project>/curation/``: set (or, with ``value`` null, clear) a field."""

    def work(config: Settings, email: str, project: str, edit: Any) -> Response:
        targets, field, value = edit
        done = services.curate(config, email, project, targets, field, value)
        return JSONResponse({"edits": [edit_json(d) for d in done]})

    return await _call_with_body(request, work, parse_edit)


async def curation_import(request: Request) -> Response:
    """``POST /api/<project>/curation/import/``: many rows, all or nothing."""

    def work(config: Settings, email: str, project: str, rows: Any) -> Response:
        done = services.import_curation(config, email, project, rows)
        return JSONResponse({"edits": [edit_json(d) for d in done]})

    return await _call_with_body(request, work, lambda body, _: parse_rows(body))


async def curation_restore(request: Request) -> Response:
    """``POST /api/<project>/curation/restore/``: ``{"value_id": N}`` back in force."""

    def work(config: Settings, email: str, project: str, value_id: int) -> Response:
        done = services.restore_curation(config, email, project, value_id)
        return JSONResponse({"edits": [edit_json(done)]})

    return await _call_with_body(request, work, parse_restore)


async def curation_history(request: Request) -> Response:
    """``GET /api/<project>/curation/history/?patient=LABEL``: a patient's edits, newest first."""
    config = settings()
    try:
        email = await run_in_threadpool(identity, request, config)
        project = _project(request)
        bad: dict[str, str] = {}
        patient = _field_text(dict(request.query_params), "patient", bad, 1024, required=True)
        _refuse_fields(bad)
        done = await run_in_threadpool(
            services.curation_history, config, email, project, str(patient)
        )
        return JSONResponse({"edits": [edit_json(d) for d in done]})
    except PortalError as exc:
        return error_response(exc)


async def openapi_json(request: Request) -> Response:
    """``GET /api/openapi.json``: the API description."""
    return JSONResponse(openapi.document())


DOCS_FILES = frozenset({"swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png"})


async def docs_static(request: Request) -> Response:
    """The few Swagger UI files the documentation page loads (the wheel holds more: an
    editor, an OAuth redirect page, a petstore initializer; none of them is served)."""
    name = request.path_params["name"]
    if name not in DOCS_FILES:
        return error_response(NotFound("No such file: see /api/docs"))
    return FileResponse(f"{SWAGGER_UI}/{name}")


async def docs(request: Request) -> Response:
    """``GET /api/docs``: interactive documentation (Swagger UI, served from a wheel)."""
    return HTMLResponse(DOCS_PAGE)


_ALL_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


async def no_route(request: Request) -> Response:
    """Any other ``/api/...`` address: 404 in the error shape, pointing at the documentation."""
    return error_response(NotFound("No such API address: see /api/docs for the routes"))


def routes() -> list[BaseRoute]:
    """The portal's HTTP routes (under /api, outside Streamlit's reserved prefixes)."""
    exports_base = "/api/{project:str}/exports"
    one = exports_base + "/{export_id:str}"
    releases = "/api/{project:str}/releases"
    release = releases + "/{release_id:str}"
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
        Route("/api/{project:str}/curation/", curation_set, methods=["POST"]),
        Route("/api/{project:str}/curation/import/", curation_import, methods=["POST"]),
        Route("/api/{project:str}/curation/restore/", curation_restore, methods=["POST"]),
        Route("/api/{project:str}/curation/history/", curation_history, methods=["GET"]),
        Route(releases + "/create/", create_release, methods=["POST"]),
        Route(releases + "/links/", patient_links, methods=["GET"]),
        Route(releases + "/", list_releases, methods=["GET"]),
        Route(release + "/", _release_action(), methods=["GET"]),
        Route(release + "/cancel/", _release_action(services.cancel_release), methods=["POST"]),
        Route(release + "/retry/", _release_action(services.retry_release), methods=["POST"]),
        Route(release + "/log/", _release_action(csv_name="release_log.csv"), methods=["GET"]),
        Route(
            release + "/changes/", _release_action(csv_name="dicom_changes.csv"), methods=["GET"]
        ),
        Route("/api/{project:str}/files/history/", file_history, methods=["GET"]),
        Route("/api/openapi.json", openapi_json, methods=["GET"]),
        Route("/api/docs", docs, methods=["GET"]),
        Route("/api/docs/static/{name}", docs_static, methods=["GET", "HEAD"]),
        # Last: anything else under /api (a bad part number, a typo) in the error shape.
        Route("/api/{rest:path}", no_route, methods=list(_ALL_METHODS)),
    ]


def application() -> Starlette:
    """The API behind the portal's middleware, as ``app.py`` serves it, without the pages:
    for in-process tests. Raises ConfigError where ``app.py`` would refuse to start."""
    return Starlette(routes=routes(), middleware=guard.middleware(settings()))
