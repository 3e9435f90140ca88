"""The export engine on real demo files: layout, integrity, atomicity, parts, verify."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import pytest

from exporter import schemas, services
from exporter.access.accounts import principal_for
from exporter.archive import build as archive
from exporter.archive.build import ExportInfo, build_export, plan_export
from exporter.archive.layout import (
    PlannedFile,
    plan_files,
    pseudonyms,
    sanitize_component,
    unsafe_reason,
)
from exporter.archive.verify import verify
from exporter.config import Settings
from exporter.errors import ExportCancelled, NotEnoughSpace, SourceFileError
from exporter.registry.query import select_files
from exporter.schemas import ExportOptions, FileEntry
from exporter.store import db
from tests.conftest import make_settings

CREATED = datetime(2026, 3, 14, 15, 9, 26, tzinfo=UTC)
MODALITIES = ["cbct", "ios", "intraoral-photo"]


@pytest.fixture(scope="module")
def demo_env(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Six demo patients on SQLite, shared by this module's tests (they only read them)."""
    tmp = tmp_path_factory.mktemp("engine")
    settings = make_settings(tmp, f"sqlite:///{tmp / 'p.db'}")
    services.migrate(settings)
    services.load_demo(settings, patients=6, seed=5)
    return settings


def demo_files(settings: Settings, **sel: object) -> list[FileEntry]:
    selection = schemas.parse_selection(**{"folders": ["/"], "modalities": MODALITIES, **sel})  # type: ignore[arg-type]
    with db.session_scope(settings) as session:
        user = principal_for(session, "researcher@demo.example")
        return select_files(session, user, "demo", selection)


def info(name: str = "export_2026-03-14_150926") -> ExportInfo:
    return ExportInfo("e1", name, "demo", "researcher@demo.example", CREATED, "notes", {"x": 1})


def build(settings: Settings, tmp_path: Path, files: list[FileEntry], **options: object):  # type: ignore[no-untyped-def]
    return build_export(
        files,
        tmp_path / "e1",
        info(),
        ExportOptions(**options),
        settings.data_root,  # type: ignore[arg-type]
    )


def test_archive_passes_unzip_verify_and_sha256sum(demo_env: Settings, tmp_path: Path) -> None:
    files = demo_files(demo_env)
    result = build(demo_env, tmp_path, files)
    zip_path = result.parts[0].path
    assert zip_path.name == "export_2026-03-14_150926.zip"
    assert subprocess.run(["unzip", "-tq", str(zip_path)], capture_output=True).returncode == 0
    assert verify(zip_path).ok and verify(tmp_path / "e1").ok
    out = tmp_path / "x"
    subprocess.run(["unzip", "-q", str(zip_path), "-d", str(out)], check=True)
    folder = out / "export_2026-03-14_150926"
    check = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=folder)
    assert check.returncode == 0
    assert verify(folder).ok
    with open(zip_path, "rb") as fh:
        assert hashlib.sha256(fh.read()).hexdigest() == result.parts[0].sha256
    manifest = json.loads(result.manifest.read_text())
    assert manifest["parts"][0]["sha256"] == result.parts[0].sha256
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["schema_version"] == 2
    assert meta["totals"] == {
        "patients": 6,
        "files": len(files),
        "bytes": sum(f["size"] for f in meta["files"]),  # DICOM headers carry the pseudonyms
        "skipped": 0,
    }
    assert meta["export"]["notes"] == "notes" and meta["criteria"] == {"x": 1}
    assert [p["patient"] for p in meta["patients"]] == [f"patient_{i:03d}" for i in range(1, 7)]
    assert not list(out.rglob(".*partial*"))


def test_pseudonymised_layout_leaks_no_label_or_stored_path(
    demo_env: Settings, tmp_path: Path
) -> None:
    files = demo_files(demo_env)
    result = build(demo_env, tmp_path, files)
    names = zipfile.ZipFile(result.parts[0].path).namelist()
    assert "export_2026-03-14_150926/patient_001/cbct/series_001/0001.dcm" in names
    assert "export_2026-03-14_150926/patient_001/ios/upper.stl" in names
    assert "export_2026-03-14_150926/patient_001/intraoral-photo/photo_1.jpg" in names
    labels = {f.patient_label for f in files}
    # the folders above each patient in storage (project, site, study, cohort)
    stored_dirs = {
        part for f in files for part in f.path.split(f"/{f.patient_label}/")[0].split("/")
    }
    for name in names:
        for part in name.split("/"):
            assert part not in labels | stored_dirs, name
    assert sorted(result.pseudonyms) == sorted(labels)
    assert sorted(result.pseudonyms.values()) == [f"patient_{i:03d}" for i in range(1, 7)]
    orders = {tuple(plan_export(files, ExportOptions())[1].items()) for _ in range(5)}
    assert len(orders) > 1, "pseudonyms are assigned at random, not in label order"
    meta = json.loads(zipfile.ZipFile(result.parts[0].path).read(f"{info().folder}/metadata.json"))
    assert not any(label in json.dumps(meta) for label in labels)


def test_labels_instead_of_pseudonyms_are_sanitised(demo_env: Settings, tmp_path: Path) -> None:
    files = demo_files(demo_env, modalities=["ios"])
    result = build(demo_env, tmp_path, files, privacy="identified")
    names = zipfile.ZipFile(result.parts[0].path).namelist()
    assert "export_2026-03-14_150926/P0001/ios/upper.stl" in names


def fake_entry(label: str, path: str, **kw: object) -> FileEntry:
    base = {
        "id": 1,
        "patient_id": 1,
        "patient_label": label,
        "modality": "cbct",
        "kind": "raw",
        "subtype": None,
        "path": path,
        "size": 1,
        "sha256": "0" * 64,
        "media_type": "application/dicom",
        "series_label": None,
        "mtime_ns": 0,
    }
    base.update(kw)
    return FileEntry(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("../../etc/passwd", "_.._etc_passwd"),
        ("..", "unnamed"),
        ("CON", "_CON"),
        ("aux.txt", "_aux.txt"),
        ("a\\b\x00c\nd", "a_b_c_d"),
        ("  spaced  .", "spaced"),
        ("x" * 300 + ".dcm", "x" * 96 + ".dcm"),
        ("Müller Jörg", "Müller Jörg"),
    ],
)
def test_sanitize_component(raw: str, expected: str) -> None:
    assert sanitize_component(raw) == expected
    assert unsafe_reason(sanitize_component(raw)) is None


def test_evil_labels_and_paths_never_reach_entry_names() -> None:
    evil = ["../../root", "C:\\x", "CON", "a/b", "\x07bell", "same", "SAME"]
    files = [
        fake_entry(label, f"d/{i}/../x {label}.nii.gz", kind="processed", series_label=label)
        for i, label in enumerate(evil)
    ]
    for names in (pseudonyms(evil), None):
        planned = plan_files(files, names)
        names = [p.arcname for p in planned]
        assert len({n.lower() for n in names}) == len(names), "names unique, case-insensitive"
        for name in names:
            assert unsafe_reason(name) is None, name
            assert all(part not in ("", ".", "..") for part in name.split("/"))
    dirs = {p.patient_dir for p in plan_files(files, None)}
    assert {"SAME", "same_2"} <= dirs


def test_missing_source_fails_naming_the_file_and_leaves_nothing(
    demo_env: Settings, tmp_path: Path
) -> None:
    files = demo_files(demo_env)
    missing = replace(files[3], path=files[3].path + ".gone")
    # Named by its entry: the stored path holds the patient's label.
    with pytest.raises(
        SourceFileError, match=r"^patient_\d+/cbct/series_001/0003.gone: missing"
    ) as e:
        build(demo_env, tmp_path, [*files[:3], missing, *files[4:]])
    assert missing.patient_label not in str(e.value)
    assert not (tmp_path / "e1").exists()
    with pytest.raises(SourceFileError, match=rf"^{missing.path}: missing from storage"):
        build(demo_env, tmp_path, [*files[:3], missing, *files[4:]], privacy="identified")


def test_changed_source_fails(demo_env: Settings, tmp_path: Path) -> None:
    files = demo_files(demo_env)
    changed = replace(files[0], sha256="f" * 64)
    with pytest.raises(SourceFileError, match=r"changed since it was registered"):
        build(demo_env, tmp_path, [changed, *files[1:]])
    assert not (tmp_path / "e1").exists()


def test_skip_missing_records_every_skipped_file(demo_env: Settings, tmp_path: Path) -> None:
    files = demo_files(demo_env)
    missing = replace(files[5], path="demo/nowhere/file.dcm")
    result = build(demo_env, tmp_path, [*files, missing], skip_missing=True)
    meta = json.loads(zipfile.ZipFile(result.parts[0].path).read(f"{info().folder}/metadata.json"))
    assert meta["totals"]["skipped"] == 1
    skipped = meta["skipped"][0]
    assert skipped["reason"] == f"{skipped['path']}: missing from storage"
    assert skipped["path"].startswith("patient_")
    assert verify(result.parts[0].path).ok


def test_source_paths_that_leave_the_data_root_are_refused(
    demo_env: Settings, tmp_path: Path
) -> None:
    files = demo_files(demo_env)
    escape = replace(files[0], path="demo/../../etc/passwd")
    with pytest.raises(SourceFileError, match="not a plain relative path"):
        build(demo_env, tmp_path, [escape])
    link = demo_env.data_root / "demo" / "link.dcm"
    link.symlink_to("/etc/hostname")
    linked_dir = demo_env.data_root / "demo" / "linked"
    linked_dir.symlink_to("/etc", target_is_directory=True)
    try:
        with pytest.raises(SourceFileError, match=r"demo/link\.dcm: is a symbolic link; refused"):
            build(
                demo_env, tmp_path, [replace(files[0], path="demo/link.dcm")], privacy="identified"
            )
        with pytest.raises(SourceFileError, match="leads outside the data root"):
            build(demo_env, tmp_path, [replace(files[0], path="demo/linked/hostname")])
    finally:
        link.unlink()
        linked_dir.unlink()


def test_compression_policy_and_modification_times(demo_env: Settings, tmp_path: Path) -> None:
    files = demo_files(demo_env)
    for compression, dcm_method in (("fast", zipfile.ZIP_DEFLATED), ("store", zipfile.ZIP_STORED)):
        result = build(demo_env, tmp_path / compression, files, compression=compression)
        with zipfile.ZipFile(result.parts[0].path) as zf:
            infos = {i.filename: i for i in zf.infolist()}
        dcm = infos[f"{info().folder}/patient_001/cbct/series_001/0001.dcm"]
        jpg = infos[f"{info().folder}/patient_001/intraoral-photo/photo_1.jpg"]
        assert dcm.compress_type == dcm_method and jpg.compress_type == zipfile.ZIP_STORED
        if compression == "fast":
            assert dcm.compress_size < dcm.file_size * 0.65  # CBCT deflates about 2x
        # The export's own time, never the source's (which tells when it was acquired)...
        local = time.localtime(CREATED.timestamp())
        assert dcm.date_time == jpg.date_time == (*local[:5], local.tm_sec // 2 * 2)
    # ...but for an identified export, which keeps the stored files' times.
    result = build(demo_env, tmp_path / "identified", files, privacy="identified")
    with zipfile.ZipFile(result.parts[0].path) as zf:
        dcm = next(i for i in zf.infolist() if i.filename.endswith("/cbct/series_001/0001.dcm"))
    source = next(f for f in files if f.patient_label == "P0001" and f.path.endswith("0001.dcm"))
    local = time.localtime(source.mtime_ns / 1e9)
    assert dcm.date_time == (*local[:5], local.tm_sec // 2 * 2)


def test_large_files_stream_through_the_writer(
    demo_env: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(archive, "PREPARE_LIMIT", 50_000)  # everything bigger is streamed
    files = demo_files(demo_env)
    assert any(f.size > 50_000 for f in files) and any(f.size <= 50_000 for f in files)
    result = build(demo_env, tmp_path, files)
    assert subprocess.run(["unzip", "-tq", str(result.parts[0].path)]).returncode == 0
    assert verify(result.parts[0].path).ok


def test_parts_hold_whole_patients_and_are_self_contained(
    demo_env: Settings, tmp_path: Path
) -> None:
    files = demo_files(demo_env)
    per_patient = max(
        sum(f.size for f in files if f.patient_label == p) for p in {f.patient_label for f in files}
    )
    result = build(demo_env, tmp_path, files, max_part_bytes=max(per_patient * 2, 1024 * 1024))
    assert len(result.parts) >= 2
    seen: list[str] = []
    for part in result.parts:
        assert part.path.name == f"export_2026-03-14_150926.part-{part.number:03d}.zip"
        meta = json.loads(zipfile.ZipFile(part.path).read(f"{info().folder}/metadata.json"))
        assert meta["part"] == {"number": part.number, "count": len(result.parts)}
        assert not set(part.patients) & set(seen), "a patient is never split across parts"
        seen += part.patients
        assert verify(part.path).ok
    assert sorted(seen) == [f"patient_{i:03d}" for i in range(1, 7)]
    report = verify(tmp_path / "e1")
    assert report.ok and report.archives == len(result.parts) and report.files == len(files)


def test_cancel_stops_within_a_second_and_removes_the_partial(
    demo_env: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = demo_files(demo_env)
    slow = threading.Event()
    stopped_at: list[float] = []

    def slow_transform(planned: PlannedFile, fh: BinaryIO) -> Iterator[bytes]:
        while chunk := fh.read(4096):
            time.sleep(0.01)  # a slow disk
            yield chunk

    def progress(_p: archive.Progress) -> None:
        if not slow.is_set():
            slow.set()
            threading.Timer(0.3, lambda: stopped_at.append(time.monotonic())).start()

    with pytest.raises(ExportCancelled):
        build_export(
            files,
            tmp_path / "e1",
            info(),
            ExportOptions(),
            demo_env.data_root,
            transform=slow_transform,
            progress=progress,
            cancel=lambda: bool(stopped_at),
        )
    assert stopped_at and time.monotonic() - stopped_at[0] < 1.0
    assert not (tmp_path / "e1").exists()


def test_transform_hook_output_is_what_gets_hashed(demo_env: Settings, tmp_path: Path) -> None:
    files = demo_files(demo_env, modalities=["ios"])

    def stamp(planned: PlannedFile, fh: BinaryIO) -> Iterator[bytes]:
        yield b"STAMPED"
        while chunk := fh.read(65536):
            yield chunk

    result = build_export(
        files, tmp_path / "e1", info(), ExportOptions(), demo_env.data_root, transform=stamp
    )
    with zipfile.ZipFile(result.parts[0].path) as zf:
        data = zf.read(f"{info().folder}/patient_001/ios/upper.stl")
    assert data.startswith(b"STAMPED")
    first = next(label for label, folder in result.pseudonyms.items() if folder == "patient_001")
    upper = next(f for f in files if f.patient_label == first and f.subtype == "upper")
    source = (demo_env.data_root / upper.path).read_bytes()
    assert data == b"STAMPED" + source
    assert verify(result.parts[0].path).ok


def test_disk_guard_refuses_and_stops(
    demo_env: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_disk: Path
) -> None:
    files = demo_files(demo_env)
    with pytest.raises(NotEnoughSpace, match="Not enough space at the export root"):
        build_export(
            files, tmp_path / "e1", info(), ExportOptions(), demo_env.data_root, disk_reserve=2**62
        )
    assert not (tmp_path / "e1").exists()
    # A real small filesystem that fills up while writing.
    monkeypatch.setattr(archive, "DISK_CHECK_EVERY", 256 * 1024)
    monkeypatch.setattr(archive, "check_free_space", lambda *a: None)  # let it start
    with pytest.raises(NotEnoughSpace, match=r"fell to .* below the reserve"):
        build_export(
            files,
            small_disk / "e1",
            info(),
            ExportOptions(compression="store"),
            demo_env.data_root,
            disk_reserve=2 * 1024 * 1024,
        )
    assert os.listdir(small_disk) == []
    # Unguarded: the disk fills up under the writer, and that too is said plainly.
    monkeypatch.setattr(archive, "DISK_CHECK_EVERY", 2**40)
    with pytest.raises(NotEnoughSpace, match=r"The export root is full"):
        build_export(
            files,
            small_disk / "e1",
            info(),
            ExportOptions(compression="store"),
            demo_env.data_root,
        )
    assert os.listdir(small_disk) == []


def test_verify_reports_unsafe_missing_and_extra_entries(tmp_path: Path) -> None:
    bad = tmp_path / "bad.zip"
    meta = {"schema_version": 1, "files": [{"path": "a.txt", "size": 1, "sha256": "0" * 64}]}
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("exp/metadata.json", json.dumps(meta))
        zf.writestr("exp/../../evil.txt", "x")
        zf.writestr("exp/extra.txt", "x")
    report = verify(bad)
    assert not report.ok
    text = "\n".join(report.problems)
    assert "unsafe entry name 'exp/../../evil.txt' (parent directory (..))" in text
    assert "a.txt: listed in metadata.json but missing" in text
    assert "extra.txt: not listed in metadata.json" in text
    assert "SHA256SUMS is missing or empty" in text
    assert verify(tmp_path / "nope.zip").problems == [
        f"{tmp_path / 'nope.zip'}: no such file or directory"
    ]
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    assert "not a readable ZIP" in verify(tmp_path / "junk.zip").problems[0]


def test_a_fifo_at_a_registered_path_is_refused_not_waited_on(
    demo_env: Settings, tmp_path: Path
) -> None:
    files = demo_files(demo_env)
    fifo = demo_env.data_root / "demo" / "pipe.dcm"
    os.mkfifo(fifo)
    try:
        with pytest.raises(SourceFileError, match=r"^patient_001/\S+: not a regular file"):
            build(demo_env, tmp_path, [replace(files[0], path="demo/pipe.dcm")])
    finally:
        fifo.unlink()


def test_dicom_headers_carry_the_pseudonym_pixels_unchanged_originals_untouched(
    demo_env: Settings, tmp_path: Path
) -> None:
    import csv
    import io

    import pydicom

    files = demo_files(demo_env, modalities=["cbct"])
    result = build(demo_env, tmp_path, files)
    folder = info().folder
    label = next(lbl for lbl, pseudo in result.pseudonyms.items() if pseudo == "patient_001")
    source = next(f for f in files if f.patient_label == label and f.path.endswith("0001.dcm"))
    original_bytes = (demo_env.data_root / source.path).read_bytes()
    with zipfile.ZipFile(result.parts[0].path) as zf:
        exported = zf.read(f"{folder}/patient_001/cbct/series_001/0001.dcm")
        changes = list(csv.DictReader(io.StringIO(zf.read(f"{folder}/dicom_changes.csv").decode())))
        zf.extract(f"{folder}/patient_001/cbct/series_001/0001.dcm", tmp_path / "x")
    new = pydicom.dcmread(io.BytesIO(exported))
    old = pydicom.dcmread(io.BytesIO(original_bytes))
    assert (str(new.PatientName), new.PatientID) == ("patient_001", "patient_001")
    assert new.PixelData == old.PixelData, "pixel data byte-identical to the source"
    assert new.StudyInstanceUID != old.StudyInstanceUID, "UIDs replaced: no policy keeps them"
    assert "OtherPatientIDsSequence" not in new and not any(e.tag.is_private for e in new)
    dump = subprocess.run(
        ["dcmdump", str(tmp_path / "x" / folder / "patient_001/cbct/series_001/0001.dcm")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "(0010,0010) PN [patient_001]" in dump.stdout
    assert (
        hashlib.sha256((demo_env.data_root / source.path).read_bytes()).hexdigest() == source.sha256
    )
    dcm_entries = {f.path for f in files if f.media_type == "application/dicom"}
    pseudonym = [c for c in changes if c["reason"] == "pseudonym"]
    assert len(pseudonym) == 2 * len(dcm_entries)
    assert {c["keyword"] for c in pseudonym} == {"PatientID", "PatientName"}
    assert all(c["new_value"].startswith("patient_") for c in pseudonym)
    assert {c["reason"] for c in changes} == {"pseudonym", "deidentified"}
    assert set(changes[0]) == {"path", "tag", "keyword", "new_value", "reason", "action"}, "no old"
    assert verify(result.parts[0].path).ok


@pytest.mark.parametrize("privacy", ["pseudonymised", "deidentified"])
@pytest.mark.parametrize("where", ["repeated", "out of order", "after the pixel data"])
def test_a_patient_name_written_twice_leaves_the_archive_in_neither_copy(
    demo_env: Settings, tmp_path: Path, where: str, privacy: str
) -> None:
    """A non-conformant header with a second PatientName (right after the first, after the
    image elements, or after the pixel data): neither the patient's name nor the second one
    may reach the pseudonymised archive, and the pixel data stays as it was."""
    import struct
    from io import BytesIO

    import pydicom

    files = demo_files(demo_env, modalities=["cbct"])
    good = next(f for f in files if f.path.endswith(".dcm"))
    raw = (demo_env.data_root / good.path).read_bytes()
    source = pydicom.dcmread(BytesIO(raw))
    original = str(source.PatientName).encode()
    assert original and original in raw
    name = b"SECOND^NAME"
    element = struct.pack("<HH2sH", 0x0010, 0x0010, b"PN", len(name) + 1) + name + b" "
    at = {
        "repeated": raw.index(b"\x10\x00\x10\x00PN"),
        "out of order": raw.index(b"\xe0\x7f\x10\x00"),
        "after the pixel data": len(raw),
    }[where]
    odd = demo_env.data_root / "demo" / "twice.dcm"
    odd.write_bytes(raw[:at] + element + raw[at:])
    entry = replace(
        good,
        path="demo/twice.dcm",
        size=odd.stat().st_size,
        sha256=hashlib.sha256(odd.read_bytes()).hexdigest(),
    )
    try:
        result = build(demo_env, tmp_path, [entry], privacy=privacy)
    finally:
        odd.unlink()
    with zipfile.ZipFile(result.parts[0].path) as zf:
        exported = [zf.read(n) for n in zf.namelist() if n.endswith(".dcm")]
    assert len(exported) == 1
    data = exported[0]
    assert name not in data
    names, at = [], data.find(b"\x10\x00\x10\x00PN")  # every PatientName element
    while at >= 0:
        size = int.from_bytes(data[at + 6 : at + 8], "little")
        names.append(data[at + 8 : at + 8 + size].strip())
        at = data.find(b"\x10\x00\x10\x00PN", at + 8 + size)
    assert names == [b"patient_001"]
    assert original not in data
    assert pydicom.dcmread(BytesIO(data)).PixelData == source.PixelData


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_dicom_that_cannot_be_rewritten_fails_the_export_naming_it(
    demo_env: Settings, tmp_path: Path
) -> None:
    files = demo_files(demo_env, modalities=["cbct"])
    bad = demo_env.data_root / "demo" / "broken.dcm"
    bad.write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 64)
    entry = replace(
        next(f for f in files if f.path.endswith(".dcm")),
        path="demo/broken.dcm",
        size=bad.stat().st_size,
        sha256=hashlib.sha256(bad.read_bytes()).hexdigest(),
    )
    try:
        with pytest.raises(SourceFileError, match=r"^patient_001/\S+\.dcm: DICOM header cannot be"):
            build(demo_env, tmp_path, [entry])
    finally:
        bad.unlink()
    assert not (tmp_path / "e1").exists()


def test_the_change_log_is_streamed_not_held_for_the_whole_part(
    demo_env: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A de-identified part hands its change log out in batches while it is being written,
    and dicom_changes.csv holds one row per changed field of every file."""
    from exporter.archive import transform as dicom_rewrite

    monkeypatch.setattr(dicom_rewrite, "CHANGE_BATCH", 20)
    files = demo_files(demo_env, modalities=["cbct"])
    batches: list[tuple[int, int]] = []  # (changes, files done when the batch came)
    done = [0]

    def sink(batch: list[object]) -> None:  # rows, each standing for one file or a series
        batches.append((sum(c.files for c in batch), done[0]))  # type: ignore[attr-defined]

    def progress(p: object) -> None:
        done[0] = p.files_done  # type: ignore[attr-defined]

    result = build_export(
        files,
        tmp_path / "e1",
        info(),
        ExportOptions(privacy="deidentified"),
        demo_env.data_root,
        changes_sink=sink,
        progress=progress,
    )
    total = sum(n for n, _ in batches)
    assert len(batches) > 1 and batches[0][1] < len(files), "batches come while writing"
    with zipfile.ZipFile(result.parts[0].path) as zf:
        rows = zf.read(f"{info().folder}/dicom_changes.csv").decode().splitlines()
    assert 1 < len(rows) - 1 <= total
    assert len({r.split(",")[0] for r in rows[1:]}) == len(files), "every file has rows"
