"""The Redis connection and the exports queue. The queue only ever carries export ids."""

from __future__ import annotations

from redis import Redis
from rq import Queue

from exporter.config import Settings

QUEUE_NAME = "exports"


def connect(settings: Settings) -> Redis:
    """A Redis client for ``REDIS_URL``."""
    return Redis.from_url(settings.redis_url)


def export_queue(settings: Settings, connection: Redis | None = None) -> Queue:
    """The RQ queue exports are enqueued on."""
    return Queue(QUEUE_NAME, connection=connection or connect(settings))
