"""DICOM curation: data managers correct header values that exports write, with a history."""

import streamlit as st

from exporter import schemas, services
from exporter.errors import PortalError
from exporter.schemas import CuratedValue
from exporter.ui import data
from exporter.ui.session import require_identity, settings

KEY = "curation-"  # every session_state key of this page starts with it
WHOLE = 0  # the File box's "Whole series" (not a file id; None would look clearable)
SEARCH_FROM = 50  # patients: more than this and a search box narrows the list
SCOPES = {
    "file": "This file",
    "series": "Whole series",
    "patient": "Whole patient (every DICOM file)",
}
SHORT = {"file": "this file", "series": "whole series", "patient": "whole patient"}
PLACEHOLDERS = {
    "DA": "YYYYMMDD",
    "TM": "HHMMSS",
    "DT": "YYYYMMDDHHMMSS",
    "PN": "FAMILY^GIVEN",
    "AS": "nnnD, nnnW, nnnM or nnnY (e.g. 034Y)",
    "CS": "UPPER CASE CODE",
    "DS": "a decimal number, e.g. 1.25",
    "IS": "a whole number",
    "US": "a whole number",
    "SS": "a whole number",
    "UL": "a whole number",
    "SL": "a whole number",
    "FL": "a number",
    "FD": "a number",
}


def placeholder(vr: str, vm: str) -> str:
    text = PLACEHOLDERS.get(vr, "text")
    return text if vm in ("", "1") else f"{text}; several values separated by \\"


def shown(value: str | None) -> str:
    return "(none)" if value is None else f"'{value}'"


def where(edit: CuratedValue) -> str:
    if edit.scope == "file":
        return f"file {edit.file_path or '?'}"
    if edit.scope == "series":
        return f"series {edit.series_label}"
    return "whole patient"


def done_message(edits: list[CuratedValue], cleared: bool) -> str:
    verb = "Cleared the curation of" if cleared else "Saved"
    lines = [f"{verb} **{edits[0].keyword}** on {len(edits)} target(s):"]
    for edit in edits[:10]:
        new = "(the file's own value)" if edit.value is None else f"'{edit.value}'"
        lines.append(f"- {edit.patient} · {where(edit)}: {shown(edit.old_value)} → {new}")
    if len(edits) > 10:
        lines.append(f"- … and {len(edits) - 10} more")
    return "\n".join(lines)


def after_edit(message: str, empty: str | None = None) -> None:
    """Show the edit on the next run, with fresh headers and history (and the widget keyed
    ``empty`` emptied: a widget's value can only be set before it is drawn)."""
    st.session_state[KEY + "flash"] = message
    if empty:
        st.session_state[KEY + "empty"] = empty
    data.curated()
    st.rerun()


who = require_identity()
st.title("DICOM curation")
st.caption(
    "Correct DICOM header values of a patient's files. The stored files are never changed: "
    "exports write the curated values, and every edit is kept in the history."
)

try:
    managed = data.managed_projects(who.email)
except PortalError as exc:
    st.error(str(exc))
    st.stop()
if not managed:
    st.info(
        "Only data managers curate DICOM headers; ask a data manager of the project to "
        "correct a value.",
        icon=":material/lock:",
    )
    st.stop()

# --- what to curate: project, patient, series, file -----------------------------------------
names = {p.slug: p.name for p in managed}
pick = st.columns([2, 2, 3, 3], gap="medium")
slug = pick[0].selectbox(
    "Project", list(names), format_func=lambda s: f"{names[s]} ({s})", key=KEY + "project"
)
with st.expander("Import values from a CSV file", icon=":material/upload_file:"):
    st.caption(
        "One value a line, under the header `patient,series,field,value` (series empty: "
        "every DICOM file of the patient). The file is applied as a whole: if one line is "
        "wrong, nothing is applied and each wrong line is named."
    )
    upload = st.file_uploader("CSV file", type=["csv"], key=f"{KEY}csv-{slug}")
    if upload is not None and st.button("Apply the file", key=f"{KEY}csv-apply"):
        try:
            count, imported = services.import_curation_csv(
                settings(), who.email, slug, upload.getvalue()
            )
        except PortalError as exc:
            st.error(str(exc))
        else:
            after_edit(f"{count} line(s) applied.\n\n" + done_message(imported, cleared=False))

try:
    tree = data.tree(who.email, slug)
except PortalError as exc:
    st.error(str(exc))
    st.stop()
labels = [p.label for p in tree.patients]
with pick[1]:
    if len(labels) > SEARCH_FROM or tree.truncated:
        needle = st.text_input(
            "Search patients", placeholder="e.g. P00", key=f"{KEY}search-{slug}"
        ).strip()
        matching = [label for label in labels if needle.lower() in label.lower()]
        if needle and needle not in matching and tree.truncated:
            matching.insert(0, needle)  # a patient past the list's cap, by its exact label
        labels = matching
    patient = st.selectbox(
        "Patient", labels, key=f"{KEY}patient-{slug}", placeholder="No patient matches"
    )
if patient is None:
    st.info("No patient to show: change the search.")
    st.stop()

try:
    series_list = data.patient_series(who.email, slug, patient)
except PortalError as exc:
    st.error(str(exc))
    st.stop()
if not series_list:
    st.info(f"Patient {patient} has no DICOM files: nothing to curate.")
    st.stop()
counts = {s.label: s.files for s in series_list}
series = pick[2].selectbox(
    "Series",
    list(counts),
    format_func=lambda s: f"{s} ({counts[s]:,} files)",
    key=f"{KEY}series-{slug}-{patient}",
)
try:
    files, files_cut = data.series_files(who.email, slug, patient, series)
except PortalError as exc:
    st.error(str(exc))
    st.stop()
paths = dict(files)
folder = files[0][1].rpartition("/")[0] + "/" if files else ""
picked = pick[3].selectbox(
    "File",
    [WHOLE, *paths],
    format_func=lambda f: "Whole series" if f == WHOLE else paths[f].removeprefix(folder),
    key=f"{KEY}file-{slug}-{patient}-{series}",
    help=f"The first {len(files):,} files are listed." if files_cut else None,
)

file_id = None if picked == WHOLE else picked
try:
    fields = data.header_fields(who.email, slug, patient, series, file_id)
except PortalError as exc:
    st.error(str(exc))
    st.stop()

empty = st.session_state.pop(KEY + "empty", None)
if empty:
    st.session_state[empty] = ""
flash = st.session_state.pop(KEY + "flash", None)
if flash:
    st.success(flash, icon=":material/check_circle:")

# --- the header and the edit form ------------------------------------------------------------
table, edit = st.columns([5, 2], gap="medium")
with table:
    title, search = st.columns([1, 1], vertical_alignment="bottom")
    title.subheader("Header")
    typed = search.text_input(
        "Filter fields",
        placeholder="Filter by keyword, tag or value",
        key=KEY + "filter",
        label_visibility="collapsed",
    )
    needle = typed.strip().lower()
    first = files[0][1] if files else "?"
    st.caption(
        f"File {paths[file_id]}" if file_id is not None else f"First file of the series: {first}"
    )
    rows = [
        f
        for f in fields
        if not needle
        or any(
            needle in (text or "").lower()
            for text in (f.tag, f.keyword, f.name, f.value, f.curated)
        )
    ]
    st.dataframe(
        [
            {
                "Tag": f.tag,
                "Keyword": f.keyword or f.name,
                "VR": f.vr,
                "VM": f.vm,
                "Value in file": f.value,
                "Curated value": ""
                if f.curated is None
                else f"{f.curated or '(empty)'} ({SHORT.get(f.curated_scope or '')})",
            }
            for f in rows
        ],
        hide_index=True,
        width="stretch",
        height=560 if len(rows) > 14 else "auto",
        column_config={
            "Tag": st.column_config.TextColumn(width=95, pinned=True),
            "Keyword": st.column_config.TextColumn(pinned=True),
            "VR": st.column_config.TextColumn(width=40),
            "VM": st.column_config.TextColumn(width=45),
            "Value in file": st.column_config.TextColumn(width=150),
            "Curated value": st.column_config.TextColumn(
                help="The value exports write, and whether it was set for this file, the "
                "whole series or the whole patient"
            ),
        },
    )

with edit, st.container(border=True):
    st.subheader("Edit a field")
    by_keyword = {f.keyword: f for f in fields if f.editable}
    keyword = st.selectbox(
        "Field",
        list(by_keyword),
        format_func=lambda k: f"{k} {by_keyword[k].tag}",
        key=f"{KEY}field-{slug}-{patient}-{series}-{file_id}",
        help=services.CURATABLE_HINT,
    )
    other = st.text_input(
        "Other keyword (a field this file does not have)",
        placeholder="e.g. PatientComments or 0010,4000",
        key=KEY + "other",
        help=services.CURATABLE_HINT,
    ).strip()
    field_name = other or keyword or ""
    vr, vm = "", "1"
    if other:
        spec = data.field_spec(other)
        if isinstance(spec, str):
            st.warning(spec)
        else:
            vr, vm = spec.vr, spec.vm
            st.caption(f"{spec.name} {spec.tag_text()} · VR {vr} · VM {vm}")
    elif keyword:
        current = by_keyword[keyword]
        vr, vm = current.vr, current.vm
        now = f"In the file: {shown(current.value)}"
        if current.curated is not None:
            now += f" · curated ({SHORT.get(current.curated_scope or '')}): '{current.curated}'"
        st.caption(f"{current.name} · VR {vr} · VM {vm} · {now}")

    with st.form(KEY + "form", border=False):
        value = st.text_input(
            "New value", placeholder=placeholder(vr, vm), key=f"{KEY}value-{field_name}"
        )
        scopes = ["file", "series", "patient"] if file_id is not None else ["series", "patient"]
        scope = st.radio(
            "Apply to", scopes, format_func=SCOPES.get, key=f"{KEY}scope-{len(scopes)}"
        )
        others = st.multiselect(
            "Also apply to these patients",
            [p.label for p in tree.patients if p.label != patient],
            key=f"{KEY}bulk-{slug}-{patient}",
            help="The same field and value, for the whole patient or for their series with "
            "the same label. Not for a single file.",
            placeholder="Only this patient",
        )
        with st.container(horizontal=True, gap="small"):  # wraps when the panel is narrow
            save = st.form_submit_button("Save value", type="primary")
            clear = st.form_submit_button("Clear curation")

    if save or clear:
        if not field_name:
            st.error("Choose a field, or type the keyword of another one.")
        else:
            try:
                targets = schemas.targets(
                    [patient, *others],
                    series if scope == "series" else None,
                    file_id if scope == "file" else None,
                )
                edits = services.curate(
                    settings(), who.email, slug, targets, field_name, value if save else None
                )
            except PortalError as exc:
                st.error(str(exc))
            else:
                after_edit(done_message(edits, cleared=clear), empty=f"{KEY}value-{field_name}")

# --- history ---------------------------------------------------------------------------------
st.subheader("History")
try:
    history = data.curation_history(who.email, slug, patient)
except PortalError as exc:
    st.error(str(exc))
    st.stop()
if not history:
    st.caption(f"No curation edits for {patient} yet.")
    st.stop()
st.dataframe(
    [
        {
            "When (UTC)": h.at.strftime("%Y-%m-%d %H:%M:%S"),
            "Who": h.by,
            "Field": h.keyword,
            "Applies to": where(h),
            "Old value": h.old_value,
            "New value": "(cleared)" if h.value is None else h.value,
            "In force": h.in_force,
        }
        for h in history
    ],
    hide_index=True,
    width="stretch",
)
earlier = {h.id: h for h in history if not h.in_force}
if earlier:
    left, right = st.columns([4, 1], vertical_alignment="bottom")
    chosen = left.selectbox(
        "Restore an earlier value",
        list(earlier),
        format_func=lambda i: (
            f"{earlier[i].at:%Y-%m-%d %H:%M} · {earlier[i].keyword} · {where(earlier[i])} · "
            f"{'(cleared)' if earlier[i].value is None else repr(earlier[i].value)} "
            f"(by {earlier[i].by})"
        ),
        key=f"{KEY}restore-{slug}-{patient}",
    )
    if right.button("Restore", icon=":material/undo:", key=KEY + "restore", width="stretch"):
        try:
            back = services.restore_curation(settings(), who.email, slug, chosen)
        except PortalError as exc:
            st.error(str(exc))
        else:
            after_edit(done_message([back], cleared=back.value is None))
