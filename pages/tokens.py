"""API tokens: create one for a script or notebook (shown once), see and revoke yours."""

import streamlit as st

from exporter import services
from exporter.errors import PortalError
from exporter.ui.session import require_identity, settings

who = require_identity()
st.title("API tokens")
st.caption(
    "Send a token as `Authorization: Bearer <token>` to the portal's API (see /api/docs). "
    "Only a hash is kept: a token is shown once, when it is created."
)

try:
    tokens = services.list_tokens(settings(), who.email)
except PortalError as exc:  # signed in, but without a portal account yet
    st.info(str(exc), icon=":material/person_off:")
    st.stop()
created = False
with st.form("new-token", clear_on_submit=True):
    name = st.text_input("What is it for?", placeholder="e.g. analysis notebook")
    if st.form_submit_button("Create token", type="primary"):
        try:
            secret, token = services.create_token(settings(), who.email, name)
        except PortalError as exc:
            st.error(str(exc))
        else:
            st.success(f"Token **{token.name}** created. Copy it now: it is not shown again.")
            st.code(secret, language=None)
            created = True

for token in services.list_tokens(settings(), who.email) if created else tokens:
    cols = st.columns([3, 2, 2, 1])
    cols[0].markdown(f"**{token.name}** · `{token.prefix}…`")
    cols[1].caption(f"created {token.created_at:%Y-%m-%d}")
    used = f"{token.last_used_at:%Y-%m-%d %H:%M}" if token.last_used_at else "never"
    cols[2].caption("revoked" if token.revoked else f"last used {used}")
    if not token.revoked and cols[3].button("Revoke", key=f"revoke-{token.id}"):
        try:
            services.revoke_token(settings(), who.email, token.id)
        except PortalError as exc:
            st.error(str(exc))
        else:
            st.rerun()
