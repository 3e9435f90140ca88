"""The Streamlit script: navigation over the top-level pages/ (app.py serves it with /api).

It lives here rather than next to pages/ on purpose: Streamlit treats a pages/ directory
beside the main script as old-style multipage navigation, and a page opened by its URL
(a link in an e-mail) then skipped this script and showed the wrong sidebar.
"""

from pathlib import Path

import streamlit as st

from exporter.errors import PortalError
from exporter.ui import data
from exporter.ui.links import CURATION, EXPORTS, HOME, NEW_EXPORT, PRIVACY, RELEASES, TOKENS
from exporter.ui.session import identity

ICON = Path(__file__).with_name("icon.png")

# The icon is a file of the portal's own: a Material symbol or an emoji would be fetched from
# a CDN, and the portal runs offline.
st.set_page_config(page_title="Export Portal", page_icon=str(ICON), layout="wide")

who = identity()
try:
    curates = bool(who and data.managed_projects(who.email))
except PortalError:  # an unknown user: the pages say what to do
    curates = False

navigation = st.navigation(
    [
        st.Page(HOME, title="Registry", icon=":material/home:", default=True),
        st.Page(NEW_EXPORT, title="New export", icon=":material/add_box:"),
        st.Page(EXPORTS, title="Exports", icon=":material/folder_zip:"),
        # Listed for data managers only; opened by its address it tells others who may curate.
        st.Page(
            CURATION,
            title="DICOM curation",
            icon=":material/edit_note:",
            visibility="visible" if curates else "hidden",
        ),
        st.Page(
            RELEASES,
            title="Releases",
            icon=":material/publish:",
            visibility="visible" if curates else "hidden",
        ),
        st.Page(PRIVACY, title="Project privacy", icon=":material/shield:"),
        st.Page(TOKENS, title="API tokens", icon=":material/key:"),
    ],
    position="sidebar" if who else "hidden",  # nothing to navigate when signed out
)
navigation.run()
