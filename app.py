"""Streamlit entry point: navigation over pages/ (see DESIGN.md)."""

import streamlit as st

st.set_page_config(page_title="Export Portal", page_icon=":material/folder_zip:", layout="wide")

navigation = st.navigation(
    [st.Page("pages/home.py", title="Registry", icon=":material/home:", default=True)]
)
navigation.run()
