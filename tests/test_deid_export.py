"""Curated values, pseudonyms and de-identification in real exports, checked with DCMTK.

Jobs run on the suite's Redis with a burst worker; archives are read with ``dcmdump`` (DCMTK)
as well as pydicom; the demo's identities (names, IDs, addresses, staff, devices, UIDs, and
the vendor's private tag that copies the name) must not survive de-identification anywhere.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import re
import subprocess
import zipfile
from collections import defaultdict
from datetime import date
from pathlib import Path

import pydicom
import pytest
from PIL import Image
from sqlalchemy import select

from exporter import services
from exporter.archive.verify import verify
from exporter.config import Settings
from exporter.deid.dataset import Deidentifier, DeidOptions
from exporter.dev import demo_data
from exporter.errors import InvalidOption, PermissionDenied
from exporter.schemas import Target
from exporter.store import db
from exporter.store.models import DatasetExport, ExportPatient, FileRegistry, Patient
from tests.test_jobs import MANAGER, ME, request, work

IDENTITY_KEYS_KEPT_BY_RETAIN_UIDS = {"StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"}


@pytest.fixture(scope="module")
def identities(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """The demo patients' identities, as the ``portal`` fixture's demo (4 patients, seed 3)."""
    manifest = demo_data.write_demo_tree(tmp_path_factory.mktemp("ids"), patients=4, seed=3)
    return {p.label: p.identity for p in manifest.patients}


def needles(identity: dict[str, str], skip: set[str] = frozenset()) -> list[str]:  # type: ignore[assignment]
    """Every identifying text of a patient, as it could appear in a file."""
    found: list[str] = []
    for key, value in identity.items():
        if key in skip:
            continue
        found.append(value)
        if key.endswith("Name") and "^" in value:
            found += [p for p in value.split("^") if len(p) > 2]
            found.append(value.replace("^", " "))
    return found


def export_zip(settings: Settings, export_id: str) -> Path:
    (path,) = (settings.export_root / export_id).glob("*.zip")
    return path


def dcmdump(path: Path) -> str:
    done = subprocess.run(["dcmdump", "+L", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def dcmtk_pixels(ds: pydicom.Dataset) -> bytes:
    """The pixel data as DCMTK extracts it (``dcmdump +W``) from the file ``ds`` was read from
    (written to a scratch file first when it came from an archive)."""
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "in.dcm"
        ds.save_as(path, enforce_file_format=True)
        done = subprocess.run(
            ["dcmdump", "-q", "+W", scratch, str(path)], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        (raw,) = [p for p in Path(scratch).iterdir() if p.name != "in.dcm"]
        return raw.read_bytes()


def every_text(ds: pydicom.Dataset) -> list[tuple[str, str]]:
    """(keyword, text) of every element at every depth, private ones included."""
    out = []
    for elem in ds.iterall():
        if elem.VR in ("OB", "OW", "OF", "OD", "OL", "OV", "UN") and elem.tag != 0x7FE00010:
            value = bytes(elem.value or b"").decode("latin-1")
        elif elem.VR == "SQ" or elem.tag == 0x7FE00010:
            continue
        else:
            value = str(elem.value)
        out.append((elem.keyword or str(elem.tag), value))
    for elem in ds.file_meta:
        out.append((elem.keyword, str(elem.value)))
    return out


def test_a_curated_value_reaches_the_archive_and_the_original_stays(
    portal: Settings, tmp_path: Path
) -> None:
    """The issue's "done when": edit, export, dcmdump, dicom_changes.csv, original intact."""
    (series,) = services.patient_series(portal, MANAGER, "demo", "P0001")
    services.curate(
        portal,
        MANAGER,
        "demo",
        [Target("P0001", series.label)],
        "StudyDescription",
        "Curated cohort A",
    )
    services.curate(portal, MANAGER, "demo", [Target("P0001")], "PatientSex", "O")
    view = services.create_export(
        portal,
        ME,
        "demo",
        request(folders=[], patients=["P0001"], modalities=["cbct"], clean_descriptors=True),
    )
    work(portal)
    done = services.get_export(portal, ME, view.id)
    assert done.status == "completed", done.error_message
    path = export_zip(portal, view.id)
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        folder = names[0].split("/")[0]
        entry = f"{folder}/patient_001/cbct/series_001/0001.dcm"
        zf.extract(entry, tmp_path)
        changes = list(csv.DictReader(io.StringIO(zf.read(f"{folder}/dicom_changes.csv").decode())))
    dump = dcmdump(tmp_path / entry)
    assert "(0008,1030) LO [Curated cohort A]" in dump
    assert "(0010,0040) CS [O]" in dump
    assert "(0010,0010) PN [patient_001]" in dump
    mine = [c for c in changes if c["path"] == "patient_001/cbct/series_001/0001.dcm"]
    assert {(c["keyword"], c["new_value"], c["reason"]) for c in mine} >= {
        ("StudyDescription", "Curated cohort A", "curated"),
        ("PatientSex", "O", "curated"),
        ("PatientID", "patient_001", "pseudonym"),
        ("PatientName", "patient_001", "pseudonym"),
    }
    assert {c["reason"] for c in mine} == {"curated", "pseudonym", "deidentified"}
    with db.session_scope(portal) as session:
        original = session.scalar(
            select(FileRegistry).where(FileRegistry.path == series.first_path)
        )
        assert original is not None
        sha, header = original.sha256, dict(original.dicom_header or {})
    stored = portal.data_root / series.first_path
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == sha, "the original is untouched"
    assert pydicom.dcmread(stored).StudyDescription == header["StudyDescription"]
    # The complete log, with old values, is for data managers only.
    log = services.export_changes(portal, MANAGER, view.id)
    row = next(
        r for r in log.rows if r.keyword == "StudyDescription" and r.reason == "curated"
    )  # one row for the whole series, with its file count
    assert (row.old_value, row.new_value) == (header["StudyDescription"], "Curated cohort A")
    assert row.path == "patient_001/cbct/series_001" and row.files == series.files
    assert sum(r.files for r in log.rows) >= len(changes), "the CSV has final values only"
    assert services.export_change_counts(portal, MANAGER, [view.id]) == {view.id: log.total}
    assert services.export_change_counts(portal, ME, [view.id]) == {}, "managers only"
    with pytest.raises(PermissionDenied):
        services.export_changes(portal, ME, view.id)


def test_de_identified_export_leaves_no_identifier_in_any_file(
    portal: Settings, identities: dict[str, dict[str, str]], tmp_path: Path
) -> None:
    everything = ["cbct", "ios", "intraoral-photo"]
    view = services.create_export(
        portal,
        ME,
        "demo",
        request(privacy="deidentified", shift_dates=False, modalities=everything),
    )
    work(portal)
    done = services.get_export(portal, ME, view.id)
    assert done.status == "completed", done.error_message
    path = export_zip(portal, view.id)
    assert verify(path).ok
    everyone = [n for ident in identities.values() for n in needles(ident)]
    # Anywhere in a file's bytes: long needles only (a 3-letter name part turns up by chance
    # in compressed pixels). In DICOM text values: every name part, as a whole word.
    long_ones = [n for n in everyone if len(n) >= 8]
    words = re.compile(
        "|".join(rf"\b{re.escape(n)}\b" for n in everyone if len(n) >= 3), re.IGNORECASE
    )
    dicoms = 0
    with zipfile.ZipFile(path) as zf:
        zf.extractall(tmp_path / "x")
        names = zf.namelist()
        assert any(n.endswith("/cbct/processed_1.nii.gz") for n in names)
        assert not any("volume" in n for n in names), "processed files get generic names"
        for name in zf.namelist():
            data = zf.read(name)
            if name.endswith(".nii.gz"):
                data = gzip.decompress(data)
            text = data.decode("latin-1")
            for needle in long_ones:
                assert needle not in text, f"{needle!r} found in {name}"
            if name.endswith(".dcm"):
                dicoms += 1
                ds = pydicom.dcmread(io.BytesIO(zf.read(name)))
                for keyword, value in every_text(ds):
                    found = words.search(value)
                    assert found is None, f"{found and found.group()!r} in {keyword} of {name}"
                assert not any(e.tag.is_private for e in ds.iterall()), "private tags removed"
                assert ds.PatientIdentityRemoved == "YES"
                assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
            if name.endswith(".jpg"):
                image = Image.open(io.BytesIO(data))
                assert not image.getexif() and "comment" not in image.info
    assert dicoms > 0
    # DCMTK's view of every exported DICOM file, sequences included: no identifier either.
    exported = sorted(str(p) for p in (tmp_path / "x").rglob("*.dcm"))
    dumped = subprocess.run(["dcmdump", "+L", *exported], capture_output=True, text=True)
    assert dumped.returncode == 0, dumped.stderr
    found = words.search(dumped.stdout)
    assert found is None, f"dcmdump shows {found and found.group()!r}"
    assert dumped.stdout.count("(0012,0062) CS [YES]") == len(exported)
    sample = next((tmp_path / "x").rglob("0001.dcm"))
    dump = dcmdump(sample)
    assert "(0012,0062) CS [YES]" in dump
    assert "(0012,0063) LO [DICOM PS3.15 E.1 Basic Application Level Confidentiality" in dump
    assert "(0009," not in dump, "the vendor's private block is gone"
    with zipfile.ZipFile(path) as zf:
        folder = zf.namelist()[0].split("/")[0]
        rows = list(csv.DictReader(io.StringIO(zf.read(f"{folder}/dicom_changes.csv").decode())))
    assert {r["reason"] for r in rows} == {"pseudonym", "deidentified"}
    assert any(r["action"] == "removed" and r["keyword"] == "EXIF (APP1)" for r in rows)


def _exported_series(path: Path) -> dict[str, list[pydicom.Dataset]]:
    series: dict[str, list[pydicom.Dataset]] = defaultdict(list)
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            if name.endswith(".dcm"):
                patient = name.split("/")[1]
                series[patient].append(pydicom.dcmread(io.BytesIO(zf.read(name))))
    return series


def test_uids_replaced_consistently_dates_shifted_per_patient_pixels_identical(
    portal: Settings, identities: dict[str, dict[str, str]]
) -> None:
    view = services.create_export(
        portal,
        ME,
        "demo",
        request(privacy="deidentified", modalities=["cbct"], part_size=1024 * 1024),
    )
    work(portal)
    done = services.get_export(portal, ME, view.id)
    assert done.status == "completed", done.error_message
    assert len(done.parts) > 1, "one patient per part: the key must hold across parts"
    with db.session_scope(portal) as session:
        uid_key = session.scalar(select(DatasetExport.uid_key).where(DatasetExport.id == view.id))
        keys = session.execute(
            select(Patient.label, ExportPatient.pseudonym, ExportPatient.date_shift_days)
            .join(Patient, Patient.id == ExportPatient.patient_id)
            .where(ExportPatient.export_id == view.id)
        ).all()
        stored = {
            p: pydicom.dcmread(portal.data_root / p, stop_before_pixels=False)
            for p in session.scalars(
                select(FileRegistry.path).where(FileRegistry.path.like("%/0001.dcm"))
            )
        }
    assert uid_key
    deid = Deidentifier(DeidOptions(retain_dates=True), bytes.fromhex(uid_key), {})
    by_pseudonym = {pseudo: (label, shift) for label, pseudo, shift in keys}
    exported: dict[str, list[pydicom.Dataset]] = defaultdict(list)
    for part in (portal.export_root / view.id).glob("*.zip"):
        for patient, datasets in _exported_series(part).items():
            exported[patient] += datasets
    assert set(exported) == set(by_pseudonym)
    shifts = set()
    for pseudonym, datasets in exported.items():
        label, shift = by_pseudonym[pseudonym]
        identity = identities[label]
        shifts.add(shift)
        assert shift and shift < 0
        # Grouping survives: one study, one series, one frame of reference per patient...
        assert len({d.StudyInstanceUID for d in datasets}) == 1
        assert len({d.SeriesInstanceUID for d in datasets}) == 1
        assert len({d.SOPInstanceUID for d in datasets}) == len(datasets)
        # ...under new UIDs, derived from the export's key (so the same in every part).
        assert datasets[0].StudyInstanceUID == deid.new_uid(identity["StudyInstanceUID"])
        assert datasets[0].SeriesInstanceUID != identity["SeriesInstanceUID"]
        assert datasets[0].FrameOfReferenceUID == deid.new_uid(identity["FrameOfReferenceUID"])
        source = next(ds for p, ds in stored.items() if f"/{label}/" in p)
        first = next(d for d in datasets if d.InstanceNumber == 1)
        moved = date.fromisoformat(source.StudyDate) - date.fromisoformat(first.StudyDate)
        assert moved.days == -shift, "every date moved by the patient's shift"
        assert {d.StudyDate for d in datasets} == {first.StudyDate}
        assert first.StudyTime == source.StudyTime, "times are kept"
        assert first.LongitudinalTemporalInformationModified == "MODIFIED"
        assert "PatientBirthDate" not in first or not first.PatientBirthDate
        assert first.PixelData == source.PixelData, "pixel data byte-identical"
        assert dcmtk_pixels(first) == dcmtk_pixels(source), "and so DCMTK reads them"
    assert len(shifts) > 1, "each patient gets a shift of their own"


def test_options_that_do_not_fit_the_privacy_level_are_refused(portal: Settings) -> None:
    with pytest.raises(InvalidOption, match="apply to the other levels"):
        services.create_export(
            portal, MANAGER, "demo", request(privacy="identified", fresh_pseudonyms=True)
        )
    with pytest.raises(InvalidOption, match="Privacy level 'anonymous' is not known"):
        services.create_export(portal, ME, "demo", request(privacy="anonymous"))


def test_preview_shows_one_file_per_series_with_old_and_new_values(portal: Settings) -> None:
    (series,) = services.patient_series(portal, MANAGER, "demo", "P0002")
    services.curate(
        portal, MANAGER, "demo", [Target("P0002", series.label)], "StudyDescription", "Curated"
    )
    plain = services.preview_export(portal, ME, "demo", request(modalities=["cbct"]))
    assert plain.series_total == plain.series_shown == 4
    assert {r.patient for r in plain.rows} == {"P0001", "P0002", "P0003", "P0004"}
    curated = [r for r in plain.rows if r.reason == "curated"]
    assert [(r.patient, r.keyword, r.new_value) for r in curated] == [
        ("P0002", "StudyDescription", "Curated")
    ]
    assert all(r.old_value is None for r in plain.rows), "old values: data managers only"
    as_manager = services.preview_export(portal, MANAGER, "demo", request(modalities=["cbct"]))
    assert any(r.old_value for r in as_manager.rows)
    deid = services.preview_export(
        portal, ME, "demo", request(modalities=["cbct", "ios"], privacy="deidentified")
    )
    removed = {r.keyword for r in deid.rows if r.action == "removed"}
    assert {"PatientAddress", "OtherPatientIDsSequence"} <= removed
    assert deid.other_files == 12, "per patient: two scans and the processed volume"
    nothing_written = list((portal.export_root).glob("*"))
    assert nothing_written == []


def test_curated_values_are_frozen_when_the_export_starts_and_kept_out_of_the_csv_when_removed(
    portal: Settings,
) -> None:
    from exporter.jobs import tasks as jobs

    services.curate(portal, MANAGER, "demo", [Target("P0001")], "StudyDescription", "Before")
    services.curate(portal, MANAGER, "demo", [Target("P0001")], "InstitutionName", "Secret Site")
    view = services.create_export(
        portal,
        ME,
        "demo",
        request(
            modalities=["cbct"],
            privacy="deidentified",
            clean_descriptors=True,
            part_size=1024 * 1024,
        ),
    )
    assert jobs.run_export(view.id) == "parts enqueued"
    services.curate(portal, MANAGER, "demo", [Target("P0001")], "StudyDescription", "After")
    work(portal)
    done = services.get_export(portal, ME, view.id)
    assert done.status == "completed", done.error_message
    seen = set()
    for part in (portal.export_root / view.id).glob("*.zip"):
        with zipfile.ZipFile(part) as zf:
            folder = zf.namelist()[0].split("/")[0]
            table = zf.read(f"{folder}/dicom_changes.csv").decode()
            assert "Secret Site" not in table, "a curated value the profile removed"
            for name in zf.namelist():
                if name.endswith(".dcm"):
                    ds = pydicom.dcmread(io.BytesIO(zf.read(name)))
                    assert "InstitutionName" not in ds
                    seen.add(str(ds.get("StudyDescription", "")))
    assert "Before" in seen and "After" not in seen, "the values in force when it started"
    log = services.export_changes(portal, MANAGER, view.id, limit=10_000)
    assert any(r.new_value == "Secret Site" and r.reason == "curated" for r in log.rows)
