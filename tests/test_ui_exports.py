"""The export pages in AppTest: the tree's value is injected through its key."""

from __future__ import annotations

import pytest
import streamlit as st
from redis import Redis
from rq import SimpleWorker
from streamlit.testing.v1 import AppTest

from exporter import schemas, services
from exporter.config import PROJECT_ROOT, Settings
from exporter.jobs.queue import export_queue
from exporter.records import exports
from exporter.registry import query
from exporter.schemas import ExportRequest

APP = str(PROJECT_ROOT / "exporter" / "ui" / "navigation.py")
ME = "researcher@demo.example"


@pytest.fixture
def portal(ui_portal: Settings) -> Settings:
    return ui_portal


def new_export_page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=30)
    at.user = {}
    at.run()
    at.switch_page(str(PROJECT_ROOT / "pages" / "new_export.py"))
    return at.run()


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
    assert any("over the limit of 1024" in w.value for w in at.warning)
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
    cancel = next(b for b in at.button if b.key == f"cancel-{waiting.id}")
    cancel.click().run()
    assert services.get_export(portal, ME, waiting.id).status == "cancelled"
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
