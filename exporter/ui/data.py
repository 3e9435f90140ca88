"""Cached, bounded reads for the pages. Caching lives here, never in the domain."""

from __future__ import annotations

import streamlit as st

from exporter import services
from exporter.access.accounts import ProjectAccess
from exporter.dicom import values as dicom_values
from exporter.dicom.values import FieldSpec
from exporter.errors import PermissionDenied, PortalError
from exporter.registry.query import ProjectOverview, ProjectTree
from exporter.schemas import CuratedValue, HeaderField, PolicyView, SeriesInfo
from exporter.services import ChangeLog, KeyRow
from exporter.store.models import Role
from exporter.ui.session import settings


@st.cache_data(ttl=15, show_spinner=False)
def overview(email: str) -> list[ProjectOverview]:
    """The registry overview for the home page, cached for 15 s."""
    return services.overview(settings(), email)


@st.cache_data(ttl=60, show_spinner=False)
def modality_keys(email: str, project: str) -> list[str]:
    """The modalities enabled in a project (cached: they change when an operator says so)."""
    return services.modality_keys(settings(), email, project)


@st.cache_data(ttl=30, show_spinner=False)
def projects(email: str) -> list[ProjectAccess]:
    """The projects the user may work in."""
    return services.projects_of(settings(), email)


@st.cache_data(ttl=30, show_spinner=False)
def privacy_policy(email: str, project: str) -> PolicyView:
    """What the project's data managers allow, and whether this user may change it."""
    return services.project_privacy(settings(), email, project)


@st.cache_data(ttl=30, show_spinner=False)
def tree(email: str, project: str) -> ProjectTree:
    """Folders, patients and tags of a project (bounded by UI_ROW_CAP), cached for 30 s."""
    return services.project_tree(settings(), email, project)


def managed_projects(email: str) -> list[ProjectAccess]:
    """The projects in which the user is a data manager (the ones they may curate)."""
    return [p for p in projects(email) if p.role is Role.DATA_MANAGER]


@st.cache_data(ttl=60, show_spinner=False)
def patient_series(email: str, project: str, patient: str) -> list[SeriesInfo]:
    """A patient's DICOM series (data managers), cached for 60 s."""
    return services.patient_series(settings(), email, project, patient)


@st.cache_data(ttl=60, show_spinner=False)
def series_files(
    email: str, project: str, patient: str, series: str
) -> tuple[list[tuple[int, str]], bool]:
    """(file id, path) of a series' files, at most UI_ROW_CAP of them, and whether the list
    was cut there."""
    files = services.series_files(settings(), email, project, patient, series)
    cap = settings().ui_row_cap
    return files[:cap], len(files) > cap


@st.cache_data(ttl=60, show_spinner=False)
def header_fields(
    email: str, project: str, patient: str, series: str, file_id: int | None
) -> list[HeaderField]:
    """One file's header with the curated values in force; cleared by :func:`curated`."""
    return services.header_fields(settings(), email, project, patient, series, file_id)


@st.cache_data(ttl=60, show_spinner=False)
def curation_history(email: str, project: str, patient: str) -> list[CuratedValue]:
    """A patient's curation edits, newest first (bounded by the service); cleared by
    :func:`curated`."""
    return services.curation_history(settings(), email, project, patient)


def curated() -> None:
    """Forget the cached headers and histories after an edit, so the pages show it."""
    header_fields.clear()
    curation_history.clear()


def field_spec(keyword: str) -> FieldSpec | str:
    """The curatable field a keyword or tag names, or why it cannot be curated."""
    try:
        return dicom_values.field_spec(keyword)
    except PortalError as exc:
        return str(exc)


@st.cache_data(ttl=60, show_spinner=False)
def change_counts(email: str, export_ids: tuple[str, ...]) -> dict[str, int]:
    """DICOM changes per export, for the exports of projects the user manages (one query)."""
    return services.export_change_counts(settings(), email, list(export_ids))


@st.cache_data(ttl=60, show_spinner=False)
def privacy_report(email: str, export_id: str) -> dict[str, object] | None:
    """An export's residual-check report, or None for a user who is not a data manager of
    its project."""
    try:
        return services.export_privacy_report(settings(), email, export_id)
    except PermissionDenied:
        return None


@st.cache_data(ttl=300, show_spinner=False, max_entries=50)
def export_key(email: str, export_id: str) -> list[KeyRow] | str:
    """Who is who in an export, for data managers of its project (each reading is audited:
    cached, so a page's reruns while the key is open do not record it again); for anyone
    else, the refusal."""
    try:
        return services.export_key(settings(), email, export_id)
    except PortalError as exc:
        return str(exc)


@st.cache_data(ttl=60, show_spinner=False)
def export_changes(email: str, export_id: str, limit: int) -> ChangeLog | None:
    """The first ``limit`` rows of an export's DICOM change log and their total, or None
    for a user who is not a data manager of the export's project (cached either way, so the
    Exports page does not ask again on every rerun)."""
    try:
        return services.export_changes(settings(), email, export_id, limit=limit)
    except PermissionDenied:
        return None
