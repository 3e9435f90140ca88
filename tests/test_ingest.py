"""Registry ingest: the directory convention, idempotence, changes and every bad input."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from sqlalchemy import select

from exporter import schemas, services
from exporter.config import Settings
from exporter.errors import IngestError
from exporter.store import db
from exporter.store.models import FileKind, FileRegistry, Patient, PatientFolder, PatientTag, Tag
from tests.builders import small_tree, write_dicom, write_file


@pytest.fixture
def tree(settings: Settings) -> Path:
    services.add_project(settings, "proj")
    return small_tree(settings.data_root / "study")


def rows(settings: Settings) -> dict[str, FileRegistry]:
    with db.session_scope(settings) as session:
        return {f.path: f for f in session.scalars(select(FileRegistry))}


def test_registers_patients_folders_and_files(settings: Settings, tree: Path) -> None:
    report = services.register(settings, "proj", tree)
    assert report.ok
    assert (report.patients, report.patients_added, report.files_added) == (3, 3, 20)
    assert report.skipped == []
    files = rows(settings)
    dcm = files["study/site-a/study-1/P001/cbct/raw/series_001/0002.dcm"]
    assert dcm.kind is FileKind.RAW
    assert dcm.series_label == "series_001"
    assert dcm.media_type == "application/dicom"
    assert dcm.dicom_header is not None and dcm.dicom_header["PatientName"] == "DOE^JANE"
    assert dcm.acquisition_date is not None and dcm.acquisition_date.isoformat() == "2024-03-15"
    raw = (tree / "site-a/study-1/P001/cbct/raw/series_001/0002.dcm").read_bytes()
    assert dcm.sha256 == hashlib.sha256(raw).hexdigest()
    assert dcm.size_bytes == len(raw)
    nii = files["study/site-a/study-1/P001/cbct/processed/volume.nii.gz"]
    assert (nii.kind, nii.series_label) == (FileKind.PROCESSED, None)
    upper = files["study/site-b/P003/ios/upper.stl"]
    assert (upper.subtype, upper.file_type, upper.media_type) == (
        "upper",
        "ios_raw_upper",
        "model/stl",
    )
    with db.session_scope(settings) as session:
        folders = sorted(session.scalars(select(PatientFolder.path)))
        assert folders == ["site-a", "site-a/study-1", "site-b"]
        p3 = session.scalar(select(Patient).where(Patient.label == "P003"))
        assert p3 is not None
        folder = session.get(PatientFolder, p3.folder_id)
        assert folder is not None and folder.path == "site-b"
    assert "20 files" in report.summary() and "0 skipped" in report.summary()


def test_second_run_adds_nothing_and_reports_changed_files(settings: Settings, tree: Path) -> None:
    services.register(settings, "proj", tree)
    again = services.register(settings, "proj", tree)
    assert (again.patients_added, again.files_added, again.files_updated) == (0, 0, [])
    assert again.files == 20
    photo = tree / "site-a/study-1/P002/intraoral-photo/photo_1.jpg"
    photo.write_bytes(b"\xff\xd8" + b"changed" * 100)
    os.utime(photo, ns=(1, 1))
    changed = services.register(settings, "proj", tree)
    assert changed.files_updated == ["study/site-a/study-1/P002/intraoral-photo/photo_1.jpg"]
    row = rows(settings)["study/site-a/study-1/P002/intraoral-photo/photo_1.jpg"]
    assert row.sha256 == hashlib.sha256(photo.read_bytes()).hexdigest()
    assert row.size_bytes == 702


def test_removed_files_are_reported_as_missing(settings: Settings, tree: Path) -> None:
    services.register(settings, "proj", tree)
    (tree / "site-b/P003/ios/lower.stl").unlink()
    report = services.register(settings, "proj", tree)
    assert report.missing == ["study/site-b/P003/ios/lower.stl"]


def test_symlinks_are_refused_and_never_followed(
    settings: Settings, tree: Path, tmp_path: Path
) -> None:
    secret = write_file(tmp_path / "outside" / "secret.jpg", b"\xff\xd8secret")
    link = tree / "site-a/study-1/P001/intraoral-photo/photo_2.jpg"
    link.symlink_to(secret)
    (tree / "site-b/P003/facial-photo").symlink_to(tmp_path / "outside", target_is_directory=True)
    report = services.register(settings, "proj", tree)
    assert not report.ok
    refused = {i.path for i in report.refused}
    assert refused == {
        "study/site-a/study-1/P001/intraoral-photo/photo_2.jpg",
        "study/site-b/P003/facial-photo",
    }
    assert "symbolic link refused" in report.refused[0].reason
    assert all("secret" not in path for path in rows(settings))


def test_directory_outside_the_data_root_is_refused(settings: Settings, tmp_path: Path) -> None:
    services.add_project(settings, "proj")
    outside = small_tree(tmp_path / "elsewhere")
    with pytest.raises(IngestError, match=r"outside the data root .* set DATA_ROOT"):
        services.register(settings, "proj", outside)
    with pytest.raises(IngestError, match="is not a directory"):
        services.register(settings, "proj", settings.data_root / "nope")
    link = settings.data_root / "linked"
    settings.data_root.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside, target_is_directory=True)
    with pytest.raises(IngestError, match="is a symbolic link"):
        services.register(settings, "proj", link)
    assert rows(settings) == {}


def test_bad_files_are_reported_with_their_path_and_skipped(settings: Settings, tree: Path) -> None:
    base = tree / "site-a/study-1/P001"
    write_file(base / "cbct/raw/series_001/0004.dcm", b"this is not dicom")
    write_file(base / "xray-notes/readme.txt", b"notes")
    write_file(base / "loose.txt", b"?")
    write_file(tree / "site-a/stray.csv", b"a,b")
    write_file(base / "ios/scan.zip", b"PK")
    unreadable = write_file(base / "intraoral-photo/photo_9.jpg", b"\xff\xd8x")
    unreadable.chmod(0)
    report = services.register(settings, "proj", tree)
    reasons = {i.path.removeprefix("study/"): i.reason for i in report.skipped}
    assert "not a DICOM file" in reasons["site-a/study-1/P001/cbct/raw/series_001/0004.dcm"]
    assert "unknown directory name 'xray-notes'" in reasons["site-a/study-1/P001/xray-notes"]
    assert "file directly in a patient directory" in reasons["site-a/study-1/P001/loose.txt"]
    assert "outside any <patient>/<modality>/" in reasons["site-a/stray.csv"]
    assert "extension '.zip' is not one of ios's" in reasons["site-a/study-1/P001/ios/scan.zip"]
    if os.geteuid() != 0:  # root reads a chmod 000 file anyway
        assert "unreadable" in reasons["site-a/study-1/P001/intraoral-photo/photo_9.jpg"]
    assert report.ok, "skipped files do not make the run fail; refused ones do"
    registered = rows(settings)
    assert "study/site-a/study-1/P001/cbct/raw/series_001/0004.dcm" not in registered
    assert "study/site-a/study-1/P001/cbct/raw/series_001/0003.dcm" in registered


def test_duplicate_patient_label_in_two_folders_is_refused(settings: Settings, tree: Path) -> None:
    write_dicom(tree / "site-b/P001/cbct/0001.dcm")
    report = services.register(settings, "proj", tree)
    assert not report.ok
    assert "patient 'P001' also appears at 'study/site-a/study-1/P001'" in report.refused[0].reason


def tags_of(settings: Settings) -> dict[str, set[str]]:
    with db.session_scope(settings) as session:
        result: dict[str, set[str]] = {}
        for label, name in session.execute(
            select(Patient.label, Tag.name)
            .join(PatientTag, PatientTag.patient_id == Patient.id)
            .join(Tag, Tag.id == PatientTag.tag_id)
        ):
            result.setdefault(label, set()).add(name)
        return result


def test_tags_csv_sets_tags_and_reports_unknown_patients(
    settings: Settings, tree: Path, tmp_path: Path
) -> None:
    csv_path = tmp_path / "tags.csv"
    csv_path.write_text("patient,tags\nP001,baseline;class-II\nP002, follow-up \nP999,x\n")
    report = services.register(settings, "proj", tree, csv_path)
    assert tags_of(settings) == {"P001": {"baseline", "class-II"}, "P002": {"follow-up"}}
    assert report.tagged == 2
    assert any("no patient 'P999'" in i.reason and i.path == "tags.csv:4" for i in report.skipped)
    csv_path.write_text("patient,tags\nP001,baseline\n")
    services.register(settings, "proj", tree, csv_path)
    assert tags_of(settings)["P001"] == {"baseline"}


def test_tags_csv_with_wrong_header_is_refused(
    settings: Settings, tree: Path, tmp_path: Path
) -> None:
    csv_path = tmp_path / "tags.csv"
    csv_path.write_text("id;labels\nP001;x\n")
    with pytest.raises(IngestError, match="needs the header 'patient,tags'"):
        services.register(settings, "proj", tree, csv_path)


def estimate_files(
    settings: Settings, modality: str = "ios", folders: tuple[str, ...] = ("",)
) -> int:
    services.add_user(settings, "rita@lab.example", "proj", "researcher")
    sel = schemas.parse_selection(folders=list(folders) or ["/"], modalities=[modality])
    return services.estimate(settings, "rita@lab.example", "proj", sel).file_count


def test_same_name_in_a_later_run_is_not_merged_into_one_patient(
    settings: Settings, tree: Path
) -> None:
    services.register(settings, "proj", tree)
    write_dicom(tree / "site-c" / "P001" / "cbct" / "0001.dcm", patient="BOB^OTHER")
    report = services.register(settings, "proj", tree / "site-c")
    assert not report.ok
    assert (
        "already registered from 'study/site-a/study-1/P001', which still exists"
        in report.refused[0].reason
    )
    assert not any("site-c" in path for path in rows(settings))


def test_moved_patient_follows_and_old_rows_go_missing_then_pruned(
    settings: Settings, tree: Path
) -> None:
    services.register(settings, "proj", tree)
    assert estimate_files(settings) == 6
    (tree / "site-a" / "archive").mkdir()
    (tree / "site-b" / "P003").rename(tree / "site-a" / "archive" / "P003")
    report = services.register(settings, "proj", tree)
    assert report.ok and report.patients_moved == ["study/site-b/P003"]
    assert len(report.missing) == 6 and all("site-b/P003" in m for m in report.missing)
    assert estimate_files(settings) == 6, "missing rows are left out of the estimate"
    assert estimate_files(settings, folders=("site-a/archive",)) == 2
    pruned = services.register(settings, "proj", tree, prune=True)
    assert pruned.pruned == 6
    assert not any("site-b/P003" in path for path in rows(settings))
    assert services.register(settings, "proj", tree).missing == []


def test_missing_files_leave_estimates_and_come_back(settings: Settings, tree: Path) -> None:
    services.register(settings, "proj", tree)
    upper = tree / "site-b/P003/ios/upper.stl"
    saved = upper.read_bytes()
    stat = upper.stat()
    upper.unlink()
    report = services.register(settings, "proj", tree)
    assert report.missing == ["study/site-b/P003/ios/upper.stl"]
    assert estimate_files(settings) == 5
    upper.write_bytes(saved)
    os.utime(upper, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    back = services.register(settings, "proj", tree)
    assert back.missing == [] and estimate_files(settings) == 6


def test_registering_a_subdirectory_keeps_the_folder_tree(settings: Settings, tree: Path) -> None:
    services.register(settings, "proj", tree)
    services.register(settings, "proj", tree / "site-a" / "study-1")
    with db.session_scope(settings) as session:
        p1 = session.scalar(select(Patient).where(Patient.label == "P001"))
        assert p1 is not None
        folder = session.get(PatientFolder, p1.folder_id)
        assert folder is not None and folder.path == "site-a/study-1"
    assert estimate_files(settings, folders=("site-a",)) == 4


def test_directories_outside_the_project_root_are_refused(settings: Settings, tree: Path) -> None:
    services.register(settings, "proj", tree)
    other = small_tree(settings.data_root / "elsewhere")
    with pytest.raises(IngestError, match="Project 'proj' keeps its files under 'study'"):
        services.register(settings, "proj", other)


def test_a_file_belongs_to_one_project(settings: Settings, tree: Path) -> None:
    services.register(settings, "proj", tree)
    services.add_project(settings, "second")
    report = services.register(settings, "second", tree)
    assert not report.ok and len(report.refused) == 20
    assert report.refused[0].reason.startswith("already registered in another project")


def test_underscore_and_case_in_paths_are_literal(settings: Settings, tree: Path) -> None:
    services.register(settings, "proj", tree)
    small_tree(tree / "siteX1")
    small_tree(tree / "site_1")
    (tree / "site_1" / "site-a" / "study-1" / "P001").rename(
        tree / "site_1" / "site-a" / "study-1" / "Q001"
    )
    for p in ("P002", "P003"):
        for base in ("siteX1", "site_1"):
            for found in (tree / base).rglob(p):
                found.rename(found.with_name(p + base))
    for found in (tree / "siteX1").rglob("P001"):
        found.rename(found.with_name("P001X"))
    services.register(settings, "proj", tree / "siteX1")
    report = services.register(settings, "proj", tree / "site_1")
    assert report.missing == [], "'_' in a prefix is not a wildcard"
    (tree / "Site-A" / "x" / "Z1" / "ios").mkdir(parents=True)
    write_file(tree / "Site-A" / "x" / "Z1" / "ios" / "upper.stl", b"s" * 84)
    services.register(settings, "proj", tree / "Site-A")
    assert estimate_files(settings, folders=("Site-A",)) == 1
    assert estimate_files(settings, folders=("site-a",)) == 4


def test_a_malformed_dicom_is_skipped_not_fatal(settings: Settings, tree: Path) -> None:
    bad = tree / "site-a/study-1/P001/cbct/raw/series_001/0002.dcm"
    raw = bad.read_bytes()
    at = raw.index(b"\x28\x00\x10\x00US")  # Rows: give it an odd length of 3
    bad.write_bytes(raw[:at] + b"\x28\x00\x10\x00US\x03\x00\x08\x00\x00" + raw[at + 10 :])
    report = services.register(settings, "proj", tree)
    reasons = {i.path: i.reason for i in report.skipped}
    assert "study/site-a/study-1/P001/cbct/raw/series_001/0002.dcm" in reasons
    assert report.files_added == 19


def test_modalities_not_enabled_in_the_project_are_skipped(settings: Settings, tree: Path) -> None:
    from exporter.store.models import Modality, ProjectModality

    with db.session_scope(settings) as session:
        ios = session.scalar(select(Modality).where(Modality.key == "ios"))
        assert ios is not None
        session.execute(
            ProjectModality.__table__.delete().where(ProjectModality.modality_id == ios.id)
        )
    report = services.register(settings, "proj", tree)
    reasons = [i.reason for i in report.skipped]
    assert sum("modality 'ios' is not enabled in this project" in r for r in reasons) == 3
    assert report.files_added == 14


def test_reading_in_worker_processes_registers_the_same_rows(
    settings: Settings, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from exporter.registry import ingest

    services.register(settings, "proj", tree)
    inline = {p: (r.sha256, r.dicom_header, r.media_type) for p, r in rows(settings).items()}
    services.register(settings, "proj", tree, prune=True)
    with db.session_scope(settings) as session:
        session.execute(FileRegistry.__table__.delete())
    monkeypatch.setattr(ingest, "POOL_FROM_FILES", 1)
    report = services.register(settings, "proj", tree)
    assert report.files_added == 20
    pooled = {p: (r.sha256, r.dicom_header, r.media_type) for p, r in rows(settings).items()}
    assert pooled == inline


def test_reread_takes_the_header_subset_anew_and_keeps_identifying_fields(
    settings: Settings, tmp_path: Path
) -> None:
    """A registry made before the subset held other IDs, addresses and phones learns them
    with --reread; without it, unchanged files are not read again."""
    import pydicom
    from pydicom.dataset import Dataset
    from sqlalchemy import update

    services.add_project(settings, "proj")
    path = write_dicom(settings.data_root / "study" / "P9" / "cbct" / "s1" / "0001.dcm")
    ds = pydicom.dcmread(path)
    ds.PatientAddress = "Kerkstraat 1, Gent"
    ds.PatientTelephoneNumbers = "+32 9 000 00 00"
    other = Dataset()
    other.PatientID = "RRN-1"
    ds.OtherPatientIDsSequence = [other]
    ds.save_as(path, enforce_file_format=True)
    services.register(settings, "proj", settings.data_root / "study")
    (row,) = rows(settings).values()
    assert row.dicom_header is not None
    assert row.dicom_header["PatientAddress"] == "Kerkstraat 1, Gent"
    assert row.dicom_header["OtherPatientIDsSequence"] == ["RRN-1"]
    assert row.dicom_header["PatientTelephoneNumbers"] == "+32 9 000 00 00"
    with db.session_scope(settings) as session:  # as an older version registered it
        session.execute(update(FileRegistry).values(dicom_header={"PatientID": "MRN-1"}))
    services.register(settings, "proj", settings.data_root / "study")
    assert "PatientAddress" not in (next(iter(rows(settings).values())).dicom_header or {})
    report = services.register(settings, "proj", settings.data_root / "study", reread=True)
    assert report.ok and report.files_updated == []
    (row,) = rows(settings).values()
    assert row.dicom_header is not None and row.dicom_header["OtherPatientIDsSequence"] == ["RRN-1"]


def test_paths_an_export_could_not_read_back_are_refused_naming_the_file(
    settings: Settings, tree: Path
) -> None:
    """Issue 14: a backslash in a registered path was accepted and every export of that
    patient then failed; a name that is not UTF-8 failed the database."""
    photos = tree / "site-a/study-1/P002/intraoral-photo"
    write_file(photos / "odd\\name.jpg", b"\xff\xd8b")
    write_file(photos / "bell\x07.jpg", b"\xff\xd8c")
    os.makedirs(os.fsencode(photos) + b"/../../P\xff9", exist_ok=True)
    write_file(
        Path(os.fsdecode(os.fsencode(tree / "site-a/study-1") + b"/P\xff9/ios/upper.stl")),
        b"s" * 10,
    )
    report = services.register(settings, "proj", tree)
    reasons = {i.path.removeprefix("study/"): i.reason for i in report.refused}
    assert "a backslash" in reasons["site-a/study-1/P002/intraoral-photo/odd\\name.jpg"]
    assert (
        "rename the file or directory"
        in reasons["site-a/study-1/P002/intraoral-photo/odd\\name.jpg"]
    )
    assert "control character" in reasons["site-a/study-1/P002/intraoral-photo/bell\x07.jpg"]
    assert "not UTF-8" in reasons["site-a/study-1/P\udcff9"]
    assert not report.ok
    registered = rows(settings)
    assert len(registered) == 20, "the other files are registered as before"
    assert all("\\" not in p and "\x07" not in p for p in registered)
    with db.session_scope(settings) as session:
        assert set(session.scalars(select(Patient.label))) == {"P001", "P002", "P003"}


def test_cli_names_the_refused_file_and_exits_non_zero(
    settings: Settings,
    tree: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from exporter import cli

    write_file(tree / "site-b/P003/ios/a\\b.stl", b"s" * 10)
    for key, value in {
        "DATABASE_URL": settings.database_url,
        "DATA_ROOT": str(settings.data_root),
        "EXPORT_ROOT": str(settings.export_root),
    }.items():
        monkeypatch.setenv(key, value)
    code = cli.main(["register", "proj", str(tree)])
    err = capsys.readouterr().err
    assert code != 0
    assert "refused: study/site-b/P003/ios/a\\b.stl: the path holds a backslash" in err


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("P004 ", "begins or ends with a space"),
        (" P004", "begins or ends with a space"),
        ("P\u200b004", "invisible character"),
        ("P004\u202e", "invisible character"),
        ("P\u2800004", "invisible character"),  # the Braille blank draws nothing
        ("Pe\u0301004", "not in Unicode's composed form"),  # would look like "Pé004"
        ("\u0301P004", "begins with a combining mark"),
        ("P004\uff0fx", "looks like a slash"),
        ("P004\u2215x", "looks like a slash"),
    ],
)
def test_labels_that_cannot_be_selected_as_written_are_refused(
    settings: Settings, tree: Path, name: str, message: str
) -> None:
    """A label with surrounding spaces could never be selected (selections and tags CSVs
    match without them); one with an invisible character looks like another patient. Both
    are refused with what to do, rather than renamed behind the operator's back."""
    write_file(tree / "site-b" / name / "ios/upper.stl", b"s" * 10)
    write_file(tree / "site b " / "P005" / "ios/upper.stl", b"s" * 10)
    report = services.register(settings, "proj", tree)
    reasons = {i.path.removeprefix("study/"): i.reason for i in report.refused}
    assert message in reasons[f"site-b/{name}"] and "rename" in reasons[f"site-b/{name}"]
    assert "begins or ends with a space" in reasons["site b /P005"]
    with db.session_scope(settings) as session:
        labels = set(session.scalars(select(Patient.label)))
        folders = set(session.scalars(select(PatientFolder.path)))
    assert labels == {"P001", "P002", "P003"}
    assert not any(f.startswith("site b") for f in folders)
