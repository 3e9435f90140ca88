"""Entry point: ``streamlit run app.py`` serves the pages (portal.py) and the /api routes.

One process for the UI and HTTP downloads (Starlette underneath Streamlit 1.67).
"""

import streamlit as st

from exporter.api import routes

app = st.App("portal.py", routes=routes())
