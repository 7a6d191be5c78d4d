"""`flask leadcrm worker`: the one process that does what time, not a request, makes due.

Shifts that start or end (``schedules.refresh_due_shifts``), offers whose
deadline passed (``offers.expire_offers``), queues a drain left longer than
one batch (``drain_requests``), and forgetting expired Idempotency-Keys.
Each step is a short write transaction of its own, committed before the
next; on SQLite it takes the write lock like any writer and never holds it
while sleeping. Every step claims its rows (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL) or is idempotent, so any number of workers may run, one per
server; a worker killed mid-step loses nothing (its transaction rolls back,
the next worker redoes the step).

Between rounds the worker sleeps until the next due moment it knows of
(the front of the shift and offer indexes), at most ``LEADCRM_WORKER_TICK``
seconds, so a step it did not know of (an offer made a moment ago) waits at
most one tick. Each round beats its heartbeat (``worker_beats``), which
``/healthz`` reports and whose silence the load page warns of.
"""

import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from types import FrameType
from typing import TypeVar

import sqlalchemy as sa
from flask import Flask

from leadcrm import offers, schedules, storage
from leadcrm.database import begin_write, reads_only
from leadcrm.distribution import DRAIN_BATCH, drain_queue
from leadcrm.extensions import db
from leadcrm.idempotency import forget_expired
from leadcrm.models import WorkerBeat, utcnow
from leadcrm.storage import Tx, act_as
from leadcrm.vocabulary import WORKER_SILENT_AFTER

log = logging.getLogger(__name__)

ACTOR = "worker"
# Idempotency-Keys are kept 24 hours; forgetting them a few minutes late is harmless.
FORGET_KEYS_EVERY = timedelta(minutes=10)
# Heartbeats of workers gone for longer are deleted (a worker stopped cleanly deletes its own).
FORGET_BEATS_AFTER = timedelta(days=1)
# At most this many offers or shifts are handled in one round before the heartbeat and the other steps.
ROUND_MAX = 500
# A round that found something due but could do nothing (its rows locked elsewhere) waits this long at least.
IDLE_MIN_WAIT = 0.2

T = TypeVar("T")


def last_beat(session: sa.orm.Session) -> datetime | None:
    """The latest heartbeat of any worker (None: no worker ever beat, or none since the last day)."""
    return session.scalar(sa.select(sa.func.max(WorkerBeat.beat_at)))


def is_silent(beat: datetime | None, now: datetime) -> bool:
    """No worker has beaten for WORKER_SILENT_AFTER seconds: schedules and deadlines are not applied."""
    return beat is None or now - beat > timedelta(seconds=WORKER_SILENT_AFTER)


class Worker:
    """One worker process's loop; ``run`` until ``stop`` is set (SIGTERM, SIGINT)."""

    def __init__(self, app: Flask, name: str | None = None) -> None:
        self.app = app
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.tick = float(app.config["LEADCRM_WORKER_TICK"])
        self.batch = int(app.config.get("LEADCRM_DRAIN_BATCH") or DRAIN_BATCH)
        self.started_at = utcnow()
        self.stop = threading.Event()
        self._keys_forgotten_at: datetime | None = None

    # --- one unit of work ---------------------------------------------------------------

    def _write(self, work: Callable[[], T]) -> T:
        """Run ``work`` in a write transaction of its own and commit it; roll back if it raises."""
        session = db.session
        act_as(session(), ACTOR)
        begin_write(session)
        try:
            result = work()
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            reads_only(session)  # what follows only reads, until the next step declares its write
        return result

    def _read(self, work: Callable[[], T]) -> T:
        """Run ``work`` in a read-only transaction and end it (nothing is held while sleeping)."""
        try:
            return work()
        finally:
            db.session.rollback()

    def beat(self) -> None:
        now = utcnow()

        def write() -> None:
            session = db.session()
            beat = session.get(WorkerBeat, self.name)
            if beat is None:
                session.add(WorkerBeat(name=self.name, started_at=self.started_at, beat_at=now))
            else:
                beat.beat_at = now
            session.execute(sa.delete(WorkerBeat).where(WorkerBeat.beat_at < now - FORGET_BEATS_AFTER))

        self._write(write)

    def forget_beat(self) -> None:
        self._write(lambda: db.session.execute(sa.delete(WorkerBeat).where(WorkerBeat.name == self.name)))

    def shifts(self) -> int:
        """Recompute the stretches on shift that are due, 50 operators per transaction."""
        organisation = self._read(
            lambda: schedules.organisation_timezone(db.session(), self.app.config["LEADCRM_TIMEZONE"])
        )
        done = 0
        while done < ROUND_MAX and not self.stop.is_set():
            now = utcnow()
            n = self._write(lambda: schedules.refresh_due_shifts(db.session(), now, organisation, limit=50))  # noqa: B023
            done += n
            if n < 50:
                break
        return done

    def offers(self) -> int:
        """Take back offers past their deadline and route them again, one contact per transaction."""
        done = 0
        while done < ROUND_MAX and not self.stop.is_set():
            now = utcnow()
            if not self._write(lambda: offers.expire_offers(db.session(), now)):  # noqa: B023
                break
            done += 1
        return done

    def drains(self) -> int:
        """Drain the queues asked for, a batch per transaction, until each has nobody eligible with room."""
        assigned = 0
        for _ in range(ROUND_MAX):
            if self.stop.is_set():
                break
            requests = self._read(lambda: storage.drain_requests(Tx.of(db.session())))
            if not requests:
                break
            for request in requests:

                def drain(request: storage.DrainRequestRecord = request) -> int:
                    tx = Tx.of(db.session())
                    n = drain_queue(tx, [request.source_id], limit=self.batch)
                    if n < self.batch:  # nobody eligible has room, or the queue is empty: done, unless asked again
                        storage.forget_drain_request(tx, request)
                    return n

                assigned += self._write(drain)
        return assigned

    def forget_keys(self, now: datetime) -> int:
        if self._keys_forgotten_at is not None and now - self._keys_forgotten_at < FORGET_KEYS_EVERY:
            return 0
        forgotten = self._write(lambda: forget_expired(db.session()))
        self._keys_forgotten_at = now
        return forgotten

    def next_due(self, now: datetime) -> datetime:
        """The next moment a step is due that the worker knows of, at most one tick away."""

        def read() -> datetime:
            tx = Tx.of(db.session())
            due = [now + timedelta(seconds=self.tick)]
            due += [d for d in (storage.next_shift_due(tx), storage.next_offer_due(tx)) if d is not None]
            if storage.drain_requests(tx):
                due.append(now)
            return min(due)

        return self._read(read)

    # --- the loop -----------------------------------------------------------------------

    def round(self) -> dict[str, int]:
        """Every step once, in order; what each did."""
        self.beat()
        done = {"shifts": self.shifts(), "offers": self.offers(), "drained": self.drains()}
        done["keys"] = self.forget_keys(utcnow())
        return done

    def run(self) -> None:
        log.info("worker %s started (tick %.1f s)", self.name, self.tick)
        with self.app.app_context():
            reads_only(db.session)
            try:
                while not self.stop.is_set():
                    try:
                        done = self.round()
                        if any(done.values()):
                            log.info("worker %s: %s", self.name, ", ".join(f"{k} {v}" for k, v in done.items() if v))
                        now = utcnow()
                        wait = (self.next_due(now) - now).total_seconds()
                        if not any(done.values()):
                            # Due but not done (rows another worker or an accept holds): not a busy loop.
                            wait = max(wait, IDLE_MIN_WAIT)
                    except sa.exc.DBAPIError as exc:
                        # Busy, unreachable, a deadlock, or the schema not yet migrated: the
                        # step rolled back; it is tried again next tick.
                        db.session.rollback()
                        log.warning("worker %s: step not done, retried in %.0f s: %s", self.name, self.tick, exc.orig)
                        wait = self.tick
                    self.stop.wait(max(0.0, min(wait, self.tick)))
            finally:
                try:
                    self.forget_beat()
                except sa.exc.DBAPIError:
                    db.session.rollback()
                db.session.remove()
        log.info("worker %s stopped", self.name)

    def stop_on_signals(self) -> None:
        def handle(signum: int, _frame: FrameType | None) -> None:
            log.info("worker %s: %s, stopping after this step", self.name, signal.Signals(signum).name)
            self.stop.set()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)
