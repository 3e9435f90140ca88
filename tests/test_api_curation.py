"""Curation over the HTTP API (issue 16): set, clear, import, restore, history; data managers
only; every bad body a 422 naming the field, and nothing written."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select
from starlette.testclient import TestClient

from exporter import services
from exporter.config import Settings
from exporter.store import db
from exporter.store.models import CuratedHeaderValue

MANAGER = "manager@demo.example"
RESEARCHER = "researcher@demo.example"
BASE = "/api/demo/curation/"


@pytest.fixture
def api(api_portal) -> tuple[TestClient, Settings, dict[str, str], dict[str, str]]:  # type: ignore[no-untyped-def]
    http, settings = api_portal()
    manager, _ = services.create_token(settings, MANAGER, "curation")
    researcher, _ = services.create_token(settings, RESEARCHER, "curation")
    return (
        http,
        settings,
        {"Authorization": f"Bearer {manager}"},
        {"Authorization": f"Bearer {researcher}"},
    )


def edits(settings: Settings) -> int:
    with db.session_scope(settings) as session:
        return int(session.scalar(select(func.count()).select_from(CuratedHeaderValue)) or 0)


def test_a_data_manager_sets_clears_restores_and_reads_the_history(api) -> None:  # type: ignore[no-untyped-def]
    http, _, manager, _ = api
    body = {"patients": ["P0001", "P0002"], "field": "InstitutionName", "value": "Research Site"}
    done = http.post(BASE, json=body, headers=manager)
    assert done.status_code == 200, done.text
    assert [(e["patient"], e["value"]) for e in done.json()["edits"]] == [
        ("P0001", "Research Site"),
        ("P0002", "Research Site"),
    ]
    first = done.json()["edits"][0]["id"]
    cleared = http.post(BASE, json={**body, "patients": ["P0001"], "value": None}, headers=manager)
    assert cleared.status_code == 200 and cleared.json()["edits"][0]["value"] is None
    back = http.post(BASE + "restore/", json={"value_id": first}, headers=manager)
    assert back.status_code == 200 and back.json()["edits"][0]["value"] == "Research Site"
    history = http.get(BASE + "history/", params={"patient": "P0001"}, headers=manager)
    assert history.status_code == 200
    assert [e["value"] for e in history.json()["edits"]] == ["Research Site", None, "Research Site"]


def test_an_import_is_all_or_nothing_and_names_the_wrong_rows(api) -> None:  # type: ignore[no-untyped-def]
    http, settings, manager, _ = api
    rows = [
        {"patient": "P0001", "series": None, "field": "InstitutionName", "value": "Site A"},
        {"patient": "P0002", "field": "StudyDate", "value": "31/01/2024"},
    ]
    before = edits(settings)
    refused = http.post(BASE + "import/", json={"rows": rows}, headers=manager)
    assert refused.status_code == 422, refused.text
    assert (
        "row 2" in refused.json()["error"]["message"]
        or "line 2" in refused.json()["error"]["message"]
    )
    assert edits(settings) == before
    done = http.post(BASE + "import/", json={"rows": rows[:1]}, headers=manager)
    assert done.status_code == 200 and len(done.json()["edits"]) == 1


def test_a_researcher_may_not_curate(api) -> None:  # type: ignore[no-untyped-def]
    http, settings, _, researcher = api
    body = {"patients": ["P0001"], "field": "InstitutionName", "value": "x"}
    answer = http.post(BASE, json=body, headers=researcher)
    assert answer.status_code == 403
    assert (
        http.get(BASE + "history/", params={"patient": "P0001"}, headers=researcher).status_code
        == 403
    )
    assert http.post("/api/other/curation/", json=body, headers=researcher).status_code == 404
    assert edits(settings) == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"field": "StudyDate", "value": "20240101"}, "patients"),
        ({"patients": [], "field": "StudyDate", "value": "20240101"}, "patients"),
        ({"patients": ["P0001"], "value": "20240101"}, "field"),
        ({"patients": ["P0001"], "field": "StudyDate"}, "value"),
        ({"patients": ["P0001"], "field": "StudyDate", "value": 20240101}, "value"),
        ({"patients": ["P\ud800"], "field": "StudyDate", "value": "x"}, "patients"),
        ({"patients": ["P0001"], "field": "Study\x00Date", "value": "x"}, "field"),
        ({"patients": ["P0001"], "field": "StudyDate", "value": "x" * 10_241}, "value"),
        ({"patients": ["P0001"], "field": "StudyDate", "value": "x", "file_id": True}, "file_id"),
        ({"patients": ["P0001"], "field": "StudyDate", "value": "x", "extra": 1}, "extra"),
    ],
)
def test_a_body_that_does_not_fit_names_the_field(api, body: dict, field: str) -> None:  # type: ignore[no-untyped-def, type-arg]
    http, settings, manager, _ = api
    raw = json.dumps(body).encode()  # a lone surrogate, escaped as JSON writes it
    answer = http.post(BASE, content=raw, headers={**manager, "Content-Type": "application/json"})
    assert answer.status_code == 422, answer.text
    assert field in answer.json()["error"]["fields"]
    assert edits(settings) == 0


def test_a_value_dicom_refuses_is_a_422_that_says_why(api) -> None:  # type: ignore[no-untyped-def]
    http, settings, manager, _ = api
    body = {"patients": ["P0001"], "field": "StudyDate", "value": "31/01/2024"}
    answer = http.post(BASE, json=body, headers=manager)
    assert answer.status_code == 422
    assert answer.json()["error"]["type"] == "InvalidValue"
    assert "YYYYMMDD" in answer.json()["error"]["message"]
    assert edits(settings) == 0
