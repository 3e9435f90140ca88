"""Cached, bounded reads for the pages. Caching lives here, never in the domain."""

from __future__ import annotations

import streamlit as st

from exporter import services
from exporter.accounts import ProjectAccess
from exporter.registry import ProjectOverview, ProjectTree
from exporter.ui.session import settings


@st.cache_data(ttl=15, show_spinner=False)
def overview(email: str) -> list[ProjectOverview]:
    """The registry overview for the home page, cached for 15 s."""
    return services.overview(settings(), email)


@st.cache_data(ttl=30, show_spinner=False)
def projects(email: str) -> list[ProjectAccess]:
    """The projects the user may work in."""
    return services.projects_of(settings(), email)


@st.cache_data(ttl=30, show_spinner=False)
def tree(email: str, project: str) -> ProjectTree:
    """Folders, patients and tags of a project (bounded by UI_ROW_CAP), cached for 30 s."""
    return services.project_tree(settings(), email, project)
