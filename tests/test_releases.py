"""Releases end to end, on SQLite and PostgreSQL, with jobs run by a real RQ worker on the
suite's Redis: curated values written into a destination project under its pseudonyms, the
untouched originals into an archive, files read back with DCMTK (``dcmdump``), a destination
researcher exporting what was released, and a second release writing new versions only for
what changed."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from exporter import schemas, services
from exporter.cli import main
from exporter.config import PROJECT_ROOT, Settings
from exporter.dev.redis_server import PrivateRedis
from exporter.errors import InvalidInput, InvalidState, NotEnoughSpace, NotFound, PermissionDenied
from exporter.jobs import upkeep
from exporter.schemas import ReleaseRequest, Target
from exporter.store import db
from exporter.store.models import FileRegistry, Patient, PatientLink, Project
from tests.conftest import Inbox
from tests.test_jobs import MANAGER, ME, OUTSIDER, text_of, wait_for, work
from tests.test_worker import _descendants as descendants
from tests.test_worker import _env as worker_env
from tests.test_worker import _start as start_process
from tests.test_worker import _stop as stop_process
from tests.test_worker import queue_redis as queue_redis  # the fixture

DEST, VAULT = "released", "vault"
SCIENTIST = "ds@released.example"
PATIENTS = ["P0001", "P0002", "P0003"]


@pytest.fixture
def rel(portal: Settings) -> Settings:
    """The demo project (4 patients) as the quarantine, an empty destination with a
    researcher of its own, and an archive; the demo's data manager manages all three."""
    services.add_project(portal, DEST, "Released for data science")
    services.add_project(portal, VAULT, "Originals archive")
    services.add_user(portal, MANAGER, DEST, "data_manager")
    services.add_user(portal, MANAGER, VAULT, "data_manager")
    services.add_user(portal, SCIENTIST, DEST, "researcher")
    return portal


def release(settings: Settings, **kw: object) -> schemas.ReleaseView:
    selection = schemas.parse_selection(
        patients=kw.pop("patients", PATIENTS),  # type: ignore[arg-type]
        modalities=kw.pop("modalities", ["cbct", "ios"]),  # type: ignore[arg-type]
        not_released_to=kw.pop("not_released_to", ""),  # type: ignore[arg-type]
    )
    kw.setdefault("destination", DEST)
    request = ReleaseRequest(selection, **kw)  # type: ignore[arg-type]
    return services.create_release(settings, MANAGER, "demo", request)


def dcmdump(path: Path) -> str:
    return subprocess.run(
        ["dcmdump", "+P", "0010,0010", "+P", "0010,0020", "+P", "0018,0015", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def log_of(settings: Settings, release_id: str) -> list[dict[str, str]]:
    text = services.release_log(settings, MANAGER, release_id).decode()
    return list(csv.DictReader(io.StringIO(text)))


def registered(settings: Settings, project: str, label: str | None = None) -> dict[str, str]:
    """path -> sha256 of a project's registered files (``label``: of that patient, the
    live ones)."""
    query = (
        select(FileRegistry.path, FileRegistry.sha256)
        .join(Patient, Patient.id == FileRegistry.patient_id)
        .join(Project, Project.id == Patient.project_id)
        .where(Project.slug == project)
    )
    if label is not None:
        query = query.where(Patient.label == label, FileRegistry.missing_since.is_(None))
    with db.session_scope(settings) as session:
        return dict(session.execute(query).all())


def test_a_release_writes_curated_pseudonymised_files_and_archives_the_originals(
    rel: Settings, smtp: tuple[int, Inbox]
) -> None:
    series = services.patient_series(rel, MANAGER, "demo", "P0001")[0]
    services.curate(
        rel, MANAGER, "demo", [Target("P0001", series.label)], "BodyPartExamined", "MAXILLA"
    )
    first = release(rel, archive=VAULT, name="first")
    assert first.status == "pending" and first.patient_count == 3 and first.archive == VAULT
    work(rel)
    done = services.get_release(rel, MANAGER, first.id)
    assert done.status == "completed", done.error_message
    assert (
        done.counts["created"] == done.file_count
        and done.counts["archive_created"] == done.file_count
    )
    assert any("Release first is done" in str(m["Subject"]) for m in smtp[1].messages)

    dest = registered(rel, DEST)
    vault = registered(rel, VAULT)
    assert len(dest) == len(vault) == done.file_count
    root = rel.data_root
    for path, digest in dest.items():
        assert path.startswith(f"{DEST}/subject_") and sha(root / path) == digest
    links = services.patient_links(rel, MANAGER, "demo")
    assert sorted(link.source_label for link in links) == PATIENTS
    mine = next(link.destination_label for link in links if link.source_label == "P0001")

    # The destination's files carry the curated value and the pseudonym; the archive's are
    # the originals, byte for byte, with their own value and the real patient.
    curated = [p for p in dest if p.startswith(f"{DEST}/{mine}/cbct/") and p.endswith(".dcm")]
    assert curated
    dumped = dcmdump(root / curated[0])
    assert "MAXILLA" in dumped and mine in dumped and "P0001" not in dumped
    originals = {p: d for p, d in registered(rel, "demo").items() if "/P0001/cbct/" in p}
    for path, digest in vault.items():
        assert path.startswith(f"{VAULT}/demo/"), "below the source's slug"
        source = path[len(VAULT) + 1 :]
        assert digest == sha(root / source) == sha(root / path), "byte for byte"
    archived = next(p for p in vault if "/P0001/cbct/" in p and p.endswith(".dcm"))
    assert "MAXILLA" not in dcmdump(root / archived)
    assert originals, "the source keeps its files"

    # Released patients leave the "not yet released" queue; the fourth does not.
    left = services.estimate(
        rel,
        MANAGER,
        "demo",
        schemas.parse_selection(folders=["/"], modalities=["cbct"], not_released_to=DEST),
    )
    assert left.patient_count == 1

    # A destination researcher browses and exports what was released, and sees nothing of
    # the source or the archive.
    tree = services.project_tree(rel, SCIENTIST, DEST)
    assert sorted(p.label for p in tree.patients) == sorted(
        link.destination_label for link in links
    )
    for other in ("demo", VAULT):
        with pytest.raises(NotFound):
            services.project_tree(rel, SCIENTIST, other)
    with pytest.raises(NotFound):
        services.get_release(rel, SCIENTIST, first.id)
    export = services.create_export(
        rel,
        SCIENTIST,
        DEST,
        schemas.ExportRequest(schemas.parse_selection(folders=["/"], modalities=["cbct", "ios"])),
    )
    work(rel)
    exported = services.get_export(rel, SCIENTIST, export.id)
    assert exported.status == "completed", exported.error_message
    (archive,) = (rel.export_root / export.id).glob("*.zip")
    with zipfile.ZipFile(archive) as z:
        names = z.namelist()
        assert len([n for n in names if n.endswith(".dcm")]) == sum(
            p.endswith(".dcm") for p in dest
        )
        assert not any("P000" in n for n in names)

    # One more curation: the second release writes a new version of that series' files only.
    services.curate(
        rel, MANAGER, "demo", [Target("P0001", series.label)], "BodyPartExamined", "MANDIBLE"
    )
    second = release(rel, archive=VAULT, name="second")
    work(rel)
    again = services.get_release(rel, MANAGER, second.id)
    assert again.status == "completed", again.error_message
    assert again.counts["new_version"] == series.files
    assert again.counts["skipped"] == done.file_count - series.files
    assert again.counts["archive_skipped"] == done.file_count
    assert registered(rel, DEST).keys() == dest.keys(), "new versions take the same paths"
    assert "MANDIBLE" in dcmdump(root / curated[0])
    history = services.file_history(rel, MANAGER, DEST, curated[0])
    assert [(v.version, v.release_id) for v in history] == [(1, first.id), (2, second.id)]
    assert "MAXILLA" in dcmdump(root / history[0].stored_path), "the first version is kept"
    assert "/.versions/v1/" in history[0].stored_path
    rows = log_of(rel, second.id)
    files = [r for r in rows if r["level"] == "file" and r["target"] == "destination"]
    assert sum(r["status"] == "new_version" for r in files) == series.files
    assert sum(r["status"] == "skipped" for r in files) == done.file_count - series.files
    patient_rows = [r for r in rows if r["level"] == "patient" and r["target"] == "destination"]
    assert {r["patient"] for r in patient_rows} == set(PATIENTS)
    changes = services.release_changes(rel, MANAGER, second.id).decode()
    assert "MANDIBLE" in changes and "P0001" not in changes

    # The same release once more creates nothing.
    before = {p: sha(root / p) for p in registered(rel, DEST)}
    third = release(rel, archive=VAULT, name="third")
    work(rel)
    idle = services.get_release(rel, MANAGER, third.id)
    assert idle.status == "completed" and set(idle.counts) == {"skipped", "archive_skipped"}
    assert {p: sha(root / p) for p in registered(rel, DEST)} == before


def test_refused_before_queueing(rel: Settings) -> None:
    services.add_project(rel, "elsewhere", "Not managed")
    services.add_user(rel, ME, "elsewhere", "researcher")
    with pytest.raises(NotFound):
        release(rel, destination="elsewhere")  # not a member: not even told it exists
    services.add_user(rel, MANAGER, "elsewhere", "researcher")
    with pytest.raises(PermissionDenied, match="data managers of the destination"):
        release(rel, destination="elsewhere")
    with pytest.raises(InvalidInput, match="another project"):
        release(rel, destination="demo")
    with pytest.raises(InvalidInput, match="third project"):
        release(rel, archive=DEST)
    with pytest.raises(InvalidInput, match="pseudonymised or deidentified"):
        release(rel, privacy="identified")
    asked = ReleaseRequest(schemas.parse_selection(patients=PATIENTS, modalities=["cbct"]), DEST)
    with pytest.raises(PermissionDenied, match="source project 'demo' may release from"):
        services.create_release(rel, ME, "demo", asked)  # a researcher of the source
    with pytest.raises(NotFound):
        services.create_release(rel, OUTSIDER, "demo", asked)
    # A destination that already has a patient a release would be named as.
    with db.session_scope(rel) as session:
        project = session.scalar(select(Project).where(Project.slug == DEST))
        assert project is not None
        session.add(Patient(project_id=project.id, label="subject_001"))
    with pytest.raises(InvalidInput, match="subject_001"):
        release(rel)
    with db.session_scope(rel) as session:
        assert session.scalar(select(func.count()).select_from(PatientLink)) == 0


def test_too_little_space_refuses_the_release_before_queueing(rel: Settings) -> None:
    crowded = dataclasses.replace(rel, disk_reserve_bytes=shutil.disk_usage(rel.data_root).free)
    with pytest.raises(NotEnoughSpace, match="data root"):
        release(crowded)
    assert services.list_releases(rel, MANAGER) == []


def _whole(settings: Settings, project: str) -> dict[str, str]:
    """The project's registered files, each checked whole on disk (its registered hash)."""
    files = registered(settings, project)
    for path, digest in files.items():
        assert sha(settings.data_root / path) == digest, f"{path} is registered but not whole"
    return files


def test_a_full_data_root_stops_the_release_and_registers_only_whole_files(
    rel: Settings, small_disk: Path
) -> None:
    """The destination's tree on a real 3 MiB filesystem: the release fills it, fails with a
    message that says what to do, and what it registered is whole."""
    target = rel.data_root / DEST
    target.mkdir()
    subprocess.run(["mount", "--bind", str(small_disk), str(target)], check=True)
    (target / "filler").write_bytes(b"\0" * 1024 * 1024)  # 2 MiB left for 2.6 MB of files
    with db.session_scope(rel) as session:  # the tree is the destination's (not refused)
        session.execute(update(Project).where(Project.slug == DEST).values(root_path=DEST))
    try:
        started = release(
            rel,
            patients=["P0001", "P0002", "P0003", "P0004"],
            modalities=["cbct", "ios", "intraoral-photo"],
        )
        assert started.estimated_bytes > 2 * 1024 * 1024, "the test needs more than fits"
        work(rel)
        failed = services.get_release(rel, MANAGER, started.id)
        assert failed.status == "failed"
        assert "filled up" in (failed.error_message or "") and "run the release again" in (
            failed.error_message or ""
        )
        kept = _whole(rel, DEST)
        assert 0 < len(kept) < started.file_count
        assert failed.counts["created"] == len(kept)
        assert not list(target.rglob(".*.part")), "a temporary file was left"
    finally:
        subprocess.run(["umount", str(target)], check=True)


@pytest.mark.slow
def test_a_killed_release_registers_nothing_half_written_and_runs_again_to_the_same_result(
    tmp_path: Path, sqlite_template: Path, queue_redis: PrivateRedis
) -> None:
    db_path = tmp_path / "portal.db"
    shutil.copy(sqlite_template, db_path)
    env = {**worker_env(tmp_path, f"sqlite:///{db_path}", queue_redis.url), "STALE_AFTER": "600"}
    settings = Settings.load(environ=env, env_file=tmp_path / "none.env")
    services.load_demo(settings, patients=6, seed=4, scale="medium")
    services.add_project(settings, DEST, "Released")
    services.add_user(settings, MANAGER, DEST, "data_manager")
    everyone = [p.label for p in services.project_tree(settings, MANAGER, "demo").patients]
    started = release(settings, patients=everyone, modalities=["cbct", "ios", "intraoral-photo"])
    log = tmp_path / "worker.log"
    worker = start_process([str(PROJECT_ROOT / "worker.py")], env, log)
    try:
        wait_for(
            lambda: services.get_release(settings, MANAGER, started.id).files_done > 0,
            90,
            "the release to write files",
        )
        (horse, *_) = descendants(worker.pid)
        os.kill(horse, signal.SIGKILL)
        wait_for(
            lambda: services.get_release(settings, MANAGER, started.id).status == "failed",
            30,
            "the release to fail",
        )
        failed = services.get_release(settings, MANAGER, started.id)
        assert failed.error_message == upkeep.RELEASE_DIED
        first = _whole(settings, DEST)
        assert len(first) < started.file_count, "killed before the end"

        services.retry_release(settings, MANAGER, started.id)
        wait_for(
            lambda: (
                services.get_release(settings, MANAGER, started.id).status
                in ("completed", "failed")
            ),
            120,
            "the release to run again",
        )
        done = services.get_release(settings, MANAGER, started.id)
        assert done.status == "completed", done.error_message
        assert done.counts == {"created": started.file_count}
        after = _whole(settings, DEST)
        assert len(after) == started.file_count and first.items() <= after.items()
        assert not list((settings.data_root / DEST).rglob(".*.part"))
        rows = log_of(settings, started.id)
        assert sum(r["level"] == "file" for r in rows) == started.file_count, "one row per file"

        again = release(
            settings, patients=everyone, modalities=["cbct", "ios", "intraoral-photo"], name="again"
        )
        wait_for(
            lambda: services.get_release(settings, MANAGER, again.id).status == "completed",
            120,
            "the same release once more",
        )
        assert services.get_release(settings, MANAGER, again.id).counts == {
            "skipped": started.file_count
        }
        assert _whole(settings, DEST) == after
        assert worker.poll() is None, log.read_text()
    finally:
        stop_process(worker)


@pytest.mark.slow
def test_the_command_line_releases_waits_and_prints_the_log(
    rel: Settings, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """``release create --wait`` needs a worker: ``python worker.py`` runs beside it."""
    worker = start_process([str(PROJECT_ROOT / "worker.py")], dict(os.environ), tmp_path / "w.log")
    try:
        code = main(
            [
                "release",
                "create",
                "demo",
                "--user",
                MANAGER,
                "--to",
                DEST,
                "--folder",
                "/",
                "--modality",
                "ios",
                "--not-released",
                "--wait",
                "--json",
            ]
        )
    finally:
        stop_process(worker)
    out, err = capsys.readouterr()
    assert code == 0, err
    view = json.loads(out)
    assert view["status"] == "completed" and view["counts"] == {"created": view["file_count"]}
    assert main(["release", "log", view["id"], "--user", MANAGER]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {r["level"] for r in rows} == {"patient", "file"} and len(rows) == view["file_count"] + 4
    assert main(["release", "links", "demo", "--user", MANAGER]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 4
    # Released already: the queue is empty now, and the command says so.
    code = main(
        [
            "release",
            "create",
            "demo",
            "--user",
            MANAGER,
            "--to",
            DEST,
            "--folder",
            "/",
            "--modality",
            "ios",
            "--not-released",
        ]
    )
    assert code == 1 and "no files" in capsys.readouterr().err
    assert main(["release", "show", "0" * 32, "--user", ME]) == 1
    assert "No release" in capsys.readouterr().err


def test_an_identifier_left_in_a_kept_field_fails_the_release_and_registers_nothing_of_it(
    rel: Settings,
) -> None:
    """A data manager typed the patient's name into a field the profile keeps: the residual
    check finds it in the written file, before the file has its name."""
    series = services.patient_series(rel, MANAGER, "demo", "P0002")[0]
    header = services.header_fields(rel, MANAGER, "demo", "P0002", series.label)
    family = next(f.value for f in header if f.keyword == "PatientName").split("^")[0]
    assert family.isascii() and family.replace(" ", "").isalpha(), family
    services.curate(rel, MANAGER, "demo", [Target("P0002")], "BodyPartExamined", family.upper())
    started = release(rel, patients=["P0002"], modalities=["cbct"])
    work(rel)
    failed = services.get_release(rel, MANAGER, started.id)
    assert failed.status == "failed"
    assert "residual-identifier check found identifiers" in (failed.error_message or "")
    assert family.upper() not in (failed.error_message or "")
    # The DICOM files carry the name: none is registered, none has its name. A file the pool
    # had finished (the processed volume, say) is registered whole, by design (never lost).
    kept = _whole(rel, DEST)
    assert not [p for p in kept if p.endswith(".dcm")], "nothing of it registered"
    assert not list((rel.data_root / DEST).rglob("*.dcm")), "no file has its name"
    assert not list((rel.data_root / DEST).rglob(".*.part"))


# --- what an adversarial pass found (each failed before its fix) ---------------------------


def test_releases_with_an_archive_reuse_its_folders_batch_after_batch(
    rel: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("exporter.jobs.releases.BATCH_FILES", 3)
    for patient in ("P0001", "P0002"):
        made = release(rel, archive=VAULT, patients=[patient], modalities=["ios", "cbct"])
        work(rel)
        done = services.get_release(rel, MANAGER, made.id)
        assert done.status == "completed", done.error_message
    assert len(_whole(rel, VAULT)) == len(_whole(rel, DEST))


def test_one_archive_keeps_one_source_patient_per_label(rel: Settings) -> None:
    services.add_user(rel, MANAGER, "other", "data_manager")
    release(rel, archive=VAULT, patients=["P0001"], modalities=["ios"])
    work(rel)
    kept = _whole(rel, VAULT)
    asked = ReleaseRequest(
        schemas.parse_selection(patients=["P0004"], modalities=["ios"]), DEST, archive=VAULT
    )
    with db.session_scope(rel) as session:  # the other project's patient of the same label
        other = session.scalar(select(Project).where(Project.slug == "other"))
        assert other is not None
        session.execute(
            update(Patient)
            .where(Patient.project_id == other.id, Patient.label == "P0004")
            .values(label="P0001")
        )
    with pytest.raises(InvalidInput, match="already keeps other patients labelled P0001"):
        services.create_release(
            rel,
            MANAGER,
            "other",
            dataclasses.replace(
                asked, selection=schemas.parse_selection(patients=["P0001"], modalities=["ios"])
            ),
        )
    assert _whole(rel, VAULT) == kept, "the archived originals are untouched"


def test_a_retry_needs_the_roles_a_release_needs(rel: Settings) -> None:
    made = release(rel, patients=["P0001"], modalities=["ios"])
    services.cancel_release(rel, MANAGER, made.id)
    services.add_user(rel, "dm2@demo.example", "demo", "data_manager")  # the source only
    with pytest.raises((NotFound, PermissionDenied)):
        services.retry_release(rel, "dm2@demo.example", made.id)
    assert services.get_release(rel, MANAGER, made.id).status == "cancelled"


def test_releases_into_one_destination_take_turns(rel: Settings) -> None:
    first = release(rel, patients=["P0001"], modalities=["ios"], name="first")
    with pytest.raises(InvalidState, match=r"'first'.*take turns"):
        release(rel, patients=["P0002"], modalities=["ios"], name="second")
    work(rel)
    assert services.get_release(rel, MANAGER, first.id).status == "completed"
    second = release(rel, patients=["P0002"], modalities=["ios"], name="second")
    work(rel)
    assert services.get_release(rel, MANAGER, second.id).status == "completed"


def test_a_link_in_the_destination_tree_is_refused_and_nothing_is_made_outside(
    rel: Settings, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (rel.data_root / DEST).mkdir()
    (rel.data_root / DEST / "subject_001").symlink_to(outside)
    (outside / ".keep.part").write_text("not the portal's")
    with db.session_scope(rel) as session:
        session.execute(update(Project).where(Project.slug == DEST).values(root_path=DEST))
    made = release(rel, patients=["P0001"], modalities=["ios"])
    work(rel)
    failed = services.get_release(rel, MANAGER, made.id)
    assert failed.status == "failed" and "a link or a file" in (failed.error_message or "")
    assert sorted(p.name for p in outside.iterdir()) == [".keep.part"], "nothing made or removed"


def test_a_patient_moved_and_registered_again_is_matched_by_its_bytes(rel: Settings) -> None:
    made = release(rel, patients=["P0001"], modalities=["ios"])
    work(rel)
    first = _whole(rel, DEST)
    source = next((rel.data_root / "demo").rglob("P0001"))
    moved = source.parent.parent / "moved-here" / "P0001"
    moved.parent.mkdir()
    source.rename(moved)
    services.register(rel, "demo", rel.data_root / "demo", prune=True)
    again = release(rel, patients=["P0001"], modalities=["ios"], name="after the move")
    work(rel)
    view = services.get_release(rel, MANAGER, again.id)
    assert view.status == "completed" and view.counts == {"skipped": len(first)}, view.counts
    assert _whole(rel, DEST) == first
    assert services.get_release(rel, MANAGER, made.id).status == "completed"


def test_a_source_at_the_data_root_keeps_its_root(rel: Settings) -> None:
    with db.session_scope(rel) as session:
        session.execute(update(Project).where(Project.slug == "demo").values(root_path=""))
    made = release(rel, archive=VAULT, patients=["P0001"], modalities=["ios"])
    work(rel)
    assert services.get_release(rel, MANAGER, made.id).status == "completed"
    with db.session_scope(rel) as session:
        assert session.scalar(select(Project.root_path).where(Project.slug == "demo")) == ""
    assert all(p.startswith(f"{VAULT}/demo/demo/") for p in registered(rel, VAULT))


def test_a_run_that_was_cancelled_and_run_again_owns_nothing(rel: Settings) -> None:
    """The old job of a release that was cancelled and run again may still be writing: its
    progress and registrations are refused (only the newest run owns the release)."""
    from exporter.records import releases as records

    made = release(rel, patients=["P0001"], modalities=["ios"])
    with db.session_scope(rel) as session:
        assert records.start(session, made.id, "old-run")
    services.cancel_release(rel, MANAGER, made.id)
    services.retry_release(rel, MANAGER, made.id)
    with db.session_scope(rel) as session:
        assert records.start(session, made.id, "new-run")
        assert not records.owns(session, made.id, "old-run", files_done=99)
        assert not records.owns(session, made.id, "old-run", stopped=True, files_done=99)
        assert records.owns(session, made.id, "new-run", files_done=1)
    assert services.get_release(rel, MANAGER, made.id).files_done == 1


def test_a_retry_with_the_queue_down_is_saved_and_said(rel: Settings) -> None:
    made = release(rel, patients=["P0001"], modalities=["ios"])
    services.cancel_release(rel, MANAGER, made.id)
    down = dataclasses.replace(rel, redis_url="redis://127.0.0.1:1/0")
    again = services.retry_release(down, MANAGER, made.id)
    assert again.status == "pending", "the reconciler queues it when Redis is back"


def test_a_failed_archive_copy_names_no_patient_in_the_message_the_log_or_the_mail(
    rel: Settings, smtp: tuple[int, Inbox], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The archive mirrors the source's tree, whose paths carry labels and folders: an error
    there is told by the destination's name of the file."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (rel.data_root / VAULT).mkdir()
    (rel.data_root / VAULT / "demo").symlink_to(outside)  # the archive copy cannot go there
    with db.session_scope(rel) as session:
        session.execute(update(Project).where(Project.slug == VAULT).values(root_path=VAULT))
    made = release(rel, archive=VAULT, patients=["P0001"], modalities=["ios"])
    with caplog.at_level("DEBUG"):
        work(rel)
    failed = services.get_release(rel, MANAGER, made.id)
    message = failed.error_message or ""
    assert failed.status == "failed" and "the original of subject_" in message, message
    mails = [f"{m['Subject']}\n{text_of(m)}" for m in smtp[1].messages]
    assert any("has failed" in m for m in mails)
    for text in (message, caplog.text, *mails):
        assert "P0001" not in text and "site-a" not in text, text[:500]
    assert list(outside.iterdir()) == [], "nothing written through the link"


# --- moving released patients out of the source project --------------------------------------


def _source_files(settings: Settings, label: str) -> dict[str, str]:
    """path -> sha256 of the demo patient's registered (live) files."""
    return registered(settings, "demo", label)


def test_a_patient_moved_out_leaves_the_source_and_its_originals_stay_only_in_the_archive(
    rel: Settings,
) -> None:
    every = services.modality_keys(rel, MANAGER, "demo")
    originals = _source_files(rel, "P0001")
    kept = _source_files(rel, "P0002")
    assert originals and kept
    made = release(rel, archive=VAULT, patients=["P0001"], modalities=every, move_out=True)
    work(rel)
    # P0002 is released with one modality only: it has files the archive will not hold
    partial = release(rel, archive=VAULT, patients=["P0002"], modalities=["cbct"], move_out=True)
    work(rel)
    done = services.get_release(rel, MANAGER, made.id)
    assert done.status == "completed", done.error_message
    assert done.counts["moved_out"] == 1 and done.options["move_out"] is True
    assert services.get_release(rel, MANAGER, partial.id).counts["moved_out"] == 0

    # Out of the source: its tree, its selections, its curation, the researcher's view.
    for user in (MANAGER, ME):
        labels = {p.label for p in services.project_tree(rel, user, "demo").patients}
        assert "P0001" not in labels and "P0002" in labels
    with pytest.raises(InvalidInput, match="No patient 'P0001'"):
        services.estimate(rel, ME, "demo", schemas.parse_selection(patients=["P0001"]))
    with pytest.raises(NotFound):
        services.patient_series(rel, MANAGER, "demo", "P0001")
    # Its originals are in the archive, byte for byte, and no longer in the source's tree.
    vault = _whole(rel, VAULT)
    for path, digest in originals.items():
        assert not (rel.data_root / path).exists(), f"{path} is still in the source"
        assert digest in vault.values()
    with db.session_scope(rel) as session:
        folder = session.scalar(
            select(Patient.source_dir).where(Patient.label == "P0001", Patient.left_at.is_not(None))
        )
    assert folder and folder.endswith("/P0001") and not (rel.data_root / folder).exists()
    assert (rel.data_root / folder).parent.is_dir(), "the folders above it stay"
    # The patient with files the release left out stays, with all of them.
    for path, digest in kept.items():
        assert sha(rel.data_root / path) == digest
    assert _source_files(rel, "P0002") == kept
    # The link and the log say where it went.
    log = log_of(rel, made.id)
    moved = [r for r in log if r["level"] == "patient" and r["target"] == "archive"]
    assert [(r["patient"], r["status"]) for r in moved] == [("P0001", "moved_out")]
    assert services.patient_links(rel, MANAGER, "demo")
    # Registering the source again does not bring it back (nothing of it is on disk) ...
    services.register(rel, "demo", rel.data_root / "demo")
    assert "P0001" not in {p.label for p in services.project_tree(rel, MANAGER, "demo").patients}


def test_a_moved_out_patient_comes_back_when_files_arrive_in_its_folder(rel: Settings) -> None:
    every = services.modality_keys(rel, MANAGER, "demo")
    originals = _source_files(rel, "P0003")
    release(rel, archive=VAULT, patients=["P0003"], modalities=every, move_out=True)
    work(rel)
    assert "P0003" not in {p.label for p in services.project_tree(rel, MANAGER, "demo").patients}
    # A follow-up scan lands in the patient's folder: the registration brings the patient back.
    back = rel.data_root / next(p for p in originals if "/cbct/" in p)
    back.parent.mkdir(parents=True, exist_ok=True)
    archived = next(p for p in registered(rel, VAULT) if p.endswith(back.name) and "/P0003/" in p)
    shutil.copyfile(rel.data_root / archived, back)
    report = services.register(rel, "demo", rel.data_root / "demo")
    assert report.patients_returned == 1 and "1 back" in report.summary()
    assert "P0003" in {p.label for p in services.project_tree(rel, MANAGER, "demo").patients}


def test_moving_out_needs_an_archive(rel: Settings) -> None:
    with pytest.raises(InvalidInput, match="needs an archive"):
        release(rel, patients=["P0001"], move_out=True)
    assert services.list_releases(rel, MANAGER) == []


def test_an_original_is_deleted_only_while_it_and_its_copy_check_out(tmp_path: Path) -> None:
    """The checks before a source file goes: it and its archive copy, read again, have the
    registered SHA-256 and are plain files (no link on the way)."""
    from exporter.archive import publish

    root = tmp_path / "root"
    (root / "src" / "P1" / "cbct").mkdir(parents=True)
    (root / "arc" / "P1").mkdir(parents=True)

    def pair(name: str, data: bytes, copy: bytes | None) -> tuple[str, str, str]:
        (root / "src" / "P1" / "cbct" / name).write_bytes(data)
        if copy is None:
            (root / "arc" / "P1" / name).symlink_to(root / "src" / "P1" / "cbct" / name)
        else:
            (root / "arc" / "P1" / name).write_bytes(copy)
        return (f"src/P1/cbct/{name}", hashlib.sha256(data).hexdigest(), f"arc/P1/{name}")

    good = pair("a", b"good bytes", b"good bytes")
    assert publish.verified_originals(root, [good])
    assert not publish.verified_originals(root, [good, pair("b", b"x", b"tampered")])
    assert not publish.verified_originals(root, [pair("c", b"linked", None)])
    changed = pair("d", b"registered", b"registered")
    (root / changed[0]).write_bytes(b"changed on disk since")
    assert not publish.verified_originals(root, [changed])
    # At deletion, once more: a source that changed after the check stays.
    assert publish.remove_originals(root, [("src/P1", [good, changed])]) == [good[0]]
    assert not (root / good[0]).exists()
    assert (root / changed[0]).read_bytes() == b"changed on disk since"
    swapped = pair("e", b"swap", b"swap")
    (root / swapped[0]).unlink()
    (root / swapped[0]).symlink_to(root / swapped[2])
    assert publish.remove_originals(root, [("src/P1", [swapped])]) == []
    assert (root / swapped[2]).read_bytes() == b"swap", "the copy behind the link stays"


def _all_modalities_released_with_move_out(settings: Settings, patient: str) -> schemas.ReleaseView:
    every = services.modality_keys(settings, MANAGER, "demo")
    made = release(settings, archive=VAULT, patients=[patient], modalities=every, move_out=True)
    work(settings)
    done = services.get_release(settings, MANAGER, made.id)
    assert done.status == "completed", done.error_message
    return done


def _in_tree(settings: Settings, label: str) -> bool:
    return label in {p.label for p in services.project_tree(settings, MANAGER, "demo").patients}


def test_a_source_changed_since_its_archived_copy_keeps_the_patient_and_the_file(
    rel: Settings,
) -> None:
    """Found by an adversarial pass: a second release (every file skipped unchanged, by its
    fingerprint) deleted a source whose bytes had changed on disk, kept nowhere else."""
    every = services.modality_keys(rel, MANAGER, "demo")
    release(rel, archive=VAULT, patients=["P0001"], modalities=every)
    work(rel)
    path = next(p for p in _source_files(rel, "P0001") if p.endswith(".nii.gz"))
    (rel.data_root / path).write_bytes(b"new bytes, registered nowhere")
    done = _all_modalities_released_with_move_out(rel, "P0001")
    assert done.counts["moved_out"] == 0 and done.counts["kept_unverified"] == 1
    assert _in_tree(rel, "P0001")
    assert (rel.data_root / path).read_bytes() == b"new bytes, registered nowhere"
    assert all((rel.data_root / p).exists() for p in _source_files(rel, "P0001"))


def test_a_missing_file_keeps_the_patient(rel: Settings) -> None:
    """Found by an adversarial pass: a file a registration no longer found (a mount hiccup)
    has no archive copy; the patient left all the same."""
    with db.session_scope(rel) as session:
        row = session.scalars(
            select(FileRegistry)
            .join(Patient, Patient.id == FileRegistry.patient_id)
            .join(Project, Project.id == Patient.project_id)
            .where(Project.slug == "demo", Patient.label == "P0001")
        ).first()
        assert row is not None
        row.missing_since = datetime.now(UTC)
        missing = row.path
    done = _all_modalities_released_with_move_out(rel, "P0001")
    assert done.counts["moved_out"] == 0
    assert _in_tree(rel, "P0001") and (rel.data_root / missing).exists()


def test_a_damaged_archive_copy_keeps_the_patient(rel: Settings) -> None:
    """Found by an adversarial pass: an archive copy damaged after it was written kept its
    source file, but the patient left (hidden with the only good copy) and the release said
    moved out."""
    every = services.modality_keys(rel, MANAGER, "demo")
    release(rel, archive=VAULT, patients=["P0002"], modalities=every)
    work(rel)
    copy = next(p for p in registered(rel, VAULT) if "/P0002/" in p)
    (rel.data_root / copy).write_bytes(b"bit rot")
    originals = _source_files(rel, "P0002")
    done = _all_modalities_released_with_move_out(rel, "P0002")
    assert done.counts["moved_out"] == 0 and done.counts["kept_unverified"] == 1
    assert _in_tree(rel, "P0002")
    for path, digest in originals.items():
        assert sha(rel.data_root / path) == digest
    log = log_of(rel, done.id)
    assert not [r for r in log if r["status"] == "moved_out"]


def test_a_moved_out_patients_files_leave_the_registry_and_frozen_plans(rel: Settings) -> None:
    from exporter.registry.query import files_by_id

    ids = {}
    with db.session_scope(rel) as session:
        ids = dict(
            session.execute(
                select(FileRegistry.path, FileRegistry.id)
                .join(Patient, Patient.id == FileRegistry.patient_id)
                .join(Project, Project.id == Patient.project_id)
                .where(Project.slug == "demo", Patient.label == "P0003")
            ).all()
        )
    _all_modalities_released_with_move_out(rel, "P0003")
    with db.session_scope(rel) as session:
        assert files_by_id(session, list(ids.values())) == {}, "a retried part cannot read them"
        gone = session.scalars(
            select(FileRegistry.missing_since).where(FileRegistry.id.in_(list(ids.values())))
        ).all()
    assert gone and all(g is not None for g in gone), "deleted files are marked missing"


def test_housekeeping_deletes_what_a_stopped_move_out_left_in_place(
    rel: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker stopped between the commit that moves the patients out and the deletion of
    their source files: housekeeping checks each patient again and deletes them then; a
    patient whose archive copy was damaged meanwhile keeps its files."""
    from exporter.jobs import releases as jobs

    monkeypatch.setattr(jobs._Job, "_delete_originals", lambda self, patients: None)
    every = services.modality_keys(rel, MANAGER, "demo")
    originals = {p: _source_files(rel, p) for p in ("P0001", "P0002")}
    done = release(rel, archive=VAULT, patients=["P0001", "P0002"], modalities=every, move_out=True)
    work(rel)
    assert services.get_release(rel, MANAGER, done.id).counts["moved_out"] == 2
    assert all((rel.data_root / p).exists() for files in originals.values() for p in files)
    copy = next(p for p in registered(rel, VAULT) if "/P0002/" in p)
    (rel.data_root / copy).write_bytes(b"damaged after the release")
    assert upkeep.finish_moves(rel) == len(originals["P0001"])
    assert not any((rel.data_root / p).exists() for p in originals["P0001"])
    for path, digest in originals["P0002"].items():
        assert sha(rel.data_root / path) == digest, "its copy does not check out: kept"
    assert upkeep.finish_moves(rel) == 0, "nothing more to do, nothing done twice"
