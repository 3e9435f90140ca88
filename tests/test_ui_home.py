"""The home page in Streamlit's AppTest: identity, the registry per project, isolation."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import streamlit as st
from humanize import naturalsize
from streamlit.testing.v1 import AppTest

from exporter import services
from exporter.config import PROJECT_ROOT, Settings
from tests.builders import small_tree

APP = str(PROJECT_ROOT / "exporter" / "ui" / "navigation.py")


@pytest.fixture
def portal(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    services.add_project(settings, "proj")
    services.add_project(settings, "other")
    services.register(settings, "proj", small_tree(settings.data_root / "study"))
    services.register(settings, "other", small_tree(settings.data_root / "elsewhere"))
    services.add_user(settings, "rita@lab.example", "proj", "researcher")
    services.add_user(settings, "olga@lab.example", "other", "researcher")
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("DATA_ROOT", str(settings.data_root))
    monkeypatch.setenv("PORTAL_DEV_USER", "rita@lab.example")
    st.cache_resource.clear()
    st.cache_data.clear()
    yield settings
    st.cache_resource.clear()
    st.cache_data.clear()


def run_app(user: dict[str, str] | None = None) -> AppTest:
    """Run the app; ``user`` is what the proxy header or OIDC would give (none by default)."""
    at = AppTest.from_file(APP, default_timeout=30)
    at.user = user or {}
    return at.run()


def test_development_user_sees_banner_and_their_project(portal: Settings) -> None:
    at = run_app()
    assert not at.exception
    assert "Development mode" in at.warning[0].value and "rita@lab.example" in at.warning[0].value
    assert [s.value for s in at.subheader] == ["proj"]
    metrics = {m.label: m.value for m in at.metric}
    total = sum(p.stat().st_size for p in (portal.data_root / "study").rglob("*") if p.is_file())
    assert metrics == {"Patients": "3", "Files": "20", "Size": naturalsize(total, binary=True)}
    table = at.dataframe[0].value
    assert list(table["Key"]) == ["cbct", "ios", "intraoral-photo"]
    assert list(table["Files"]) == [12, 6, 2]


def test_member_of_another_project_sees_only_theirs(
    portal: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PORTAL_DEV_USER", "olga@lab.example")
    at = run_app()
    assert [s.value for s in at.subheader] == ["other"]


def test_unknown_user_is_told_to_ask_for_an_account(
    portal: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PORTAL_DEV_USER", "ghost@lab.example")
    at = run_app()
    assert "No portal account for 'ghost@lab.example'" in at.error[0].value
    assert len(at.subheader) == 0


def test_production_without_identity_shows_not_signed_in_only(
    portal: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PORTAL_ENV", "production")
    at = run_app()
    assert [t.value for t in at.title] == ["Not signed in"]
    assert len(at.subheader) == 0 and len(at.metric) == 0


def test_production_uses_the_proxy_identity(
    portal: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PORTAL_ENV", "production")
    at = run_app({"email": "Olga@Lab.example"})
    assert len(at.warning) == 0, "no development banner in production"
    assert [s.value for s in at.subheader] == ["other"]
