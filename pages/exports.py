"""Exports: status and live progress, download, cancel, delete, export again, details."""

from collections.abc import Callable
from typing import Any

import streamlit as st
from humanize import naturaldelta, naturalsize

from exporter import services
from exporter.errors import NotFound, PortalError
from exporter.schemas import NAMES, ExportView, PrivacyLevel
from exporter.ui import changes, data, links
from exporter.ui.session import require_identity, settings

CHANGE_ROWS = 1000
FLASH = "exports-flash"
PAGE = 20  # exports per page
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


def act(what: str, call: Callable[[], object]) -> None:
    """Run one of a card's actions; a refusal (the export ended meanwhile, say) is shown on
    the page after the rerun, never as a traceback."""
    try:
        done = call()
    except PortalError as exc:
        st.session_state[FLASH] = ("warning", str(exc))
    else:
        if isinstance(done, ExportView):
            st.session_state[FLASH] = ("success", f"{what}: {done.name} is {done.status}.")
    st.rerun()


def actions(view: ExportView) -> None:
    cols = st.columns(4)
    if view.status in ("pending", "processing"):
        with cols[0].popover("Cancel", icon=":material/block:"):
            st.write(f"Stop **{view.name}**? What it wrote so far is removed.")
            if st.button("Cancel export", key=f"cancel-{view.id}", type="primary"):
                act("Cancelled", lambda: services.cancel_export(settings(), who.email, view.id))
    if view.status == "completed":
        base = f"/api/{view.project}/exports/{view.id}/download/"
        if len(view.parts) > 1:
            for part in view.parts:
                cols[0].link_button(f"Download part {part.number}", f"{base}{part.number}")
        else:
            cols[0].link_button("Download", base, icon=":material/download:", type="primary")
    if view.status == "failed" and cols[0].button(
        "Retry",
        key=f"retry-{view.id}",
        icon=":material/refresh:",
        help="A multi-part export builds its failed parts again; any other export is made "
        "again as a new export of the same selection and options.",
    ):
        act("Retried", lambda: services.retry_any_export(settings(), who.email, view.id))
    if view.status not in ("pending", "processing", "deleted", "expired"):
        with cols[1].popover("Delete", icon=":material/delete:"):
            st.write(f"Delete the files of **{view.name}**? The record stays.")
            if st.button("Delete files", key=f"delete-{view.id}", type="primary"):
                act("Deleted", lambda: services.delete_export(settings(), who.email, view.id))
    if cols[2].button("Export again", key=f"again-{view.id}", icon=":material/replay:"):
        st.session_state["prefill"] = {
            "project": view.project,
            "criteria": view.criteria,
            "options": view.options,
            "name": view.name,
            "notes": view.notes,
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


flash = st.session_state.pop(FLASH, None)
if flash:
    (st.success if flash[0] == "success" else st.warning)(flash[1])
# A notification e-mail links here with ?export=<id>: that export alone, whatever its age.
focus = st.query_params.get("export")
find_text, find_status, mine, page, more = "", "any status", False, 0, False
try:
    if focus:
        try:
            views = [services.get_export(settings(), who.email, focus)]
        except NotFound:
            views = []
            st.warning(
                "That export is not one you may see (or it no longer exists): your exports "
                "are listed below."
            )
            focus = None
        else:
            if st.button("Show all exports", icon=":material/list:"):
                st.query_params.clear()
                st.rerun()
    if not focus:
        filters = st.columns([3, 2, 2])
        find_text = filters[0].text_input(
            "Search", placeholder="name or notes", key="exports-text", label_visibility="collapsed"
        )
        find_status = filters[1].selectbox(
            "Status",
            ["any status", *ICONS],
            key="exports-status",
            label_visibility="collapsed",
        )
        mine = bool(data.managed_projects(who.email)) and filters[2].toggle(
            "Mine only",
            key="exports-mine",
            help="As a data manager you see every export of your projects; this shows yours.",
        )
        wanted = (find_text, find_status, mine)
        if st.session_state.get("exports-wanted") != wanted:  # new filters: the first page
            st.session_state["exports-wanted"] = wanted
            st.session_state["exports-page"] = 0
        page = int(st.session_state.get("exports-page", 0))
        views = services.list_exports(
            settings(),
            who.email,
            status=None if find_status == "any status" else find_status,
            limit=PAGE + 1,
            offset=page * PAGE,
            mine=mine,
            text=find_text,
        )
        more, views = len(views) > PAGE, views[:PAGE]
    done = tuple(v.id for v in views if v.status not in ("pending", "processing"))
    counts = data.change_counts(who.email, done)
except PortalError as exc:
    st.error(str(exc))
    st.stop()
if not views:
    if not focus and (find_text or find_status != "any status" or mine or page):
        st.info("No export matches: change the search or the status.")
    else:
        st.info("No exports yet.")
        st.page_link(str(links.NEW_EXPORT), label="Create one", icon=":material/add:")

for view in views:
    with st.container(border=True):
        head, status = st.columns([4, 1])
        head.markdown(f"**{view.name}** · project `{view.project}`")
        status.markdown(f"{ICONS.get(view.status, '')} {view.status}")
        modalities = ", ".join(view.criteria.get("modalities") or []) or "no modality"
        st.caption(
            f"by {view.creator} · created {view.created_at:%Y-%m-%d %H:%M} UTC · "
            f"{view.patient_count:,} patients · {view.file_count:,} files · "
            f"{size(view.archive_bytes or view.estimated_bytes)} · {modalities} · "
            f"{NAMES.get(PrivacyLevel(view.privacy), view.privacy)}"
            + (
                f" · available until {view.expires_at:%Y-%m-%d}"
                if view.expires_at and view.status == "completed"
                else ""
            )
        )
        if view.notes:
            st.caption(f"Notes: {view.notes}")
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
        with st.expander("Details", expanded=bool(focus)):
            st.caption(f"Export `{view.id}` · " + services.describe_privacy(view))
            facts = {"id": view.id, "criteria": view.criteria, "options": view.options}
            st.json(
                {**facts, "notes": view.notes, "sha256": view.archive_sha256},
                expanded=bool(focus),
            )
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

if not focus and (page or more):
    pager = st.columns([1, 1, 4])
    if page and pager[0].button("Newer", icon=":material/chevron_left:"):
        st.session_state["exports-page"] = page - 1
        st.rerun()
    if more and pager[1].button("Older", icon=":material/chevron_right:"):
        st.session_state["exports-page"] = page + 1
        st.rerun()
    pager[2].caption(f"Page {page + 1}")
