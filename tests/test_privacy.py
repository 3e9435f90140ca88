"""Privacy levels end to end: identifiers planted in every place a scanner, camera or tool
writes them, exported as a researcher, a data manager and de-identified, and read back with
DCMTK (``dcmdump +r``) and with a plain byte search of every entry and of the ZIP itself.
Jobs run on the suite's Redis; every archive went through the residual-identifier check.
"""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select, update

from exporter import services
from exporter.archive.verify import verify
from exporter.config import Settings
from exporter.errors import PermissionDenied
from exporter.jobs import upkeep
from exporter.store import db
from exporter.store.models import (
    AuditEvent,
    DatasetExport,
    ExportDicomChange,
    ExportPart,
    PatientPseudonym,
)
from tests.builders import PLANTED, planted_tree
from tests.conftest import Inbox
from tests.test_jobs import MANAGER, ME, request, text_of, work

PROJECT = "plant"
RESEARCHER = "rosa@plant.example"
KEEPER = "dirk@plant.example"
ALL = ["cbct", "ios", "intraoral-photo"]


@pytest.fixture
def plant(portal: Settings) -> Settings:
    """The planted tree registered as project ``plant`` (default policy: nothing retained),
    with a researcher and a data manager."""
    planted_tree(portal.data_root / PROJECT)
    services.add_project(portal, PROJECT, "Planted identifiers")
    services.register(portal, PROJECT, portal.data_root / PROJECT)
    services.add_user(portal, RESEARCHER, PROJECT, "researcher")
    services.add_user(portal, KEEPER, PROJECT, "data_manager")
    return portal


def export(settings: Settings, user: str, **kw: object) -> tuple[str, Path]:
    """Create an export of the planted project, run it, return (status, archive)."""
    kw.setdefault("modalities", ALL)
    view = services.create_export(settings, user, PROJECT, request(**kw))
    work(settings)
    done = services.get_export(settings, user, view.id)
    archives = sorted((settings.export_root / view.id).glob("*.zip"))
    return done.status + (f": {done.error_message}" if done.error_message else ""), (
        archives[0] if archives else Path()
    )


def forms(value: str) -> set[str]:
    """The ways a file may write a value: as is, in either case, with its separators
    replaced or gone, a person name in either order."""
    parts = [p for p in re.split(r"[\^ ]+", value) if p]
    found = {value, value.upper(), value.lower(), " ".join(parts), "".join(parts)}
    if len(parts) > 1:
        found |= {" ".join(parts[::-1]), " ".join([parts[1], parts[0]])}
    return {f for f in found if len(f) >= 5}


def date_forms(day: str) -> set[str]:
    y, m, d = day[:4], day[4:6], day[6:]
    return {day, f"{y}-{m}-{d}", f"{y}:{m}:{d}", f"{d}.{m}.{y}", f"{d}/{m}/{y}", f"{y}/{m}/{d}"}


def entries(archive: Path) -> dict[str, bytes]:
    """Every entry's bytes, a gzipped entry's content too."""
    out: dict[str, bytes] = {}
    with zipfile.ZipFile(archive) as zf:
        for name in zf.namelist():
            data = zf.read(name)
            out[name] = data + (gzip.decompress(data) if name.endswith(".gz") else b"")
    return out


def zip_fields(archive: Path) -> bytes:
    """The ZIP's own structures: local headers, central directory, extra fields, comments
    (the entry data left out, which :func:`entries` covers)."""
    raw = archive.read_bytes()
    with zipfile.ZipFile(archive) as zf:
        spans = [
            (i.header_offset, i.header_offset + 30 + len(i.filename.encode()) + 40)
            for i in zf.infolist()
        ]
        start = zf.start_dir
    return b"".join(raw[a:b] for a, b in spans) + raw[start:]


def leaks(archive: Path, values: list[str]) -> list[str]:
    """Where any form of any value appears: in an entry, in the ZIP's fields, or in what
    DCMTK reads from every exported DICOM file."""
    found = []
    haystacks = {name: data.lower() for name, data in entries(archive).items()}
    haystacks["(zip structures)"] = zip_fields(archive).lower()
    for value in values:
        for form in forms(value):
            needle = form.lower().encode()
            found += [f"{form!r} in {name}" for name, data in haystacks.items() if needle in data]
    return found


def dcmtk_dump(archive: Path, tmp: Path) -> str:
    """``dcmdump +r`` over every DICOM file of the extracted archive."""
    target = tmp / "extracted"
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(target)
    done = subprocess.run(
        ["dcmdump", "+sd", "+r", "+sp", "*.dcm", "+L", str(target)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("(7fe0,0010)") + done.stdout.count("(7FE0,0010)") >= 4
    return done.stdout


def every_value() -> list[str]:
    return [v for p in PLANTED for v in p.values]


def test_a_researchers_default_export_carries_none_of_the_planted_identifiers(
    plant: Settings, tmp_path: Path
) -> None:
    status, archive = export(plant, RESEARCHER)
    assert status == "completed"
    assert verify(archive).ok
    assert leaks(archive, every_value()) == []
    dump = dcmtk_dump(archive, tmp_path)
    for value in every_value():
        for form in forms(value):
            assert form.lower() not in dump.lower(), f"dcmdump shows {form!r}"
    birth = {d for p in PLANTED for d in date_forms(p.dates[0])}
    assert not any(d.encode() in data for d in birth for data in entries(archive).values())
    assert "(0012,0062) CS [YES]" in dump and "(0009," not in dump and "(0019," not in dump
    names = list(entries(archive))
    assert any(n.endswith("/cbct/processed_1.nii.gz") for n in names), "generic names"
    assert all(re.search(r"/patient_\d{3}/", n) for n in names if n.count("/") > 1)
    with zipfile.ZipFile(archive) as zf:
        meta = json.loads(zf.read(f"{names[0].split('/')[0]}/metadata.json"))
        report = json.loads(zf.read(f"{names[0].split('/')[0]}/privacy_report.json"))
        times = {i.date_time for i in zf.infolist()}
    assert meta["privacy"]["level"] == "pseudonymised"
    assert meta["privacy"]["dates"] == "removed or blanked"
    assert meta["privacy"]["private_tags_kept"] == []
    assert report["result"] == "passed" and report["finding_count"] == 0
    assert report["checked"]["values"]["patient name"] >= 4
    assert report["checked"]["places"]["DICOM headers"] == 4
    assert {"JPEG metadata", "PNG metadata", "STL headers", "NIfTI headers (.nii.gz)"} <= set(
        report["checked"]["places"]
    )
    sources = {datetime.fromtimestamp(p.mtime).timetuple()[:6] for p in PLANTED}
    assert not times & sources, "no entry time is a source file's time"


def test_a_de_identified_export_also_drops_the_original_dates_and_times(
    plant: Settings, tmp_path: Path
) -> None:
    status, archive = export(plant, RESEARCHER, privacy="deidentified")
    assert status == "completed"
    assert leaks(archive, every_value()) == []
    dates = {d for p in PLANTED for day in p.dates for d in date_forms(day)}
    found = [(d, n) for n, data in entries(archive).items() for d in dates if d.encode() in data]
    assert found == []
    dump = dcmtk_dump(archive, tmp_path)
    assert not any(d in dump for d in dates)
    assert "(0028,0303) CS [MODIFIED]" in dump
    with zipfile.ZipFile(archive) as zf:
        times = {i.date_time for i in zf.infolist()}
    sources = {datetime.fromtimestamp(p.mtime).timetuple()[:6] for p in PLANTED}
    assert not times & sources


def test_a_data_managers_identified_export_carries_them_and_is_audited(
    plant: Settings, tmp_path: Path
) -> None:
    status, archive = export(plant, KEEPER, privacy="identified")
    assert status == "completed"
    dump = dcmtk_dump(archive, tmp_path)
    for p in PLANTED:  # every planted header value, as stored
        for value in (p.names[0], p.names[1], *p.ids[:2], p.dates[0], *p.others[1:]):
            assert f"[{value}" in dump, value
        assert f"{p.others[0]}, 9051 Sint-Denijs-Westrem" in dump
        assert f"/{p.label}/" in " ".join(entries(archive))
    data = b"".join(entries(archive).values())
    assert b"Vandenbroucke" in data and b"MRN-55821934" in data  # STL, EXIF, NIfTI as stored
    with zipfile.ZipFile(archive) as zf:
        report = json.loads(zf.read(f"{zf.namelist()[0].split('/')[0]}/privacy_report.json"))
    assert report["result"] == "identifiers present" and report["finding_count"] > 0
    with db.session_scope(plant) as session:
        actions = set(session.scalars(select(AuditEvent.action)))
    assert "identified-export" in actions


def test_a_researcher_is_refused_an_identified_export_until_a_data_manager_allows_it(
    plant: Settings,
) -> None:
    with pytest.raises(PermissionDenied, match=r"data managers \(dirk@plant.example\)"):
        services.create_export(plant, RESEARCHER, PROJECT, request(privacy="identified"))
    with pytest.raises(PermissionDenied):
        services.set_project_privacy(plant, RESEARCHER, PROJECT, {"retain_uids": True})
    services.set_project_privacy(plant, KEEPER, PROJECT, {"identified_for_researchers": True})
    view = services.create_export(
        plant, RESEARCHER, PROJECT, request(privacy="identified", modalities=["cbct"])
    )
    assert view.privacy == "identified"


def test_the_check_fails_an_export_whose_kept_private_sequence_holds_a_name(
    portal: Settings,
) -> None:
    """The rewrite keeps what the project's reviewed list keeps; the check still reads it."""
    planted_tree(portal.data_root / PROJECT, private_sequence=True)
    services.add_project(portal, PROJECT)
    services.register(portal, PROJECT, portal.data_root / PROJECT)
    services.add_user(portal, RESEARCHER, PROJECT, "researcher")
    services.add_user(portal, KEEPER, PROJECT, "data_manager")
    services.set_project_privacy(
        portal, KEEPER, PROJECT, keep_private=["0019,ACME PLAN,10", "0019,ACME PLAN,20"]
    )
    view = services.create_export(portal, RESEARCHER, PROJECT, request(modalities=["cbct"]))
    work(portal)
    done = services.get_export(portal, RESEARCHER, view.id)
    assert done.status == "failed" and done.privacy_check == "failed"
    assert done.error_message is not None
    assert "patient_001/cbct/series_001/0001.dcm (0019,1010)[0](0019,1020) private" in (
        done.error_message
    )
    assert "(patient name)" in done.error_message
    assert "Vandenbroucke" not in done.error_message and "Q7731" not in done.error_message
    assert list((portal.export_root / view.id).glob("*")) == [], "nothing left behind"
    report = services.export_privacy_report(portal, KEEPER, view.id)
    assert report is not None and report["result"] == "failed"
    places = {(f["file"].split("/")[-1], f["place"]) for f in report["findings"]}  # type: ignore[index, union-attr]
    assert ("0001.dcm", "(0019,1010)[0](0019,1020) private") in places
    assert "Vandenbroucke" not in json.dumps(report)
    with pytest.raises(PermissionDenied):
        services.export_privacy_report(portal, RESEARCHER, view.id)


def _dates_and_uids(archive: Path) -> dict[str, tuple[str, str, str]]:
    """Per patient folder: (study date, study UID, series UID) of its first CBCT slice."""
    found = {}
    with zipfile.ZipFile(archive) as zf:
        for name in zf.namelist():
            if name.endswith("/0001.dcm"):
                ds = pydicom.dcmread(zf.open(name))
                found[name.split("/")[1]] = (
                    str(ds.StudyDate),
                    str(ds.StudyInstanceUID),
                    str(ds.SeriesInstanceUID),
                )
    return found


def test_pseudonyms_shifts_and_uids_are_stable_per_project_and_fresh_on_request(
    portal: Settings,
) -> None:
    first = services.create_export(
        portal, ME, "demo", request(modalities=["cbct"], patients=["P0003"], folders=[])
    )
    work(portal)
    deid = {"modalities": ["cbct"], "privacy": "deidentified"}
    runs = []
    for kw in (deid, deid, {**deid, "fresh_pseudonyms": True}, {**deid, "fresh_pseudonyms": True}):
        view = services.create_export(portal, ME, "demo", request(**kw, name=str(len(runs))))
        work(portal)
        (archive,) = (portal.export_root / view.id).glob("*.zip")
        runs.append(_dates_and_uids(archive))
    key = {r.label: r.pseudonym for r in services.export_key(portal, MANAGER, first.id)}
    assert key == {"P0003": "patient_001"}, "the first patient ever exported is patient_001"
    assert runs[0] == runs[1], "same folders, shifted dates and UIDs in a follow-up export"
    assert len(runs[0]) == 4
    for fresh in runs[2:]:
        assert set(fresh.values()).isdisjoint(runs[0].values())
        assert all(folder.startswith("subject_") for folder in fresh), "never a stable name"
    assert {u for _, u, _ in runs[2].values()}.isdisjoint({u for _, u, _ in runs[3].values()})
    with db.session_scope(portal) as session:
        stable = dict(session.execute(select(PatientPseudonym.id, PatientPseudonym.number)).all())
    assert sorted(stable.values()) == [1, 1, 2, 3, 4], "fresh exports add no stable ones"
    assert all(folder.startswith("case_") for folder in runs[0]), "de-identified: its own series"
    with pytest.raises(PermissionDenied):
        services.export_key(portal, ME, first.id)


def test_pseudonym_numbers_do_not_follow_the_order_of_labels(portal: Settings) -> None:
    from exporter.records import pseudonyms
    from exporter.store.models import Patient, Project

    with db.session_scope(portal) as session:
        project = session.scalar(select(Project).where(Project.slug == "other"))
        assert project is not None
        session.add_all(Patient(project_id=project.id, label=f"L{i:03d}") for i in range(40))
        session.flush()
        ids = dict(
            session.execute(select(Patient.id, Patient.label).where(Patient.label.like("L%"))).all()
        )
        names = pseudonyms.assign(session, project.id, ids)
        again = pseudonyms.assign(session, project.id, ids)
    by_label = [names[i] for i in sorted(ids, key=lambda i: ids[i])]
    assert sorted(by_label) != by_label, "numbers are drawn, not given in label order"
    assert sorted(names.values()) == sorted(f"patient_{n:03d}" for n in range(1, 41))
    assert again == names, "kept once assigned"


def test_the_change_log_keeps_series_rows_and_forgets_old_values(portal: Settings) -> None:
    view = services.create_export(portal, ME, "demo", request(modalities=["cbct"]))
    work(portal)
    log = services.export_changes(portal, MANAGER, view.id, limit=10_000)
    series = [r for r in log.rows if r.files > 1]
    assert series and all(r.path.endswith("/series_001") for r in series)
    assert {r.keyword for r in series} >= {"PatientName", "PatientAddress"}
    per_file = [r for r in log.rows if r.files == 1 and r.path.endswith(".dcm")]
    assert {r.keyword for r in per_file} <= {"SOPInstanceUID", "MediaStorageSOPInstanceUID"}
    slices = sum(1 for _ in (portal.data_root / "demo").rglob("*.dcm"))
    # Rows per file: only the new SOP Instance UIDs differ file to file. (The 10x target
    # is for series of hundreds of slices: bench/export_bench.py measures it; the demo's
    # series have 12, which bounds the ratio at about 8.)
    assert len(log.rows) * 6 <= sum(r.files for r in log.rows), "series rows: far fewer"
    assert sum(r.files for r in log.rows if r.keyword == "PatientName") == slices
    assert any(r.old_value for r in log.rows)
    services.delete_export(portal, ME, view.id)
    assert not any(r.old_value for r in services.export_changes(portal, MANAGER, view.id).rows)
    # Expiry and the retention setting remove them too.
    kept = services.create_export(portal, ME, "demo", request(modalities=["cbct"], name="k"))
    work(portal)
    with db.session_scope(portal) as session:
        session.execute(
            update(DatasetExport)
            .where(DatasetExport.id == kept.id)
            .values(created_at=datetime.now(UTC) - timedelta(days=15))
        )
    upkeep.expire(portal)
    with db.session_scope(portal) as session:
        olds = session.scalars(
            select(ExportDicomChange.old_value).where(ExportDicomChange.export_id == kept.id)
        ).all()
    assert olds and not any(olds), "CHANGE_LOG_RETENTION_DAYS (14) has passed"
    assert services.get_export(portal, ME, kept.id).status == "completed", "files stay"


def test_skipped_and_failed_files_are_named_by_entry_never_by_stored_path(
    portal: Settings, smtp: tuple[int, Inbox]
) -> None:
    victim = next((portal.data_root / "demo").rglob("P0003/ios/lower.stl"))
    victim.unlink()
    skipping = services.create_export(
        portal, ME, "demo", request(skip_missing=True, modalities=["ios"])
    )
    work(portal)
    (archive,) = (portal.export_root / skipping.id).glob("*.zip")
    with zipfile.ZipFile(archive) as zf:
        meta = json.loads(zf.read(f"{zf.namelist()[0].split('/')[0]}/metadata.json"))
    (skipped,) = meta["skipped"]
    assert skipped["path"].endswith("/ios/lower.stl") and skipped["path"] in skipped["reason"]
    assert "P0003" not in json.dumps(meta) and "demo/" not in skipped["reason"]
    view = services.create_export(portal, ME, "demo", request(modalities=["ios"], name="f"))
    work(portal)
    failed = services.get_export(portal, ME, view.id)
    assert failed.status == "failed" and failed.error_message
    assert "P0003" not in failed.error_message and "/ios/lower.stl" in failed.error_message
    mails = [text_of(m) for m in smtp[1].messages]
    assert any("/ios/lower.stl" in t for t in mails), "the failure mail names the entry"
    assert not any("P0003" in t for t in mails)


def test_a_researchers_preview_pairs_no_label_with_the_projects_keys(portal: Settings) -> None:
    """A label beside its stable pseudonym, date shift or UID is the re-identification key:
    only the project's data managers see the values the export will write."""
    body = request(modalities=["cbct"], privacy="deidentified")
    first = services.create_export(portal, ME, "demo", body)
    work(portal)
    key = {r.label: r.pseudonym for r in services.export_key(portal, MANAGER, first.id)}
    mine = services.preview_export(portal, ME, "demo", body)
    theirs = services.preview_export(portal, MANAGER, "demo", body)

    def named(preview: object) -> dict[str, str]:
        return {r.patient: r.new_value for r in preview.rows if r.keyword == "PatientID"}  # type: ignore[attr-defined]

    assert named(theirs) == key
    assert set(named(mine).values()) == {f"new_patient_{i}" for i in range(1, 5)}

    def dates(preview: object) -> dict[tuple[str, str], str]:
        rows = preview.rows  # type: ignore[attr-defined]
        return {(r.patient, r.series): r.new_value for r in rows if r.keyword == "StudyDate"}

    # An illustrative shift is drawn at random from ~1,100 days, so one series may match the
    # project's shift by chance (about 0.4 % per series); two that match (~1 in 200,000 runs)
    # would mean the preview shows the project's keys.
    ours, project = dates(mine), dates(theirs)
    assert ours.keys() == project.keys() and len(project) >= 3
    same = [k for k in project if ours[k] == project[k]]
    assert len(same) <= 1, f"illustrative shifts, not the project's: {same}"
    only_scans = services.preview_export(portal, ME, "demo", request(modalities=["ios"]))
    assert only_scans.rows == [] and only_scans.other_files > 0, "no DICOM: nothing to show"


def test_a_failed_part_logs_no_stored_path(
    portal: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    victim = next((portal.data_root / "demo").rglob("P0003/ios/lower.stl"))
    victim.unlink()
    view = services.create_export(
        portal, ME, "demo", request(modalities=["cbct", "ios"], part_size=1024 * 1024)
    )
    with caplog.at_level("DEBUG"):
        work(portal)
    failed = services.get_export(portal, ME, view.id)
    assert len(failed.parts) > 1, "the part jobs are what this is about"
    assert failed.status == "failed" and "/ios/lower.stl" in (failed.error_message or "")
    assert "P0003" not in caplog.text and "lower.stl" in caplog.text
    with db.session_scope(portal) as session:
        detail = session.scalar(
            select(DatasetExport.error_detail).where(DatasetExport.id == view.id)
        )
        parts = session.scalars(
            select(ExportPart.error_detail).where(ExportPart.export_id == view.id)
        ).all()
    assert detail and any("stored path: demo/" in (p or "") for p in parts), "for admins"


def test_two_exports_at_once_number_new_patients_without_a_clash(portal: Settings) -> None:
    import threading

    from exporter.records import pseudonyms
    from exporter.store.models import Patient, Project

    with db.session_scope(portal) as session:
        project = session.scalar(select(Project).where(Project.slug == "other"))
        assert project is not None
        project_id = project.id
        session.add_all(Patient(project_id=project_id, label=f"C{i:02d}") for i in range(30))
    with db.session_scope(portal) as session:
        ids = dict(
            session.execute(select(Patient.id, Patient.label).where(Patient.label.like("C%"))).all()
        )
    halves = [dict(list(ids.items())[:20]), dict(list(ids.items())[10:])]  # 10 in both
    results: list[dict[int, str]] = []
    errors: list[BaseException] = []

    def run(patients: dict[int, str]) -> None:
        try:
            with db.session_scope(portal) as session:
                results.append(pseudonyms.assign(session, project_id, patients))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(h,)) for h in halves]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    shared = set(halves[0]) & set(halves[1])
    assert all(results[0][p] == results[1][p] for p in shared)
    with db.session_scope(portal) as session:
        numbers = session.scalars(select(PatientPseudonym.number)).all()
    assert sorted(numbers) == list(range(1, 31))


def _one_more_file(portal: Settings, relative: str, data: bytes) -> None:
    """Add a file to patient Q7731 of the planted project and register it."""
    path = portal.data_root / PROJECT / PLANTED[0].folder / PLANTED[0].label / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    services.register(portal, PROJECT, portal.data_root / PROJECT)


def test_a_compressed_frame_that_carries_exif_fails_the_export(plant: Settings) -> None:
    """JPEG-compressed DICOM (an intraoral camera's, say) copies its frames unchanged: an
    EXIF or comment segment inside a frame is found by the check, and the export fails."""
    import io

    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    exif = Image.Exif()
    exif[0x013B] = PLANTED[0].names[0]
    frame = io.BytesIO()
    Image.new("RGB", (16, 16), (9, 9, 9)).save(frame, "JPEG", exif=exif, comment=b"MRN-55821934")
    ds = pydicom.dcmread(next((plant.data_root / PROJECT).rglob("Q7731/**/0001.dcm")))
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.Rows = ds.Columns = 16
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 3, "YBR_FULL_422"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PlanarConfiguration = 8, 8, 7, 0
    ds.PixelData = encapsulate([frame.getvalue()])
    ds["PixelData"].VR = "OB"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    _one_more_file(plant, "panoramic/pan.dcm", out.getvalue())
    status, _ = export(plant, RESEARCHER, modalities=["panoramic"])
    assert status.startswith("failed: The privacy check found")
    assert "pixel data frame: JPEG APP1 segment (patient name)" in status
    assert "pixel data frame: JPEG COM segment (patient ID)" in status


def test_a_header_the_rewrite_cannot_write_fails_without_quoting_it(plant: Settings) -> None:
    """pydicom's error quotes the value it choked on, which may run into the patient's name:
    its words go to the administrators' detail, not to the message, mail or audit."""
    raw = bytearray(next((plant.data_root / PROJECT).rglob("Q7731/**/0001.dcm")).read_bytes())
    at = raw.index(b"\x02\x00\x10\x00UI")  # Transfer Syntax UID: its value runs on, as far
    name = raw.index(b"\x10\x00\x10\x00PN")  # as the patient's name
    length = raw.index(b"\x10\x00\x20\x00", name) - (at + 8)
    raw[at + 6 : at + 8] = (length + length % 2).to_bytes(2, "little")
    _one_more_file(plant, "panoramic/broken.dcm", bytes(raw))
    view = services.create_export(plant, RESEARCHER, PROJECT, request(modalities=["panoramic"]))
    work(plant)
    failed = services.get_export(plant, RESEARCHER, view.id)
    assert failed.status == "failed" and failed.error_message
    for value in every_value():
        assert value not in failed.error_message
    with db.session_scope(plant) as session:
        audit = json.dumps(list(session.scalars(select(AuditEvent.detail))))
        detail = session.scalar(
            select(DatasetExport.error_detail).where(DatasetExport.id == view.id)
        )
    assert "Vandenbroucke" not in audit
    assert detail and "detail: " in detail, "administrators keep pydicom's words"


def test_a_retry_needs_the_level_to_be_allowed_still(portal: Settings) -> None:
    services.set_project_privacy(portal, MANAGER, "demo", {"identified_for_researchers": True})
    view = services.create_export(
        portal,
        ME,
        "demo",
        request(privacy="identified", modalities=["cbct"], part_size=1024 * 1024),
    )
    victim = next((portal.data_root / "demo").rglob("P0003/cbct/raw/**/0002.dcm"))
    victim.write_bytes(victim.read_bytes()[:-2] + b"xx")  # changed since it was registered
    work(portal)
    failed = services.get_export(portal, ME, view.id)
    assert failed.status == "failed" and len(failed.parts) > 1
    services.set_project_privacy(portal, MANAGER, "demo", {"identified_for_researchers": False})
    with pytest.raises(PermissionDenied, match="for its data managers"):
        services.retry_export(portal, ME, view.id)
    assert services.retry_export(portal, MANAGER, view.id).status == "processing"
