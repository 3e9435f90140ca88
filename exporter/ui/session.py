"""Who is signed in, and the portal's settings, for the pages."""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from exporter.config import Settings


@st.cache_resource
def settings() -> Settings:
    """The portal's settings, read once per server process."""
    return Settings.load()


@dataclass(frozen=True)
class Identity:
    email: str
    development: bool  # true when no proxy/OIDC identity: the configured development user


def identity() -> Identity | None:
    """The signed-in user: the trusted proxy header or OIDC login, else the development user."""
    email = st.user.get("email")
    if isinstance(email, str) and email:
        return Identity(email.strip().lower(), development=False)
    config = settings()
    if config.is_development and config.dev_user:
        return Identity(config.dev_user, development=True)
    return None


def require_identity() -> Identity:
    """The signed-in user, or a 'not signed in' page and nothing else."""
    who = identity()
    if who is None:
        st.title("Not signed in")
        st.error(
            "The portal could not tell who you are. Open it through your institution's "
            "sign-in (the reverse proxy), or ask the administrator to check the set-up."
        )
        st.stop()
        raise SystemExit  # unreachable: st.stop() ends the script run
    if who.development:
        st.warning(
            f"Development mode: you are signed in as **{who.email}** (PORTAL_DEV_USER). "
            "Do not use this set-up with real patient data.",
            icon=":material/construction:",
        )
    return who
