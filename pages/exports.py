"""Exports: status and live progress, download, cancel, delete, export again, details."""

from typing import Any

import streamlit as st
from humanize import naturaldelta, naturalsize

from exporter import services
from exporter.errors import PortalError
from exporter.schemas import ExportView
from exporter.ui import changes, data, links
from exporter.ui.session import require_identity, settings

CHANGE_ROWS = 1000
ICONS = {
    "pending": ":material/schedule:",
    "processing": ":material/sync:",
    "completed": ":material/check_circle:",
    "failed": ":material/error:",
    "cancelled": ":material/block:",
    "expired": ":material/history:",
    "deleted": ":material/delete:",
}

who = require_identity()
st.title("Exports")


def size(n: int | None) -> str:
    return naturalsize(n or 0, binary=True)


def json_object(value: object) -> dict[str, Any]:
    """A JSON object of a stored report or manifest (the services hand them over as plain
    JSON), or {} when there is none."""
    return dict(value) if isinstance(value, dict) else {}


def json_list(value: object) -> list[Any]:
    """A JSON array of a stored report, or [] when there is none."""
    return list(value) if isinstance(value, list) else []


@st.fragment(run_every=2)
def live_progress(export_id: str, status: str) -> None:
    """Reruns alone every 2 s while the export runs; the page reruns when it ends."""
    view = services.get_export(settings(), who.email, export_id)
    if view.status != status:
        st.rerun()
    eta = f", about {naturaldelta(view.eta_seconds)} left" if view.eta_seconds is not None else ""
    text = (
        f"{view.files_done:,} of {view.file_count:,} files, {size(view.bytes_done)} of "
        f"{size(view.estimated_bytes)}{eta}"
        if view.status == "processing"
        else "Waiting for a worker…"
    )
    st.progress(view.progress, text=text)


def actions(view: ExportView) -> None:
    cols = st.columns(4)
    if view.status in ("pending", "processing") and cols[0].button(
        "Cancel", key=f"cancel-{view.id}", icon=":material/block:"
    ):
        services.cancel_export(settings(), who.email, view.id)
        st.rerun()
    if view.status == "completed":
        base = f"/api/{view.project}/exports/{view.id}/download/"
        if len(view.parts) > 1:
            for part in view.parts:
                cols[0].link_button(f"Download part {part.number}", f"{base}{part.number}")
        else:
            cols[0].link_button("Download", base, icon=":material/download:", type="primary")
    if view.status not in ("pending", "processing", "deleted"):
        with cols[1].popover("Delete", icon=":material/delete:"):
            st.write(f"Delete the files of **{view.name}**? The record stays.")
            if st.button("Delete files", key=f"delete-{view.id}", type="primary"):
                services.delete_export(settings(), who.email, view.id)
                st.rerun()
    if cols[2].button("Export again", key=f"again-{view.id}", icon=":material/replay:"):
        st.session_state["prefill"] = {
            "project": view.project,
            "criteria": view.criteria,
            "options": view.options,
        }
        st.switch_page(str(links.NEW_EXPORT))


def privacy_details(view: ExportView) -> None:
    """The residual check's report and the re-identification key, for data managers of the
    export's project (loaded when the expanders are opened)."""
    if view.status in ("pending", "processing") or not view.privacy_check:
        return
    box = st.expander(
        "Privacy check report", icon=":material/shield:", key=f"report-{view.id}", on_change="rerun"
    )
    if box.open:
        report = data.privacy_report(who.email, view.id)
        with box:
            if report is None:
                st.caption("Only the project's data managers see the report.")
            else:
                checked = json_object(report.get("checked"))
                st.caption(
                    f"Result: **{report.get('result')}**, {report.get('finding_count', 0):,} "
                    f"finding(s); {checked.get('bytes_searched', 0):,} bytes searched, "
                    f"matching {checked.get('matching', '')}."
                )
                left, right = st.columns(2)
                left.dataframe(
                    [{"Searched for": k, "Values": v} for k, v in checked["values"].items()]
                    + [
                        {"Searched for": f"left out: {k}", "Values": v}
                        for k, v in checked["left_out"].items()
                    ],
                    hide_index=True,
                )
                right.dataframe(
                    [{"Searched in": k, "Places": v} for k, v in checked["places"].items()],
                    hide_index=True,
                )
                findings = report.get("findings") or []
                if findings:
                    st.dataframe(findings, hide_index=True)
                st.caption("Not checked: " + "; ".join(json_list(report.get("not_checked"))))
    if view.privacy == "identified":
        return
    box = st.expander(
        "Who is who (re-identification key)",
        icon=":material/key:",
        key=f"key-{view.id}",
        on_change="rerun",
    )
    if box.open:
        with box:
            rows = data.export_key(who.email, view.id)
            if isinstance(rows, str):
                st.caption(rows)
            else:
                st.caption("Reading the key is recorded in the audit log.")
                st.dataframe(
                    [
                        {
                            "Folder": r.pseudonym,
                            "Patient": r.label,
                            "Date shift (days)": r.date_shift_days,
                            "Pseudonym": "stable" if r.stable else "fresh",
                        }
                        for r in rows
                    ],
                    hide_index=True,
                )


def dicom_changes(view: ExportView, total: int) -> None:
    """The change log with old values, for data managers of the export's project only; the
    rows load when the expander is opened."""
    if view.status in ("pending", "processing") or not total:
        return  # running, nothing changed, or not a data manager of its project
    box = st.expander(
        f"DICOM changes ({total:,})",
        icon=":material/difference:",
        key=f"changes-{view.id}",
        on_change="rerun",
    )
    if not box.open:
        return
    log = data.export_changes(who.email, view.id, CHANGE_ROWS)
    if log is None:
        return
    with box:
        more = len(log.rows) < log.total
        st.caption(
            "Old values are kept in the portal only, for data managers: the archive's "
            "dicom_changes.csv lists the new values only."
            + (f" The first {len(log.rows):,} of {log.total:,} changes are shown." if more else "")
        )
        changes.show(
            (({"Patient": c.patient, "Part": c.part, "Path": c.path}, c) for c in log.rows),
            with_old=True,
        )


try:
    views = services.list_exports(settings(), who.email, limit=200)
    done = tuple(v.id for v in views if v.status not in ("pending", "processing"))
    counts = data.change_counts(who.email, done)
except PortalError as exc:
    st.error(str(exc))
    st.stop()
if not views:
    st.info("No exports yet.")
    st.page_link(str(links.NEW_EXPORT), label="Create one", icon=":material/add:")

for view in views:
    with st.container(border=True):
        head, status = st.columns([4, 1])
        head.markdown(f"**{view.name}** · project `{view.project}`")
        status.markdown(f"{ICONS.get(view.status, '')} {view.status}")
        st.caption(
            f"by {view.creator} · created {view.created_at:%Y-%m-%d %H:%M} UTC · "
            f"{view.patient_count:,} patients · {view.file_count:,} files · "
            f"{size(view.archive_bytes or view.estimated_bytes)}"
            + (f" · available until {view.expires_at:%Y-%m-%d}" if view.expires_at else "")
        )
        if view.status in ("pending", "processing"):
            live_progress(view.id, view.status)
        if view.status == "failed" and view.error_message:
            st.error(view.error_message)
        if view.privacy == "identified" and view.status not in ("deleted", "expired"):
            st.warning(
                "This export is identified: it carries the patients' names, IDs, birth dates "
                "and other identifiers as stored. Share it only with people allowed to know "
                "who the patients are.",
                icon=":material/warning:",
            )
        actions(view)
        privacy_details(view)
        with st.expander("Details"):
            st.caption(services.describe_privacy(view))
            facts = {"id": view.id, "criteria": view.criteria, "options": view.options}
            st.json({**facts, "notes": view.notes, "sha256": view.archive_sha256}, expanded=False)
            manifest = services.export_manifest(settings(), who.email, view.id)
            if manifest:
                totals = json_object(manifest["totals"])
                st.caption(
                    f"Archive: {totals.get('parts')} part(s), {totals.get('files', 0):,} files, "
                    f"{size(totals.get('bytes'))} of data in {size(totals.get('archive_bytes'))}"
                )
                st.dataframe(manifest["parts"], hide_index=True)
            trail = services.export_audit(settings(), who.email, view.id)
            rows = [
                {"when": e.at.strftime("%Y-%m-%d %H:%M:%S"), "what": e.action, "who": e.user}
                for e in trail
            ]
            st.dataframe(rows, hide_index=True)
        dicom_changes(view, counts.get(view.id, 0))
