"""The Releases page (AppTest): who sees the form, what a submitted release shows, and the
Registry's note on a destination. The browser walk is in tests/test_browser_e2e.py."""

from __future__ import annotations

import streamlit as st

from exporter import services
from exporter.config import Settings
from tests.test_jobs import work
from tests.test_ui_curation import MANAGER, RESEARCHER, button, open_page


def test_the_page_is_for_data_managers_of_two_projects(ui_portal: Settings) -> None:
    at = open_page("releases.py", RESEARCHER)
    assert not at.exception
    assert any("data managers of at least two projects" in i.value for i in at.info)
    assert not [b for b in at.button if b.label == "Release"]
    at = open_page("releases.py", MANAGER)  # manages demo only so far
    assert any("data managers of at least two projects" in i.value for i in at.info)


def test_a_release_from_the_page_is_queued_runs_and_shows_its_counts(ui_portal: Settings) -> None:
    services.add_project(ui_portal, "released", "Released")
    services.add_user(ui_portal, MANAGER, "released", "data_manager")
    at = open_page("releases.py", MANAGER)
    assert not at.exception
    assert any(m.value.startswith("**4 patients**") for m in at.markdown)
    next(t for t in at.text_input if t.label == "Name").set_value("batch one").run()
    button(at, "Release").click().run()
    assert not at.exception and not at.error
    assert any("Release batch one is queued." in i.value for i in at.info)
    work(ui_portal)
    at = open_page("releases.py", MANAGER)
    assert any(m.value.startswith("**0 patients**") for m in at.markdown), "the queue emptied"
    assert button(at, "Release").disabled
    (view,) = services.list_releases(ui_portal, MANAGER)
    assert view.status == "completed"
    assert any("created" in c.value and "batch one" not in c.value for c in at.caption)
    st.cache_data.clear()  # the Registry's figures are cached for 15 s
    home = open_page("home.py", MANAGER)
    assert any("Release destination: 4 patients released" in c.value for c in home.caption)
