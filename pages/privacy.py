"""Project privacy: what the project's data managers let exports keep (others may read it)."""

import streamlit as st

from exporter import services
from exporter.errors import PortalError
from exporter.ui import data
from exporter.ui.session import require_identity, settings

FLAGS = {
    "retain_full_dates": (
        "Keep dates as they are",
        "Study, series and acquisition dates and times stay as stored (PS3.15 Retain "
        "Longitudinal Temporal Information with Full Dates). Birth dates always go.",
    ),
    "retain_uids": (
        "Keep UIDs",
        "Study, series and instance UIDs stay as stored (Retain UIDs): exports can be matched "
        "back to the originals by anyone who has them.",
    ),
    "retain_device_identity": (
        "Keep device identity",
        "Station names, device serial numbers and detector IDs stay (Retain Device Identity).",
    ),
    "retain_patient_characteristics": (
        "Keep age, sex, size and weight",
        "Patient's age, sex, size, weight and similar stay (Retain Patient Characteristics).",
    ),
    "identified_for_researchers": (
        "Researchers may ask for identified exports",
        "Off: only data managers can export names, IDs and dates as stored. Every identified "
        "export is recorded in the audit log either way.",
    ),
}

who = require_identity()
st.title("Project privacy")
try:
    projects = data.projects(who.email)
except PortalError as exc:
    st.error(str(exc))
    st.stop()
if not projects:
    st.info("You are not a member of any project yet: ask a data manager to add you.")
    st.stop()
names = {p.slug: p.name for p in projects}
slug = st.selectbox("Project", list(names), format_func=lambda s: f"{names[s]} ({s})")
try:
    view = data.privacy_policy(who.email, slug)
except PortalError as exc:
    st.error(str(exc))
    st.stop()
policy = view.policy
st.caption(
    "These settings decide what a **pseudonymised** export of this project keeps besides the "
    "pseudonym; everything else that identifies a patient is removed. A de-identified export "
    "keeps none of them. Exports already created keep the settings they were made with."
)
if not view.may_change:
    st.info(
        "Only the project's data managers change these settings "
        f"({', '.join(view.data_managers) or 'none yet'})."
    )

chosen = {
    flag: st.toggle(
        label,
        getattr(policy, flag),
        help=text,
        disabled=not view.may_change,
        key=f"privacy-{slug}-{flag}",
    )
    for flag, (label, text) in FLAGS.items()
}

st.subheader("Private tags kept in pseudonymised exports")
st.caption(
    "Private (vendor) attributes are removed unless listed here after review. A listed "
    "attribute is still searched by the privacy check: a name found in it fails the export."
)
kept = [t.text() for t in policy.kept_private]
drop = []
if kept:
    for tag in kept:
        left, right = st.columns([5, 1])
        left.code(tag)
        if view.may_change and right.checkbox("Remove", key=f"privacy-{slug}-drop-{tag}"):
            drop.append(tag)
else:
    st.caption("None: every private attribute is removed.")
add = ""
if view.may_change:
    add = st.text_input(
        "Add a reviewed private tag",
        placeholder="0009,DEMO VENDOR,10",
        help="GROUP,PRIVATE CREATOR,ELEMENT: the group and the element's last two digits in "
        "hex, e.g. 0009,DEMO VENDOR,10 for (0009,xx10) of creator DEMO VENDOR.",
        key=f"privacy-{slug}-add",
    )
    changed = {f: v for f, v in chosen.items() if v != getattr(policy, f)}
    if st.button("Save", type="primary", disabled=not (changed or drop or add.strip())):
        try:
            services.set_project_privacy(
                settings(), who.email, slug, changed, [add] if add.strip() else [], drop
            )
        except PortalError as exc:
            st.error(str(exc))
        else:
            data.privacy_policy.clear()
            st.success("Saved: new exports of this project use these settings.")
            st.rerun()
