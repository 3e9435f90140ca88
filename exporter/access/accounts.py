"""Users, projects and memberships, and the permission checks every service goes through."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from exporter.errors import InvalidInput, NotFound, PermissionDenied
from exporter.store.modalities import active_modalities
from exporter.store.models import Membership, Project, ProjectModality, Role, User

SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclass(frozen=True)
class Principal:
    """The signed-in user as the services see it (no ORM object crosses into pages)."""

    id: int
    email: str
    name: str
    is_admin: bool


@dataclass(frozen=True)
class ProjectAccess:
    project_id: int
    slug: str
    name: str
    role: Role


def principal_for(session: Session, email: str) -> Principal:
    """The user with this e-mail; unknown users get NotFound with what to do."""
    user = session.scalar(select(User).where(User.email == email.strip().lower()))
    if user is None:
        raise NotFound(
            f"No portal account for {email!r}: ask a data manager to run "
            f"'python -m exporter user add {email} --project SLUG --role researcher'"
        )
    return Principal(user.id, user.email, user.name, user.is_admin)


def ensure_project(session: Session, slug: str, name: str | None = None) -> Project:
    """Get or create a project; a new one has every active modality enabled."""
    if not SLUG_RE.match(slug):
        raise InvalidInput(
            f"Project slug {slug!r} is not valid: use lowercase letters, digits and '-'"
        )
    project = session.scalar(select(Project).where(Project.slug == slug))
    if project is None:
        project = Project(slug=slug, name=name or slug)
        session.add(project)
        session.flush()
        for modality in active_modalities(session).values():
            session.add(ProjectModality(project_id=project.id, modality_id=modality.id))
        session.flush()
    return project


def add_user(
    session: Session,
    email: str,
    project_slug: str,
    role: str,
    name: str = "",
    is_admin: bool = False,
) -> tuple[User, bool]:
    """Create the user if needed and set their role in the project. Returns (user, created)."""
    email = email.strip().lower()
    if not EMAIL_RE.match(email):
        raise InvalidInput(f"{email!r} is not an e-mail address")
    try:
        role_value = Role(role)
    except ValueError:
        allowed = ", ".join(r.value for r in Role)
        raise InvalidInput(f"Role {role!r} is not known: use one of {allowed}") from None
    project = session.scalar(select(Project).where(Project.slug == project_slug))
    if project is None:
        raise NotFound(
            f"No project {project_slug!r}: check the slug ('python -m exporter projects')"
        )
    user = session.scalar(select(User).where(User.email == email))
    created = user is None
    if user is None:
        user = User(email=email, name=name or email.split("@")[0], is_admin=is_admin)
        session.add(user)
        session.flush()
    elif is_admin:
        user.is_admin = True
    membership = session.scalar(
        select(Membership).where(Membership.user_id == user.id, Membership.project_id == project.id)
    )
    if membership is None:
        session.add(Membership(user_id=user.id, project_id=project.id, role=role_value))
    else:
        membership.role = role_value
    session.flush()
    return user, created


def accessible_projects(session: Session, user: Principal) -> list[ProjectAccess]:
    """The projects the user may see, with their role (admins manage every project)."""
    if user.is_admin:
        return [
            ProjectAccess(p.id, p.slug, p.name, Role.DATA_MANAGER)
            for p in session.scalars(select(Project).order_by(Project.name))
        ]
    rows = session.execute(
        select(Project, Membership.role)
        .join(Membership, Membership.project_id == Project.id)
        .where(Membership.user_id == user.id)
        .order_by(Project.name)
    )
    return [ProjectAccess(p.id, p.slug, p.name, role) for p, role in rows]


def require_project(
    session: Session, user: Principal, slug: str, role: Role | None = None
) -> ProjectAccess:
    """The project if the user belongs to it (and has ``role``, when given).

    A project the user does not belong to is reported as not found, so that its existence is
    not revealed.
    """
    for access in accessible_projects(session, user):
        if access.slug == slug:
            if role is Role.DATA_MANAGER and access.role is not Role.DATA_MANAGER:
                raise PermissionDenied(
                    f"Only data managers of {access.name!r} may do this; ask one of them"
                )
            return access
    raise NotFound(f"No project {slug!r} that you can access")
