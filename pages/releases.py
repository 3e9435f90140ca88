"""Releases: data managers publish curated patients into a destination project (the originals
optionally into an archive), follow the job, and read its log."""

import streamlit as st
from humanize import naturalsize

from exporter import schemas, services
from exporter.errors import PortalError
from exporter.schemas import ReleaseView
from exporter.ui import data
from exporter.ui.session import require_identity, settings

KEY = "releases-"
LOG_ROWS = 1000
ICONS = {
    "pending": ":material/schedule:",
    "processing": ":material/sync:",
    "completed": ":material/check_circle:",
    "failed": ":material/error:",
    "cancelled": ":material/block:",
}
NO_ARCHIVE = ""

who = require_identity()
st.title("Releases")
st.caption(
    "Publish curated patients of a project into another project for another team: the files "
    "are written with the curated values and the destination's pseudonyms, and registered "
    "there. The originals can go, unchanged, into an archive project. Only data managers of "
    "all the projects involved may release."
)


def size(n: int | None) -> str:
    return naturalsize(n or 0, binary=True)


def counts_text(view: ReleaseView) -> str:
    words = {
        "created": "created",
        "new_version": "new versions",
        "skipped": "unchanged",
        "failed": "failed",
    }
    parts = [f"{view.counts[k]:,} {w}" for k, w in words.items() if view.counts.get(k)]
    archived = sum(n for k, n in view.counts.items() if k.startswith("archive_"))
    if archived:
        parts.append(f"{archived:,} originals archived or unchanged")
    return ", ".join(parts) or "no files yet"


@st.fragment(run_every=2)
def live_progress(release_id: str, status: str) -> None:
    """Reruns alone every 2 s while the release runs; the page reruns when it ends."""
    view = services.get_release(settings(), who.email, release_id)
    if view.status != status:
        st.rerun()
    text = (
        f"{view.files_done:,} of {view.file_count:,} files"
        if view.status == "processing"
        else "Waiting for a worker…"
    )
    st.progress(view.progress, text=text)


def show_log(view: ReleaseView) -> None:
    """The release log (loaded when the expander opens) and both CSV downloads."""
    box = st.expander(
        "Release log", icon=":material/list_alt:", key=f"{KEY}log-{view.id}", on_change="rerun"
    )
    if not box.open:
        return
    rows, log = services.release_log_table(settings(), who.email, view.id)
    changes = services.release_changes(settings(), who.email, view.id)
    with box:
        left, right = st.columns(2)
        left.download_button(
            "Download release_log.csv",
            log,
            file_name="release_log.csv",
            mime="text/csv",
            key=f"{KEY}dl-log-{view.id}",
            icon=":material/download:",
        )
        right.download_button(
            "Download dicom_changes.csv",
            changes,
            file_name="dicom_changes.csv",
            mime="text/csv",
            key=f"{KEY}dl-changes-{view.id}",
            icon=":material/download:",
        )
        summary = [r for r in rows if r.get("level", "") != "file"]
        st.caption("Per patient and series: files found, created, new versions, unchanged, failed.")
        st.dataframe(
            [
                {
                    "Where": r.get("target", ""),
                    "Patient": r.get("patient", ""),
                    "As": r.get("destination_patient", ""),
                    "Series": r.get("series", ""),
                    "Found": r.get("found", ""),
                    "Created": r.get("created", ""),
                    "New version": r.get("new_version", ""),
                    "Unchanged": r.get("skipped", ""),
                    "Failed": r.get("failed", ""),
                }
                for r in summary
            ],
            hide_index=True,
            key=f"{KEY}summary-{view.id}",
        )
        files = [r for r in rows if r.get("level", "") == "file"]
        shown = files[:LOG_ROWS]
        if len(files) > len(shown):
            st.caption(f"The first {len(shown):,} of {len(files):,} files; the CSV has all.")
        st.dataframe(
            [
                {
                    "Where": r.get("target", ""),
                    "Status": r.get("status", ""),
                    "From": r.get("origin_path", ""),
                    "To": r.get("destination_path", ""),
                    "Version": r.get("version", ""),
                    "Message": r.get("message", ""),
                }
                for r in shown
            ],
            hide_index=True,
            key=f"{KEY}files-{view.id}",
        )


def actions(view: ReleaseView) -> None:
    cols = st.columns(4)
    if view.status in ("pending", "processing") and cols[0].button(
        "Cancel", key=f"{KEY}cancel-{view.id}", icon=":material/block:"
    ):
        try:
            services.cancel_release(settings(), who.email, view.id)
        except PortalError as exc:  # it ended meanwhile
            st.session_state[KEY + "flash"] = str(exc)
        st.rerun()
    if view.status in ("failed", "cancelled") and cols[0].button(
        "Run again", key=f"{KEY}retry-{view.id}", icon=":material/replay:"
    ):
        try:
            services.retry_release(settings(), who.email, view.id)
        except PortalError as exc:
            st.session_state[KEY + "flash"] = str(exc)
        st.rerun()


try:
    managed = data.managed_projects(who.email)
except PortalError as exc:
    st.error(str(exc))
    st.stop()
if len(managed) < 2:
    st.info(
        "Releases are for data managers of at least two projects: the one the patients are "
        "in, and the one they are released into. Ask an administrator to add you as a data "
        "manager of the destination project.",
        icon=":material/lock:",
    )
    st.stop()

flash = st.session_state.pop(KEY + "flash", None)
if flash:
    st.info(flash)

# --- a new release --------------------------------------------------------------------------
names = {p.slug: p.name for p in managed}
with st.container(border=True):
    st.subheader("New release")
    top = st.columns(3)
    source = top[0].selectbox(
        "From project", list(names), format_func=lambda s: f"{names[s]} ({s})", key=KEY + "source"
    )
    others = [s for s in names if s != source]
    destination = top[1].selectbox(
        "Into project",
        others,
        format_func=lambda s: f"{names[s]} ({s})",
        key=f"{KEY}destination-{source}",
    )
    archive = top[2].selectbox(
        "Originals to (optional)",
        [NO_ARCHIVE, *[s for s in others if s != destination]],
        format_func=lambda s: "No archive" if s == NO_ARCHIVE else f"{names[s]} ({s})",
        key=f"{KEY}archive-{source}-{destination}",
    )
    try:
        tree = data.tree(who.email, source)
        keys = data.modality_keys(who.email, source)
    except PortalError as exc:
        st.error(str(exc))
        st.stop()
    pick = st.columns([3, 2, 2])
    patients = pick[0].multiselect(
        "Patients (none: every patient)",
        [p.label for p in tree.patients],
        key=f"{KEY}patients-{source}",
    )
    tags = pick[1].multiselect("Tags", tree.tags, key=f"{KEY}tags-{source}")
    modalities = pick[2].multiselect(
        "Modalities", keys, default=keys, key=f"{KEY}modalities-{source}"
    )
    queue = st.checkbox(
        f"Only patients not yet released to {destination}",
        value=True,
        key=f"{KEY}queue-{source}-{destination}",
    )
    opts = st.columns([2, 3])
    privacy = opts[0].radio(
        "Privacy",
        schemas.RELEASE_LEVELS,
        format_func=lambda level: schemas.NAMES[schemas.PrivacyLevel(level)].capitalize(),
        key=KEY + "privacy",
        help="Pseudonymised: the destination's pseudonyms, direct identifiers removed (with "
        "what the source project's policy allows). De-identified: dates shifted and UIDs "
        "replaced too.",
    )
    skip_changed = opts[1].checkbox(
        "A file changed on disk since it was registered fails alone (the rest is released)",
        key=KEY + "skip-changed",
    )
    move_out = opts[1].checkbox(
        f"Move released patients out of {source} into the archive",
        key=f"{KEY}move-out-{source}",
        disabled=not archive,
        help="Needs an archive. A patient whose every file now has its checked original in "
        "the archive leaves this project's tree and queue; its files here are deleted once "
        "the archive's copies are read and hashed again. A patient with files the release "
        "left out (other modalities) stays.",
    )
    name = opts[1].text_input("Name", placeholder="e.g. cohort 1, first batch", key=KEY + "name")
    notes = st.text_area("Notes", key=KEY + "notes", height=68)
    selection = schemas.parse_selection(
        folders=[] if patients or tags else ["/"],
        patients=patients,
        tags=tags,
        modalities=modalities,
        not_released_to=destination if queue else "",
    )
    est: schemas.Estimate | None
    try:
        est = services.estimate(settings(), who.email, source, selection)
        figures = (
            f"**{est.patient_count:,} patients**, {est.file_count:,} files, {size(est.total_bytes)}"
        )
    except PortalError as exc:
        est, figures = None, str(exc)
    st.markdown(figures)
    ready = est is not None and est.file_count > 0 and destination is not None
    if st.button("Release", type="primary", disabled=not ready, key=KEY + "submit"):
        request = schemas.ReleaseRequest(
            selection,
            destination=str(destination),
            archive=archive or None,
            name=name,
            notes=notes,
            privacy=privacy,
            skip_changed=skip_changed,
            move_out=bool(move_out and archive),
        )
        try:
            made = services.create_release(settings(), who.email, source, request)
        except PortalError as exc:
            st.error(str(exc))
        else:
            st.session_state[KEY + "flash"] = f"Release {made.name} is queued."
            st.session_state.pop(KEY + "name", None)
            st.rerun()

# --- the releases ---------------------------------------------------------------------------
st.subheader("Release history")
try:
    views = services.list_releases(settings(), who.email, limit=100)
except PortalError as exc:
    st.error(str(exc))
    st.stop()
if not views:
    st.info("No releases yet.")
focus = st.query_params.get("release")
for view in views:
    if focus and view.id != focus:
        continue
    with st.container(border=True):
        head, status = st.columns([4, 1])
        archived = f" · originals to `{view.archive}`" if view.archive else ""
        head.markdown(f"**{view.name}** · `{view.project}` → `{view.destination}`{archived}")
        status.markdown(f"{ICONS.get(view.status, '')} {view.status}")
        st.caption(
            f"by {view.creator} · created {view.created_at:%Y-%m-%d %H:%M} UTC · "
            f"{view.patient_count:,} patients · {view.file_count:,} files · {view.privacy} · "
            + counts_text(view)
        )
        if view.status in ("pending", "processing"):
            live_progress(view.id, view.status)
        if view.status == "failed" and view.error_message:
            st.error(view.error_message)
        actions(view)
        if view.status not in ("pending",):
            show_log(view)
