"""Curation of DICOM header values: permissions, validation, history, restore, precedence.

On SQLite and PostgreSQL, with the demo data registered (the files on disk are read for the
values a data manager sees)."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import select

from exporter import schemas, services
from exporter.config import Settings
from exporter.errors import InvalidInput, InvalidSelection, InvalidValue, NotFound, PermissionDenied
from exporter.records import curation
from exporter.schemas import Target
from exporter.store import db
from exporter.store.models import Patient

MANAGER = "manager@demo.example"
RESEARCHER = "researcher@demo.example"
OUTSIDER = "outsider@other.example"


def first_series(settings: Settings, patient: str = "P0001") -> schemas.SeriesInfo:
    return services.patient_series(settings, MANAGER, "demo", patient)[0]


def field(fields: list[schemas.HeaderField], keyword: str) -> schemas.HeaderField:
    return next(f for f in fields if f.keyword == keyword)


def test_a_data_manager_sees_the_header_and_edits_a_series(demo: Settings) -> None:
    series = first_series(demo)
    assert series.files > 1
    before = services.header_fields(demo, MANAGER, "demo", "P0001", series.label)
    study = field(before, "StudyDescription")
    assert study.value and study.curated is None and study.editable
    assert not field(before, "SOPInstanceUID").editable, "UIDs are not curated"
    source = demo.data_root / series.first_path
    sha_before = hashlib.sha256(source.read_bytes()).hexdigest()

    done = services.curate(
        demo, MANAGER, "demo", [Target("P0001", series.label)], "StudyDescription", "Cohort A"
    )
    assert [(d.scope, d.old_value, d.value, d.by) for d in done] == [
        ("series", study.value, "Cohort A", MANAGER)
    ]
    after = services.header_fields(demo, MANAGER, "demo", "P0001", series.label)
    assert (field(after, "StudyDescription").curated, field(after, "StudyDescription").value) == (
        "Cohort A",
        study.value,
    ), "the file still carries its own value; the curated one is what exports write"
    assert hashlib.sha256(source.read_bytes()).hexdigest() == sha_before, "original untouched"


def test_only_data_managers_of_the_project_may_curate(demo: Settings) -> None:
    series = first_series(demo)
    target = [Target("P0001", series.label)]
    with pytest.raises(PermissionDenied, match="Only data managers"):
        services.curate(demo, RESEARCHER, "demo", target, "StudyDescription", "x")
    with pytest.raises(PermissionDenied, match="Only data managers"):
        services.header_fields(demo, RESEARCHER, "demo", "P0001", series.label)
    with pytest.raises(NotFound, match="No project 'demo'"):
        services.curate(demo, OUTSIDER, "demo", target, "StudyDescription", "x")
    with pytest.raises(NotFound, match="No patient 'P9999'"):
        services.curate(demo, MANAGER, "demo", [Target("P9999")], "StudyDescription", "x")


def test_values_are_checked_by_vr_and_vm_and_nothing_is_saved_on_error(demo: Settings) -> None:
    series = first_series(demo)
    targets = [Target("P0001", series.label), Target("P0002", series.label)]
    with pytest.raises(InvalidValue, match="YYYYMMDD"):
        services.curate(demo, MANAGER, "demo", targets, "StudyDate", "31/01/2024")
    with pytest.raises(InvalidValue, match="UID"):
        services.curate(demo, MANAGER, "demo", targets, "StudyInstanceUID", "1.2.3")
    with pytest.raises(InvalidValue):
        services.curate(demo, MANAGER, "demo", targets, "PixelSpacing", "0.2")  # VM 2
    # One bad target fails the whole bulk edit: the first patient gets nothing either.
    with pytest.raises(NotFound):
        services.curate(
            demo,
            MANAGER,
            "demo",
            [targets[0], Target("P0002", "no-such-series")],
            "StudyDescription",
            "x",
        )
    assert services.curation_history(demo, MANAGER, "demo", "P0001") == []
    done = services.curate(demo, MANAGER, "demo", targets, "StudyDate", "2024-01-31")
    assert [d.value for d in done] == ["20240131", "20240131"], "ISO dates are normalised"


def test_history_keeps_every_edit_and_restore_puts_an_old_value_back(demo: Settings) -> None:
    series = first_series(demo)
    target = [Target("P0001", series.label)]
    first = services.curate(demo, MANAGER, "demo", target, "InstitutionName", "Site A")[0]
    services.curate(demo, MANAGER, "demo", target, "InstitutionName", "Site B")
    restored = services.restore_curation(demo, MANAGER, "demo", first.id)
    assert (restored.value, restored.old_value) == ("Site A", "Site B")
    history = services.curation_history(demo, MANAGER, "demo", "P0001")
    assert [(h.value, h.in_force) for h in history] == [
        ("Site A", True),
        ("Site B", False),
        ("Site A", False),
    ]
    cleared = services.curate(demo, MANAGER, "demo", target, "InstitutionName", None)[0]
    assert cleared.value is None and cleared.old_value == "Site A"
    with db.session_scope(demo) as session:
        ids = list(session.scalars(select(Patient.id)))
        assert not curation.rules_for(session, ids), "a cleared curation applies nothing"
    with pytest.raises(NotFound):
        services.restore_curation(demo, OUTSIDER, "demo", first.id)


def test_the_narrowest_target_wins(demo: Settings) -> None:
    series = first_series(demo)
    files = services.series_files(demo, MANAGER, "demo", "P0001", series.label)
    services.curate(demo, MANAGER, "demo", [Target("P0001")], "InstitutionName", "Patient")
    services.curate(
        demo, MANAGER, "demo", [Target("P0001", series.label)], "InstitutionName", "Series"
    )
    services.curate(
        demo, MANAGER, "demo", [Target("P0001", file_id=files[0][0])], "InstitutionName", "File"
    )
    one = services.header_fields(demo, MANAGER, "demo", "P0001", series.label, files[0][0])
    two = services.header_fields(demo, MANAGER, "demo", "P0001", series.label, files[1][0])
    assert field(one, "InstitutionName").curated == "File"
    assert field(one, "InstitutionName").curated_scope == "file"
    assert field(two, "InstitutionName").curated == "Series"
    with pytest.raises(NotFound, match="does not belong"):
        services.curate(
            demo, MANAGER, "demo", [Target("P0002", file_id=files[0][0])], "InstitutionName", "x"
        )


def test_a_field_the_files_lack_is_added_and_shown(demo: Settings) -> None:
    series = first_series(demo)
    services.curate(
        demo, MANAGER, "demo", [Target("P0001", series.label)], "EthnicGroup", "Not recorded"
    )
    fields = services.header_fields(demo, MANAGER, "demo", "P0001", series.label)
    added = field(fields, "EthnicGroup")
    assert (added.value, added.curated, added.tag) == ("", "Not recorded", "(0010,2160)")


def test_series_are_told_apart_by_modality_and_files_outside_a_series_by_file(
    demo: Settings,
) -> None:
    from tests.builders import write_dicom

    patient_dir = next(demo.data_root.glob("demo/**/P0003"))
    loose = write_dicom(patient_dir / "cbct" / "raw" / "scout.dcm", patient="X^Y")
    services.register(demo, "demo", demo.data_root / "demo")
    keys = [s.label for s in services.patient_series(demo, MANAGER, "demo", "P0003")]
    assert keys == ["cbct/raw/(no series)", "cbct/raw/series_001"]
    fields = services.header_fields(demo, MANAGER, "demo", "P0003", "cbct/raw/(no series)")
    assert field(fields, "PatientName").value == "X^Y"
    with pytest.raises(InvalidSelection, match="not in a series"):
        services.curate(
            demo, MANAGER, "demo", [Target("P0003", "cbct/raw/(no series)")], "StudyID", "1"
        )
    (file_id, path), *_ = services.series_files(
        demo, MANAGER, "demo", "P0003", "cbct/raw/(no series)"
    )
    assert path.endswith("scout.dcm") and loose.exists()
    done = services.curate(
        demo, MANAGER, "demo", [Target("P0003", file_id=file_id)], "StudyID", "7"
    )
    assert done[0].scope == "file"


def test_one_edit_names_one_file_or_series_or_whole_patients() -> None:
    assert schemas.targets(["P1"], file_id=7) == [Target("P1", file_id=7)]
    assert schemas.targets(["P1", "P2"], "cbct/raw/s1") == [
        Target("P1", "cbct/raw/s1"),
        Target("P2", "cbct/raw/s1"),
    ]
    assert [t.scope for t in schemas.targets(["P1", "P2"])] == ["patient", "patient"]
    with pytest.raises(InvalidSelection, match="A single file belongs to one patient"):
        schemas.targets(["P1", "P2"], file_id=7)


def test_a_curation_csv_is_applied_whole_or_not_at_all(demo: Settings) -> None:
    series = first_series(demo)
    good = (
        "patient,series,field,value\n"
        f"P0001,{series.label},StudyDescription,Implant planning\n"
        "P0002,,InstitutionName,Research Site\n"
    )
    done = services.import_curation(demo, MANAGER, "demo", curation.parse_csv(good))
    assert {(d.patient, d.keyword, d.value) for d in done} == {
        ("P0001", "StudyDescription", "Implant planning"),
        ("P0002", "InstitutionName", "Research Site"),
    }
    after = services.header_fields(demo, MANAGER, "demo", "P0001", series.label)
    assert field(after, "StudyDescription").curated == "Implant planning"
    history_before = len(services.curation_history(demo, MANAGER, "demo", "P0002"))
    bad = (
        "patient,series,field,value\n"
        "P0002,,InstitutionName,Another Site\n"  # fine on its own
        "P0002,,StudyDate,31/01/2024\n"  # line 3: not a date
        "P9999,,StudyDescription,x\n"  # line 4: no such patient
    )
    with pytest.raises(InvalidInput, match="Nothing was applied") as refused:
        services.import_curation(demo, MANAGER, "demo", curation.parse_csv(bad))
    assert "line 3" in str(refused.value) and "YYYYMMDD" in str(refused.value)
    assert "line 4" in str(refused.value)
    assert len(services.curation_history(demo, MANAGER, "demo", "P0002")) == history_before
    with pytest.raises(PermissionDenied):
        services.import_curation(demo, RESEARCHER, "demo", curation.parse_csv(good))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("patient,field,value\nP0001,StudyDate,20240101\n", "The first line must be the header"),
        ("patient,series,field,value\n", "no rows"),
        ("patient,series,field,value\nP0001,,StudyDate\n", "line 2: 3 cells"),
        ("patient,series,field,value\n,,StudyDate,20240101\n", "line 2: the patient"),
        ("patient,series,field,value\nP0001,,Study\x07Date,x\n", "line 2: holds a control"),
    ],
)
def test_a_curation_csv_that_does_not_fit_names_its_lines(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        curation.parse_csv(text)
