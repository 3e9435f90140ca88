"""The OpenAPI document, the docs page, and a property-based run over the schema."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from redis import Redis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.applications import Starlette
from starlette.testclient import TestClient

from exporter import api, services
from exporter.config import Settings
from exporter.redis_server import PrivateRedis

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
        "DATABASE_URL": f"sqlite:///{tmp_path / 'p.db'}", "DATA_ROOT": str(tmp_path / "data"),
        "EXPORT_ROOT": str(tmp_path / "exports"), "REDIS_URL": redis_server.url,
        "DISK_RESERVE": "1MiB", "PORTAL_ENV": "production", "MAX_EXPORT_SIZE": "5MiB",
    }.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    api.settings.cache_clear()
    config = Settings.load(env_file=tmp_path / "none.env")
    services.migrate(config)
    services.load_demo(config, patients=2, seed=2)
    secret, _ = services.create_token(config, ME, "schema")
    yield Starlette(routes=api.routes()), {"Authorization": f"Bearer {secret}"}
    api.settings.cache_clear()


def test_openapi_document_and_docs_page(app_env: tuple[Starlette, dict[str, str]]) -> None:
    app, _ = app_env
    http = TestClient(app)
    doc = http.get("/api/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    assert set(doc["paths"]) == {
        "/api/{project}/exports/create/", "/api/{project}/estimate/", "/api/{project}/preview/",
        "/api/{project}/exports/",
        "/api/{project}/exports/{export_id}/", "/api/{project}/exports/{export_id}/cancel/",
        "/api/{project}/exports/{export_id}/download/",
    }  # fmt: skip
    page = http.get("/api/docs")
    assert page.status_code == 200 and "SwaggerUIBundle" in page.text
    assert http.get("/api/docs/static/swagger-ui-bundle.js").status_code == 200


def test_no_server_errors_and_answers_match_the_schema(
    app_env: tuple[Starlette, dict[str, str]],
) -> None:
    """Generated requests for every operation (schemathesis over hypothesis): no 500, and
    every answer matches the document."""
    app, auth = app_env
    api_schema = schemathesis.openapi.from_asgi("/api/openapi.json", app)
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) == 8
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        def check(case: schemathesis.Case) -> None:
            if case.path_parameters and "project" in case.path_parameters:
                case.path_parameters["project"] = "demo"  # the member's project: past the 404
            case.call_and_validate(headers=auth, checks=CHECKS)

        check()
