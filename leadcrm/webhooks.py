"""Webhooks: endpoints that get events out, signed, at least once, in order per subject.

A supervisor adds an endpoint (URL, event types, description) and gets its
signing secret once. The worker then, in short transactions of its own:

- leases (``lease_stream``) the endpoint's stream: the numbered events
  (``leadcrm.outbox``) after its cursor that it subscribed to, a batch at a
  time, one worker at a time (the lease is on the endpoint's row); sends them
  in position order outside any transaction (``send_stream``,
  ``leadcrm.delivery``); and, only while it still holds the lease, moves the
  cursor past what it sent (``record_stream``). A delivered event leaves no
  row behind: delivering takes the database's write lock twice per batch.
- An event that failed becomes a delivery (``webhook_deliveries``) retried
  on its own, and the later events of its subject (contact) queue behind it
  there, so one contact's events still arrive in order while the others flow.
  Due deliveries are leased (``lease``) and recorded (``record``) likewise.
  A worker killed mid-send leaves leases that run out: the events are sent
  again (at least once).

A failed delivery is retried with exponential backoff and jitter (the first
retry after about ``retry_base`` seconds, the gaps doubling up to
``retry_max``) for ``retry_for`` seconds, then given up (``failed``;
redeliver sends it again). A stream batch that got failures and no success
pauses the stream, backing off the same way, until a try succeeds. An
endpoint with no 2xx answer for ``retry_for`` is turned off (``failing``);
its pending deliveries and its stream wait, and on again it resumes from the
first undelivered event.
"""

import json
import random
from base64 import b64encode
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from secrets import token_bytes

import sqlalchemy as sa
from sqlalchemy.orm import Session

from leadcrm import storage
from leadcrm.database import begin_write
from leadcrm.delivery import Outcome, Refused, check_url, literal_address_refused, send
from leadcrm.errors import Conflict, InvalidInput, Message, NotFound
from leadcrm.models import Event, Webhook, WebhookAttempt, WebhookDelivery, utcnow
from leadcrm.outbox import moment, public_id
from leadcrm.storage import DeliveryJob, StreamBatch, StreamEvent, Tx
from leadcrm.vocabulary import (
    DESCRIPTION_MAX,
    PING,
    URL_MAX,
    WEBHOOK_ATTEMPTS_KEPT,
    WEBHOOK_TIMEOUT,
    DeliveryState,
    EventType,
    WebhookDisabled,
)

_system_random = random.SystemRandom()

# Events (of a stream) or deliveries one worker leases from one endpoint at a time, sent one after the
# other (over one connection where the receiver keeps it open): many per transaction, so that
# delivering takes the database's write lock seldom. A batch stops starting new sends after
# SEND_WINDOW seconds; what it did not send goes back at once. The lease covers the window, one
# send's timeout and recording. A stream batch also stops after STREAM_FAILURES_IN_A_ROW failures
# in a row: the receiver is likely down, and the stream pauses rather than turn every event into a retry.
LEASE_BATCH = 100
STREAM_FAILURES_IN_A_ROW = 3
SEND_WINDOW = 30.0
LEASE_FOR = timedelta(seconds=SEND_WINDOW + WEBHOOK_TIMEOUT + 30)


@dataclass(frozen=True)
class Retries:
    """How failed deliveries are retried (seconds): first gap, longest gap, and for how long in all."""

    base: float = 5.0
    max: float = 3600.0
    for_: float = 24 * 3600.0

    def delay(self, failures: int) -> timedelta:
        """The gap after the ``failures``-th failure in a row: doubling from ``base``, at most ``max``,
        spread by ±25 % so that deliveries that failed together do not come back together."""
        gap = min(self.max, self.base * 2 ** min(failures - 1, 40))
        return timedelta(seconds=min(self.max, gap * _system_random.uniform(0.75, 1.25)))


def new_secret() -> str:
    """A signing secret as Standard Webhooks writes it: ``whsec_`` and 24 random bytes in base64."""
    return "whsec_" + b64encode(token_bytes(24)).decode()


# --- endpoints (the API's and the page's) ---------------------------------------------------


def check_url_allowed(url: str, allow_private: bool) -> str:
    """The URL, stripped; InvalidInput naming ``url`` when it is not http(s), or (by default) names a
    loopback, link-local or private address. Names are checked again at each send, on what they resolve to."""
    url = url.strip()
    if not url:
        raise InvalidInput(Message("Give the endpoint's URL."), {"url": Message("Required.")})
    if len(url) > URL_MAX:
        message = Message("At most %(max)s characters.", max=URL_MAX)
        raise InvalidInput(message, {"url": message})
    try:
        _, host, _, _ = check_url(url)
    except Refused:
        message = Message("An http:// or https:// URL with a host, such as https://crm.example.com/hooks/leadcrm.")
        raise InvalidInput(message, {"url": message}) from None
    if not allow_private and literal_address_refused(host) is not None:
        message = Message(
            "Webhooks may not go to loopback, link-local or private addresses "
            "(LEADCRM_WEBHOOKS_ALLOW_PRIVATE=1 allows them on a LAN install)."
        )
        raise InvalidInput(message, {"url": message})
    return url


def check_event_types(types: Iterable[str]) -> list[str]:
    """The subscribed types, known and without repeats, in the vocabulary's order; at least one."""
    wanted = list(types)
    unknown = [t for t in wanted if t not in tuple(EventType)]
    if unknown:
        message = Message(
            "Unknown event type: %(types)s. Known: %(known)s.", types=", ".join(unknown), known=", ".join(EventType)
        )
        raise InvalidInput(message, {"events": message})
    if not wanted:
        message = Message("Choose at least one event type.")
        raise InvalidInput(message, {"events": message})
    return [t for t in EventType if t in wanted]


def _description(description: str | None) -> str | None:
    description = (description or "").strip() or None
    if description is not None and len(description) > DESCRIPTION_MAX:
        message = Message("At most %(max)s characters.", max=DESCRIPTION_MAX)
        raise InvalidInput(message, {"description": message})
    return description


def create_webhook(
    session: Session, *, url: str, events: Iterable[str], description: str | None, allow_private: bool
) -> Webhook:
    """A new enabled endpoint, with a new secret; it gets the events that happen from now on."""
    tx = Tx.of(session)
    webhook = Webhook(
        url=check_url_allowed(url, allow_private),
        events=json.dumps(check_event_types(events)),
        description=_description(description),
        secret=new_secret(),
        enabled=True,
        sent_to=storage.last_position(tx),
        created_at=utcnow(),
    )
    session.add(webhook)
    session.flush()
    return webhook


def get_webhook(session: Session, webhook_id: int) -> Webhook:
    webhook = session.get(Webhook, webhook_id)
    if webhook is None:
        raise NotFound(Message("No webhook with id %(id)s.", id=webhook_id))
    return webhook


def lock_webhook(session: Session, webhook_id: int) -> Webhook:
    """The webhook, its row locked (PostgreSQL) before its deliveries are touched: the one order."""
    storage.lock_webhook(Tx.of(session), webhook_id)
    webhook = get_webhook(session, webhook_id)
    session.refresh(webhook)
    return webhook


def list_webhooks(session: Session) -> list[Webhook]:
    return list(session.scalars(sa.select(Webhook).order_by(Webhook.id)))


def subscribed(webhook: Webhook) -> list[str]:
    types: list[str] = json.loads(webhook.events)
    return types


def update_webhook(
    session: Session,
    webhook_id: int,
    *,
    url: str | None = None,
    events: Iterable[str] | None = None,
    description: str | None = None,
    enabled: bool | None = None,
    allow_private: bool,
) -> Webhook:
    """Change an endpoint's URL, types, description or whether it is on.

    Turned off by hand it is sent nothing more; turned on (after a supervisor
    or its failures turned it off) it resumes from the first event not
    delivered: what waited to be retried is due at once, and its stream goes
    on from its cursor. New types apply to the events not sent yet.
    """
    webhook = lock_webhook(session, webhook_id)
    if url is not None:
        webhook.url = check_url_allowed(url, allow_private)
    if events is not None:
        webhook.events = json.dumps(check_event_types(events))
    if description is not None:
        webhook.description = _description(description)
    now = utcnow()
    if enabled is True and not webhook.enabled:
        webhook.enabled = True
        webhook.disabled_reason = None
        webhook.disabled_at = None
        webhook.failing_since = None
        webhook.stream_due_at = None
        webhook.stream_failures = 0
        session.execute(
            sa.update(WebhookDelivery)
            .where(
                WebhookDelivery.webhook_id == webhook.id,
                WebhookDelivery.state == DeliveryState.PENDING,
                WebhookDelivery.next_attempt_at.is_not(None),  # the heads of their lines
            )
            .values(next_attempt_at=now, first_attempt_at=None)
        )
    elif enabled is False and webhook.enabled:
        webhook.enabled = False
        webhook.disabled_reason = WebhookDisabled.BY_HAND
        webhook.disabled_at = now
    session.flush()
    return webhook


def delete_webhook(session: Session, webhook_id: int) -> None:
    """Delete the endpoint, its queue and its log."""
    webhook = lock_webhook(session, webhook_id)
    session.execute(sa.delete(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook.id))
    session.execute(sa.delete(WebhookAttempt).where(WebhookAttempt.webhook_id == webhook.id))
    session.delete(webhook)
    session.flush()


def redeliver_event(session: Session, webhook_id: int, event_id: int) -> WebhookDelivery:
    """Send an event the endpoint's stream already sent again (as ``redeliver`` does): its delivery,
    made for it if the stream delivered it at the first try. An event the stream has still to send
    goes with it (Conflict); one not kept (or never numbered) is NotFound."""
    webhook = lock_webhook(session, webhook_id)
    event = session.get(Event, event_id)
    if event is None or event.position is None:
        raise NotFound(Message("No event %(id)s is kept.", id=public_id(event_id)))
    delivery = session.scalar(
        sa.select(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id, WebhookDelivery.event_id == event_id)
    )
    if delivery is None:
        if event.position > webhook.sent_to:
            raise Conflict(Message("This event is not sent yet; it goes with the others, in order."))
        if event.type not in subscribed(webhook):
            raise Conflict(Message("This endpoint is not subscribed to %(type)s.", type=event.type))
        delivery = WebhookDelivery(
            webhook_id=webhook_id,
            event_id=event_id,
            position=event.position,
            subject=event.subject,
            state=DeliveryState.DELIVERED,
            attempts=0,
        )
        session.add(delivery)
        session.flush()
    return redeliver(session, webhook_id, delivery.id)


def redeliver(session: Session, webhook_id: int, delivery_id: int) -> WebhookDelivery:
    """Send a delivery again (delivered, given up, or waiting for its next try), with a new retry window:
    at once, or, when another delivery of its subject is pending, in that line after it."""
    lock_webhook(session, webhook_id)
    delivery = session.get(WebhookDelivery, delivery_id)
    if delivery is None or delivery.webhook_id != webhook_id:
        raise NotFound(Message("No delivery with id %(id)s for this webhook.", id=delivery_id))
    others = session.scalar(
        sa.select(sa.func.count())
        .select_from(WebhookDelivery)
        .where(
            WebhookDelivery.webhook_id == webhook_id,
            WebhookDelivery.subject == delivery.subject,
            WebhookDelivery.state == DeliveryState.PENDING,
            WebhookDelivery.id != delivery.id,
        )
    )
    due = None if others else utcnow()
    if delivery.state == DeliveryState.PENDING and delivery.next_attempt_at is not None:
        due = utcnow()  # the head of its line already: sooner
    changed = session.execute(
        sa.update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            sa.or_(WebhookDelivery.leased_until.is_(None), WebhookDelivery.leased_until < utcnow()),
        )
        .values(state=DeliveryState.PENDING, next_attempt_at=due, first_attempt_at=None, attempts=0)
    )
    if changed.rowcount != 1:  # type: ignore[attr-defined]
        raise Conflict(Message("This delivery is being sent right now; look again in a moment."))
    session.refresh(delivery)
    return delivery


@dataclass(frozen=True)
class QueueCounts:
    pending: int
    failed: int
    delivered: int


def queue_counts(session: Session, webhook_ids: Iterable[int]) -> dict[int, QueueCounts]:
    """Per webhook: events waiting to be sent (retries due later, queued behind them, and the stream's
    numbered events after its cursor), deliveries given up, and events delivered since it was added."""
    ids = list(webhook_ids)
    counts: dict[int, dict[str, int]] = {i: {} for i in ids}
    if not ids:
        return {}
    rows = session.execute(
        sa.select(WebhookDelivery.webhook_id, WebhookDelivery.state, sa.func.count())
        .where(WebhookDelivery.webhook_id.in_(ids), WebhookDelivery.state != DeliveryState.DELIVERED)
        .group_by(WebhookDelivery.webhook_id, WebhookDelivery.state)
    )
    for webhook_id, state, n in rows:
        counts[webhook_id][state] = n
    tx = Tx.of(session)
    hooks = session.execute(
        sa.select(Webhook.id, Webhook.sent_to, Webhook.events, Webhook.delivered_count).where(Webhook.id.in_(ids))
    )
    result = {}
    for webhook_id, sent_to, types, delivered in hooks:
        backlog = storage.stream_backlog(tx, sent_to, json.loads(types))
        c = counts[webhook_id]
        result[webhook_id] = QueueCounts(
            c.get(DeliveryState.PENDING, 0) + backlog, c.get(DeliveryState.FAILED, 0), delivered
        )
    return result


def attempts(session: Session, webhook_id: int, limit: int = WEBHOOK_ATTEMPTS_KEPT) -> list[WebhookAttempt]:
    """The delivery log, newest first."""
    return list(
        session.scalars(
            sa.select(WebhookAttempt)
            .where(WebhookAttempt.webhook_id == webhook_id)
            .order_by(WebhookAttempt.id.desc())
            .limit(limit)
        )
    )


def deliveries(
    session: Session, webhook_id: int, *, state: str | None = None, limit: int = 100
) -> list[tuple[WebhookDelivery, str]]:
    """The endpoint's deliveries with their event types, newest event first."""
    query = (
        sa.select(WebhookDelivery, Event.type)
        .join(Event, Event.id == WebhookDelivery.event_id)
        .where(WebhookDelivery.webhook_id == webhook_id)
        .order_by(WebhookDelivery.position.desc())
        .limit(limit)
    )
    if state is not None:
        query = query.where(WebhookDelivery.state == state)
    return [(d, t) for d, t in session.execute(query)]


# --- what is sent -----------------------------------------------------------------------------


message_id = public_id


def envelope(event_id: int, event_type: str, created_at: datetime, actor: str | None, data: str) -> str:
    """The JSON body of an event, its ``data`` as stored (not parsed and written again)."""
    head = json.dumps(
        {"id": message_id(event_id), "type": event_type, "created_at": moment(created_at), "actor": actor},
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return head[:-1] + ',"data":' + data + "}"


def ping_body(webhook_id: int, now: datetime) -> tuple[str, str]:
    """A test delivery's id and body: ``ping``, never stored as an event."""
    ping_id = f"ping_{webhook_id}_{int(now.timestamp() * 1000)}"
    head = {"id": ping_id, "type": PING, "created_at": moment(now), "actor": None, "data": {"webhook_id": webhook_id}}
    return ping_id, json.dumps(head, separators=(",", ":"))


def ping(session: Session, webhook_id: int, *, allow_private: bool) -> Outcome:
    """Send a signed ping to the endpoint now and log what it answered (its own unit of work).

    Nothing is held while the ping is on its way (at most WEBHOOK_TIMEOUT): the
    read ends before the send, and the log is written in a write of its own.
    """
    webhook = get_webhook(session, webhook_id)
    url, secret = webhook.url, webhook.secret
    session.rollback()
    now = utcnow()
    ping_id, body = ping_body(webhook_id, now)
    outcome = send(url, secret, ping_id, body, allow_private=allow_private)
    begin_write(session)
    record_ping(session, webhook_id, outcome, now)
    session.commit()
    return outcome


def record_ping(session: Session, webhook_id: int, outcome: Outcome, at: datetime) -> None:
    """Log a test delivery's outcome (it changes nothing else: a ping is no evidence of events received)."""
    tx = Tx.of(session)
    storage.lock_webhook(tx, webhook_id)
    get_webhook(session, webhook_id)
    storage.log_attempt(tx, webhook_id, None, PING, at, outcome.status_code, outcome.duration_ms, outcome.error)
    storage.prune_attempts(tx, webhook_id, WEBHOOK_ATTEMPTS_KEPT)


# --- the worker's steps -----------------------------------------------------------------------


def lease_stream(
    session: Session, webhook_id: int, worker: str, now: datetime, limit: int = LEASE_BATCH
) -> StreamBatch | None:
    """Lease the endpoint's stream to ``worker`` for as long as sending a batch may take (LEASE_FOR)
    and read its next events; None if it is not due."""
    return storage.lease_stream(Tx.of(session), webhook_id, worker, now, now + LEASE_FOR, limit)


@dataclass(frozen=True, slots=True)
class StreamSent:
    """What became of one event of a stream batch: the answer, or None when it was not sent (an
    earlier event of its subject waits to be retried: it queues behind that one); and when."""

    event: StreamEvent
    outcome: Outcome | None
    at: datetime


def send_stream(
    batch: StreamBatch, send_one: Callable[[str, str], Outcome], go_on: Callable[[], bool]
) -> list[StreamSent]:
    """Send the batch's events in position order with ``send_one(message id, body)`` (no database here);
    what it got for each, a prefix of the batch. After an event fails, the later ones of its subject are
    not sent (they queue behind it); it stops when ``go_on()`` says so or after
    STREAM_FAILURES_IN_A_ROW failures in a row."""
    blocked = set(batch.blocked)
    done: list[StreamSent] = []
    in_a_row = 0
    for event in batch.events:
        if not go_on():
            break
        at = utcnow()
        if event.subject in blocked:
            done.append(StreamSent(event, None, at))
            continue
        body = envelope(event.event_id, event.event_type, event.created_at, event.actor, event.data)
        outcome = send_one(message_id(event.event_id), body)
        done.append(StreamSent(event, outcome, at))
        if outcome.ok:
            in_a_row = 0
            continue
        blocked.add(event.subject)
        in_a_row += 1
        if in_a_row >= STREAM_FAILURES_IN_A_ROW:
            break
    return done


def record_stream(
    session: Session, batch: StreamBatch, worker: str, done: list[StreamSent], now: datetime, retries: Retries
) -> int:
    """Write what a stream batch got, only while ``worker`` still holds the stream: the cursor moves past
    what was done, the failed events become deliveries due for a retry and the ones not sent queue
    behind them; how many were sent (0 when the lease ran out and another worker took the stream: it
    sends them again). Webhook row first, then its deliveries."""
    tx = Tx.of(session)
    storage.lock_webhook(tx, batch.webhook_id)
    sent = [d for d in done if d.outcome is not None]
    succeeded = sum(1 for d in sent if d.outcome is not None and d.outcome.ok)
    failed = len(sent) - succeeded
    to = batch.to if len(done) == len(batch.events) else done[-1].event.position if done else batch.after
    failures = batch.failures + 1 if failed and not succeeded else 0
    paused_until = now + retries.delay(failures) if failures else None
    if not storage.stream_done(tx, batch, worker, to, paused_until, failures):
        return 0
    if succeeded:
        storage.webhook_succeeded(tx, batch.webhook_id, now, succeeded)
    elif failed:
        storage.webhook_failed(tx, batch.webhook_id, now, now - timedelta(seconds=retries.for_))
    queued: list[tuple[StreamEvent, datetime | None, datetime | None]] = [
        (d.event, None, None) if d.outcome is None else (d.event, d.at, now + retries.delay(1))
        for d in done
        if d.outcome is None or not d.outcome.ok
    ]
    storage.queue_from_stream(tx, batch, queued, now)
    storage.log_attempts(
        tx,
        batch.webhook_id,
        [(d.event.event_id, d.event.event_type, d.at, d.outcome.status_code, d.outcome.duration_ms, d.outcome.error)
         for d in sent if d.outcome is not None],
    )  # fmt: skip
    if sent:
        storage.prune_attempts(tx, batch.webhook_id, WEBHOOK_ATTEMPTS_KEPT)
    return len(sent)


def streams_due(session: Session, now: datetime) -> list[int]:
    return storage.streams_due(Tx.of(session), now)


def lease(session: Session, webhook_id: int, worker: str, now: datetime, limit: int = LEASE_BATCH) -> list[DeliveryJob]:
    """Lease the endpoint's due deliveries to ``worker`` for as long as sending them may take (LEASE_FOR)."""
    until = now + LEASE_FOR
    return storage.lease_deliveries(Tx.of(session), webhook_id, worker, now, until, limit)


def record(
    session: Session,
    webhook_id: int,
    worker: str,
    results: list[tuple[DeliveryJob, Outcome, datetime]],
    now: datetime,
    retries: Retries,
) -> int:
    """Write what sending the leased deliveries got; how many were recorded (a delivery whose lease
    ran out and was taken by another worker is left to it). Webhook row first, then its deliveries."""
    tx = Tx.of(session)
    storage.lock_webhook(tx, webhook_id)
    succeeded = any(outcome.ok for _, outcome, _ in results)
    failed = any(not outcome.ok for _, outcome, _ in results)
    turned_off = False
    if failed and not succeeded:
        turned_off = storage.webhook_failed(tx, webhook_id, now, now - timedelta(seconds=retries.for_))
    storage.log_attempts(
        tx,
        webhook_id,
        [(job.event_id, job.event_type, at, outcome.status_code, outcome.duration_ms, outcome.error)
         for job, outcome, at in results],
    )  # fmt: skip
    recorded = 0
    delivered = 0
    line_moves = []  # subjects whose next delivery is due now (the one before it done)
    for job, outcome, at in results:
        if outcome.ok:
            done = storage.delivered(tx, job.delivery_id, worker, now)
            if done:
                line_moves.append(job.subject)
                delivered += 1
        else:
            first = job.first_attempt_at or at
            # Given up after the retry window, unless the whole endpoint was just turned off: then it waits for it.
            give_up = not turned_off and first <= now - timedelta(seconds=retries.for_)
            next_at = now + retries.delay(job.attempts + 1)
            done = storage.retry_later(tx, job.delivery_id, worker, now, next_at, give_up)
            if done and give_up:
                line_moves.append(job.subject)
        recorded += done
    if succeeded:
        storage.webhook_succeeded(tx, webhook_id, now, delivered)
    storage.next_in_lines(tx, webhook_id, line_moves, now)
    storage.prune_attempts(tx, webhook_id, WEBHOOK_ATTEMPTS_KEPT)
    return recorded


def webhooks_with_due(session: Session, now: datetime) -> list[int]:
    return storage.webhooks_with_due(Tx.of(session), now)


def forget_events(session: Session, before: datetime, now: datetime, limit: int = 1000) -> int:
    """Forget numbered events created before ``before`` (and their deliveries), ``limit`` at most."""
    return storage.forget_events(Tx.of(session), before, limit, now)


def release(session: Session, worker: str, jobs: Iterable[DeliveryJob]) -> None:
    """Give back the leases of deliveries not sent (the worker is stopping): due again at once."""
    storage.release_leases(Tx.of(session), worker, [job.delivery_id for job in jobs])


def event_type_of(session: Session, event_id: int) -> str:
    return session.scalar(sa.select(Event.type).where(Event.id == event_id)) or ""
