"""Entry point: ``streamlit run app.py`` serves the pages and the /api routes.

One process for the UI and HTTP downloads (Starlette underneath Streamlit 1.67). Every request
and websocket passes ``exporter.api.guard`` first: who may reach the portal, and from where the
identity header counts. The pages are in pages/, their navigation in exporter/ui/navigation.py.
"""

import sys

import streamlit as st
from streamlit import config

from exporter.api import guard
from exporter.api import routes as api
from exporter.errors import ConfigError

try:
    middleware = guard.middleware(api.settings())
except ConfigError as exc:
    # The server imports this file while it starts: the operator needs the message, not a
    # traceback, and no portal at all (status 1).
    print(f"error: {exc}", file=sys.stderr, flush=True)
    sys.exit(1)


def _no_error_details() -> None:
    config.set_option("client.showErrorDetails", "none", "PORTAL_ENV=production")


if api.settings().environment == "production":
    # No traceback on any page (it may quote stored values, paths, SQL): a generic message
    # that points to the log, where the details go. Set again after every parse of the
    # configuration (Streamlit parses it anew when a config.toml changes).
    _no_error_details()
    config.on_config_parsed(_no_error_details, force_connect=True)

app = st.App("exporter/ui/navigation.py", routes=api.routes(), middleware=middleware)
