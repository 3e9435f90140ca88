"""New export: pick patients (tree, tags, search), modalities and options; see the estimate."""

import streamlit as st
from humanize import naturalsize

from exporter import services
from exporter.errors import PortalError
from exporter.exports import ExportRequest, archive_bytes_estimate, default_name
from exporter.ui import changes, data, links
from exporter.ui.session import require_identity, settings
from exporter.ui.tree import FOLDER, PATIENT, patient_tree, selection, visible_patients

GIB = 1024**3
DEID_HELP = (
    "Applies the DICOM PS3.15 Basic Application Level Confidentiality Profile to every "
    "DICOM file (names, IDs, dates, UIDs, free text) and strips the metadata of photos, "
    "3D scans and volumes. Pixel data is copied unchanged: text burned into images stays."
)
# ExportRequest field: (label, help, default)
DEID_OPTIONS = {
    "retain_dates": (
        "Keep dates, shifted per patient",
        "Dates move back by a random number of days drawn per patient (the same in every "
        "file), so intervals between dates survive; times are kept.",
        False,
    ),
    "retain_uids": (
        "Keep UIDs",
        "UIDs keep their original values; otherwise each gets a new one, the same in every "
        "file of the export.",
        False,
    ),
    "remove_private": (
        "Remove private tags",
        "Off keeps vendor-specific fields, which can hold identifiers: the export then no "
        "longer meets the profile.",
        True,
    ),
    "clean_descriptors": (
        "Keep descriptions, cleaned of identifiers",
        "Descriptions and comments are cleaned of the identifiers the header carries "
        "instead of being removed.",
        False,
    ),
}
PREVIEW = "new-export-preview"


def size(n: int) -> str:
    return naturalsize(n, binary=True)


def preview_panel(slug: str, request: ExportRequest, disabled: bool) -> None:
    """The header changes for one file per series, computed only on the button and shown
    only while the selection and options it was made for stay the same."""
    wanted = (slug, request.selection, request.pseudonyms, request.deidentify,
              request.retain_dates, request.retain_uids, request.remove_private,
              request.clean_descriptors)  # fmt: skip
    with st.expander("Preview DICOM header changes", icon=":material/preview:"):
        if st.button("Show preview", disabled=disabled, key="new-export-preview-button"):
            try:
                made = services.preview_export(settings(), who.email, slug, request)
            except PortalError as exc:
                st.session_state.pop(PREVIEW, None)
                st.error(str(exc))
                return
            st.session_state[PREVIEW] = (wanted, made)
        stored = st.session_state.get(PREVIEW)
        if stored is None:
            st.caption("See what the export would change in DICOM headers before creating it.")
            return
        if stored[0] != wanted:
            st.caption("The selection or options changed: show the preview again.")
            return
        preview = stored[1]
        st.caption(
            f"One file per selected series ({preview.series_shown} of {preview.series_total} "
            "shown); pseudonyms and date shifts are drawn again when the export runs."
        )
        if request.deidentify:
            st.caption(
                f"{preview.other_files:,} photos/scans/volumes will have their metadata stripped."
                " Curated values of fields the profile removes are removed too (descriptions "
                "stay, cleaned, with *Keep descriptions*)."
            )
        if not preview.rows:
            st.info("No DICOM header would change.")
            return
        changes.show(
            (({"Patient": r.patient, "File": r.file}, r) for r in preview.rows),
            with_old=any(r.old_value is not None for r in preview.rows),
        )


who = require_identity()
st.title("New export")
prefill = st.session_state.pop("prefill", None) or {}

try:
    projects = data.projects(who.email)
except PortalError as exc:
    st.error(str(exc))
    st.stop()
if not projects:
    st.info("You are not a member of any project yet: ask a data manager to add you.")
    st.stop()

names = {p.slug: p.name for p in projects}
slugs = list(names)
slug = st.selectbox(
    "Project",
    slugs,
    index=slugs.index(prefill["project"]) if prefill.get("project") in slugs else 0,
    format_func=lambda s: f"{names[s]} ({s})",
)
tree = data.tree(who.email, slug)
criteria = prefill.get("criteria", {})
earlier = prefill.get("options", {})  # "Export again" repeats the options too

left, right = st.columns([3, 2], gap="large")
with left:
    st.subheader("Patients")
    search = st.text_input("Search patient labels", placeholder="e.g. P00")
    tag_col, mode_col = st.columns([3, 1])
    tags = tag_col.multiselect("Tags", tree.tags, default=criteria.get("tags", []))
    tag_mode = mode_col.radio("Match", ["any", "all"], horizontal=True)
    if tree.truncated:
        st.warning(f"Only the first {len(tree.patients):,} patients are listed: use search.")
    not_exported = st.checkbox(
        "Only patients not yet exported", value=bool(criteria.get("not_exported"))
    )
    shown = visible_patients(tree, search, tags, tag_mode, not_exported)
    initial = [FOLDER + f for f in criteria.get("folders", [])] + [
        PATIENT + p for p in criteria.get("patients", [])
    ]
    checked = patient_tree(tree, shown, key=f"tree-{slug}", checked=initial)
    folders, patients = selection(checked, tree)
    if not checked and tags:
        st.caption("No patient ticked: every patient of the project with these tags.")
        folders = [""]

with right:
    st.subheader("Modalities")
    kind_cols = st.columns(2)
    wanted_kinds = criteria.get("kinds", ["raw", "processed"])
    kinds = [
        kind
        for kind, col in zip(("raw", "processed"), kind_cols, strict=True)
        if col.toggle(f"{kind.capitalize()} files", value=kind in wanted_kinds)
    ]
    base = services.parse_selection(
        folders, patients, tags, tag_mode, None, kinds or ["raw"], not_exported
    )
    try:
        overview = services.estimate(settings(), who.email, slug, base) if checked or tags else None
    except PortalError as exc:
        overview = None
        st.error(str(exc))
    chosen = []
    if overview is None or not overview.by_modality:
        st.caption("Tick patients (or choose tags) to see their modalities.")
    else:
        for m in overview.by_modality:
            label = f"{m.label} — {m.files:,} files, {size(m.bytes)} ({m.patients} patients)"
            if st.checkbox(
                label, value=m.key in criteria.get("modalities", [m.key]), key=f"mod-{slug}-{m.key}"
            ):
                chosen.append(m.key)

    st.subheader("Options")
    name = st.text_input("Name", value=criteria.get("name") or default_name())
    notes = st.text_area("Notes", height=80)
    compression = st.selectbox(
        "Compression",
        ["fast", "small", "store"],
        index=["fast", "small", "store"].index(earlier.get("compression", "fast")),
        format_func={"fast": "Fast (default)", "small": "Smaller, slower", "store": "None"}.get,
    )
    part_gib = st.number_input(
        "Split into parts of at most (GiB, 0 = one file)", 0, 10_000,
        (earlier.get("max_part_bytes") or 0) // GIB,
    )  # fmt: skip
    pseudonyms = st.toggle(
        "Pseudonymised folder names (patient_001, ...)", value=earlier.get("pseudonyms", True)
    )

# Below both columns: the toggle's label (the standard's name and what it does) needs the width.
st.subheader("De-identification")
deid_label = "De-identify (DICOM PS3.15 Basic profile; strip metadata from photos, scans, volumes)"
if pseudonyms:
    deidentify = st.toggle(
        deid_label, value=bool(earlier.get("deidentify")), key="new-export-deid", help=DEID_HELP
    )
else:  # a separate widget, so that turning pseudonyms back on starts from "off"
    deidentify = st.toggle(
        deid_label, value=False, disabled=True, key="new-export-deid-off",
        help="De-identification needs pseudonymised folder names: turn them on first.",
    )  # fmt: skip
deid = {name: default for name, (_, _, default) in DEID_OPTIONS.items()}
if deidentify:
    with st.container(horizontal=True, gap="medium"):  # one row, wrapping on narrow screens
        deid = {
            name: st.checkbox(
                label, bool(earlier.get(name, default)), key=f"new-export-{name}", help=text
            )
            for name, (label, text, default) in DEID_OPTIONS.items()
        }

request = ExportRequest(
    selection=services.parse_selection(
        folders, patients, tags, tag_mode, chosen, kinds or ["raw"], not_exported
    ),
    name=name,
    notes=notes,
    compression=compression,
    part_size=int(part_gib * GIB) or None,
    pseudonyms=pseudonyms,
    deidentify=deidentify,
    **deid,
)
check = None
if (checked or tags) and kinds:
    try:
        check = services.preflight_export(settings(), who.email, slug, request)
    except PortalError as exc:
        st.error(str(exc))

st.divider()
cols = st.columns(4)
est = check.estimate if check else None
cols[0].metric("Patients", f"{est.patient_count if est else 0:,}")
cols[1].metric("Files", f"{est.file_count if est else 0:,}")
cols[2].metric("Size", size(est.total_bytes if est else 0))
cols[3].metric("Archive (about)", size(archive_bytes_estimate(est, compression) if est else 0))
if check:
    st.caption(f"Quota left: {size(max(check.quota_left, 0))}")
reason = (
    "Tick patients or choose tags" if not (checked or tags)
    else "Choose raw and/or processed files" if not kinds
    else check.refusal if check else "The selection cannot be exported"
)  # fmt: skip
if reason:
    st.warning(reason)
preview_panel(slug, request, disabled=not ((checked or tags) and kinds and chosen))
if st.button("Create export", type="primary", disabled=bool(reason)):
    try:
        view = services.create_export(settings(), who.email, slug, request)
    except PortalError as exc:
        st.error(str(exc))
    else:
        st.success(f"Export **{view.name}** is queued (id `{view.id}`).")
        st.page_link(
            str(links.EXPORTS), label="Follow it on the Exports page", icon=":material/list:"
        )
