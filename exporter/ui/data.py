"""Cached, bounded reads for the pages. Caching lives here, never in the domain."""

from __future__ import annotations

import streamlit as st

from exporter import services
from exporter.registry import ProjectOverview
from exporter.ui.session import settings


@st.cache_data(ttl=15, show_spinner=False)
def overview(email: str) -> list[ProjectOverview]:
    """The registry overview for the home page, cached for 15 s."""
    return services.overview(settings(), email)
