"""The export pages in AppTest: the tree's value is injected through its key."""

from __future__ import annotations

import pytest
import streamlit as st
from redis import Redis
from rq import SimpleWorker
from streamlit.testing.v1 import AppTest

from exporter import schemas, services
from exporter.config import PROJECT_ROOT, Settings
from exporter.jobs import tasks
from exporter.jobs.queue import export_queue
from exporter.records import exports
from exporter.registry import query
from exporter.schemas import ExportRequest

APP = str(PROJECT_ROOT / "exporter" / "ui" / "navigation.py")
ME = "researcher@demo.example"


@pytest.fixture
def portal(ui_portal: Settings) -> Settings:
    return ui_portal


def page_at(name: str) -> AppTest:
    """The page ``pages/<name>``, run once (through the navigation script)."""
    at = AppTest.from_file(APP, default_timeout=30)
    at.user = {}
    at.run()
    at.switch_page(str(PROJECT_ROOT / "pages" / name))
    return at.run()


def new_export_page() -> AppTest:
    return page_at("new_export.py")


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def test_ticking_a_folder_updates_count_and_modalities_then_submits(portal: Settings) -> None:
    at = new_export_page()
    assert not at.exception
    create = next(b for b in at.button if b.label == "Create export")
    assert create.disabled and "Tick patients or choose tags" in at.warning[-1].value
    at.session_state["tree-demo"] = {
        "checked": ["p:P0001", "p:P0002", "p:P0003", "p:P0004"],
        "expanded": [],
    }
    at.run()
    assert metric(at, "Patients") == "4"
    labels = [c.label for c in at.checkbox]
    assert any(label.startswith("CBCT — ") for label in labels)
    assert any(label.startswith("IOS — 8 files") for label in labels)
    ios = next(c for c in at.checkbox if c.label.startswith("IOS"))
    ios.uncheck().run()
    files_without_ios = int(metric(at, "Files").replace(",", ""))
    ios = next(c for c in at.checkbox if c.label.startswith("IOS"))
    ios.check().run()
    assert int(metric(at, "Files").replace(",", "")) == files_without_ios + 8
    next(b for b in at.button if b.label == "Create export").click().run()
    assert "is queued" in at.success[0].value
    (view,) = services.list_exports(portal, ME)
    assert view.status == "pending" and view.patient_count == 4
    assert view.criteria["folders"] or view.criteria["patients"]


def test_one_click_on_create_computes_the_estimate_once(
    portal: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = query.estimate

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(query, "estimate", spy)  # the page's estimate, through services
    monkeypatch.setattr(exports, "estimate", spy)  # the preflight's and create's
    at = new_export_page()
    at.session_state["tree-demo"] = {"checked": ["p:P0001", "p:P0002"], "expanded": []}
    at.run()
    ios = next(c for c in at.checkbox if c.label.startswith("IOS"))
    ios.uncheck().run()  # a modality unticked: the page's one estimate is made for the others
    calls.clear()
    next(b for b in at.button if b.label == "Create export").click().run()
    assert "is queued" in at.success[0].value
    assert len(calls) == 1, "the click's rerun estimated once; preflight and create reused it"
    (view,) = services.list_exports(portal, ME)
    assert "ios" not in view.criteria["modalities"] and view.patient_count == 2


def test_refusal_disables_submit_and_says_why(
    portal: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAX_EXPORT_SIZE", "1KiB")
    st.cache_resource.clear()
    at = new_export_page()
    at.session_state["tree-demo"] = {"checked": ["p:P0001"], "expanded": []}
    at.run()
    assert any("over the limit of 1.0 KiB" in w.value for w in at.warning)
    assert next(b for b in at.button if b.label == "Create export").disabled


def test_exports_page_lists_progress_download_and_cancel(portal: Settings) -> None:
    sel = schemas.parse_selection(folders=["/"], modalities=["ios"])
    done = services.create_export(portal, ME, "demo", ExportRequest(selection=sel, name="done"))
    connection = Redis.from_url(portal.redis_url)
    SimpleWorker([export_queue(portal, connection)], connection=connection).work(burst=True)
    waiting = services.create_export(portal, ME, "demo", ExportRequest(selection=sel, name="wait"))
    at = AppTest.from_file(APP, default_timeout=30)
    at.user = {}
    at.run()
    at.switch_page(str(PROJECT_ROOT / "pages" / "exports.py"))
    at.run()
    assert not at.exception
    text = " ".join(m.value for m in at.markdown)
    assert "**done**" in text and "**wait**" in text
    assert "Waiting for a worker" in " ".join(str(p.proto.text) for p in at.get("progress"))
    cancel = next(b for b in at.button if b.key == f"cancel-{waiting.id}")  # in its popover
    cancel.click().run()
    assert services.get_export(portal, ME, waiting.id).status == "cancelled"
    assert not at.exception and "is cancelled" in at.success[0].value
    links = [e.proto.url for e in at.get("link_button")]
    assert f"/api/demo/exports/{done.id}/download/" in links
    captions = " ".join(c.value for c in at.caption)
    assert "Archive: 1 part(s)" in captions, "the manifest summary shows in the details"


def test_tokens_page_creates_once_lists_and_revokes(portal: Settings) -> None:
    at = AppTest.from_file(APP, default_timeout=30)
    at.user = {}
    at.run()
    at.switch_page(str(PROJECT_ROOT / "pages" / "tokens.py"))
    at.run()
    at.text_input[0].input("notebook")
    at.button[0].click().run()
    assert not at.exception
    secret = at.code[0].value
    assert secret.startswith("ep_") and "not shown again" in at.success[0].value
    assert services.token_owner(portal, secret) == ME
    (token,) = services.list_tokens(portal, ME)
    at.run()
    assert all(secret not in c.value for c in at.code), "the secret is shown only once"
    next(b for b in at.button if b.key == f"revoke-{token.id}").click().run()
    assert services.list_tokens(portal, ME)[0].revoked


def exports_page() -> AppTest:
    return page_at("exports.py")


def test_cancel_as_the_export_ends_says_so_instead_of_crashing(
    portal: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The page showed Cancel for a running export, which ended between the page's read and
    the click's cancel (the worker finishes it right then): a message, no traceback."""
    sel = schemas.parse_selection(folders=["/"], modalities=["ios"])
    view = services.create_export(portal, ME, "demo", ExportRequest(selection=sel, name="race"))
    real = services.cancel_export

    def worker_wins(*args, **kwargs):  # type: ignore[no-untyped-def]
        tasks.run_export(view.id)  # the job, as the worker runs it (no signals off-thread)
        return real(*args, **kwargs)

    monkeypatch.setattr(services, "cancel_export", worker_wins)
    at = exports_page()
    next(b for b in at.button if b.key == f"cancel-{view.id}").click().run()
    assert not at.exception
    assert any("nothing to cancel" in w.value for w in at.warning), [w.value for w in at.warning]
    assert services.get_export(portal, ME, view.id).status == "completed"


def test_the_typed_name_and_notes_survive_reruns_and_reach_the_export(portal: Settings) -> None:
    at = new_export_page()
    at.text_input(key="new-export-name").input("cohort A, first look")
    at.text_area(key="new-export-notes").input("for the ortho study")
    at.session_state["tree-demo"] = {"checked": ["p:P0001"], "expanded": []}
    at.run()
    at.session_state["tree-demo"] = {"checked": ["p:P0001", "p:P0002"], "expanded": []}
    at.run()  # reruns (ticks, the estimate) keep what was typed
    assert at.text_input(key="new-export-name").value == "cohort A, first look"
    next(b for b in at.button if b.label == "Create export").click().run()
    next(b for b in at.button if b.label == "Create export").click().run()  # a second click
    (view,) = services.list_exports(portal, ME)
    assert view.name == "cohort A, first look" and view.notes == "for the ortho study"


def test_export_again_ticks_a_folder_selection_and_gives_the_same_count(
    portal: Settings,
) -> None:
    tree = services.project_tree(portal, ME, "demo")
    folder = tree.patients[0].folder.split("/")[0]  # a top-level folder (a site)
    inside = [p for p in tree.patients if p.folder == folder or p.folder.startswith(folder + "/")]
    sel = schemas.parse_selection(folders=[folder], modalities=["ios"])
    first = services.create_export(
        portal, ME, "demo", ExportRequest(selection=sel, name="site", notes="kept")
    )
    at = exports_page()
    next(b for b in at.button if b.key == f"again-{first.id}").click().run()
    assert not at.exception
    assert metric(at, "Patients") == str(len(inside))
    assert at.text_input(key="new-export-name").value == "site again"
    assert at.text_area(key="new-export-notes").value == "kept"
    assert not next(b for b in at.button if b.label == "Create export").disabled


def test_the_email_link_opens_that_export_with_its_details(portal: Settings) -> None:
    sel = schemas.parse_selection(folders=["/"], modalities=["ios"])
    one = services.create_export(portal, ME, "demo", ExportRequest(selection=sel, name="one"))
    services.create_export(portal, ME, "demo", ExportRequest(selection=sel, name="two"))
    at = AppTest.from_file(APP, default_timeout=30)
    at.user = {}
    at.query_params["export"] = one.id
    at.run()
    at.switch_page(str(PROJECT_ROOT / "pages" / "exports.py"))
    at.query_params["export"] = one.id
    at.run()
    assert not at.exception
    text = " ".join(m.value for m in at.markdown)
    assert "**one**" in text and "**two**" not in text
    at.query_params["export"] = "0" * 32  # not one of mine: said, then the list
    at.run()
    assert any("not one you may see" in w.value for w in at.warning)
    assert "**two**" in " ".join(m.value for m in at.markdown)


def test_the_list_filters_by_text_and_status_and_pages(portal: Settings) -> None:
    sel = schemas.parse_selection(folders=["/"], modalities=["ios"])
    for n in range(23):
        services.create_export(
            portal, ME, "demo", ExportRequest(selection=sel, name=f"batch {n}", notes=f"n{n}")
        )
    services.create_export(
        portal, ME, "demo", ExportRequest(selection=sel, name="odd one", notes="growth study")
    )
    at = exports_page()
    names = [m.value for m in at.markdown if m.value.startswith("**")]
    assert len(names) == 20 and names[0].startswith("**odd one**")
    assert any("Notes: growth study" in c.value for c in at.caption)
    assert any("ios · pseudonymised" in c.value for c in at.caption)
    next(b for b in at.button if b.label == "Older").click().run()
    older = [m.value for m in at.markdown if m.value.startswith("**")]
    assert len(older) == 4 and not set(older) & set(names)
    at.text_input(key="exports-text").input("GROWTH").run()  # back to the first page
    assert [m.value for m in at.markdown if m.value.startswith("**")] == [
        "**odd one** · project `demo`"
    ]
    at.text_input(key="exports-text").input("").run()
    at.selectbox(key="exports-status").select("completed").run()
    assert any("No export matches" in i.value for i in at.info)


def test_the_tree_sorts_naturally_and_opens_search_matches() -> None:
    from exporter.ui.tree import FOLDER, nodes, open_folders

    folders = ["site-b", "site-a", "site-a/cohort-10", "site-a/cohort-2"]
    patients = [
        query.TreePatient("P10", "site-a/cohort-2", ()),
        query.TreePatient("P9", "site-a/cohort-2", ()),
        query.TreePatient("P1", "site-a/cohort-10", ()),
        query.TreePatient("P2", "site-b", ()),
    ]
    tree = query.ProjectTree("demo", folders, patients, [], False)
    top = nodes(tree, patients)
    assert [n["label"] for n in top] == ["site-a", "site-b"]
    assert [n["label"] for n in top[0]["children"]] == ["cohort-2", "cohort-10"]
    assert [n["label"] for n in top[0]["children"][0]["children"]] == ["P9", "P10"]
    assert open_folders([patients[0]]) == [FOLDER + "site-a", FOLDER + "site-a/cohort-2"]


def test_a_study_filter_gives_the_same_patients_in_the_page_the_api_and_the_cli(
    portal: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """Study date range and series description, from the registry's header subset: the New
    export page, ``POST /api/<p>/estimate/`` and ``estimate`` agree, and an export carries
    only the matching files."""
    import json

    from sqlalchemy import select
    from starlette.testclient import TestClient

    from exporter.api import routes as api
    from exporter.cli import main
    from exporter.store import db
    from exporter.store.models import FileRegistry, Patient

    with db.session_scope(portal) as session:
        rows = session.execute(
            select(Patient.label, FileRegistry.acquisition_date, FileRegistry.dicom_header).join(
                Patient, Patient.id == FileRegistry.patient_id
            )
        ).all()
    dates = sorted({d for _, d, h in rows if d and h})
    assert len(dates) >= 3, "the demo's CBCT series have dates of their own"
    start = end = dates[len(dates) // 2]  # one day: the patients with a series that day
    text = str(next(h["SeriesDescription"] for _, _, h in rows if h)).split()[-1].upper()
    wanted = sorted(
        {
            label
            for label, d, h in rows
            if h and start <= d <= end and text.lower() in str(h.get("SeriesDescription")).lower()
        }
    )
    assert 0 < len(wanted) < len({label for label, _, _ in rows})
    study = {"date_from": start.isoformat(), "date_to": end.isoformat(), "series_description": text}

    # the page
    at = new_export_page()
    at.session_state["tree-demo"] = {
        "checked": [f"p:{p}" for p in sorted({r[0] for r in rows})],
        "expanded": [],
    }
    at.run()
    at.date_input(key="study-from").set_value(start).run()
    at.date_input(key="study-to").set_value(end).run()
    at.text_input(key="study-series_description").input(text).run()
    assert not at.exception
    assert metric(at, "Patients") == str(len(wanted))
    page_files = int(metric(at, "Files").replace(",", ""))

    # the API
    secret, _ = services.create_token(portal, ME, "filters")
    api.settings.cache_clear()  # this test's database, not an earlier one's
    http = TestClient(api.application(), base_url="http://127.0.0.1", client=("127.0.0.1", 50000))
    answer = http.post(
        "/api/demo/estimate/",
        json={"folders": ["/"], "modalities": ["cbct", "ios", "intraoral-photo"], "study": study},
        headers={"Authorization": f"Bearer {secret}"},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["patient_count"] == len(wanted)
    assert answer.json()["file_count"] == page_files
    bad = http.post(
        "/api/demo/estimate/",
        json={"folders": ["/"], "modalities": ["cbct"], "study": {"date_from": "last week"}},
        headers={"Authorization": f"Bearer {secret}"},
    )
    assert bad.status_code == 422 and "YYYY-MM-DD" in bad.json()["error"]["fields"]["study"]

    # the CLI
    capsys.readouterr()
    code = main(
        ["estimate", "demo", "--user", ME, "--folder", "/", "--modality", "cbct", "--modality",
         "ios", "--modality", "intraoral-photo", "--date-from", start.isoformat(), "--date-to",
         end.isoformat(), "--series-description", text, "--json"]
    )  # fmt: skip
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["patient_count"], out["file_count"]) == (len(wanted), page_files)
    assert (
        main(["estimate", "demo", "--user", ME, "--folder", "/", "--date-from", "2024-13-01"]) == 1
    )
    assert "YYYY-MM-DD" in capsys.readouterr().err

    # an export of it carries the matching files only
    sel = schemas.parse_selection(folders=["/"], modalities=["cbct"], study=study)
    files = query.select_files
    with db.session_scope(portal) as session:
        from exporter.access.accounts import principal_for

        chosen = files(session, principal_for(session, ME), "demo", sel)
    assert chosen and {f.patient_label for f in chosen} == set(wanted)


def test_a_study_filter_that_does_not_parse_stops_the_export(portal: Settings) -> None:
    """Found by an adversarial pass: the page said the dates were wrong, dropped the filter,
    and Create made an export of every study."""
    import datetime as dt

    at = new_export_page()
    at.session_state["tree-demo"] = {"checked": ["p:P0001", "p:P0002"], "expanded": []}
    at.run()
    at.date_input(key="study-from").set_value(dt.date(2026, 1, 1)).run()
    at.date_input(key="study-to").set_value(dt.date(2020, 1, 1)).run()
    assert not at.exception
    create = next(b for b in at.button if b.label == "Create export")
    assert create.disabled
    assert any("Correct the study filters" in w.value for w in at.warning)
    assert metric(at, "Patients") == "0", "nothing estimated without the filter either"


def test_study_filters_read_the_body_part_and_refuse_what_is_not_text_or_a_date(
    portal: Settings,
) -> None:
    from exporter.errors import InvalidSelection

    every = schemas.parse_selection(folders=["/"], modalities=["cbct"])
    head = schemas.parse_selection(folders=["/"], modalities=["cbct"], study={"body_part": "hEaD"})
    all_cbct = services.estimate(portal, ME, "demo", every)
    assert services.estimate(portal, ME, "demo", head).file_count > 0
    assert services.estimate(portal, ME, "demo", head).file_count <= all_cbct.file_count
    for bad in ({"body_part": 0}, {"body_part": []}, {"date_from": 20240101},
                {"date_from": "20240101"}, {"date_to": "2024-W01-1"}):  # fmt: skip
        with pytest.raises(InvalidSelection):
            schemas.parse_selection(folders=["/"], modalities=["cbct"], study=bad)


def test_natural_order_takes_only_ascii_digits_as_numbers() -> None:
    from exporter.ui.tree import natural_key

    labels = ["P1²", "P10", "P9", "P٣"]  # a superscript two; an Arabic-Indic three
    assert sorted(labels, key=natural_key) == ["P1\u00b2", "P9", "P10", "P\u0663"]


def test_retry_of_a_failed_export_makes_one_new_export_however_often_it_is_clicked(
    portal: Settings,
) -> None:
    from sqlalchemy import update

    from exporter.errors import InvalidState
    from exporter.store import db
    from exporter.store.models import DatasetExport, ExportStatus

    sel = schemas.parse_selection(folders=["/"], modalities=["ios"])
    first = services.create_export(portal, ME, "demo", ExportRequest(selection=sel, name="x"))
    with db.session_scope(portal) as session:
        session.execute(
            update(DatasetExport)
            .where(DatasetExport.id == first.id)
            .values(status=ExportStatus.FAILED, error_message="a disk failed")
        )
    again = services.retry_any_export(portal, ME, first.id)
    assert again.name == "x again" and again.status == "pending"
    with pytest.raises(InvalidState, match="retried already: 'x again' is pending"):
        services.retry_any_export(portal, ME, first.id)  # a click after the 30 s window
    assert len(services.list_exports(portal, ME)) == 2
