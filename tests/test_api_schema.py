"""The OpenAPI document, the docs page, and a property-based run over the schema."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import Redis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.applications import Starlette
from starlette.testclient import TestClient

from exporter import services
from exporter.api import routes as api
from exporter.config import Settings
from exporter.dev.redis_server import PrivateRedis

ME = "researcher@demo.example"
# What the API promises: never a 500, and every answer (status, type, body) as documented.
# (Not "every schema-valid body is accepted": an empty selection is valid JSON but refused.)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture
def app_env(
    tmp_path: Path, redis_server: PrivateRedis, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Starlette, dict[str, str]]]:
    Redis.from_url(redis_server.url).flushall()
    for key, value in {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'p.db'}",
        "DATA_ROOT": str(tmp_path / "data"),
        "EXPORT_ROOT": str(tmp_path / "exports"),
        "REDIS_URL": redis_server.url,
        "DISK_RESERVE": "1MiB",
        "PORTAL_ENV": "production",
        "MAX_EXPORT_SIZE": "5MiB",
        "TRUSTED_PROXIES": "192.0.2.10",
    }.items():
        monkeypatch.setenv(key, value)
    api.settings.cache_clear()
    config = Settings.load(env_file=tmp_path / "none.env")
    services.migrate(config)
    services.load_demo(config, patients=2, seed=2)
    secret, _ = services.create_token(config, ME, "schema")
    yield api.application(), {"Authorization": f"Bearer {secret}"}
    api.settings.cache_clear()


def test_openapi_document_and_docs_page(app_env: tuple[Starlette, dict[str, str]]) -> None:
    app, _ = app_env
    http = TestClient(app)
    doc = http.get("/api/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    assert set(doc["paths"]) == {
        "/api/{project}/exports/create/",
        "/api/{project}/estimate/",
        "/api/{project}/preview/",
        "/api/{project}/exports/",
        "/api/{project}/exports/{export_id}/",
        "/api/{project}/exports/{export_id}/cancel/",
        "/api/{project}/exports/{export_id}/download/",
        "/api/{project}/exports/{export_id}/download/{part}",
        "/api/{project}/curation/",
        "/api/{project}/curation/import/",
        "/api/{project}/curation/restore/",
        "/api/{project}/curation/history/",
        "/api/{project}/releases/create/",
        "/api/{project}/releases/",
        "/api/{project}/releases/links/",
        "/api/{project}/releases/{release_id}/",
        "/api/{project}/releases/{release_id}/cancel/",
        "/api/{project}/releases/{release_id}/retry/",
        "/api/{project}/releases/{release_id}/log/",
        "/api/{project}/releases/{release_id}/changes/",
        "/api/{project}/files/history/",
    }
    page = http.get("/api/docs")
    assert page.status_code == 200 and "SwaggerUIBundle" in page.text
    assert http.get("/api/docs/static/swagger-ui-bundle.js").status_code == 200
    for other in ("swagger-initializer.js", "oauth2-redirect.html", "swagger-editor.js", "LICENSE"):
        answer = http.get(f"/api/docs/static/{other}")  # the wheel's other files: not served
        assert answer.status_code == 404 and answer.json()["error"]["type"] == "NotFound"


def test_no_server_errors_and_answers_match_the_schema(
    app_env: tuple[Starlette, dict[str, str]],
) -> None:
    """Generated requests for every operation (schemathesis over hypothesis): no 500, and
    every answer matches the document."""
    app, auth = app_env
    api_schema = schemathesis.openapi.from_asgi("/api/openapi.json", app)
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) == 22
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def check(case: schemathesis.Case) -> None:
            if case.path_parameters and "project" in case.path_parameters:
                case.path_parameters["project"] = "demo"  # the member's project: past the 404
            case.call_and_validate(headers=auth, checks=CHECKS)

        check()


# Bodies no schema describes (issue 14): over MAX_REQUEST_BODY, lone surrogates and control
# characters in any string, nesting far beyond MAX_NESTING, sizes beyond any integer column.
_BASE = {"folders": ["/"], "modalities": ["ios"]}
_OVERSIZED = json.dumps({**_BASE, "notes": "x" * (4 * 1024**2)}).encode()
_BAD_CHAR = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF) | st.sampled_from(
    ["\x00", "\x1b", "\x7f", "\x85"]
)
_BAD_TEXT = st.builds(
    lambda a, bad, b: a + bad + b, st.text(max_size=5), _BAD_CHAR, st.text(max_size=5)
)
_TEXT_FIELDS = (
    "folders",
    "patients",
    "tags",
    "modalities",
    "kinds",
    "name",
    "notes",
    "tag_mode",
    "options.compression",
    "options.privacy",
    "options.part_size",
    "a field name",
    "an option name",
)


def _with_bad_text(field: str, text: str) -> dict[str, object]:
    body: dict[str, object] = dict(_BASE)
    if field.startswith("options."):
        body["options"] = {field.removeprefix("options."): text}
    elif field == "a field name":
        body[text] = 1
    elif field == "an option name":
        body["options"] = {text: True}
    elif field in ("name", "notes", "tag_mode"):
        body[field] = text
    else:
        body[field] = ["P0001", text]
    return body


HOSTILE_BODIES = st.one_of(
    st.just(_OVERSIZED),
    st.builds(lambda extra: _OVERSIZED + b" " * extra, st.integers(1, 2**20)),
    st.builds(_with_bad_text, st.sampled_from(_TEXT_FIELDS), _BAD_TEXT),
    st.builds(lambda n: b"[" * n + b"]" * n, st.integers(17, 200_000)),
    st.builds(
        lambda n: b'{"options": ' + b'{"a": ' * n + b"1" + b"}" * n + b"}", st.integers(16, 100_000)
    ),
    st.builds(lambda n: b'{"folders": ' + b"[" * n, st.integers(1, 100_000)),
    st.builds(lambda n: {**_BASE, "options": {"part_size": n}}, st.integers(2**63, 10**400)),
    st.builds(
        lambda n: b'{"modalities": ["ios"], "options": {"part_size": %s}}' % n,
        st.sampled_from([b"1e400", b"-1e400", b"1e308", b"NaN", b"9" * 5000]),
    ),
    st.builds(
        lambda n: {**_BASE, "patients": [f"P{i}" for i in range(n)]}, st.integers(50_001, 60_000)
    ),
    st.builds(lambda n: {**_BASE, "notes": "n" * n}, st.integers(4001, 100_000)),
    st.builds(lambda n: {**_BASE, "name": "n" * n}, st.integers(101, 10_000)),
    st.sampled_from([b"\xff\xfe{}", b'{"name": "\xc3"}', b"\xef\xbb\xbf{}", b"{" * 3, b""]),
)


def test_hostile_bodies_find_no_server_error_and_answers_match_the_schema(
    app_env: tuple[Starlette, dict[str, str]],
) -> None:
    """Every POST operation with the hostile bodies: a 413 or 422 as documented, never 5xx."""
    app, auth = app_env
    api_schema = schemathesis.openapi.from_asgi("/api/openapi.json", app)
    posts = [
        op.ok()
        for op in api_schema.get_all_operations()
        if op.ok().method.upper() == "POST" and op.ok().body
    ]
    assert {op.path for op in posts} == {
        "/api/{project}/exports/create/",
        "/api/{project}/estimate/",
        "/api/{project}/preview/",
        "/api/{project}/curation/",
        "/api/{project}/curation/import/",
        "/api/{project}/curation/restore/",
        "/api/{project}/releases/create/",
    }
    for operation in posts:
        _hostile_run(operation, auth)


def _hostile_run(operation: schemathesis.APIOperation, auth: dict[str, str]) -> None:
    @given(body=HOSTILE_BODIES)
    @settings(
        max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    def check(body: object) -> None:
        case = operation.Case(
            body=body, media_type="application/json", path_parameters={"project": "demo"}
        )
        response = case.call_and_validate(headers=auth, checks=CHECKS)
        assert response.status_code in (413, 422), response.text[:300]

    check()
