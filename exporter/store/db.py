"""Engine and session factories, and schema migration. Nothing is built at import time."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from exporter.config import Settings

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
OUTAGE_SECONDS = 60.0  # how long a job waits for its database (a restart takes seconds)
log = logging.getLogger(__name__)
T = TypeVar("T")


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout and foreign keys on connect."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the UI read while a worker writes; without a busy timeout two writer processes
    # got "database is locked" here.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    # LIKE is case-sensitive on PostgreSQL; folder prefixes must match the same way here.
    cursor.execute("PRAGMA case_sensitive_like=ON")
    cursor.close()


@cache
def engine_for(url: str) -> Engine:
    """One engine per URL per process (after a fork, call ``engine.dispose(close=False)``)."""
    return make_engine(url)


def session_factory(settings: Settings) -> sessionmaker[Session]:
    """Sessions on the settings' database; objects stay usable after commit."""
    return sessionmaker(engine_for(settings.database_url), expire_on_commit=False)


@contextmanager
def session_scope(settings: Settings) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = session_factory(settings)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says the database could not be reached or dropped the connection (a
    restart, the network, SQLite locked), not that a statement was wrong."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, (OperationalError, InterfaceError))


def retrying(work: Callable[[], T], what: str, budget: float = OUTAGE_SECONDS) -> T:
    """``work()`` (one whole transaction), tried again while the database is unreachable:
    backoff 0.5 s doubling to 8 s, for at most ``budget`` seconds, then the error."""
    deadline = time.monotonic() + budget
    delay = 0.5
    while True:
        try:
            return work()
        except Exception as exc:
            if not is_outage(exc) or time.monotonic() + delay > deadline:
                raise
            log.warning("database unreachable while %s; trying again in %.1f s", what, delay)
            time.sleep(delay)
            delay = min(delay * 2, 8.0)


def alembic_config(url: str) -> Any:
    """Alembic configuration for ``url`` without an alembic.ini file."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(url: str) -> None:
    """Bring the database at ``url`` to the newest schema (creates it when empty)."""
    from alembic import command

    cfg = alembic_config(url)
    engine = engine_for(url)
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")


def move_status(
    session: Session,
    model: Any,
    row_id: object,
    from_statuses: tuple[Any, ...],
    to_status: Any,
    **values: Any,
) -> bool:
    """Set ``model``'s status (and ``values``) on the row ``row_id`` only if it is in one of
    ``from_statuses``: one conditional UPDATE, so that of two actors racing for a change
    (a job completing, a user cancelling) exactly one wins."""
    result = session.execute(
        update(model)
        .where(model.id == row_id, model.status.in_(from_statuses))
        .values(status=to_status, **values)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))
