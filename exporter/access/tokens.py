"""Personal API tokens: created and revoked by their owner; only a hash is stored."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from exporter.access.accounts import Principal
from exporter.errors import InvalidInput, NotFound, NotSignedIn
from exporter.store.models import ApiToken, User

PREFIX = "ep_"


@dataclass(frozen=True)
class TokenView:
    id: int
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked: bool


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create(session: Session, user: Principal, name: str) -> tuple[str, TokenView]:
    """A new token for ``user``: returns the secret (shown once) and its record."""
    name = name.strip()
    if not name or len(name) > 100:
        raise InvalidInput("Give the token a name of 1 to 100 characters (what it is for)")
    secret = PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(user_id=user.id, name=name, token_sha256=_digest(secret), prefix=secret[:10])
    session.add(row)
    session.flush()
    return secret, _view(row)


def _view(row: ApiToken) -> TokenView:
    return TokenView(
        row.id, row.name, row.prefix, row.created_at, row.last_used_at, row.revoked_at is not None
    )


def list_for(session: Session, user: Principal) -> list[TokenView]:
    rows = session.scalars(
        select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.created_at)
    )
    return [_view(r) for r in rows]


def revoke(session: Session, user: Principal, token_id: int) -> TokenView:
    row = session.get(ApiToken, token_id)
    if row is None or row.user_id != user.id:
        raise NotFound(f"No token {token_id} of yours")
    row.revoked_at = row.revoked_at or datetime.now(UTC)
    return _view(row)


def email_for(session: Session, secret: str) -> str:
    """The e-mail of the token's owner; NotSignedIn for an unknown or revoked token."""
    row = session.scalar(select(ApiToken).where(ApiToken.token_sha256 == _digest(secret)))
    if row is None or row.revoked_at is not None:
        raise NotSignedIn("The API token is not valid (unknown or revoked): create a new one")
    row.last_used_at = datetime.now(UTC)
    user = session.get(User, row.user_id)
    assert user is not None
    return user.email
