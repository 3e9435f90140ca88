"""Hostile input through the HTTP API (issue 14): every case is a 4xx in the error shape that
names the field or limit, and nothing of it is written to the database. Then duplicate
suppression under 50 identical concurrent creates, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from datetime import timedelta

import httpx2
import pytest
from redis import Redis
from rq import SimpleWorker
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from starlette.testclient import TestClient

from exporter import schemas, services
from exporter.api import routes as api
from exporter.archive.layout import sanitize_component, unsafe_reason
from exporter.config import Settings
from exporter.errors import InvalidInput
from exporter.jobs.queue import export_queue
from exporter.records import exports
from exporter.schemas import ExportRequest
from exporter.store import db
from exporter.store.models import AuditEvent, DatasetExport
from tests.conftest import SIGN_IN_PROXY

ME = "researcher@demo.example"
BODY = {"folders": ["/"], "modalities": ["ios", "cbct"], "name": "hostile"}
CREATE = "/api/demo/exports/create/"


@pytest.fixture
def client(api_portal) -> tuple[TestClient, Settings, dict[str, str]]:  # type: ignore[no-untyped-def]
    http, settings = api_portal()
    secret, _ = services.create_token(settings, ME, "hostile")
    return http, settings, {"Authorization": f"Bearer {secret}"}


def rows(settings: Settings) -> tuple[int, int]:
    """How many exports and audit events the database holds."""
    with db.session_scope(settings) as session:
        return (
            session.scalar(select(func.count()).select_from(DatasetExport)) or 0,
            session.scalar(select(func.count()).select_from(AuditEvent)) or 0,
        )


def work(settings: Settings) -> None:
    connection = Redis.from_url(settings.redis_url)
    SimpleWorker([export_queue(settings, connection)], connection=connection).work(burst=True)


def raw(body: str) -> bytes:
    """JSON text as sent: ``\\ud800`` stays an escape that only a JSON parser turns into a
    lone surrogate (a client cannot encode one)."""
    return body.encode()


# (body bytes, status, error type, field named in "fields")
HOSTILE = {
    "20 MB note": (json.dumps({**BODY, "notes": "x" * 20_000_000}).encode(), 413,
                   "RequestTooLarge", "body"),
    "notes over the limit": (json.dumps({**BODY, "notes": "x" * 4001}).encode(), 422,
                             "InvalidRequest", "notes"),
    "name over the limit": (json.dumps({**BODY, "name": "n" * 101}).encode(), 422,
                            "InvalidRequest", "name"),
    "50,001 patients": (json.dumps({**BODY, "patients": [f"P{i}" for i in range(50_001)]})
                        .encode(), 422, "InvalidRequest", "patients"),
    "a 2,000-character label": (json.dumps({**BODY, "patients": ["P" * 2000]}).encode(), 422,
                                "InvalidRequest", "patients"),
    "surrogate in folders": (raw('{"folders": ["\\ud800"], "modalities": ["ios"]}'), 422,
                             "InvalidRequest", "folders"),
    "surrogate in patients": (raw('{"patients": ["P1", "\\udfff"], "modalities": ["ios"]}'),
                              422, "InvalidRequest", "patients"),
    "surrogate in tags": (raw('{"tags": ["\\ud800"], "modalities": ["ios"]}'), 422,
                          "InvalidRequest", "tags"),
    "surrogate in modalities": (raw('{"folders": ["/"], "modalities": ["\\ud800"]}'), 422,
                                "InvalidRequest", "modalities"),
    "surrogate in kinds": (raw('{"folders": ["/"], "modalities": ["ios"], "kinds": ["\\ud800"]}'),
                           422, "InvalidRequest", "kinds"),
    "surrogate in name": (raw('{"folders": ["/"], "modalities": ["ios"], "name": "a\\ud800"}'),
                          422, "InvalidRequest", "name"),
    "surrogate in notes": (raw('{"folders": ["/"], "modalities": ["ios"], "notes": "\\ud800"}'),
                           422, "InvalidRequest", "notes"),
    "surrogate in tag_mode": (raw('{"folders": ["/"], "modalities": ["ios"], '
                                  '"tag_mode": "\\ud800"}'), 422, "InvalidRequest", "tag_mode"),
    "surrogate in an option": (raw('{"folders": ["/"], "modalities": ["ios"], '
                                   '"options": {"privacy": "\\ud800"}}'), 422, "InvalidRequest",
                               "options.privacy"),
    "NUL in patients": (raw('{"patients": ["P\\u0000"], "modalities": ["ios"]}'), 422,
                        "InvalidRequest", "patients"),
    "NUL in name": (raw('{"folders": ["/"], "modalities": ["ios"], "name": "a\\u0000b"}'), 422,
                    "InvalidRequest", "name"),
    "escape in notes": (raw('{"folders": ["/"], "modalities": ["ios"], "notes": "\\u001b[2J"}'),
                        422, "InvalidRequest", "notes"),
    "part_size 10**400": (json.dumps({**BODY, "options": {"part_size": 10**400}}).encode(), 422,
                          "InvalidRequest", "options.part_size"),
    "part_size 1e400": (raw('{"folders": ["/"], "modalities": ["ios"], '
                            '"options": {"part_size": 1e400}}'), 422, "InvalidRequest",
                        "options.part_size"),
    "part_size 40 nines": (json.dumps({**BODY, "options": {"part_size": "9" * 40}}).encode(),
                           422, "InvalidRequest", "options.part_size"),
    "part_size a list": (json.dumps({**BODY, "options": {"part_size": [1]}}).encode(), 422,
                         "InvalidRequest", "options.part_size"),
    "nested 100,000 deep": (b"[" * 100_000 + b"]" * 100_000, 422, "InvalidRequest", "body"),
    "nested 100,000 deep, unclosed": (b'{"folders": ' + b"[" * 100_000, 422, "InvalidRequest",
                                      "body"),
    "nested 17 deep in options": (
        json.dumps({**BODY, "options": {"x": [[[[[[[[[[[[[[[[["deep"]]]]]]]]]]]]]]]]]}}).encode(),
        422, "InvalidRequest", "body"),
    "not UTF-8": (b'{"name": "\xff\xfe"}', 422, "InvalidRequest", "body"),
    "a surrogate field name": (raw('{"\\ud800": 1, "folders": ["/"]}'), 422, "InvalidRequest",
                               "'\\ud800'"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_bodies_get_a_4xx_naming_the_field_and_write_nothing(client, case: str) -> None:  # type: ignore[no-untyped-def]
    http, settings, auth = client
    body, status, kind, field = HOSTILE[case]
    before = rows(settings)
    for path in (CREATE, "/api/demo/estimate/", "/api/demo/preview/"):
        answer = http.post(path, content=body, headers={**auth, "Content-Type": "application/json"})
        assert answer.status_code == status, (path, answer.text[:300])
        error = answer.json()["error"]
        assert error["type"] == kind and error["message"], error
        assert field in error["fields"], error
        assert len(answer.content) < 10_000, "an error echoes little of what was sent"
    assert rows(settings) == before, "a refused request left a row behind"


def test_a_body_without_or_with_a_lying_content_length_is_counted_as_it_arrives(client) -> None:  # type: ignore[no-untyped-def]
    http, settings, auth = client
    before = rows(settings)
    note = json.dumps({**BODY, "notes": "x" * 5_000_000}).encode()

    def chunks() -> Iterator[bytes]:  # chunked transfer: no Content-Length at all
        for start in range(0, len(note), 65536):
            yield note[start : start + 65536]

    auth = {**auth, "Content-Type": "application/json"}
    chunked = http.post(CREATE, content=chunks(), headers=auth)
    assert chunked.status_code == 413, chunked.text[:300]
    assert "MAX_REQUEST_BODY" in chunked.json()["error"]["message"]
    declared = http.post(CREATE, content=b"{}", headers={**auth, "Content-Length": "99999999999"})
    assert declared.status_code == 413  # refused on what it says, unread
    assert rows(settings) == before


def test_a_note_at_the_limit_is_stored_whole_with_its_line_breaks(client) -> None:  # type: ignore[no-untyped-def]
    http, settings, auth = client
    notes = ("line\tone\n" * 400)[:4000]
    answer = http.post(CREATE, json={**BODY, "notes": notes}, headers=auth)
    assert answer.status_code == 202, answer.text
    assert services.get_export(settings, ME, answer.json()["id"]).notes == notes.strip()


def test_hostile_paths_and_queries_are_4xx_never_500(client) -> None:  # type: ignore[no-untyped-def]
    http, settings, auth = client
    created = http.post(CREATE, json=BODY, headers=auth).json()
    work(settings)
    before = rows(settings)
    base = f"/api/demo/exports/{created['id']}"
    for path in (
        "/api/de%00mo/exports/",
        "/api/demo%ED%A0%80/exports/",
        "/api/" + "d" * 5000 + "/exports/",
        "/api/demo/exports/ab%00cd/",
        "/api/demo/exports/%ED%A0%80/",
        "/api/demo/exports/" + "f" * 5000 + "/",
        f"/api/de%00mo/exports/{created['id']}/",
        "/api/demo/exports/%00/download/",
        f"{base}/download/0",
        f"{base}/download/00",
        f"{base}/download/2",
        f"{base}/download/99999999999999999999999",
    ):
        answer = http.get(path, headers=auth)
        assert answer.status_code == 404, (path, answer.text[:200])
        assert answer.json()["error"]["type"] == "NotFound"
        assert len(answer.content) < 1000
    assert http.post("/api/demo/exports/%00/cancel/", headers=auth).status_code == 404
    assert http.delete("/api/demo/exports/%00/", headers=auth).status_code == 404
    assert http.post("/api/de%00mo/exports/create/", json=BODY, headers=auth).status_code == 404
    for query, field in (
        ("status=%00", "status"),
        ("status=pending%ED%A0%80", "status"),
        ("status=" + "x" * 5000, "status"),
        ("limit=" + "1" * 5000, "limit"),
        ("limit=%00", "limit"),
        ("offset=-1", "offset"),
        ("offset=%D9%A3", "offset"),
        ("limit=1_0", "limit"),
    ):
        answer = http.get(f"/api/demo/exports/?{query}", headers=auth)
        assert answer.status_code == 422, (query, answer.text[:200])
        assert field in answer.json()["error"]["fields"]
        assert len(answer.content) < 1000
    assert rows(settings) == before


def test_head_is_not_a_download_and_the_audit_keeps_no_raw_range(client) -> None:  # type: ignore[no-untyped-def]
    http, settings, auth = client
    created = http.post(CREATE, json=BODY, headers=auth).json()
    work(settings)
    url = f"/api/demo/exports/{created['id']}/download/"
    head = http.head(url, headers=auth)
    assert head.status_code == 200 and int(head.headers["content-length"]) > 0
    assert head.content == b""
    huge = "bytes=0-9," + ",".join(f"{n}-{n}" for n in range(10, 12_000))  # ~80 KB
    ranged = http.get(url, headers={**auth, "Range": huge})
    assert ranged.status_code in (200, 206, 416)
    junk = http.get(url, headers={**auth, "Range": "x" * 50_000})
    whole = http.get(url, headers=auth).content
    assert junk.status_code == 200 and junk.content == whole  # ignored (RFC 9110 14.2)
    with db.session_scope(settings) as session:
        details = [
            e.detail
            for e in session.scalars(
                select(AuditEvent).where(AuditEvent.action == "download").order_by(AuditEvent.id)
            )
        ]
    assert details == [
        {"part": 1, "range": "bytes=0-9", "ranges": 11_991},
        {"part": 1, "range": "unreadable"},
        {"part": 1},
    ], "HEAD recorded no download; each GET kept a short, parsed range"


@pytest.mark.parametrize(
    "wanted", ["items=0-1", "bytes=5-1", "bytes=", "bytes=a-b", "bytes", "bytes=--3"]
)
def test_a_range_the_portal_cannot_read_is_ignored_and_the_whole_file_sent(
    client, wanted: str
) -> None:  # type: ignore[no-untyped-def]
    http, settings, auth = client
    created = http.post(CREATE, json=BODY, headers=auth).json()
    work(settings)
    url = f"/api/demo/exports/{created['id']}/download/"
    answer = http.get(url, headers={**auth, "Range": wanted})
    assert answer.status_code == 200, answer.text[:200]
    assert answer.content == http.get(url, headers=auth).content


@pytest.mark.parametrize("wanted", ["bytes=999999999999999999999-", "bytes=-0"])
def test_an_unsatisfiable_range_is_416_in_the_error_shape_and_not_a_download(
    client, wanted: str
) -> None:  # type: ignore[no-untyped-def]
    http, settings, auth = client
    created = http.post(CREATE, json=BODY, headers=auth).json()
    work(settings)
    answer = http.get(
        f"/api/demo/exports/{created['id']}/download/", headers={**auth, "Range": wanted}
    )
    assert answer.status_code == 416
    assert answer.json()["error"]["type"] == "RangeNotSatisfiable"
    assert answer.headers["content-range"].startswith("bytes */")
    with db.session_scope(settings) as session:
        downloads = select(func.count()).where(AuditEvent.action == "download")
        assert session.scalar(downloads.select_from(AuditEvent)) == 0


def test_not_enough_space_is_507_in_the_error_shape_and_writes_nothing(api_portal) -> None:  # type: ignore[no-untyped-def]
    http, settings = api_portal(DISK_RESERVE="8000TiB")
    secret, _ = services.create_token(settings, ME, "space")
    before = rows(settings)
    answer = http.post(CREATE, json=BODY, headers={"Authorization": f"Bearer {secret}"})
    assert answer.status_code == 507
    assert answer.json()["error"]["type"] == "NotEnoughSpace"
    assert "Not enough free space at the export root" in answer.json()["error"]["message"]
    assert rows(settings) == before


def test_the_cli_and_pages_get_the_same_limits_from_the_service(client) -> None:  # type: ignore[no-untyped-def]
    _, settings, _ = client
    selection = schemas.parse_selection(folders=["/"], modalities=["ios"])
    before = rows(settings)
    for request, message in (
        (ExportRequest(selection, notes="x" * 4001), "'notes' is 4001 characters, more than 4000"),
        (ExportRequest(selection, name="a\udcff"), "'name' is not valid text"),
        (
            ExportRequest(schemas.parse_selection(patients=["P\x00"], modalities=["ios"])),
            "'patients' entry 1 contains a control character",
        ),
    ):
        with pytest.raises(InvalidInput, match=message):
            services.create_export(settings, ME, "demo", request)
    assert rows(settings) == before


def test_invisible_characters_never_reach_entry_names() -> None:
    """Zero-width and direction characters could make two entries look alike or show a name
    reordered (issue 14): the sanitiser drops them, and the archive check names them."""
    hidden_ones = (
        "\u200b \u200c \u200d \ufeff \u061c \u2060 \u00ad \u202a \u202e \u2066 \u2069 \u200e"
    )
    for hidden in (*hidden_ones.split(), "\u3164", "\ufe0f"):
        raw = f"P{hidden}001{hidden}.dcm"
        assert unsafe_reason(raw) is not None, repr(hidden)
        assert sanitize_component(raw) == "P001.dcm", repr(hidden)
        assert unsafe_reason(sanitize_component(raw)) is None
    assert sanitize_component("\u200b\u200d") == "unnamed"
    # Found by an adversarial run: blanks, lone marks and look-alikes of "/" or reserved names.
    assert sanitize_component("\u2800") == "unnamed"
    assert sanitize_component("\u0301") == "unnamed"
    assert sanitize_component("\u0301P001") == "P001"
    assert sanitize_component("x\uff0fy") == sanitize_component("x\u2215y") == "x_y"
    assert sanitize_component("COM\u00b9") == "_COM1"  # Windows reads COM¹ as COM1
    assert sanitize_component("Müller Jörg ضياء") == "Müller Jörg ضياء"  # letters stay


# --- duplicate suppression --------------------------------------------------------------


def _same(settings: Settings, n: int) -> list[object]:
    """``n`` threads submitting the very same request at once: what each one got back."""
    selection = schemas.parse_selection(folders=["/"], modalities=["ios", "cbct"])
    request = ExportRequest(selection, name="twin", notes="the same")
    start = threading.Barrier(n)
    results: list[object] = [None] * n

    def submit(i: int) -> None:
        start.wait()
        try:
            results[i] = services.create_export(settings, ME, "demo", request).id
        except Exception as exc:  # what that caller would see
            results[i] = exc

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def test_50_identical_concurrent_creates_give_one_export_also_once_it_completed(client) -> None:  # type: ignore[no-untyped-def]
    _, settings, _ = client
    first = _same(settings, 25)
    assert all(isinstance(r, str) for r in first), [r for r in first if not isinstance(r, str)]
    assert len(set(first)) == 1
    work(settings)  # the twin completes (in well under a second, as in the issue)
    assert services.get_export(settings, ME, first[0]).status == "completed"  # type: ignore[arg-type]
    second = _same(settings, 25)
    assert set(second) == set(first), "a just-finished twin absorbs the request"
    with db.session_scope(settings) as session:
        assert session.scalar(select(func.count()).select_from(DatasetExport)) == 1
        creates = select(func.count()).where(AuditEvent.action == "create")
        assert session.scalar(creates.select_from(AuditEvent)) == 1


def test_50_identical_concurrent_api_creates_give_one_export(client) -> None:  # type: ignore[no-untyped-def]
    _, settings, auth = client

    async def burst() -> list[httpx2.Response]:
        transport = httpx2.ASGITransport(app=api.application(), client=SIGN_IN_PROXY)
        async with httpx2.AsyncClient(transport=transport, base_url="http://portal") as http:
            body = {**BODY, "patients": ["P0003", "P0001"], "folders": []}
            same = {**BODY, "patients": ["P0001", "P0003"], "folders": []}  # order selects nothing
            return await asyncio.gather(
                *(http.post(CREATE, json=body if i % 2 else same, headers=auth) for i in range(50))
            )

    answers = asyncio.run(burst())
    assert [a.status_code for a in answers] == [202] * 50, [a.text for a in answers[:3]]
    assert len({a.json()["id"] for a in answers}) == 1
    assert rows(settings)[0] == 1


def test_a_deliberate_re_export_later_or_after_cancel_makes_a_new_one(client) -> None:  # type: ignore[no-untyped-def]
    _, settings, _ = client
    selection = schemas.parse_selection(folders=["/"], modalities=["ios"])
    request = ExportRequest(selection, name="again")
    first = services.create_export(settings, ME, "demo", request)
    assert services.create_export(settings, ME, "demo", request).id == first.id
    with db.session_scope(settings) as session:  # the first was made a minute ago
        session.execute(
            update(DatasetExport)
            .where(DatasetExport.id == first.id)
            .values(created_at=first.created_at - timedelta(seconds=exports.DOUBLE_SUBMIT_SECONDS))
        )
    second = services.create_export(settings, ME, "demo", request)
    assert second.id != first.id
    services.cancel_export(settings, ME, second.id)
    third = services.create_export(settings, ME, "demo", request)
    assert third.id not in (first.id, second.id), "a cancelled twin does not absorb"
    other = services.create_export(
        settings, ME, "demo", ExportRequest(selection, name="again", notes="other notes")
    )
    assert other.id != third.id, "notes are part of the request"


def test_the_database_refuses_a_second_export_with_the_same_request_key(client) -> None:  # type: ignore[no-untyped-def]
    """The guarantee does not rest on the lock: two rows cannot carry one key."""
    _, settings, _ = client
    selection = schemas.parse_selection(folders=["/"], modalities=["ios"])
    view = services.create_export(settings, ME, "demo", ExportRequest(selection))
    with db.session_scope(settings) as session:
        row = session.get(DatasetExport, view.id)
        assert row is not None and row.request_key
        key, project_id, user_id = row.request_key, row.project_id, row.created_by_id
    with pytest.raises(IntegrityError), db.session_scope(settings) as session:
        session.add(
            DatasetExport(
                project_id=project_id, created_by_id=user_id, name="copy", request_key=key
            )
        )
        session.flush()


def test_an_anonymous_caller_is_401_before_its_body_is_read(client) -> None:  # type: ignore[no-untyped-def]
    http, settings, _ = client
    before = rows(settings)
    huge = json.dumps({**BODY, "notes": "x" * 20_000_000}).encode()
    for body in (huge, b"[" * 100_000, raw('{"folders": ["\\ud800"]}')):
        answer = http.post(CREATE, content=body, headers={"Content-Type": "application/json"})
        assert answer.status_code == 401, answer.text[:200]
        assert answer.json()["error"]["type"] == "NotSignedIn"
    assert rows(settings) == before


def test_an_unprintable_identity_header_is_refused(client) -> None:  # type: ignore[no-untyped-def]
    http, settings, _ = client
    before = rows(settings)
    for user in ("researcher@demo.example\x01", "a" * 300 + "@demo.example"):
        answer = http.get("/api/demo/exports/", headers={"X-Forwarded-User": user})
        assert answer.status_code == 401, answer.text[:200]
    assert rows(settings) == before


def test_addresses_no_route_matches_answer_in_the_error_shape(client) -> None:  # type: ignore[no-untyped-def]
    http, _, auth = client
    for method, path in (
        ("GET", "/api/demo/exports/0123/download/-1"),
        ("GET", "/api/nothing-here"),
        ("POST", "/api/demo/exports/x/y/z/"),
        ("DELETE", "/api/"),
    ):
        answer = http.request(method, path, headers=auth)
        assert answer.status_code == 404, (method, path, answer.text[:200])
        assert answer.json()["error"] == {
            "type": "NotFound",
            "message": "No such API address: see /api/docs for the routes",
        }


def test_an_unreachable_database_is_a_503_in_the_error_shape(portal_env) -> None:  # type: ignore[no-untyped-def]
    portal_env(
        PORTAL_ENV="production",
        TRUSTED_PROXIES=SIGN_IN_PROXY[0],
        DATABASE_URL="postgresql+psycopg://portal@127.0.0.1:9/portal?connect_timeout=2",
    )
    http = TestClient(api.application(), client=SIGN_IN_PROXY)
    for answer in (
        http.get("/api/demo/exports/", headers={"X-Forwarded-User": ME}),
        http.post(CREATE, json=BODY, headers={"Authorization": "Bearer not-checked-yet"}),
    ):
        assert answer.status_code == 503, answer.text[:300]
        assert answer.json()["error"]["type"] == "Unavailable"
        assert "try again" in answer.json()["error"]["message"]
        assert answer.headers["retry-after"] == "30"


@pytest.mark.parametrize("part_size", [1, 0.5, "1KiB", 1048575])
def test_a_part_size_under_1_mib_names_the_field(client, part_size: object) -> None:  # type: ignore[no-untyped-def]
    http, settings, auth = client
    before = rows(settings)
    answer = http.post(CREATE, json={**BODY, "options": {"part_size": part_size}}, headers=auth)
    assert answer.status_code == 422
    assert answer.json()["error"]["type"] == "InvalidRequest"
    assert "options.part_size" in answer.json()["error"]["fields"]
    assert rows(settings) == before
