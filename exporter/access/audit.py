"""Audit events: who created, downloaded, cancelled, deleted or expired which export, when."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from exporter.store.models import AuditEvent


def record(
    session: Session,
    action: str,
    user_id: int | None,
    project_id: int | None,
    export_id: str | None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Add an audit event to the session (it commits with the change it describes)."""
    session.add(
        AuditEvent(
            action=action,
            user_id=user_id,
            project_id=project_id,
            export_id=export_id,
            detail=detail or {},
        )
    )
