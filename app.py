"""Entry point: ``streamlit run app.py`` serves the pages and the /api routes.

One process for the UI and HTTP downloads (Starlette underneath Streamlit 1.67). The pages
are in pages/, their navigation in exporter/ui/navigation.py.
"""

import streamlit as st

from exporter.api import routes

app = st.App("exporter/ui/navigation.py", routes=routes())
