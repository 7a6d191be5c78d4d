"""Offers: a contact routed to an operator must be taken before a deadline, or it is routed again.

A source with ``offer_timeout_seconds`` makes every contact routing gives an
operator (registration, the queue, sticky, reopen) an offer: the contact
holds the operator's slot and shows ``offered_until``. The operator takes it
(``accept``) before then, or the worker takes it back (``expire_offers``)
and routes it again without that operator; a supervisor's assignment by hand
counts as taken. Taking and the deadline race under the contact's row lock
(PostgreSQL) or the write lock (SQLite): whichever comes first changes the
row, the other finds it changed.
"""

from datetime import datetime

from sqlalchemy.orm import Session

from leadcrm import outbox, storage
from leadcrm.distribution import assign_operator, drain_queue, lock_contact, release_slot
from leadcrm.errors import Conflict, Message
from leadcrm.models import utcnow
from leadcrm.storage import ContactRecord, Tx
from leadcrm.vocabulary import AwayReason, ContactStatus, EventReason, EventType, OperatorChange, Presence


def accept(session: Session, contact_id: int, operator_id: int | None = None) -> ContactRecord:
    """The operator takes the contact offered to it (``POST /api/v1/contacts/<id>/accept``).

    ``operator_id`` None: for whichever operator holds it (a supervisor or an
    integration acting for the operator). Taking one taken already, or a
    contact that was never an offer, changes nothing. Conflict when the
    contact is not (or no longer) the operator's, or closed, or when the
    deadline has passed: the worker is routing it again.
    """
    tx = Tx.of(session)
    contact = lock_contact(tx, contact_id)
    operator_id = contact.operator_id if operator_id is None else operator_id
    if operator_id is None or contact.operator_id != operator_id or contact.status != ContactStatus.OPEN:
        raise Conflict(
            Message("This contact is no longer offered to this operator: it went to someone else or was closed.")
        )
    if contact.offered_until is None:
        return contact  # taken already, or never an offer
    now = utcnow()
    if not storage.accept_offer(tx, contact.id, operator_id, now):
        raise Conflict(Message("The time to take this contact ran out; it is being offered to someone else."))
    storage.reset_missed_offers(tx, contact.source_id, operator_id)
    outbox.contact_changed(tx, contact.id, [EventType.CONTACT_ACCEPTED], now=now)
    return storage.get_contact(tx, contact.id) or contact


def expire_offers(session: Session, now: datetime, limit: int = 1) -> int:
    """The worker's step: take back offers whose deadline passed before ``now`` and route them again.

    At most ``limit`` contacts in the caller's transaction, claimed with SKIP
    LOCKED on PostgreSQL (two workers never take the same one; one being
    accepted right now is left to the accept). Each is taken back from its
    operator, whose slot is freed; counted as a miss for the operator and the
    source, and after the source's ``offer_misses_away`` misses in a row the
    operator is set away ("missed offers"). Then it is routed through the
    source's strategy to anyone else eligible (an offer again), or it waits.
    The history says ``timeout`` (from the operator who missed it, to the next
    one or nobody). The freed slot takes waiting contacts of the operator's
    other sources. Returns how many offers were taken back.
    """
    tx = Tx.of(session)
    expired = 0
    for contact_id in storage.due_offers(tx, now, limit):
        contact = storage.get_contact(tx, contact_id)  # locked by due_offers (PostgreSQL)
        if contact is None or contact.offered_until is None or contact.offered_until > now:
            continue
        missed_by = contact.operator_id
        assert missed_by is not None  # an offer has an operator
        source = storage.source_by_id(tx, contact.source_id)
        if source is None:  # cannot happen: the contact's foreign key holds it
            raise RuntimeError(f"contact {contact.id} has no source {contact.source_id}")
        # The one who missed it and everyone it may go to, in id order, before any change: a worker
        # taking back a crossing offer (from the operator this one goes to) queues instead of deadlocking.
        storage.lock_operators(tx, [missed_by, *storage.eligible_operator_ids(tx, source.id)])
        if not storage.take_back_offer(tx, contact):
            raise RuntimeError(f"offer of contact {contact.id} changed under its lock")  # cannot happen: we hold it
        release_slot(tx, missed_by, contact.id)
        if storage.count_missed_offer(tx, source.id, missed_by) >= source.offer_misses_away:
            _set_away_for_missed_offers(tx, missed_by, source.id, now)
        operator = assign_operator(tx, source, exclude=missed_by)
        if operator is not None:
            moved = storage.move_contact(
                tx,
                contact.id,
                previous=None,
                operator_id=operator.id,
                now=now,
                offered_until=source.offer_deadline(now),
            )
            if not moved:
                raise RuntimeError(f"contact {contact.id} changed under its lock")  # cannot happen: we hold it
        storage.record_event(tx, contact.id, EventReason.TIMEOUT, missed_by, operator.id if operator else None, now)
        outbox.contact_changed(
            tx,
            contact.id,
            [EventType.CONTACT_ASSIGNED],
            reason=EventReason.TIMEOUT,
            previous_operator_id=missed_by,
            now=now,
        )
        # The freed slot: the operator's other sources (this contact's source would hand it straight back).
        others = [i for i in storage.sources_served_by(tx, missed_by) if i != source.id]
        if others:
            drain_queue(tx, others)
        expired += 1
    return expired


def _set_away_for_missed_offers(tx: Tx, operator_id: int, source_id: int, now: datetime) -> None:
    """Away, with the reason (the history's value is the reason, "missed_offers"); its misses start again from 0."""
    storage.reset_missed_offers(tx, source_id, operator_id)
    before = storage.operator_by_id(tx, operator_id)
    if before is None or before.presence == Presence.AWAY:
        return
    after = storage.update_operator(tx, operator_id, presence=Presence.AWAY, away_reason=AwayReason.MISSED_OFFERS)
    storage.record_operator_event(tx, operator_id, OperatorChange.PRESENCE, AwayReason.MISSED_OFFERS, now)
    if after is not None:
        outbox.operator_updated(tx, after, [OperatorChange.PRESENCE], now)


def next_offer_due(session: Session) -> datetime | None:
    return storage.next_offer_due(Tx.of(session))
