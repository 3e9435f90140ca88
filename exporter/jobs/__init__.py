"""Background work on the RQ queue: the export and part jobs (``tasks``), upkeep (reconcile,
expire, retry), the queue, the worker process and the e-mail it sends.

Jobs that a portal of the earlier flat layout put in Redis name ``exporter.jobs.run_export``,
``exporter.jobs.run_part`` and ``exporter.jobs.finish_export``: those names still resolve here
(for one release; new jobs name ``exporter.jobs.tasks.*``).
"""

from __future__ import annotations

from typing import Any

LEGACY_JOB_NAMES = ("run_export", "run_part", "finish_export")


def __getattr__(name: str) -> Any:
    if name in LEGACY_JOB_NAMES:
        from exporter.jobs import tasks  # only for a job queued before the layout changed

        return getattr(tasks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
