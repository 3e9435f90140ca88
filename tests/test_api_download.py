"""The download route, in process: permissions, Range (206, resume, 416), ETag, 410, audit."""

from __future__ import annotations

import pytest
from redis import Redis
from rq import SimpleWorker
from sqlalchemy import select
from starlette.testclient import TestClient

from exporter import schemas, services
from exporter.config import Settings
from exporter.jobs.queue import export_queue
from exporter.schemas import ExportRequest
from exporter.store import db
from exporter.store.models import AuditEvent

ME = "researcher@demo.example"


@pytest.fixture
def client(api_portal) -> tuple[TestClient, Settings]:  # type: ignore[no-untyped-def]
    return api_portal()  # type: ignore[no-any-return]


def completed_export(settings: Settings, **kw: object) -> str:
    sel = schemas.parse_selection(folders=["/"], modalities=["ios", "cbct"])
    view = services.create_export(settings, ME, "demo", ExportRequest(selection=sel, **kw))  # type: ignore[arg-type]
    connection = Redis.from_url(settings.redis_url)
    SimpleWorker([export_queue(settings, connection)], connection=connection).work(burst=True)
    assert services.get_export(settings, ME, view.id).status == "completed"
    return view.id


def as_user(email: str) -> dict[str, str]:
    return {"X-Forwarded-User": email}


def test_full_download_range_resume_and_416(client: tuple[TestClient, Settings]) -> None:
    http, settings = client
    export_id = completed_export(settings)
    url = f"/api/demo/exports/{export_id}/download/"
    whole = http.get(url, headers=as_user(ME))
    assert whole.status_code == 200
    assert whole.headers["content-type"] == "application/zip"
    assert "attachment" in whole.headers["content-disposition"]
    zip_path = next((settings.export_root / export_id).glob("*.zip"))
    data = zip_path.read_bytes()
    assert whole.content == data
    etag = whole.headers["etag"]
    first = http.get(url, headers={**as_user(ME), "Range": "bytes=0-999"})
    assert first.status_code == 206 and first.content == data[:1000]
    assert first.headers["content-range"] == f"bytes 0-999/{len(data)}"
    rest = http.get(url, headers={**as_user(ME), "Range": "bytes=1000-", "If-Range": etag})
    assert rest.status_code == 206 and first.content + rest.content == data
    beyond = http.get(url, headers={**as_user(ME), "Range": f"bytes={len(data) + 10}-"})
    assert beyond.status_code == 416
    with db.session_scope(settings) as session:
        downloads = session.scalars(
            select(AuditEvent).where(
                AuditEvent.action == "download", AuditEvent.export_id == export_id
            )
        ).all()
    # The 416 sent no bytes: not a download (three were).
    assert len(downloads) == 3 and downloads[1].detail == {"part": 1, "range": "bytes=0-999"}


def test_other_users_and_projects_get_404_and_no_identity_401(
    client: tuple[TestClient, Settings],
) -> None:
    http, settings = client
    export_id = completed_export(settings)
    url = f"/api/demo/exports/{export_id}/download/"
    outsider = http.get(url, headers=as_user("outsider@other.example"))
    assert outsider.status_code == 404
    assert outsider.json() == {
        "error": {"type": "NotFound", "message": f"No export {export_id!r} that you can see"}
    }
    wrong_project = http.get(f"/api/other/exports/{export_id}/download/", headers=as_user(ME))
    assert wrong_project.status_code == 404
    assert http.get(url).status_code == 401
    manager = http.get(url, headers=as_user("manager@demo.example"))
    assert manager.status_code == 200, "a data manager of the project may download it"


def test_vanished_file_is_410_and_unfinished_is_409(client: tuple[TestClient, Settings]) -> None:
    http, settings = client
    export_id = completed_export(settings)
    next((settings.export_root / export_id).glob("*.zip")).unlink()
    gone = http.get(f"/api/demo/exports/{export_id}/download/", headers=as_user(ME))
    assert gone.status_code == 410 and "no longer on the server" in gone.json()["error"]["message"]
    sel = schemas.parse_selection(folders=["/"], modalities=["ios"])
    pending = services.create_export(settings, ME, "demo", ExportRequest(selection=sel, name="p"))
    conflict = http.get(f"/api/demo/exports/{pending.id}/download/", headers=as_user(ME))
    assert (
        conflict.status_code == 409
        and "only completed exports" in conflict.json()["error"]["message"]
    )


def test_parts_are_downloaded_one_by_one(client: tuple[TestClient, Settings]) -> None:
    http, settings = client
    export_id = completed_export(settings, part_size=1024 * 1024)
    view = services.get_export(settings, ME, export_id)
    assert len(view.parts) >= 2
    assert (
        http.get(f"/api/demo/exports/{export_id}/download/", headers=as_user(ME)).status_code == 409
    )
    for part in view.parts:
        got = http.get(f"/api/demo/exports/{export_id}/download/{part.number}", headers=as_user(ME))
        assert got.status_code == 200
        assert got.content == (settings.export_root / export_id / (part.file or "")).read_bytes()
    missing = http.get(f"/api/demo/exports/{export_id}/download/99", headers=as_user(ME))
    assert missing.status_code == 404
