"""Home: the registry of the signed-in user's projects (patients, files, bytes per modality)."""

import streamlit as st
from humanize import naturalsize

from exporter.errors import PortalError
from exporter.ui import data
from exporter.ui.session import require_identity

who = require_identity()
st.title("Export Portal")
st.caption(f"Signed in as {who.email}")

try:
    projects = data.overview(who.email)
except PortalError as exc:
    st.error(str(exc))
    st.stop()

if not projects:
    st.info("You are not a member of any project yet: ask a data manager to add you.")

for project in projects:
    with st.container(border=True):
        st.subheader(f"{project.name}")
        st.caption(f"Project `{project.slug}` · your role: {project.role.replace('_', ' ')}")
        if project.released_patients:
            st.caption(
                f":material/publish: Release destination: {project.released_patients:,} "
                "patients released into it, under pseudonyms; the link to the source is kept "
                "for the source's data managers only."
            )
        if project.archived_files:
            st.caption(
                f":material/inventory_2: Archive of originals: {project.archived_files:,} files "
                "copied unchanged by releases. They carry the patients' identifiers."
            )
        if project.moved_out:
            st.caption(
                f":material/logout: {project.moved_out:,} patients were released and moved "
                "out of this project; their originals are in the release's archive."
            )
        cols = st.columns(3)
        cols[0].metric("Patients", f"{project.patients:,}")
        cols[1].metric("Files", f"{project.files:,}")
        cols[2].metric("Size", naturalsize(project.bytes, binary=True))
        if project.by_modality:
            st.dataframe(
                [
                    {
                        "Modality": m.label,
                        "Key": m.key,
                        "Patients": m.patients,
                        "Files": m.files,
                        "Size": naturalsize(m.bytes, binary=True),
                    }
                    for m in project.by_modality
                ],
                hide_index=True,
                width="stretch",
            )
        else:
            st.info("No files registered in this project yet.")
