"""Events out: what changed, written in the same transaction as the change (a transactional outbox).

The domain calls these functions where it changes a contact, an operator or a
source's weights, with the unit of work's ``Tx``: the event commits with the
change or rolls back with it, so no event exists for a change that did not
happen and no change lacks its event. Each event carries the actor (who made
the change: ``user:olga``, ``token:Website form (#3)``, ``worker``) and the
data as it was then, shaped as the API shows it (``tests/test_outbox.py``
compares the two).

Committed events are numbered in commit order by the worker's sequencer
(``sequence``): the event feed (``GET /api/v1/events``) and the webhooks
(``leadcrm.webhooks``) read only numbered events, in that order.
"""

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from leadcrm import storage
from leadcrm.models import Event, utcnow
from leadcrm.queries import next_shift_change
from leadcrm.storage import ContactRecord, LeadRecord, OperatorRecord, OutEvent, SourceRecord, Tx, is_on_shift
from leadcrm.vocabulary import EventType

# At most this many events are numbered in one transaction of the sequencer.
SEQUENCE_BATCH = 1000


def public_id(event_id: int) -> str:
    """An event's stable id: the same in the feed, in a webhook's body and its ``webhook-id``, on every retry."""
    return f"evt_{event_id}"


def event_number(public: str) -> int | None:
    """The event id in ``evt_12`` (None: not an event's id, or past what a BIGINT holds)."""
    if not (public.startswith("evt_") and public[4:].isascii() and public[4:].isdigit()):
        return None
    number = int(public[4:])
    return number if 0 < number < 2**63 else None


def moment(value: datetime | None) -> str | None:
    """A timestamp as the API writes it (pydantic's JSON): ISO 8601 in UTC with a Z."""
    if value is None:
        return None
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.isoformat().replace("+00:00", "Z")


# The records as the API shows them (its schemas' JSON): the API's answers and the events' data alike.


def contact_json(contact: ContactRecord) -> dict[str, Any]:
    """The contact as ``ContactOut`` shows it."""
    return {
        "id": contact.id,
        "lead_id": contact.lead_id,
        "source_id": contact.source_id,
        "operator_id": contact.operator_id,
        "status": contact.status,
        "message": contact.message,
        "created_at": moment(contact.created_at),
        "assigned_at": moment(contact.assigned_at),
        "closed_at": moment(contact.closed_at),
        "offered_until": moment(contact.offered_until),
        "accepted_at": moment(contact.accepted_at),
    }


def lead_json(lead: LeadRecord) -> dict[str, Any]:
    """The lead as ``LeadOut`` shows it."""
    return {
        "id": lead.id,
        "external_id": lead.external_id,
        "phone": lead.phone,
        "email": lead.email,
        "name": lead.name,
        "created_at": moment(lead.created_at),
    }


def operator_json(operator: OperatorRecord, now: datetime) -> dict[str, Any]:
    """The operator as ``OperatorOut`` shows it, its shift and whether it is at work as of ``now``."""
    return {
        "id": operator.id,
        "name": operator.name,
        "is_active": operator.is_active,
        "max_active_leads": operator.max_active_leads,
        "active_leads": operator.active_leads,
        "presence": operator.presence,
        "idle_away_minutes": operator.idle_away_minutes,
        "last_seen_at": moment(operator.last_seen_at),
        "away_reason": operator.away_reason,
        "on_shift": is_on_shift(operator.shift_from, operator.shift_until, now),
        "next_shift_change_at": moment(next_shift_change(operator.shift_from, operator.shift_until, now)),
        "at_work": operator.at_work(now),
    }


def source_json(source: SourceRecord) -> dict[str, Any]:
    """The source as ``SourceOut`` shows it."""
    return {
        "id": source.id,
        "name": source.name,
        "strategy": source.strategy,
        "sticky": source.sticky,
        "offer_timeout_seconds": source.offer_timeout_seconds,
        "offer_misses_away": source.offer_misses_away,
    }


def _dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def _contact_data(
    contact: ContactRecord, lead: LeadRecord, operator: OperatorRecord | None, now: datetime
) -> dict[str, Any]:
    return {
        "contact": contact_json(contact),
        "lead": lead_json(lead),
        "operator": operator_json(operator, now) if operator is not None else None,
    }


def _routed(data: str, reason: str, previous_operator_id: int | None) -> str:
    """The data of a routing event: the contact's data (JSON text, written once) with the reason and the
    previous operator after it, spliced in rather than encoded again (the hot path's biggest cost)."""
    tail = _dumps({"reason": reason, "previous_operator_id": previous_operator_id})
    return data[:-1] + "," + tail[1:]


def registered(
    tx: Tx, contact: ContactRecord, lead: LeadRecord, operator: OperatorRecord | None, reason: str, now: datetime
) -> None:
    """A new contact: ``contact.registered``, then ``contact.assigned`` (with ``reason``) or
    ``contact.waiting``. Built from the records in hand: the hot path reads nothing more."""
    data = _dumps(_contact_data(contact, lead, operator, now))
    subject = f"contact:{contact.id}"
    routed = EventType.CONTACT_ASSIGNED if operator is not None else EventType.CONTACT_WAITING
    storage.write_events(
        tx,
        [OutEvent(EventType.CONTACT_REGISTERED, subject, data), OutEvent(routed, subject, _routed(data, reason, None))],
        now,
    )


def contact_changed(
    tx: Tx,
    contact_id: int,
    types: Iterable[EventType],
    *,
    reason: str | None = None,
    previous_operator_id: int | None = None,
    now: datetime | None = None,
) -> None:
    """Events of one contact, with its state as it is now in the transaction.

    ``EventType.CONTACT_ASSIGNED`` in ``types`` stands for the routing's
    outcome: ``contact.assigned`` when the contact has an operator now,
    ``contact.waiting`` when it has none; both carry ``reason`` and
    ``previous_operator_id``.
    """
    now = now or utcnow()
    snapshot = storage.contact_snapshot(tx, contact_id)
    if snapshot is None:  # cannot happen: the caller changed it in this transaction
        raise RuntimeError(f"no contact {contact_id} to describe")
    contact, lead, operator = snapshot
    data = _dumps(_contact_data(contact, lead, operator, now))
    subject = f"contact:{contact_id}"
    events = []
    for kind in types:
        if kind == EventType.CONTACT_ASSIGNED:
            routed = EventType.CONTACT_ASSIGNED if operator is not None else EventType.CONTACT_WAITING
            assert reason is not None
            events.append(OutEvent(routed, subject, _routed(data, reason, previous_operator_id)))
        else:
            events.append(OutEvent(kind, subject, data))
    storage.write_events(tx, events, now)


def operator_updated(tx: Tx, operator: OperatorRecord, changed: Sequence[str], now: datetime) -> None:
    """``operator.updated``: the operator as it is after the change, and which fields changed."""
    data = {"operator": operator_json(operator, now), "changed": list(changed)}
    storage.write_events(tx, [OutEvent(EventType.OPERATOR_UPDATED, f"operator:{operator.id}", _dumps(data))], now)


def weights_changed(tx: Tx, source: SourceRecord, now: datetime) -> None:
    """``source.weights_changed``: the source and every operator's weight for it now (weight > 0)."""
    weights = [{"operator_id": w.operator_id, "weight": w.weight} for w in storage.source_weights(tx, source.id)]
    data = {"source": source_json(source), "weights": weights}
    storage.write_events(tx, [OutEvent(EventType.SOURCE_WEIGHTS_CHANGED, f"source:{source.id}", _dumps(data))], now)


def sequence(tx: Tx, limit: int = SEQUENCE_BATCH) -> int:
    """The worker's step: number the committed events in commit order (``storage.sequence_events``)."""
    return storage.sequence_events(tx, limit)


def feed(session: Session, after: int, types: Sequence[str] | None, limit: int) -> tuple[list[Event], int, bool]:
    """The numbered events after position ``after`` (of ``types``, or all), in commit order, at most
    ``limit``; the position to continue from; whether more follow at once.

    Only numbered events are read, and the sequencer numbers each committed
    event after every position it gave before: an event committed later is
    always after the cursor, whatever its id, so none is ever passed over.
    """
    query = sa.select(Event).where(Event.position > after).order_by(Event.position).limit(limit + 1)
    if types is not None:
        query = query.where(Event.type.in_(list(types)))
    events = list(session.scalars(query))
    more = len(events) > limit
    events = events[:limit]
    position = events[-1].position if events else after
    return events, position if position is not None else after, more


def envelope_json(event: Event) -> dict[str, Any]:
    """An event as the feed lists it (a webhook's body is the same JSON)."""
    return {
        "id": public_id(event.id),
        "type": event.type,
        "created_at": moment(event.created_at),
        "actor": event.actor,
        "data": json.loads(event.data),
    }
