"""The Streamlit script: navigation over pages/ (app.py serves it with the HTTP routes)."""

import streamlit as st

st.set_page_config(page_title="Export Portal", page_icon=":material/folder_zip:", layout="wide")

navigation = st.navigation(
    [st.Page("pages/home.py", title="Registry", icon=":material/home:", default=True)]
)
navigation.run()
