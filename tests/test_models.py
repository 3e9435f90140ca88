"""Schema: the migrations build exactly what the models declare, on SQLite and PostgreSQL."""

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from exporter.config import Settings
from exporter.store import db
from exporter.store.models import Base


def test_migrations_match_the_models(settings: Settings) -> None:
    engine = db.engine_for(settings.database_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], f"models and migrations differ: write a migration for {diff}"


def test_selection_indexes_exist(settings: Settings) -> None:
    inspector = inspect(db.engine_for(settings.database_url))
    indexed = {tuple(ix["column_names"]) for ix in inspector.get_indexes("file_registry")}
    assert ("modality_id", "patient_id") in indexed
    assert ("modality_id", "subtype", "patient_id") in indexed


def test_sqlite_runs_in_wal_with_busy_timeout_and_foreign_keys(tmp_path) -> None:  # type: ignore[no-untyped-def]
    engine = db.make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 5000
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    engine.dispose()
