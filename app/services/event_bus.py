"""Live push of job events: the database row is the record, Redis pub/sub only says "job N has
something new" so SSE followers read it at once instead of at their next poll.

Publishing happens after the commit (a follower woken earlier would not see the row yet). A job's
events are inserted while its row is locked (app/services/job_state.hold / transition), so for one
job the event pk order is the commit order and a follower reading `pk > last seen` never skips one.
Each message carries the event and the pk of the job's previous event: a follower that has sent
exactly that one sends the new event straight away, with no query; any other follower (a gap, a
lost message, a reconnect) reads the database. Without Redis (embedded broker) followers poll.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict, deque

import redis
import redis.asyncio as aioredis
from sqlalchemy import event
from sqlalchemy.orm import Session

from app.core.config import Settings

log = logging.getLogger("whetstone.events")
CHANNEL = "whetstone:events:"
_publisher: list[redis.Redis] = []


def redis_url(settings: Settings) -> str | None:
    url = settings.events_redis_url or settings.resolved_broker_url
    return url if url.startswith(("redis://", "rediss://")) else None


def configure_publisher(settings: Settings) -> None:
    """Publish this process's committed events to the Redis of `settings` (none: no-op)."""
    _publisher.clear()
    url = redis_url(settings)
    if url:
        _publisher.append(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1))


def note_event(session: Session, row: object, prev_pk: int | None) -> None:
    """Called by add_event: publish the row once the session commits, with the pk of the job's
    event before it, so a follower that has seen exactly that one can send it without a query."""
    session.info.setdefault("events", []).append((row, prev_pk))


def last_noted(session: Session, job_pk: int) -> object | None:
    """The job's event this session noted last (not yet committed), if any."""
    return next((row for row, _ in reversed(session.info.get("events", ())) if row.job_pk == job_pk), None)


def note_finished(session: Session, job_pk: int) -> None:
    """Called when a job reaches a final status: its followers check the database once and end."""
    session.info.setdefault("finished_jobs", set()).add(job_pk)


@event.listens_for(Session, "after_commit")
def _publish(session: Session) -> None:
    rows = session.info.pop("events", None)
    finished = session.info.pop("finished_jobs", set())
    if not rows or not _publisher:
        return
    from app.services.events import to_wire

    try:
        pipe = _publisher[0].pipeline(transaction=False)
        for row, prev in rows:
            message = {"pk": row.pk, "prev": prev, "final": row.job_pk in finished,
                       "event": to_wire(row).model_dump_json()}
            pipe.publish(f"{CHANNEL}{row.job_pk}", json.dumps(message))
        pipe.execute()
    except redis.RedisError as exc:  # followers fall back to polling; the events are stored
        log.warning("could not publish events: %s", exc)


@event.listens_for(Session, "after_rollback")
def _forget(session: Session) -> None:
    session.info.pop("events", None)
    session.info.pop("finished_jobs", None)


class Inbox:
    """What the listener received for one follower since it last looked."""

    def __init__(self) -> None:
        self.ready = asyncio.Event()
        self.items: deque[dict] = deque(maxlen=1000)

    def take(self) -> list[dict]:
        self.ready.clear()
        items = list(self.items)
        self.items.clear()
        return items


class Listener:
    """One Redis subscription per API process, fanned out to the SSE followers of each job."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.waiters: dict[int, set[Inbox]] = defaultdict(set)
        self.healthy = False
        self._task: asyncio.Task | None = None
        self.loop = asyncio.get_running_loop()

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = self.loop.create_task(self._run())

    async def _run(self) -> None:
        while True:
            client = aioredis.Redis.from_url(self.url, socket_connect_timeout=2)
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.psubscribe(f"{CHANNEL}*")
                    self.healthy = True
                    self._wake_all()  # anything published while we were away
                    async for message in pubsub.listen():
                        if message["type"] == "pmessage":
                            self._deliver(int(message["channel"].rsplit(b":", 1)[1]), json.loads(message["data"]))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis restarting: followers poll meanwhile
                log.warning("event subscription lost (%s); retrying", exc)
            finally:
                self.healthy = False
                await client.aclose()
            await asyncio.sleep(1)

    def _deliver(self, job_pk: int, item: dict) -> None:
        for inbox in self.waiters.get(job_pk, ()):
            inbox.items.append(item)
            inbox.ready.set()

    def _wake_all(self) -> None:
        for inboxes in self.waiters.values():
            for inbox in inboxes:
                inbox.items.append({"pk": None})  # "look at the database"
                inbox.ready.set()

    def subscribe(self, job_pk: int) -> Inbox:
        waiter = Inbox()
        self.waiters[job_pk].add(waiter)
        return waiter

    def unsubscribe(self, job_pk: int, waiter: Inbox) -> None:
        self.waiters[job_pk].discard(waiter)
        if not self.waiters[job_pk]:
            del self.waiters[job_pk]


_listeners: dict[str, Listener] = {}


def listener_for(settings: Settings) -> Listener | None:
    """The process's listener for the Redis of `settings`, started on first use; None without Redis."""
    url = redis_url(settings)
    if url is None:
        return None
    listener = _listeners.get(url)
    if listener is None or listener.loop is not asyncio.get_running_loop():
        listener = _listeners[url] = Listener(url)
    listener.start()
    return listener
