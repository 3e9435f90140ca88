"""Export jobs end to end: a real Redis (the suite's own), real workers, a real SMTP server."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from email.message import Message
from pathlib import Path

import pytest
from redis import Redis
from rq import SimpleWorker
from sqlalchemy import select

from exporter import schemas, services
from exporter.archive.verify import verify
from exporter.config import PROJECT_ROOT, Settings
from exporter.dev.redis_server import PrivateRedis, free_port
from exporter.errors import (
    InvalidOption,
    InvalidSelection,
    InvalidState,
    LimitExceeded,
    NotEnoughSpace,
    NotFound,
)
from exporter.jobs import upkeep
from exporter.jobs.queue import export_queue
from exporter.schemas import ExportRequest
from exporter.store import db
from exporter.store.models import AuditEvent, DatasetExport, ExportPatient
from tests.conftest import Inbox, make_settings

ME = "researcher@demo.example"
MANAGER = "manager@demo.example"
OUTSIDER = "outsider@other.example"


def text_of(message: Message) -> str:
    payload = message.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode()


def request(**kw: object) -> ExportRequest:
    sel = schemas.parse_selection(
        folders=kw.pop("folders", ["/"]),  # type: ignore[arg-type]
        modalities=kw.pop("modalities", ["cbct", "ios", "intraoral-photo"]),  # type: ignore[arg-type]
        patients=kw.pop("patients", None),  # type: ignore[arg-type]
    )
    return ExportRequest(selection=sel, **kw)  # type: ignore[arg-type]


def work(settings: Settings) -> None:
    """Run every queued job in this process (RQ's burst SimpleWorker)."""
    connection = Redis.from_url(settings.redis_url)
    SimpleWorker([export_queue(settings, connection)], connection=connection).work(burst=True)


def row_of(settings: Settings, export_id: str) -> DatasetExport:
    with db.session_scope(settings) as session:
        row = session.get(DatasetExport, export_id)
        assert row is not None
        return row


def test_happy_path_completes_verifies_and_mails(portal: Settings, smtp: tuple[int, Inbox]) -> None:
    view = services.create_export(portal, ME, "demo", request(name="my cohort", notes="n"))
    assert view.status == "pending" and view.name == "my cohort"
    assert view.patient_count == 4 and view.file_count > 0
    job_id = row_of(portal, view.id).job_id
    assert job_id is not None
    job = export_queue(portal).fetch_job(job_id)
    assert job is not None and job.timeout is not None and job.timeout >= 900
    work(portal)
    done = services.get_export(portal, ME, view.id)
    assert done.status == "completed", done.error_message
    assert done.files_done == done.file_count and done.archive_bytes
    assert done.expires_at is not None and (done.expires_at - done.completed_at).days == 14  # type: ignore[operator]
    zip_path = portal.export_root / view.id / "my cohort.zip"
    assert verify(zip_path).ok and verify(portal.export_root / view.id).ok
    import hashlib

    assert hashlib.sha256(zip_path.read_bytes()).hexdigest() == done.archive_sha256
    with db.session_scope(portal) as session:
        pseudonyms = sorted(
            session.scalars(
                select(ExportPatient.pseudonym).where(ExportPatient.export_id == view.id)
            )
        )
        actions = list(
            session.scalars(select(AuditEvent.action).where(AuditEvent.export_id == view.id))
        )
    assert pseudonyms == ["patient_001", "patient_002", "patient_003", "patient_004"]
    assert actions == ["create", "complete"]
    (message,) = smtp[1].messages
    assert message["To"] == ME and message["Subject"] == "Export my cohort is ready"
    body = text_of(message)
    assert "Patients: 4" in body and f"https://portal.example.org/exports?export={view.id}" in body


def test_refusals_say_what_to_change(portal: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(NotFound, match="No project 'demo' that you can access"):
        services.create_export(portal, OUTSIDER, "demo", request())
    with pytest.raises(InvalidSelection, match="No patient 'P0004' in project 'other'"):
        services.create_export(portal, OUTSIDER, "other", request(folders=[], patients=["P0004"]))
    with pytest.raises(InvalidSelection, match="Nothing selected"):
        services.create_export(portal, ME, "demo", request(folders=[]))
    with pytest.raises(InvalidSelection, match="Choose at least one modality"):
        services.create_export(portal, ME, "demo", request(modalities=[]))
    small = Settings.load(environ={**os.environ, "MAX_EXPORT_SIZE": "1KiB"})
    with pytest.raises(LimitExceeded, match=r"over the limit of 1\.0 KiB: select fewer"):
        services.create_export(small, ME, "demo", request())
    tight = Settings.load(environ={**os.environ, "USER_QUOTA": "3MiB"})
    services.create_export(tight, ME, "demo", request(modalities=["cbct"]))
    with pytest.raises(LimitExceeded, match=r"your quota has .* left: delete exports"):
        services.create_export(tight, ME, "demo", request(modalities=["cbct", "ios"], name="b"))
    full = Settings.load(environ={**os.environ, "DISK_RESERVE": "100000TiB"})
    with pytest.raises(NotEnoughSpace, match="Not enough free space at the export root"):
        services.create_export(full, ME, "demo", request(name="c"))
    with pytest.raises(InvalidOption, match="has no usable characters"):
        services.create_export(portal, ME, "demo", request(name="///"))
    with db.session_scope(portal) as session:
        assert len(session.scalars(select(DatasetExport)).all()) == 1  # only the one accepted


def test_double_submit_gives_one_export(portal: Settings) -> None:
    first = services.create_export(portal, ME, "demo", request(name="x"))
    second = services.create_export(portal, ME, "demo", request(name="x"))
    assert first.id == second.id
    third = services.create_export(portal, ME, "demo", request(name="y"))
    assert third.id != first.id


def _while_another_is_saving(  # type: ignore[no-untyped-def]
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    first: ExportRequest,
    second: ExportRequest,
):
    """Save ``first`` in a transaction held open while ``second`` is submitted (two tabs, or
    a retried API call, at the same moment); returns (first's id, second's outcome)."""
    import threading

    from exporter.access import accounts
    from exporter.records import exports

    outcome: dict[str, object] = {}
    arrived = threading.Event()
    create = exports.create

    def create_noting_arrival(*args, **kwargs):  # type: ignore[no-untyped-def]
        arrived.set()
        return create(*args, **kwargs)

    def submit() -> None:
        try:
            outcome["view"] = services.create_export(settings, ME, "demo", second)
        except Exception as exc:  # what the caller would see
            outcome["error"] = exc

    session = db.session_factory(settings)()
    try:
        user = accounts.principal_for(session, ME)
        row, created = create(
            session, user, "demo", first, settings.max_export_bytes, settings.user_quota_bytes
        )
        assert created
        monkeypatch.setattr(exports, "create", create_noting_arrival)
        thread = threading.Thread(target=submit)
        thread.start()
        assert arrived.wait(30), "the second request never reached exports.create"
        time.sleep(0.5)  # it is at its first statement now, the first not yet committed
        session.commit()
    finally:
        session.close()
    thread.join(30)
    assert not thread.is_alive(), "the second request is still waiting"
    return row.id, outcome


def test_double_submit_at_the_same_moment_gives_one_export(
    portal: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    first_id, outcome = _while_another_is_saving(
        portal, monkeypatch, request(name="x"), request(name="x")
    )
    assert "error" not in outcome, outcome
    assert outcome["view"].id == first_id  # type: ignore[attr-defined]
    with db.session_scope(portal) as session:
        assert len(session.scalars(select(DatasetExport)).all()) == 1


def test_two_requests_at_the_same_moment_cannot_both_fit_the_quota(
    portal: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    size = services.preflight_export(portal, ME, "demo", request()).estimate.total_bytes
    tight = replace(portal, user_quota_bytes=size + size // 2)  # room for one of the two
    first_id, outcome = _while_another_is_saving(
        tight, monkeypatch, request(name="a"), request(name="b")
    )
    assert isinstance(outcome.get("error"), LimitExceeded), outcome
    assert "quota" in str(outcome["error"])
    with db.session_scope(portal) as session:
        assert [r.id for r in session.scalars(select(DatasetExport))] == [first_id]


def test_cancel_pending_is_immediate_and_the_job_never_runs(portal: Settings) -> None:
    view = services.create_export(portal, ME, "demo", request())
    cancelled = services.cancel_export(portal, ME, view.id)
    assert cancelled.status == "cancelled"
    work(portal)
    assert services.get_export(portal, ME, view.id).status == "cancelled"
    assert not (portal.export_root / view.id).exists()
    with pytest.raises(InvalidState, match="is cancelled: nothing to cancel"):
        services.cancel_export(portal, ME, view.id)


def test_failure_names_the_file_removes_partials_and_mails(
    portal: Settings, smtp: tuple[int, Inbox]
) -> None:
    view = services.create_export(portal, ME, "demo", request(modalities=["ios"]))
    victim = next((portal.data_root / "demo").rglob("upper.stl"))
    victim.unlink()
    work(portal)
    failed = services.get_export(portal, ME, view.id)
    assert failed.status == "failed"
    assert (
        failed.error_message is not None
        and "upper.stl: missing from storage" in failed.error_message
    )
    assert "Traceback" in (row_of(portal, view.id).error_detail or "")
    assert not (portal.export_root / view.id).exists()
    (message,) = smtp[1].messages
    assert message["Subject"] == f"Export {view.name} failed"
    assert "upper.stl: missing from storage" in text_of(message)


def test_mail_failure_never_fails_the_export(
    portal: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMTP_PORT", str(free_port()))  # nothing listens there
    view = services.create_export(portal, ME, "demo", request(modalities=["ios"]))
    work(portal)
    assert services.get_export(portal, ME, view.id).status == "completed"


def test_parts_run_as_separate_jobs_and_finish_with_a_manifest(portal: Settings) -> None:
    view = services.create_export(portal, ME, "demo", request(part_size=1024 * 1024))
    work(portal)
    done = services.get_export(portal, ME, view.id)
    assert done.status == "completed", done.error_message
    assert len(done.parts) >= 2 and all(p.status == "completed" for p in done.parts)
    report = verify(portal.export_root / view.id)
    assert report.ok and report.archives == len(done.parts)


def test_visibility_researcher_manager_outsider(portal: Settings) -> None:
    view = services.create_export(portal, ME, "demo", request())
    assert [v.id for v in services.list_exports(portal, MANAGER)] == [view.id]
    assert services.list_exports(portal, OUTSIDER) == []
    with pytest.raises(NotFound):
        services.get_export(portal, OUTSIDER, view.id)
    with pytest.raises(NotFound):
        services.cancel_export(portal, OUTSIDER, view.id)
    services.add_user(portal, "peer@demo.example", "demo", "researcher")
    assert services.list_exports(portal, "peer@demo.example") == []


def test_delete_and_expiry_remove_files_and_keep_the_record(portal: Settings) -> None:
    a = services.create_export(portal, ME, "demo", request(name="a", modalities=["ios"]))
    b = services.create_export(portal, ME, "demo", request(name="b", modalities=["cbct"]))
    work(portal)
    deleted = services.delete_export(portal, ME, a.id)
    assert deleted.status == "deleted" and not (portal.export_root / a.id).exists()
    with db.session_scope(portal) as session:
        row = session.get(DatasetExport, b.id)
        assert row is not None and row.expires_at is not None
        row.expires_at = row.expires_at.replace(year=2000)
    assert services.housekeeping(portal)["expired"] == 1
    assert services.get_export(portal, ME, b.id).status == "expired"
    assert not (portal.export_root / b.id).exists()
    with db.session_scope(portal) as session:
        actions = sorted(session.scalars(select(AuditEvent.action)))
    assert actions.count("delete") == 1 and actions.count("expire") == 1


def test_redis_flushed_pending_export_runs_after_reconcile(
    portal: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    view = services.create_export(portal, ME, "demo", request(modalities=["ios"]))
    Redis.from_url(portal.redis_url).flushall()
    work(portal)
    assert services.get_export(portal, ME, view.id).status == "pending"
    monkeypatch.setattr(upkeep, "PENDING_GRACE_SECONDS", 0)
    assert services.housekeeping(portal)["requeued"] == 1
    work(portal)
    assert services.get_export(portal, ME, view.id).status == "completed"


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, str(PROJECT_ROOT / "worker.py")],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def slow_portal(
    tmp_path: Path, database_url: str, redis_server: PrivateRedis, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """Enough data that a 'small' (level 6) export takes several seconds."""
    Redis.from_url(redis_server.url).flushall()
    for key, value in {
        "DATABASE_URL": database_url,
        "DATA_ROOT": str(tmp_path / "data"),
        "EXPORT_ROOT": str(tmp_path / "exports"),
        "REDIS_URL": redis_server.url,
        "DISK_RESERVE": "1MiB",
        "STALE_AFTER": "10",
    }.items():
        monkeypatch.setenv(key, value)
    settings = Settings.load(env_file=tmp_path / "none.env")
    services.load_demo(settings, patients=6, seed=4, scale="medium")
    return settings


@pytest.mark.slow
def test_real_workers_two_at_once_cancel_and_a_killed_worker(
    slow_portal: Settings, tmp_path: Path
) -> None:
    env = dict(os.environ)
    workers = [start_worker(env, tmp_path / f"w{i}.log") for i in range(2)]
    try:
        slow = request(compression="small")
        a = services.create_export(slow_portal, ME, "demo", dataclass_replace(slow, name="a"))
        b = services.create_export(slow_portal, ME, "demo", dataclass_replace(slow, name="b"))

        def both_processing() -> bool:
            return all(
                services.get_export(slow_portal, ME, x.id).status == "processing" for x in (a, b)
            )

        wait_for(both_processing, 30, "both exports to be processing on two workers")
        assert row_of(slow_portal, a.id).worker_id != row_of(slow_portal, b.id).worker_id
        # cancel a while it runs: stopped and cleaned within 2 seconds
        wait_for(
            lambda: any((slow_portal.export_root / a.id).glob(".*.partial")), 20, "a's partial"
        )
        started = time.monotonic()
        assert services.cancel_export(slow_portal, ME, a.id).status == "cancelled"
        assert not (slow_portal.export_root / a.id).exists()
        assert time.monotonic() - started < 2.0
        # kill b's worker outright: the export fails (not stuck in processing), no partial left
        wait_for(lambda: row_of(slow_portal, b.id).bytes_done > 0, 20, "b to make progress")
        b_worker = row_of(slow_portal, b.id).worker_id
        for w in workers:  # the machine dies: workers, then their work-horses (own process
            # groups), so that no worker is left to see its work-horse die and fail the export
            horses = subprocess.run(["pgrep", "-P", str(w.pid)], capture_output=True, text=True)
            os.killpg(w.pid, signal.SIGKILL)
            w.wait()
            for pid in horses.stdout.split():
                with contextlib.suppress(ProcessLookupError):  # it may have just finished
                    os.kill(int(pid), signal.SIGKILL)
        assert b_worker
        assert services.get_export(slow_portal, ME, b.id).status == "processing"
        time.sleep(11)  # STALE_AFTER
        replacement = start_worker(env, tmp_path / "w3.log")  # reconciles at start
        workers = [replacement]
        wait_for(
            lambda: services.get_export(slow_portal, ME, b.id).status == "failed",
            60,
            "the killed worker's export to fail",
        )
        failed = services.get_export(slow_portal, ME, b.id)
        assert failed.error_message == upkeep.WORKER_DIED
        wait_for(lambda: not (slow_portal.export_root / b.id).exists(), 10, "b's files removed")
    finally:
        for w in workers:
            if w.poll() is None:
                os.killpg(w.pid, signal.SIGKILL)
                w.wait()


def dataclass_replace(req: ExportRequest, **kw: object) -> ExportRequest:
    from dataclasses import replace

    return replace(req, **kw)  # type: ignore[arg-type]


def test_cli_create_list_show(portal: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from exporter.cli import main

    assert (
        main(
            [
                "export",
                "create",
                "demo",
                "--user",
                ME,
                "--folder",
                "/",
                "--modality",
                "ios",
                "--name",
                "cli export",
                "--json",
            ]
        )
        == 0
    )
    created = json.loads(capsys.readouterr().out)
    assert created["status"] == "pending" and created["name"] == "cli export"
    work(portal)
    assert main(["export", "show", created["id"], "--user", ME, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == "completed" and shown["archive_bytes"] > 0
    assert main(["export", "list", "--user", ME]) == 0
    assert created["id"] in capsys.readouterr().out
    assert main(["export", "show", created["id"], "--user", OUTSIDER]) == 1
    assert "No export" in capsys.readouterr().err
    _ = make_settings


def test_a_failed_part_fails_the_export_and_can_be_retried_alone(portal: Settings) -> None:
    view = services.create_export(portal, ME, "demo", request(part_size=1024 * 1024))
    victim = next((portal.data_root / "demo").rglob("P0004/ios/upper.stl"))
    hidden = victim.with_name("upper.stl.away")
    victim.rename(hidden)
    work(portal)
    failed = services.get_export(portal, ME, view.id)
    assert failed.status == "failed" and failed.error_message is not None
    assert (
        failed.error_message.startswith("Part ")
        and "upper.stl: missing from storage" in failed.error_message
    )
    done_parts = [p for p in failed.parts if p.status == "completed"]
    assert done_parts and len(done_parts) < len(failed.parts)
    kept = portal.export_root / view.id / (done_parts[0].file or "")
    assert kept.is_file() and not list((portal.export_root / view.id).glob(".*.partial"))
    kept_mtime = kept.stat().st_mtime_ns
    with pytest.raises(InvalidState, match="only a failed export of several parts"):
        services.retry_export(
            portal, ME, services.create_export(portal, ME, "demo", request(name="z")).id
        )
    hidden.rename(victim)
    assert services.retry_export(portal, ME, view.id).status == "processing"
    work(portal)
    done = services.get_export(portal, ME, view.id)
    assert done.status == "completed", done.error_message
    assert kept.stat().st_mtime_ns == kept_mtime, "finished parts are not rebuilt"
    assert verify(portal.export_root / view.id).ok


def test_parts_waiting_for_a_free_worker_are_not_taken_for_dead(portal: Settings) -> None:
    view = services.create_export(portal, ME, "demo", request(part_size=1024 * 1024))
    connection = Redis.from_url(portal.redis_url)
    queue = export_queue(portal, connection)
    job = queue.fetch_job(row_of(portal, view.id).job_id or "")
    assert job is not None
    job.perform()  # run_export alone: fans out the parts, which now wait in the queue
    with db.session_scope(portal) as session:
        row = session.get(DatasetExport, view.id)
        assert row is not None and row.status.value == "processing"
        row.heartbeat_at = row.heartbeat_at.replace(year=2000)  # type: ignore[union-attr]
    assert services.housekeeping(portal)["failed"] == 0
    work(portal)
    assert services.get_export(portal, ME, view.id).status == "completed"


def test_cli_wait_shows_the_outcome_in_the_exit_status(
    portal: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from exporter.cli import main

    worker = start_worker(dict(os.environ), tmp_path / "w.log")
    try:
        code = main(
            [
                "export",
                "create",
                "demo",
                "--user",
                ME,
                "--folder",
                "/",
                "--modality",
                "ios",
                "--wait",
                "--json",
            ]
        )
        assert code == 0
        assert json.loads(capsys.readouterr().out)["status"] == "completed"
        next((portal.data_root / "demo").rglob("lower.stl")).unlink()
        code = main(
            [
                "export",
                "create",
                "demo",
                "--user",
                ME,
                "--folder",
                "/",
                "--modality",
                "ios",
                "--name",
                "again",
                "--wait",
                "--json",
            ]
        )
        assert code == 1
        assert json.loads(capsys.readouterr().out)["status"] == "failed"
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(30)


def test_rq_worker_pool_with_the_portal_worker_class(portal: Settings) -> None:
    views = [services.create_export(portal, ME, "demo", request(name=n)) for n in ("p1", "p2")]
    pool = subprocess.run(
        [
            str(Path(sys.executable).parent / "rq"),
            "worker-pool",
            "-n",
            "2",
            "-b",
            "-w",
            "exporter.jobs.worker.PortalWorker",
            "-u",
            portal.redis_url,
            "-P",
            str(PROJECT_ROOT),
            "exports",
        ],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert pool.returncode == 0, pool.stderr[-2000:]
    done = [services.get_export(portal, ME, v.id) for v in views]
    assert [v.status for v in done] == ["completed"] * 2, (
        [v.error_message for v in done],
        pool.stderr[-3000:],
    )


def test_completed_exports_tag_patients_and_not_yet_exported_selects_the_rest(
    portal: Settings,
) -> None:
    first = services.create_export(
        portal, ME, "demo", request(folders=[], patients=["P0001", "P0002"])
    )
    work(portal)
    from exporter.store.models import PatientTag, Tag

    with db.session_scope(portal) as session:
        links = session.execute(
            select(PatientTag.export_id, Tag.name, Tag.is_system)
            .join(Tag, Tag.id == PatientTag.tag_id)
            .where(Tag.name == "EXPORTED")
        ).all()
    assert len(links) == 2 and all(e == first.id and system for e, _, system in links)
    rest = schemas.parse_selection(folders=["/"], modalities=["ios"], not_exported=True)
    estimate = services.estimate(portal, ME, "demo", rest)
    assert estimate.patients_selected == 2  # P0003 and P0004
    second = services.create_export(portal, ME, "demo", ExportRequest(selection=rest, name="rest"))
    work(portal)
    assert services.get_export(portal, ME, second.id).patient_count == 2
    everyone_done = schemas.parse_selection(folders=["/"], modalities=["ios"], not_exported=True)
    with pytest.raises(InvalidSelection, match="has no files"):
        services.create_export(portal, ME, "demo", ExportRequest(selection=everyone_done, name="x"))


def test_two_exports_tagging_the_same_patients_at_once_do_not_fail(portal: Settings) -> None:
    """Two workers completing at the same moment both create EXPORTED and tag the same
    patients; neither may fail (seen on PostgreSQL as a unique violation)."""
    import threading

    from exporter.registry.query import tag_exported
    from exporter.store.models import Patient, PatientTag, Tag

    a = services.create_export(portal, ME, "demo", request(name="a", modalities=["ios"]))
    b = services.create_export(portal, ME, "demo", request(name="b", modalities=["cbct"]))
    with db.session_scope(portal) as session:
        ids = list(session.scalars(select(Patient.id).where(Patient.project_id == 1)))
    errors: list[BaseException] = []
    first = db.session_factory(portal)()
    tag_exported(first, 1, a.id, ids)  # holds its inserts, uncommitted

    def second() -> None:
        try:
            with db.session_scope(portal) as session:
                tag_exported(session, 1, b.id, ids)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(0.5)
    first.commit()
    first.close()
    thread.join(30)
    assert errors == []
    with db.session_scope(portal) as session:
        tags = session.scalars(select(Tag).where(Tag.name == "EXPORTED")).all()
        links = session.scalars(select(PatientTag).where(PatientTag.tag_id == tags[0].id)).all()
    assert len(tags) == 1 and sorted(link.patient_id for link in links) == sorted(ids)
