"""DICOM curation, the de-identification options with their preview, and the change log, in
AppTest on SQLite and PostgreSQL with the demo data (no service is mocked)."""

from __future__ import annotations

import pytest
from redis import Redis
from rq import SimpleWorker
from streamlit.testing.v1 import AppTest

from exporter import schemas, services
from exporter.config import PROJECT_ROOT, Settings
from exporter.jobs.queue import export_queue
from exporter.schemas import ExportRequest, Target

APP = str(PROJECT_ROOT / "exporter" / "ui" / "navigation.py")
MANAGER = "manager@demo.example"
RESEARCHER = "researcher@demo.example"


@pytest.fixture
def portal(ui_portal: Settings) -> Settings:
    return ui_portal


def open_page(page: str, email: str) -> AppTest:
    """The page as ``email`` sees it (the identity a proxy header would give)."""
    at = AppTest.from_file(APP, default_timeout=30)
    at.user = {"email": email}
    at.run()
    at.switch_page(str(PROJECT_ROOT / "pages" / page))
    return at.run()


def header(at: AppTest) -> dict[str, dict[str, object]]:
    """The header table, by keyword."""
    table = at.dataframe[0].value
    return {row["Keyword"]: row for row in table.to_dict("records")}


def button(at: AppTest, label: str):  # type: ignore[no-untyped-def]
    return next(b for b in at.button if b.label == label)


def edit(
    at: AppTest,
    keyword: str,
    value: str,
    label: str = "Save value",
    scope: str | None = None,
    others: tuple[str, ...] = (),
) -> AppTest:
    """Choose the field, fill in the form (value, scope, other patients) and submit it."""
    next(s for s in at.selectbox if s.label == "Field").set_value(keyword).run()
    next(t for t in at.text_input if t.label == "New value").input(value)
    if scope:
        next(r for r in at.radio if r.label == "Apply to").set_value(scope)
    bulk = next(m for m in at.multiselect if m.label == "Also apply to these patients")
    for other in others:
        bulk.select(other)
    return button(at, label).click().run()


def test_a_data_manager_curates_a_series_and_sees_it_in_table_and_history(
    portal: Settings,
) -> None:
    at = open_page("curation.py", MANAGER)
    assert not at.exception
    assert [t.value for t in at.title] == ["DICOM curation"]
    assert next(s for s in at.selectbox if s.label == "Patient").value == "P0001"
    series = next(s for s in at.selectbox if s.label == "Series").value
    in_file = header(at)["StudyDescription"]
    assert in_file["Value in file"] and in_file["Curated value"] == ""
    assert in_file["Tag"] == "(0008,1030)" and in_file["VR"] == "LO"
    assert next(r for r in at.radio if r.label == "Apply to").value == "series"

    at = edit(at, "StudyDescription", "Curated X")
    assert not at.exception and not at.error
    assert f"'{in_file['Value in file']}' → 'Curated X'" in at.success[0].value
    row = header(at)["StudyDescription"]
    assert row["Curated value"] == "Curated X (whole series)"
    assert row["Value in file"] == in_file["Value in file"], "the stored file is untouched"
    history = at.dataframe[1].value.to_dict("records")
    assert [
        (h["Field"], h["Applies to"], h["New value"], h["Who"], h["In force"]) for h in history
    ] == [("StudyDescription", f"series {series}", "Curated X", MANAGER, True)]
    fields = services.header_fields(portal, MANAGER, "demo", "P0001", series)
    assert next(f for f in fields if f.keyword == "StudyDescription").curated == "Curated X"
    assert next(t for t in at.text_input if t.label == "New value").value == "", "form reset"


def test_an_invalid_date_shows_the_services_message_and_saves_nothing(
    portal: Settings,
) -> None:
    at = open_page("curation.py", MANAGER)
    at = edit(at, "StudyDate", "31/01/2024")
    assert not at.exception
    assert "YYYYMMDD" in at.error[0].value
    assert header(at)["StudyDate"]["Curated value"] == ""
    assert services.curation_history(portal, MANAGER, "demo", "P0001") == []
    assert any("No curation edits for P0001" in c.value for c in at.caption)
    assert next(t for t in at.text_input if t.label == "New value").value == "31/01/2024", (
        "the typed value stays, to be corrected"
    )


def test_bulk_edit_for_the_whole_patient_and_clear(portal: Settings) -> None:
    at = open_page("curation.py", MANAGER)
    at = edit(at, "InstitutionName", "Site A", scope="patient", others=("P0002",))
    done = at.success[0].value
    assert "on 2 target(s)" in done and "P0002 · whole patient" in done
    assert header(at)["InstitutionName"]["Curated value"] == "Site A (whole patient)"
    other = services.curation_history(portal, MANAGER, "demo", "P0002")
    assert [(h.scope, h.value) for h in other] == [("patient", "Site A")]

    at = edit(at, "InstitutionName", "", label="Clear curation", scope="patient")
    assert "Cleared the curation of **InstitutionName**" in at.success[0].value
    assert header(at)["InstitutionName"]["Curated value"] == ""


def test_restore_puts_an_earlier_value_back(portal: Settings) -> None:
    series = services.patient_series(portal, MANAGER, "demo", "P0001")[0].label
    target = [Target("P0001", series)]
    first = services.curate(portal, MANAGER, "demo", target, "InstitutionName", "Site A")[0]
    services.curate(portal, MANAGER, "demo", target, "InstitutionName", "Site B")
    at = open_page("curation.py", MANAGER)
    assert header(at)["InstitutionName"]["Curated value"] == "Site B (whole series)"
    restore = next(s for s in at.selectbox if s.label == "Restore an earlier value")
    assert restore.options == [restore.format_func(first.id)], "only entries not in force"
    restore.set_value(first.id).run()
    button(at, "Restore").click().run()
    assert not at.exception
    assert "'Site B' → 'Site A'" in at.success[0].value
    assert header(at)["InstitutionName"]["Curated value"] == "Site A (whole series)"
    history = at.dataframe[1].value.to_dict("records")
    assert [(h["New value"], h["In force"]) for h in history] == [
        ("Site A", True),
        ("Site B", False),
        ("Site A", False),
    ]


def test_a_researcher_is_told_to_ask_a_data_manager(portal: Settings) -> None:
    at = open_page("curation.py", RESEARCHER)
    assert not at.exception
    assert "Only data managers curate DICOM headers" in at.info[0].value
    assert len(at.dataframe) == 0 and len(at.selectbox) == 0 and len(at.text_input) == 0
    assert not any(b.label == "Save value" for b in at.button)


def test_new_export_chooses_a_privacy_level_and_previews_it(portal: Settings) -> None:
    at = open_page("new_export.py", RESEARCHER)
    level = next(r for r in at.radio if r.label == "Who may receive what")
    assert level.value == "pseudonymised", "pseudonymised is the default"
    assert level.options == [
        "Pseudonymised (default)",
        "De-identified",
        "Identified (carries names, IDs and dates) — data managers only",
    ]
    captions = " ".join(c.value for c in at.caption)
    assert "keep: full dates, patient characteristics" in captions, "the demo project's policy"
    labels = {c.label for c in at.checkbox}
    assert {"Fresh pseudonyms", "Keep descriptions, cleaned of identifiers"} <= labels
    assert "Shift dates per patient" not in labels, "dates are shifted in de-identified only"
    at.session_state["tree-demo"] = {"checked": ["p:P0001"], "expanded": []}
    level.set_value("deidentified").run()
    shift = next(c for c in at.checkbox if c.label == "Shift dates per patient")
    assert shift.value, "shifted by default"
    assert len(at.dataframe) == 0, "no preview before the button"

    button(at, "Show preview").click().run()
    assert not at.exception
    rows = at.dataframe[0].value.to_dict("records")
    assert {r["Reason"] for r in rows} >= {"deidentified", "pseudonym"}
    assert {r["Patient"] for r in rows} == {"P0001"}
    name = next(r for r in rows if r["Field"] == "PatientName")
    assert name["New value"] == "new_patient_1", "never exported: its pseudonym comes later"
    assert "Old value" not in name, "a researcher is not shown the old (identifying) values"
    assert any(r["New value"] == "(removed)" and r["Action"] == "removed" for r in rows)
    assert any(r["Action"] == "shifted" for r in rows)
    captions = " ".join(c.value for c in at.caption)
    assert "One file per selected series (1 of 1 shown)" in captions
    assert "photos/scans/volumes will have their metadata stripped" in captions

    at.session_state["tree-demo"] = {"checked": ["p:P0001", "p:P0002"], "expanded": []}
    at.run()
    assert len(at.dataframe) == 0, "a changed selection hides the stale preview"
    assert any("show the preview again" in c.value for c in at.caption)

    next(r for r in at.radio if r.label == "Who may receive what").set_value("identified").run()
    assert any("carries the patients' names" in w.value for w in at.warning)
    assert any("for its data managers (manager@demo.example)" in e.value for e in at.error)
    assert button(at, "Create export").disabled, "refused, and the page says why"


def test_only_data_managers_see_an_exports_dicom_changes(portal: Settings) -> None:
    sel = schemas.parse_selection(patients=["P0001"], modalities=["cbct"])
    request = ExportRequest(selection=sel, name="deid", privacy="deidentified")
    view = services.create_export(portal, RESEARCHER, "demo", request)
    connection = Redis.from_url(portal.redis_url)
    SimpleWorker([export_queue(portal, connection)], connection=connection).work(burst=True)
    assert services.get_export(portal, RESEARCHER, view.id).status == "completed"
    total = services.export_changes(portal, MANAGER, view.id).total

    at = open_page("exports.py", MANAGER)
    assert not at.exception
    label = f"DICOM changes ({total:,})"
    assert label in [e.label for e in at.expander]
    assert any(
        "Privacy: De-identified · pseudonyms stable in the project" in c.value
        and "dates shifted per patient" in c.value
        and "privacy check passed" in c.value
        for c in at.caption
    )
    tables = len(at.dataframe)
    at.session_state[f"changes-{view.id}"] = True  # the manager opens the expander
    at.run()
    assert not at.exception
    changes = at.dataframe[-1].value
    assert len(at.dataframe) == tables + 1
    assert list(changes.columns) == [
        "Patient",
        "Part",
        "Path",
        "Field",
        "Tag",
        "Action",
        "Reason",
        "New value",
        "Files",
        "Old value",
    ]
    assert set(changes["Patient"]) == {"P0001"}, "the manager sees whose file it was"
    assert len(changes) == min(total, 1000)
    assert "deidentified" in set(changes["Reason"])
    assert changes["Files"].max() > 1, "a change to a whole series is one row"
    assert any("old values are kept in the portal only" in c.value.lower() for c in at.caption)
    at.session_state[f"key-{view.id}"] = True  # who is who
    at.run()
    (key_table,) = [d.value for d in at.dataframe if "Folder" in d.value.columns]
    key = key_table.to_dict("records")
    shift = key[0]["Date shift (days)"]
    assert shift < 0
    assert key == [
        {
            "Folder": "case_001",
            "Patient": "P0001",
            "Date shift (days)": shift,
            "Pseudonym": "stable",
        }
    ]

    at = open_page("exports.py", RESEARCHER)
    assert not at.exception
    assert "**deid**" in " ".join(m.value for m in at.markdown), "the researcher sees the export"
    assert not any(e.label.startswith("DICOM changes") for e in at.expander)
    at.session_state[f"key-{view.id}"] = True
    at.run()
    assert any("Only data managers" in c.value for c in at.caption), "no key for researchers"


def test_export_again_repeats_the_privacy_choices(portal: Settings) -> None:
    sel = schemas.parse_selection(patients=["P0001"], modalities=["cbct"])
    request = ExportRequest(
        selection=sel,
        name="again",
        privacy="deidentified",
        shift_dates=False,
        fresh_pseudonyms=True,
    )
    view = services.create_export(portal, RESEARCHER, "demo", request)
    at = open_page("exports.py", RESEARCHER)
    assert any("Privacy: De-identified · pseudonyms fresh" in c.value for c in at.caption)
    next(b for b in at.button if b.key == f"again-{view.id}").click().run()
    assert [t.value for t in at.title] == ["New export"]
    assert next(r for r in at.radio if r.label == "Who may receive what").value == "deidentified"
    ticked = {c.label for c in at.checkbox if c.value}
    assert "Fresh pseudonyms" in ticked
    assert "Shift dates per patient" not in ticked
