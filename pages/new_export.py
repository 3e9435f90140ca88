"""New export: pick patients (tree, tags, search), modalities and options; see the estimate."""

from datetime import date, timedelta

import streamlit as st
from humanize import naturalsize

from exporter import schemas, services
from exporter.errors import PortalError
from exporter.schemas import LEVELS, SUMMARIES, TITLES, ExportRequest, PrivacyLevel, legacy_level
from exporter.ui import changes, data, links
from exporter.ui.session import require_identity, settings
from exporter.ui.tree import (
    PATIENT,
    open_folders,
    patient_tree,
    selection,
    ticked_leaves,
    visible_patients,
)

GIB = 1024**3
NOT_IN_PIXELS = (
    "Pixel data is copied unchanged: text burned into images, and faces in photos, stay. "
    "Every archive is searched for the patients' known identifiers before it is completed "
    "(privacy_report.json)."
)
PREVIEW = "new-export-preview"
COMPRESSIONS = {"fast": "Fast (default)", "small": "Smaller, slower", "store": "None"}
STUDY_LABELS = {
    "series_description": "Series description contains",
    "body_part": "Body part is",
    "manufacturer": "Manufacturer contains",
    "model": "Model contains",
}


def size(n: int) -> str:
    return naturalsize(n, binary=True)


def compression_label(compression: str) -> str:
    return COMPRESSIONS[compression]


def preview_panel(slug: str, request: ExportRequest, disabled: bool) -> None:
    """The header changes for one file per series, computed only on the button and shown
    only while the selection and options it was made for stay the same."""
    wanted = (
        slug,
        request.selection,
        request.privacy,
        request.fresh_pseudonyms,
        request.shift_dates,
        request.clean_descriptors,
    )
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
            "shown); patients never exported before appear as new_patient_N until the export "
            "gives them their pseudonym."
        )
        if request.privacy != PrivacyLevel.IDENTIFIED:
            st.caption(
                f"{preview.other_files:,} photos/scans/volumes will have their metadata stripped."
                " Curated values of fields the profile removes are removed too (descriptions "
                "stay, cleaned, with *Keep descriptions*)."
            )
        if not preview.rows:
            st.info("No DICOM header would change.")
            return
        changes.show(
            (({"Patient": r.patient, "File": r.path}, r) for r in preview.rows),
            with_old=any(r.old_value is not None for r in preview.rows),
        )


def study_filter(earlier: object) -> tuple[schemas.StudyFilter, str | None]:
    """The study filters (an expander under the tree): dates and header values a file's
    study must have; "Export again" fills them in. With what is wrong with them, if
    anything: then nothing may be estimated or created (the filter would be lost)."""
    was = schemas.StudyFilter.parse(earlier if isinstance(earlier, dict) else None)
    with st.expander("Study filters", icon=":material/filter_alt:", expanded=bool(was)):
        st.caption(
            "A file is selected only if its study matches every filter given (any case). "
            "The dates are the files' acquisition dates; the other filters read DICOM "
            "headers, so they leave out scans and photos."
        )
        when = st.columns(2)
        low, high = date(1900, 1, 1), date.today() + timedelta(days=1)
        start = when[0].date_input(
            "Acquired from", value=was.date_from, min_value=low, max_value=high, key="study-from"
        )
        end = when[1].date_input(
            "Acquired until", value=was.date_to, min_value=low, max_value=high, key="study-to"
        )
        texts = {}
        for col, (key, label) in zip(st.columns(4), STUDY_LABELS.items(), strict=True):
            texts[key] = col.text_input(
                label, value=getattr(was, key), max_chars=schemas.MAX_STUDY_TEXT, key=f"study-{key}"
            )
    try:
        return schemas.StudyFilter.parse({"date_from": start, "date_to": end, **texts}), None
    except PortalError as exc:
        st.error(str(exc))
        return was, f"Correct the study filters: {exc}"


who = require_identity()
st.title("New export")
prefill = st.session_state.pop("prefill", None) or {}
NAME, NOTES = "new-export-name", "new-export-notes"
if prefill:  # "Export again": the earlier export's name (marked again) and notes
    earlier_name = str(prefill.get("name") or "")
    st.session_state[NAME] = (
        schemas.again_name(earlier_name, settings().max_name_length)
        if earlier_name
        else services.default_name()
    )
    st.session_state[NOTES] = prefill.get("notes", "")
# One name per visit, kept as typed: a default made on each rerun would replace it (and make
# every click a new request, which double-submit suppression could not recognise).
st.session_state.setdefault(NAME, services.default_name())
st.session_state.setdefault(NOTES, "")

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
    study, study_problem = study_filter(criteria.get("study"))
    shown = visible_patients(tree, search, tags, tag_mode, not_exported)
    # The tree ticks patients (leaves): a stored folder is ticked as its patients.
    initial = ticked_leaves(tree, criteria.get("folders", []), criteria.get("patients", []))
    # A search or a tag filter shows its matches open (and a ticked selection its folders).
    filtering = bool(search.strip() or tags or not_exported)
    opened = open_folders(
        shown if filtering else [p for p in shown if PATIENT + p.label in initial]
    )
    checked = patient_tree(tree, shown, key=f"tree-{slug}", checked=initial, expanded=opened)
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
    # One estimate serves the modality list and the totals: it is made for the modalities
    # ticked (as the checkboxes below stand), and the preflight reuses it.
    project_keys = data.modality_keys(who.email, slug)
    wanted = criteria.get("modalities", project_keys)
    ticked = [k for k in project_keys if st.session_state.get(f"mod-{slug}-{k}", k in wanted)]
    base = schemas.parse_selection(
        folders, patients, tags, tag_mode, ticked, kinds or ["raw"], not_exported, study=study
    )
    try:
        wanted_any = (checked or tags) and not study_problem
        overview = services.estimate(settings(), who.email, slug, base) if wanted_any else None
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
    name = st.text_input("Name", key=NAME)
    notes = st.text_area("Notes", height=80, key=NOTES)
    compressions = list(COMPRESSIONS)
    compression = st.selectbox(
        "Compression",
        compressions,
        index=compressions.index(earlier.get("compression", "fast")),
        format_func=compression_label,
    )
    part_gib = st.number_input(
        "Split into parts of at most (GiB, 0 = one file)",
        0,
        10_000,
        (earlier.get("max_part_bytes") or 0) // GIB,
    )

# Below both columns: each level's explanation needs the width.
st.subheader("Privacy")
try:
    policy = data.privacy_policy(who.email, slug)
except PortalError as exc:
    st.error(str(exc))
    st.stop()
manager = policy.may_change


def level_title(value: str) -> str:
    """The level's title, saying so when only the project's data managers may choose it."""
    for_anyone = value != "identified" or manager or policy.policy.identified_for_researchers
    return TITLES[PrivacyLevel(value)] + ("" if for_anyone else " — data managers only")


level = st.radio(
    "Who may receive what",
    LEVELS,
    index=LEVELS.index(legacy_level(earlier)) if earlier else 0,
    format_func=level_title,
    captions=[SUMMARIES[PrivacyLevel(v)] for v in LEVELS],
    key=f"new-export-privacy-{slug}",
)
st.caption(NOT_IN_PIXELS)
fresh = shift_dates = clean = False
if level == PrivacyLevel.IDENTIFIED:
    st.warning(
        "An identified export carries the patients' names, IDs, birth dates, addresses and "
        "every other identifier as stored, and real patient labels in its folder names. "
        "It is recorded in the audit log. Choose it only when the recipient may see who the "
        "patients are.",
        icon=":material/warning:",
    )
else:
    if level == PrivacyLevel.PSEUDONYMISED:
        kept = policy.policy.retained()
        st.caption(
            "This project's data managers let pseudonymised exports keep: " + ", ".join(kept)
            if kept
            else "This project's data managers let pseudonymised exports keep nothing more: "
            "dates, UIDs, device details, age and sex, and private tags are removed."
        )
    with st.container(horizontal=True, gap="medium"):  # one row, wrapping on narrow screens
        if level == PrivacyLevel.DEIDENTIFIED:
            shift_dates = st.checkbox(
                "Shift dates per patient",
                bool(earlier.get("shift_dates", True)),
                key="new-export-shift-dates",
                help="Dates move back by a number of days fixed per patient in this project "
                "(the same in every export), so intervals survive; off removes them.",
            )
        fresh = st.checkbox(
            "Fresh pseudonyms",
            bool(earlier.get("fresh_pseudonyms")),
            key="new-export-fresh",
            help="New pseudonyms, date shifts and UIDs that cannot be linked to this "
            "project's other exports (by default a patient is the same patient_NNN in every "
            "export of the project).",
        )
        clean = st.checkbox(
            "Keep descriptions, cleaned of identifiers",
            bool(earlier.get("clean_descriptors")),
            key="new-export-clean",
            help="Study and series descriptions and comments are kept with the patients' "
            "known identifiers cleaned out, instead of being removed.",
        )

request = ExportRequest(
    selection=schemas.parse_selection(
        folders, patients, tags, tag_mode, chosen, kinds or ["raw"], not_exported, study=study
    ),
    name=name,
    notes=notes,
    compression=compression,
    part_size=int(part_gib * GIB) or None,
    privacy=level,
    fresh_pseudonyms=fresh,
    shift_dates=shift_dates,
    clean_descriptors=clean,
)
check = None
if (checked or tags) and kinds and not study_problem:
    try:
        # The service reuses the estimate only where it stands for this request.
        check = services.preflight_export(settings(), who.email, slug, request, overview)
    except PortalError as exc:
        st.error(str(exc))

st.divider()
cols = st.columns(4)
est = check.estimate if check else None
cols[0].metric("Patients", f"{est.patient_count if est else 0:,}")
cols[1].metric("Files", f"{est.file_count if est else 0:,}")
cols[2].metric("Size", size(est.total_bytes if est else 0))
cols[3].metric(
    "Archive (about)", size(services.archive_bytes_estimate(est, compression) if est else 0)
)
if check:
    st.caption(f"Quota left: {size(max(check.quota_left, 0))}")
reason: str | None
if study_problem:
    reason = study_problem
elif not (checked or tags):
    reason = "Tick patients or choose tags"
elif not kinds:
    reason = "Choose raw and/or processed files"
elif check is None:
    reason = "The selection cannot be exported"
else:
    reason = check.refusal.message if check.refusal else None
if reason:
    st.warning(reason)
preview_panel(slug, request, disabled=not ((checked or tags) and kinds and chosen))
if st.button("Create export", type="primary", disabled=bool(reason)):
    try:
        view = services.create_export(settings(), who.email, slug, request, check)
    except PortalError as exc:
        st.error(str(exc))
    else:
        st.success(f"Export **{view.name}** is queued (id `{view.id}`).")
        st.page_link(
            str(links.EXPORTS), label="Follow it on the Exports page", icon=":material/list:"
        )
