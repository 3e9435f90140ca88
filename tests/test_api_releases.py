"""Releases over the HTTP API: create, status, log and changes, cancel and retry, the
patient link and a file's history; data managers of the source only, every bad body a 4xx
naming the field, and nothing saved for a refused one."""

from __future__ import annotations

import csv
import io

import pytest
from redis import Redis
from rq import SimpleWorker
from starlette.testclient import TestClient

from exporter import services
from exporter.config import Settings
from exporter.jobs.queue import export_queue

MANAGER = "manager@demo.example"
RESEARCHER = "researcher@demo.example"
DEST = "released"


@pytest.fixture
def api(api_portal) -> tuple[TestClient, Settings, dict[str, str], dict[str, str]]:  # type: ignore[no-untyped-def]
    http, settings = api_portal()
    services.add_project(settings, DEST, "Released")
    services.add_user(settings, MANAGER, DEST, "data_manager")
    manager, _ = services.create_token(settings, MANAGER, "releases")
    researcher, _ = services.create_token(settings, RESEARCHER, "releases")
    return (
        http,
        settings,
        {"Authorization": f"Bearer {manager}"},
        {"Authorization": f"Bearer {researcher}"},
    )


def work(settings: Settings) -> None:
    connection = Redis.from_url(settings.redis_url)
    SimpleWorker([export_queue(settings, connection)], connection=connection).work(burst=True)


BODY = {"folders": ["/"], "modalities": ["ios"], "destination": DEST, "not_released": True}


def test_a_data_manager_releases_and_reads_the_log(api) -> None:  # type: ignore[no-untyped-def]
    http, settings, manager, researcher = api
    made = http.post("/api/demo/releases/create/", json=BODY, headers=manager)
    assert made.status_code == 202, made.text
    release = made.json()
    assert release["status"] == "pending" and release["destination"] == DEST
    work(settings)
    done = http.get(release["url"], headers=manager).json()
    assert done["status"] == "completed" and done["counts"] == {"created": done["file_count"]}
    log = http.get(done["log"], headers=manager)
    assert log.status_code == 200 and log.headers["content-type"].startswith("text/csv")
    assert 'filename="release_log.csv"' in log.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(log.text)))
    assert (
        sum(r["level"] == "file" and r["status"] == "created" for r in rows) == done["file_count"]
    )
    changes = http.get(done["changes"], headers=manager)
    assert changes.status_code == 200 and changes.text.startswith("path,tag,keyword")
    links = http.get("/api/demo/releases/links/", headers=manager).json()["items"]
    assert len(links) == done["patient_count"]
    path = next(r["destination_path"] for r in rows if r["level"] == "file")
    history = http.get(f"/api/{DEST}/files/history/", params={"path": path}, headers=manager)
    assert [v["version"] for v in history.json()["versions"]] == [1]
    listed = http.get("/api/demo/releases/", headers=manager).json()["items"]
    assert [r["id"] for r in listed] == [release["id"]]
    # The queue is empty now: released patients are out of "not yet released".
    again = http.post("/api/demo/releases/create/", json=BODY, headers=manager)
    assert again.status_code == 422 and "no files" in again.json()["error"]["message"]
    # Retrying a completed release, or cancelling it, is a conflict.
    assert http.post(release["url"] + "retry/", headers=manager).status_code == 409
    assert http.post(release["url"] + "cancel/", headers=manager).status_code == 409

    # A researcher of the source sees none of it.
    for url in (release["url"], done["log"], "/api/demo/releases/links/"):
        assert http.get(url, headers=researcher).status_code in (403, 404)
    assert http.get("/api/demo/releases/", headers=researcher).status_code == 403
    refused = http.post("/api/demo/releases/create/", json=BODY, headers=researcher)
    assert refused.status_code == 403 and "data managers" in refused.json()["error"]["message"]
    assert http.get(f"/api/other/releases/{release['id']}/", headers=manager).status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**BODY, "destination": "../etc"}, "destination"),
        ({**BODY, "archive": 7}, "archive"),
        ({**BODY, "options": {"privacy": "identified"}}, "options.privacy"),
        ({**BODY, "options": {"skip_changed": "yes"}}, "options.skip_changed"),
        ({**BODY, "options": {"move_out": "yes"}}, "options.move_out"),
        ({**BODY, "not_released": 1}, "not_released"),
        ({**BODY, "patients": "P0001"}, "patients"),
        ({**BODY, "colour": "red"}, "colour"),
        ({**BODY, "name": "x" * 500}, "name"),
    ],
)
def test_a_bad_body_is_a_422_naming_the_field(api, body: dict[str, object], field: str) -> None:  # type: ignore[no-untyped-def]
    http, _, manager, _ = api
    answer = http.post("/api/demo/releases/create/", json=body, headers=manager)
    assert answer.status_code == 422, answer.text
    assert field in answer.json()["error"]["fields"]
    assert http.get("/api/demo/releases/", headers=manager).json()["items"] == []


def test_refusals_before_queueing_have_their_status(api) -> None:  # type: ignore[no-untyped-def]
    http, settings, manager, _ = api
    services.add_project(settings, "notmine", "Not managed")
    cases = [
        ({**BODY, "destination": "notmine"}, 404),  # not a member: not told it exists
        ({**BODY, "destination": "demo"}, 422),  # the source itself
        ({**BODY, "archive": DEST}, 422),  # the destination again
        ({**BODY, "modalities": []}, 422),
        ({**BODY, "archive": None, "options": {"move_out": True}}, 422),  # no archive
    ]
    for body, status in cases:
        answer = http.post("/api/demo/releases/create/", json=body, headers=manager)
        assert answer.status_code == status, (body, answer.text)
    assert http.get("/api/demo/releases/", headers=manager).json()["items"] == []
