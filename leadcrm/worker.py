"""`flask leadcrm worker`: the one process that does what time, not a request, makes due.

Shifts that start or end (``schedules.refresh_due_shifts``), offers whose
deadline passed (``offers.expire_offers``), queues a drain left longer than
one batch (``drain_requests``), events out (numbering them in commit order,
``outbox.sequence``; sending them from each webhook's stream,
``webhooks.lease_stream``/``record_stream``, and retrying those that failed,
``webhooks.lease``/``record``), and forgetting expired Idempotency-Keys and
old events.

Webhook deliveries are sent by threads of the worker (``senders``, which
run only on CPU time nothing else wants: ``yield_cpu``; under a full load
they wait and catch up after it), one endpoint's batch per thread at a time,
over one kept-alive connection, outside any transaction: a slow or dead
receiver holds its own thread for at most its timeout per delivery and
delays neither the other endpoints nor the worker's other steps. Leasing and
recording the outcomes are steps of the loop, in its transactions.
Each step is a short write transaction of its own, committed before the
next; on SQLite it takes the write lock like any writer and never holds it
while sleeping. Every step claims its rows (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL) or is idempotent, so any number of workers may run, one per
server; a worker killed mid-step loses nothing (its transaction rolls back,
the next worker redoes the step).

Between rounds the worker sleeps until the next due moment it knows of
(the front of the shift and offer indexes), at most ``LEADCRM_WORKER_TICK``
seconds, so a step it did not know of (an offer made a moment ago) waits at
most one tick. A round first reads what is due and takes the write lock
only for steps that are, so an idle worker writes nothing but its heartbeat
(``worker_beats``, at most once a second), which ``/healthz`` reports and
whose silence the load page warns of.

A step that fails (the database busy, unreachable or not yet migrated; a
bug) is rolled back, logged and tried again after a tick; the other steps of
the round still run, and the worker keeps going. A round whose heartbeat
cannot be written stops there: the database is not usable.
"""

import logging
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any, TypeVar

import sqlalchemy as sa
from flask import Flask

from leadcrm import delivery, offers, outbox, schedules, storage, webhooks
from leadcrm.database import begin_write, reads_only
from leadcrm.distribution import DRAIN_BATCH, drain_queue, limit_drains
from leadcrm.extensions import db
from leadcrm.idempotency import forget_expired
from leadcrm.models import WorkerBeat, utcnow
from leadcrm.storage import DeliveryJob, StreamBatch, Tx, act_as
from leadcrm.vocabulary import WORKER_SILENT_AFTER

log = logging.getLogger(__name__)

ACTOR = "worker"
# Idempotency-Keys are kept 24 hours; forgetting them a few minutes late is harmless. Old events too.
FORGET_KEYS_EVERY = timedelta(minutes=10)
# Heartbeats of workers gone for longer are deleted (a worker stopped cleanly deletes its own).
FORGET_BEATS_AFTER = timedelta(days=1)
# The heartbeat is written at most this often (a busy worker runs many rounds a second).
BEAT_EVERY = timedelta(seconds=1)
# At most this many offers or shifts are handled in one round before the heartbeat and the other steps.
ROUND_MAX = 500
# A round that did nothing although something was due (claimed by another worker, or an accept,
# at that moment) sleeps at least this long before looking again: no busy loop.
IDLE_FLOOR = 0.05
# The worker wakes this long (seconds) after the due moment, so that it is due when it looks.
WAKE_AFTER = 0.001
# The shortest tick (seconds) LEADCRM_WORKER_TICK may set.
TICK_MIN = 0.1
# The same failure of a step is logged again at most this often (seconds) while it lasts.
COMPLAIN_EVERY = 60.0

T = TypeVar("T")
# What a sender thread did with one leased delivery: the outcome, and when it began.
Sent = tuple[DeliveryJob, delivery.Outcome, datetime]


def last_beat(session: sa.orm.Session) -> datetime | None:
    """The latest heartbeat of any worker (None: no worker ever beat, or none since the last day)."""
    return session.scalar(sa.select(sa.func.max(WorkerBeat.beat_at)))


def is_silent(beat: datetime | None, now: datetime) -> bool:
    """No worker has beaten for WORKER_SILENT_AFTER seconds: schedules and deadlines are not applied."""
    return beat is None or now - beat > timedelta(seconds=WORKER_SILENT_AFTER)


def health(tx: Tx) -> dict[str, Any] | None:
    """What ``/healthz`` says of the workers: the last beat and whether they are silent; None when the
    database cannot be read (the web process is alive all the same). One prebuilt statement on the
    request's driver connection (``units.request_unit``): /healthz stays the cheapest request."""
    try:
        beat = storage.last_beat(tx)
    except sa.exc.SQLAlchemyError:
        return None  # the request's teardown rolls back and gives the connection back (or throws it away)
    at = beat.astimezone(UTC).isoformat().replace("+00:00", "Z") if beat is not None else None
    return {"last_beat_at": at, "silent": is_silent(beat, utcnow())}


class Stop:
    """The worker's stop flag, set by a signal handler (or another thread); ``wait`` sleeps until it is set.

    Not a ``threading.Event``: a handler runs in the main thread, which may be
    inside ``Event.wait`` holding the Event's (non-reentrant) lock, and
    ``set()`` would then wait for it forever. Here ``set`` writes a byte into
    a pipe that ``wait`` selects on.
    """

    def __init__(self) -> None:
        self._flag = False
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)

    def set(self) -> None:
        self._flag = True
        self.nudge()

    def nudge(self) -> None:
        """Wake ``wait`` without stopping (a sender thread finished)."""
        try:
            os.write(self._write_fd, b"\0")
        except (BlockingIOError, OSError):
            pass  # full (woken many times already) or closed: it wakes all the same

    def is_set(self) -> bool:
        return self._flag

    def wait(self, timeout: float) -> bool:
        """Sleep until set or ``timeout`` seconds passed; whether it is set."""
        if not self._flag and timeout > 0:
            readable, _, _ = select.select([self._read_fd], [], [], timeout)
            if readable and not self._flag:
                try:
                    while os.read(self._read_fd, 4096):
                        pass
                except (BlockingIOError, OSError):
                    pass  # drained
        return self._flag

    def __del__(self) -> None:
        for fd in (self._read_fd, self._write_fd):
            try:
                os.close(fd)
            except OSError:
                pass


class Worker:
    """One worker process's loop; ``run`` until ``stop`` is set (SIGTERM, SIGINT)."""

    def __init__(self, app: Flask, name: str | None = None) -> None:
        self.app = app
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        # A tick of 0 (or less) would be a busy loop.
        self.tick = max(TICK_MIN, float(app.config["LEADCRM_WORKER_TICK"]))
        self.batch = int(app.config.get("LEADCRM_DRAIN_BATCH") or DRAIN_BATCH)
        self.started_at = utcnow()
        self.stop = Stop()
        config = app.config
        # Events out: how often to look for new ones, how long to keep them, how to retry webhooks.
        self.events_poll = max(TICK_MIN, float(config["LEADCRM_EVENTS_POLL"]))
        self.keep_events = timedelta(days=float(config["LEADCRM_EVENTS_KEEP_DAYS"]))
        self.retries = webhooks.Retries(
            base=float(config["LEADCRM_WEBHOOK_RETRY_BASE"]),
            max=float(config["LEADCRM_WEBHOOK_RETRY_MAX"]),
            for_=float(config["LEADCRM_WEBHOOK_RETRY_FOR"]),
        )
        self.allow_private = bool(config["LEADCRM_WEBHOOKS_ALLOW_PRIVATE"])
        self.senders = ThreadPoolExecutor(
            max_workers=int(config["LEADCRM_WEBHOOK_SENDERS"]), thread_name_prefix="send", initializer=yield_cpu
        )
        # Per webhook: the batch being sent by a sender thread (one at a time per webhook): leased
        # deliveries to retry, or a batch of its stream.
        self._sending: dict[int, tuple[list[DeliveryJob] | StreamBatch, Future[Any]]] = {}
        self._events_forgotten_at: datetime | None = None
        self._keys_forgotten_at: datetime | None = None
        self._beaten_at: datetime | None = None
        # Per step: the failure last logged and when (monotonic), so that a lasting one is not logged every tick.
        self._complaints: dict[str, tuple[str, float]] = {}
        self._stopped_by: str | None = None  # the signal that stopped it

    # --- one unit of work ---------------------------------------------------------------

    def _write(self, work: Callable[[], T]) -> T:
        """Run ``work`` in a write transaction of its own and commit it; roll back if it raises."""
        session = db.session
        act_as(session(), ACTOR)
        # Every drain inside the step (a freed slot, say) assigns one batch at most, as a request's does.
        limit_drains(session(), self.batch)
        begin_write(session)
        try:
            result = work()
            session.commit()
        except BaseException:
            _roll_back()
            raise
        finally:
            reads_only(session)  # what follows only reads, until the next step declares its write
        return result

    def _read(self, work: Callable[[], T]) -> T:
        """Run ``work`` in a read-only transaction and end it (nothing is held while sleeping)."""
        try:
            return work()
        finally:
            _roll_back()

    def beat(self, now: datetime) -> bool:
        """Write the heartbeat, unless it was written less than BEAT_EVERY ago; whether it was."""
        if self._beaten_at is not None and timedelta(0) <= now - self._beaten_at < BEAT_EVERY:
            return False

        def write() -> None:
            session = db.session()
            beat = session.get(WorkerBeat, self.name)
            if beat is None:
                session.add(WorkerBeat(name=self.name, started_at=self.started_at, beat_at=now))
            else:
                beat.beat_at = now
            session.execute(sa.delete(WorkerBeat).where(WorkerBeat.beat_at < now - FORGET_BEATS_AFTER))

        self._write(write)
        self._beaten_at = now
        return True

    def forget_beat(self) -> None:
        self._write(lambda: db.session.execute(sa.delete(WorkerBeat).where(WorkerBeat.name == self.name)))

    def _due(self, due: datetime | None) -> bool:
        return due is not None and due <= utcnow()

    def shifts(self) -> int:
        """Recompute the stretches on shift that are due, 50 operators per transaction."""

        if not self._due(self._read(lambda: storage.next_shift_due(Tx.of(db.session())))):
            return 0
        # The organisation's zone is read by each step, in its transaction, after its claim.
        preset = self.app.config["LEADCRM_TIMEZONE"]
        done = 0
        while done < ROUND_MAX and not self.stop.is_set():
            now = utcnow()
            n = self._write(lambda: schedules.refresh_due_shifts(db.session(), now, preset, limit=50))  # noqa: B023
            done += n
            if n < 50:
                break
        return done

    def offers(self) -> int:
        """Take back offers past their deadline and route them again, one contact per transaction."""
        if not self._due(self._read(lambda: storage.next_offer_due(Tx.of(db.session())))):
            return 0
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
                if self.stop.is_set():
                    break

                def drain(request: storage.DrainRequestRecord = request) -> int:
                    tx = Tx.of(db.session())
                    n = drain_queue(tx, [request.source_id], limit=self.batch)
                    if n < self.batch:  # nobody eligible has room, or the queue is empty: done, unless asked again
                        storage.forget_drain_request(tx, request)
                    return n

                assigned += self._write(drain)
        return assigned

    def events(self) -> int:
        """Number the committed events in commit order (the webhooks' streams follow the numbers)."""
        numbered = 0
        if self._read(lambda: storage.any_unsequenced(Tx.of(db.session()))):
            while not self.stop.is_set():
                n = self._write(lambda: outbox.sequence(Tx.of(db.session())))
                numbered += n
                if n < outbox.SEQUENCE_BATCH:
                    break
        return numbered

    def deliveries(self) -> int:
        """Record what the sender threads got; then per webhook (one whose batch is still being sent
        waits for it) lease its due retries, or else the next batch of its stream, and hand it to a
        thread. How many outcomes were recorded."""
        recorded = self.record_sent()
        if self.stop.is_set():
            return recorded
        now = utcnow()

        def due() -> tuple[set[int], set[int]]:
            session = db.session()
            return set(webhooks.webhooks_with_due(session, now)), set(webhooks.streams_due(session, now))

        retries_due, streams_due = self._read(due)
        for webhook_id in sorted(retries_due | streams_due):
            if webhook_id in self._sending or self.stop.is_set():
                continue
            work: list[DeliveryJob] | StreamBatch | None = None
            if webhook_id in retries_due:
                work = self._write(lambda: webhooks.lease(db.session(), webhook_id, self.name, utcnow()))  # noqa: B023
            if not work and webhook_id in streams_due:
                work = self._write(
                    lambda: webhooks.lease_stream(db.session(), webhook_id, self.name, utcnow())  # noqa: B023
                )
            if isinstance(work, StreamBatch) and not work.events:
                # Only events of types it did not subscribe to: the cursor moves past them, nothing to send.
                def skip(batch: StreamBatch = work) -> int:
                    return webhooks.record_stream(db.session(), batch, self.name, [], utcnow(), self.retries)

                self._write(skip)
                continue
            if work:
                future: Future[Any] = self.senders.submit(self._send, work)
                future.add_done_callback(lambda _: self.stop.nudge())
                self._sending[webhook_id] = (work, future)
        return recorded

    def _go_on(self, window_ends: float) -> bool:
        return not self.stop.is_set() and time.monotonic() <= window_ends

    def _send(self, work: list[DeliveryJob] | StreamBatch) -> list[Sent] | list[webhooks.StreamSent]:
        """A sender thread: send the batch (no database here) over one connection while the receiver
        keeps it open; stops early when stopping, and starts no send after the send window."""
        window_ends = time.monotonic() + webhooks.SEND_WINDOW
        if isinstance(work, StreamBatch):
            sender = delivery.Sender(work.url, work.secret, allow_private=self.allow_private)
            try:
                return webhooks.send_stream(work, sender.send, lambda: self._go_on(window_ends))
            finally:
                sender.close()
        return self._send_retries(work, window_ends)

    def _send_retries(self, jobs: list[DeliveryJob], window_ends: float) -> list[Sent]:
        """POST each leased delivery in turn; what it did not send goes back."""
        sent = []
        # One endpoint's batch: one URL and secret, one connection while the receiver keeps it open.
        sender = delivery.Sender(jobs[0].url, jobs[0].secret, allow_private=self.allow_private)
        try:
            for job in jobs:
                if not self._go_on(window_ends):
                    break
                at = utcnow()
                body = webhooks.envelope(job.event_id, job.event_type, job.created_at, job.actor, job.data)
                sent.append((job, sender.send(webhooks.message_id(job.event_id), body), at))
        finally:
            sender.close()
        return sent

    def record_sent(self, wait: bool = False) -> int:
        """Write the outcomes of the batches sent (all of them, waiting, with ``wait``); give back the
        leases of what a stopping thread did not send."""
        recorded = 0
        for webhook_id, (work, future) in list(self._sending.items()):
            if not future.done() and not wait:
                continue
            try:
                result = future.result()
            except Exception as exc:  # a bug in a sender: its leases run out, the deliveries go again
                del self._sending[webhook_id]
                self._complain("send", f"{type(exc).__name__}: {exc}", exc)
                continue
            now = utcnow()
            if isinstance(work, StreamBatch):

                def write_stream(
                    batch: StreamBatch = work, done: list[webhooks.StreamSent] = result, now: datetime = now
                ) -> int:
                    return webhooks.record_stream(db.session(), batch, self.name, done, now, self.retries)

                recorded += self._write(write_stream)
                del self._sending[webhook_id]
                continue
            jobs, sent = work, result
            sent_ids = {job.delivery_id for job, _, _ in sent}
            unsent = [job for job in jobs if job.delivery_id not in sent_ids]

            def write(
                webhook_id: int = webhook_id,
                sent: list[Sent] = sent,
                unsent: list[DeliveryJob] = unsent,
                now: datetime = now,
            ) -> int:
                n = webhooks.record(db.session(), webhook_id, self.name, sent, now, self.retries) if sent else 0
                webhooks.release(db.session(), self.name, unsent)
                return n

            recorded += self._write(write)
            del self._sending[webhook_id]  # kept until written: a failed write is tried again next round
        return recorded

    def forget_events(self) -> int:
        """Forget events older than LEADCRM_EVENTS_KEEP_DAYS (with their deliveries), every few minutes."""
        now = utcnow()
        if (
            self._events_forgotten_at is not None
            and timedelta(0) <= now - self._events_forgotten_at < FORGET_KEYS_EVERY
        ):
            return 0
        forgotten = 0
        while not self.stop.is_set():
            n = self._write(lambda: webhooks.forget_events(db.session(), now - self.keep_events, now))
            forgotten += n
            if n < 1000:
                break
        self._events_forgotten_at = now
        return forgotten

    def forget_keys(self) -> int:
        now = utcnow()
        if self._keys_forgotten_at is not None and timedelta(0) <= now - self._keys_forgotten_at < FORGET_KEYS_EVERY:
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
            # New events are looked for every LEADCRM_EVENTS_POLL seconds; a sender that finishes wakes the loop.
            due.append(now + timedelta(seconds=self.events_poll))
            for delivery_due in (storage.next_delivery_due(tx), storage.next_stream_due(tx, now)):
                # Due now but not leased: behind a batch still being sent here, whose end wakes the loop.
                if delivery_due is not None and not (delivery_due <= now and self._sending):
                    due.append(delivery_due)
            return min(due)

        return self._read(read)

    # --- the loop -----------------------------------------------------------------------

    def round(self) -> tuple[dict[str, int], bool]:
        """Every step once, in order: what each did, and whether all of them went through.

        A step that fails is logged and left for the next round; one whose
        heartbeat cannot be written ends there (the database is not usable).
        """
        if self._step("beat", lambda: self.beat(utcnow())) is None:
            return {}, False
        done: dict[str, int] = {}
        steps: tuple[tuple[str, Callable[[], int]], ...] = (
            ("shifts", self.shifts),
            ("offers", self.offers),
            ("drained", self.drains),
            ("events", self.events),
            ("delivered", self.deliveries),
            ("forgotten events", self.forget_events),
            ("keys", self.forget_keys),
        )
        for name, step in steps:
            if self.stop.is_set():
                break
            result = self._step(name, step)
            if result is not None:
                done[name] = result
        return done, len(done) == len(steps)

    def _step(self, name: str, work: Callable[[], T]) -> T | None:
        """Run one step; on failure roll back, log it (once while it lasts) and answer None."""
        try:
            result = work()
        except sa.exc.DBAPIError as exc:
            # Busy, unreachable, a deadlock, or the schema not yet migrated: rolled back, tried again next round.
            _roll_back()
            self._complain(name, str(exc.orig).strip(), None)
            return None
        except Exception as exc:  # a bug: logged with its traceback; the other steps go on
            _roll_back()
            self._complain(name, f"{type(exc).__name__}: {exc}", exc)
            return None
        if self._complaints.pop(name, None) is not None:
            log.info("worker %s: %s done again", self.name, name)
        return result

    def _complain(self, step: str, text: str, exc: Exception | None) -> None:
        last = self._complaints.get(step)
        now = time.monotonic()
        if last is not None and last[0] == text and now - last[1] < COMPLAIN_EVERY:
            return
        self._complaints[step] = (text, now)
        log.warning("worker %s: %s not done, tried again in %g s: %s", self.name, step, self.tick, text, exc_info=exc)

    def sleep_after(self, done: dict[str, int], complete: bool) -> float:
        """Seconds to sleep after a round: until the next due moment, at most a tick; a tick after a failure."""
        if not complete:
            return self.tick
        now = utcnow()
        due = self._step("next_due", lambda: self.next_due(now))
        if due is None:
            return self.tick
        # Woken a moment early (the sleep's clock is not the wall clock): just past the due moment.
        wait = (due - now).total_seconds() + WAKE_AFTER
        if wait <= WAKE_AFTER and not any(done.values()):
            wait = IDLE_FLOOR  # due already, but nothing could be done: another worker (or an accept) holds it
        return max(0.0, min(wait, self.tick))

    def run(self) -> None:
        log.info("worker %s started (tick %g s)", self.name, self.tick)
        with self.app.app_context():
            reads_only(db.session)
            try:
                while not self.stop.is_set():
                    done, complete = self.round()
                    if any(done.values()):
                        log.info("worker %s: %s", self.name, ", ".join(f"{k} {v}" for k, v in done.items() if v))
                    self.stop.wait(self.sleep_after(done, complete))
            finally:
                if self._stopped_by:
                    log.info("worker %s: %s, stopping", self.name, self._stopped_by)
                # The senders finish the delivery at hand (at most its timeout); their outcomes are written.
                self._step("delivered", lambda: self.record_sent(wait=True))
                self.senders.shutdown(wait=True)
                try:
                    self.forget_beat()
                except sa.exc.DBAPIError:
                    _roll_back()
                db.session.remove()
        log.info("worker %s stopped", self.name)

    def stop_on_signals(self) -> None:
        """SIGTERM and SIGINT (Ctrl+C) stop the worker after the step at hand."""

        def handle(signum: int, _frame: FrameType | None) -> None:
            # Nothing here that takes a lock (not even logging): the loop may hold it, in this thread.
            self._stopped_by = signal.Signals(signum).name
            self.stop.set()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)


def yield_cpu() -> None:
    """Let the calling thread run only on CPU time nothing else wants: Linux's SCHED_IDLE policy, set
    per thread (threads it starts inherit it). Measured on a 2-core machine (bench/notes.md): two
    busy threads at nice 19 took 30 % of gunicorn's registrations, two at SCHED_IDLE none. Where that
    policy is missing or refused, nice 19; where that fails too, it stays as it was (it only yields less)."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # 0: the calling thread
        return
    except (AttributeError, OSError):
        pass
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, 19)
    except (AttributeError, OSError):
        pass


def _roll_back() -> None:
    """End the session's transaction; a connection that died meanwhile is thrown away, not raised."""
    try:
        db.session.rollback()
    except sa.exc.DBAPIError:
        db.session.remove()
