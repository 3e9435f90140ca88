"""The JSON API in process: every endpoint, its errors, bearer tokens."""

from __future__ import annotations

import pytest
from redis import Redis
from rq import SimpleWorker
from starlette.testclient import TestClient

from exporter import services
from exporter.api import routes as api
from exporter.config import Settings
from exporter.jobs.queue import export_queue

ME = "researcher@demo.example"
BODY = {"folders": ["/"], "modalities": ["ios", "cbct"], "name": "api export"}


@pytest.fixture
def client(api_portal) -> tuple[TestClient, Settings, dict[str, str]]:  # type: ignore[no-untyped-def]
    http, settings = api_portal()
    secret, _ = services.create_token(settings, ME, "notebook")
    return http, settings, {"Authorization": f"Bearer {secret}"}


def work(settings: Settings) -> None:
    connection = Redis.from_url(settings.redis_url)
    SimpleWorker([export_queue(settings, connection)], connection=connection).work(burst=True)


def test_create_poll_list_download_cancel_delete(client) -> None:  # type: ignore[no-untyped-def]
    http, settings, auth = client
    created = http.post("/api/demo/exports/create/", json=BODY, headers=auth)
    assert created.status_code == 202
    data = created.json()
    assert data["status"] == "pending" and data["name"] == "api export"
    assert created.headers["location"] == data["url"].replace(
        "http://testserver", "http://testserver"
    )
    export_id = data["id"]
    work(settings)
    shown = http.get(f"/api/demo/exports/{export_id}/", headers=auth).json()
    assert shown["status"] == "completed" and shown["progress"] == 1.0
    assert shown["downloads"] == [f"http://testserver/api/demo/exports/{export_id}/download/"]
    assert http.get(shown["downloads"][0], headers=auth).status_code == 200
    second = http.post(
        "/api/demo/exports/create/", json={**BODY, "name": "two"}, headers=auth
    ).json()
    page = http.get("/api/demo/exports/?limit=1", headers=auth).json()
    assert [i["id"] for i in page["items"]] == [second["id"]] and page["next_offset"] == 1
    rest = http.get("/api/demo/exports/?limit=1&offset=1", headers=auth).json()
    assert [i["id"] for i in rest["items"]] == [export_id] and rest["next_offset"] is None
    huge = http.get(f"/api/demo/exports/?offset={2**63}", headers=auth)
    assert huge.status_code == 422 and "offset 0 to" in huge.json()["error"]["message"]
    assert (
        http.get("/api/demo/exports/?status=pending", headers=auth).json()["items"][0]["id"]
        == second["id"]
    )
    cancelled = http.post(f"/api/demo/exports/{second['id']}/cancel/", headers=auth)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    again = http.post(f"/api/demo/exports/{second['id']}/cancel/", headers=auth)
    assert again.status_code == 409
    deleted = http.delete(f"/api/demo/exports/{export_id}/", headers=auth)
    assert deleted.status_code == 200 and deleted.json()["status"] == "deleted"
    assert http.get(shown["downloads"][0], headers=auth).status_code == 409


def test_estimate_says_whether_create_would_be_refused(client) -> None:  # type: ignore[no-untyped-def]
    http, _, auth = client
    ok = http.post("/api/demo/estimate/", json=BODY, headers=auth).json()
    assert ok["patient_count"] == 3 and ok["file_count"] > 0 and ok["would_be_refused"] is False
    assert {m["key"] for m in ok["by_modality"]} >= {"cbct", "ios"}
    none = http.post("/api/demo/estimate/", json={**BODY, "modalities": []}, headers=auth).json()
    assert none["would_be_refused"] and none["refusal"] == "Choose at least one modality"


def test_auth_401_and_404_for_what_you_may_not_see(client) -> None:  # type: ignore[no-untyped-def]
    http, settings, auth = client
    assert http.get("/api/demo/exports/").status_code == 401
    bad = http.get("/api/demo/exports/", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and bad.json()["error"]["type"] == "NotSignedIn"
    created = http.post("/api/demo/exports/create/", json=BODY, headers=auth).json()
    outsider = {"X-Forwarded-User": "outsider@other.example"}
    assert http.get(f"/api/demo/exports/{created['id']}/", headers=outsider).status_code == 404
    assert http.get(f"/api/other/exports/{created['id']}/", headers=auth).status_code == 404
    assert http.get("/api/nosuch/exports/", headers=auth).status_code == 404
    assert http.post("/api/other/exports/create/", json=BODY, headers=auth).status_code == 404
    (token,) = services.list_tokens(settings, ME)
    services.revoke_token(settings, ME, token.id)
    assert http.get("/api/demo/exports/", headers=auth).status_code == 401


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**BODY, "modalities": "ios"}, "modalities"),
        ({**BODY, "colour": "blue"}, "colour"),
        ({**BODY, "options": {"compression": "zip"}}, "options.compression"),
        ({**BODY, "options": {"part_size": "lots"}}, "options.part_size"),
        ({**BODY, "options": {"part_size": "INFINITY"}}, "options.part_size"),
        ({**BODY, "options": {"pseudonyms": "yes"}}, "options.pseudonyms"),
        ({**BODY, "name": 5}, "name"),
        ({**BODY, "not_exported": "no"}, "not_exported"),
    ],
)
def test_bad_bodies_get_422_naming_the_field(client, body, field) -> None:  # type: ignore[no-untyped-def]
    http, _, auth = client
    answer = http.post("/api/demo/exports/create/", json=body, headers=auth)
    assert answer.status_code == 422
    assert field in answer.json()["error"]["fields"]


def test_bad_selections_and_limits_are_clear_4xx(client, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    http, _, auth = client
    as_json = {**auth, "Content-Type": "application/json"}
    not_json = http.post("/api/demo/exports/create/", content=b"{nope", headers=as_json)
    assert not_json.status_code == 422 and "not JSON" in not_json.json()["error"]["message"]
    untyped = http.post("/api/demo/exports/create/", content=b"{nope", headers=auth)
    assert untyped.status_code == 415 and "application/json" in untyped.json()["error"]["message"]
    unknown = http.post(
        "/api/demo/exports/create/", json={**BODY, "folders": ["mars"]}, headers=auth
    )
    assert unknown.status_code == 422 and "No folder 'mars'" in unknown.json()["error"]["message"]
    monkeypatch.setenv("MAX_EXPORT_SIZE", "1KiB")
    api.settings.cache_clear()
    too_big = http.post("/api/demo/exports/create/", json=BODY, headers=auth)
    assert too_big.status_code == 413 and "over the limit" in too_big.json()["error"]["message"]
    assert http.get("/api/demo/exports/?limit=0", headers=auth).status_code == 422
    assert http.get("/api/demo/exports/?status=weird", headers=auth).status_code == 422


def test_preview_shows_header_changes_and_old_values_to_data_managers_only(client) -> None:  # type: ignore[no-untyped-def]
    http, settings, auth = client
    body = {**BODY, "options": {"privacy": "deidentified", "shift_dates": True}}
    answer = http.post("/api/demo/preview/", json=body, headers=auth)
    assert answer.status_code == 200, answer.text
    found = answer.json()
    assert found["series_total"] == 3 and found["other_files"] > 0
    reasons = {r["reason"] for r in found["rows"]}
    assert reasons == {"pseudonym", "deidentified"}
    assert all(r["old_value"] is None for r in found["rows"]), "a researcher sees new values"
    secret, _ = services.create_token(settings, "manager@demo.example", "m")
    manager = {"Authorization": f"Bearer {secret}"}
    rows = http.post("/api/demo/preview/", json=body, headers=manager).json()["rows"]
    assert any(r["old_value"] for r in rows)
    bad = http.post(
        "/api/demo/preview/", json={**body, "options": {"retain_uids": True}}, headers=auth
    )  # the project's policy decides what is retained, not the request
    assert bad.status_code == 422 and bad.json()["error"]["fields"] == {
        "options.retain_uids": "unknown option"
    }
    identified = http.post(
        "/api/demo/preview/", json={**body, "options": {"privacy": "identified"}}, headers=auth
    )
    assert identified.status_code == 403
    assert "for its data managers" in identified.json()["error"]["message"]
    assert not list(settings.export_root.glob("*")), "a preview creates nothing"
