"""Jobs queued by a portal of the earlier flat layout (``exporter.jobs.run_export``) still run
after the move to ``exporter.jobs.tasks``."""

from redis import Redis
from rq import SimpleWorker
from rq.utils import import_attribute

from exporter import schemas, services
from exporter.config import Settings
from exporter.jobs import tasks
from exporter.jobs.queue import export_queue
from exporter.schemas import ExportRequest
from exporter.store import db
from exporter.store.models import DatasetExport

ME = "researcher@demo.example"


def test_job_names_stored_before_the_move_resolve_to_the_tasks() -> None:
    for name in ("run_export", "run_part", "finish_export"):
        assert import_attribute(f"exporter.jobs.{name}") is getattr(tasks, name)


def test_an_export_queued_under_the_old_name_completes(portal: Settings) -> None:
    selection = schemas.parse_selection(folders=["/"], modalities=["ios"])
    view = services.create_export(portal, ME, "demo", ExportRequest(selection=selection))
    connection = Redis.from_url(portal.redis_url)
    queue = export_queue(portal, connection)
    queue.empty()  # as if the job had been queued by the earlier release:
    queue.enqueue("exporter.jobs.run_export", view.id, job_id=f"legacy-{view.id}")
    SimpleWorker([queue], connection=connection).work(burst=True)
    with db.session_scope(portal) as session:
        row = session.get(DatasetExport, view.id)
        assert row is not None and row.status.value == "completed", row.error if row else None
