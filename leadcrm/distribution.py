"""The distribution engine: register a contact, pick its operator, close it.

Load (``Operator.active_leads``) is a counter changed only here, in the same
transaction as the contact it counts. An operator is claimed with one
conditional UPDATE (``... WHERE active_leads < max_active_leads``), so two
requests can never both take an operator's last free slot: whichever comes
second finds the condition false and picks again. That holds on SQLite (one
writer at a time) and on PostgreSQL (the UPDATE waits for the row lock and
re-checks the condition) alike, across any number of processes.
"""

import logging
import random
from bisect import bisect_right
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import accumulate

from flask_babel import lazy_gettext as _l
from sqlalchemy.orm import Session

from leadcrm import storage
from leadcrm.errors import Conflict, InvalidInput, NotFound, UnknownOperator
from leadcrm.identity import LeadIdentity
from leadcrm.leads import resolve_lead
from leadcrm.models import Source, utcnow
from leadcrm.storage import ContactRecord, LeadRecord, OperatorRecord, SourceRecord
from leadcrm.vocabulary import ContactStatus, EventReason, Strategy

log = logging.getLogger(__name__)

# Stateless and fork-safe: gunicorn workers never share a random sequence.
_system_random = random.SystemRandom()


@dataclass(frozen=True)
class Registration:
    contact: ContactRecord
    lead: LeadRecord
    lead_created: bool
    operator: OperatorRecord | None


def pick_operator(session: Session, source: Source | SourceRecord, rng: random.Random | None = None) -> int | None:
    """The operator the source's strategy picks for its next contact; None if nobody is eligible.

    Eligible: serves the source (weight > 0), active, load below its limit.
    ``random``: each eligible operator with probability weight / total weight.
    ``deterministic``: the one furthest behind its weight share of the source's
    assigned contacts (smooth weighted round robin over the history): with W
    the eligible operators' total weight and n their assigned contacts, the one
    maximising (n + 1) * weight - W * assigned_total; ties go to the lowest id.
    Nothing is claimed here.
    """
    params = {"source_id": source.id, "active": True}
    rows = storage.Tx.of(session).execute(storage.ELIGIBLE, params).fetchall()  # (id, weight, assigned_total)
    if not rows:
        return None
    if source.strategy == Strategy.DETERMINISTIC:
        total_weight = sum(row[1] for row in rows)
        assigned = sum(row[2] for row in rows)
        return max(rows, key=lambda row: ((assigned + 1) * row[1] - total_weight * row[2], -row[0]))[0]
    # Lay the weights end to end and see where a uniform point falls.
    ends = list(accumulate(row[1] for row in rows))
    return rows[bisect_right(ends, (rng or _system_random).random() * ends[-1])][0]


def claim_operator(session: Session, operator_id: int) -> OperatorRecord | None:
    """Take one slot of the operator's limit, if it is still active and has one."""
    row = storage.Tx.of(session).execute(storage.CLAIM, {"id": operator_id, "active": True}).fetchone()
    return storage.operator_record(row) if row else None


def count_assignment(tx: storage.Tx, source_id: int, operator_id: int) -> None:
    """Add one to the operator's assigned_total for the source, whose row the caller knows exists.

    Rows of source_operators are never deleted (a weight of 0 keeps them), so
    a miss means the database was changed behind the engine's back.
    """
    if tx.execute(storage.COUNT_ASSIGNMENT, {"source_id": source_id, "operator_id": operator_id}).rowcount != 1:
        raise RuntimeError(f"no source_operators row for source {source_id}, operator {operator_id}")


def assign_operator(
    session: Session, source: Source | SourceRecord, rng: random.Random | None = None
) -> OperatorRecord | None:
    """Pick and claim an operator for one new contact of ``source``, or None."""
    if source.strategy == Strategy.DETERMINISTIC:
        # The pick depends on every operator's history for this source: take
        # turns per source so that two requests do not both use the same counts.
        storage.lock_source(storage.Tx.of(session), source.id)
    while (operator_id := pick_operator(session, source, rng)) is not None:
        operator = claim_operator(session, operator_id)
        if operator is not None:
            count_assignment(storage.Tx.of(session), source.id, operator.id)  # ELIGIBLE read its row
            return operator
        # Another transaction took its last slot since we looked (PostgreSQL):
        # it is no longer eligible, so the next pick skips it.
    return None


def back_to_latest_operator(session: Session, source: Source | SourceRecord, lead_id: int) -> OperatorRecord | None:
    """For a sticky source: claim the operator of the lead's latest contact through it, if it still can take it."""
    tx = storage.Tx.of(session)
    latest = tx.execute(storage.LATEST_OPERATOR, {"lead_id": lead_id, "source_id": source.id}).fetchone()
    if latest is None:
        return None
    params = {"id": latest[0], "active": True, "source_id": source.id}
    row = tx.execute(storage.CLAIM_IF_SERVING, params).fetchone()
    if row is None:
        return None
    count_assignment(tx, source.id, row[0])  # the claim checked that its row exists
    return storage.operator_record(row)


def register_contact(
    session: Session,
    *,
    source: Source | SourceRecord,
    identity: LeadIdentity,
    name: str | None = None,
    message: str | None = None,
    rng: random.Random | None = None,
) -> Registration:
    """Register a lead's contact through ``source`` and distribute it.

    Resolves (or creates) the lead, picks an eligible operator and stores the
    contact with it; when no operator is eligible the contact is stored open
    and unassigned. Writes in the session's transaction; the caller commits.
    """
    lead, lead_created = resolve_lead(session, identity, name)
    operator = None
    reason = EventReason.REGISTERED
    if source.sticky and not lead_created:
        operator = back_to_latest_operator(session, source, lead.id)
        reason = EventReason.STICKY if operator else reason
    if operator is None:
        operator = assign_operator(session, source, rng)
    now = utcnow()
    tx = storage.Tx.of(session)
    stored_now = tx.time(now)
    (contact_id,) = tx.execute(
        storage.INSERT_CONTACT,
        {
            "lead_id": lead.id,
            "source_id": source.id,
            "operator_id": operator.id if operator else None,
            "message": message,
            "created_at": stored_now,
            "assigned_at": stored_now if operator else None,
        },
    ).fetchone()
    tx.record(contact_id, reason, None, operator.id if operator else None, stored_now)
    contact = ContactRecord(
        id=contact_id,
        lead_id=lead.id,
        source_id=source.id,
        operator_id=operator.id if operator else None,
        status=ContactStatus.OPEN,
        message=message,
        created_at=now,
        assigned_at=now if operator else None,
        closed_at=None,
    )
    return Registration(contact=contact, lead=lead, lead_created=lead_created, operator=operator)


def close_contact(session: Session, contact_id: int, *, drain: bool = True) -> ContactRecord:
    """Close an open contact and free its operator's slot.

    Closing a closed contact changes nothing. Only the request that actually
    flips the status gives the slot back, so concurrent closes free it once.
    The freed slot goes to a waiting contact at once (one batch at most),
    unless ``drain`` is off because the caller drains once for several changes.
    """
    tx = storage.Tx.of(session)
    closed_at = tx.time(utcnow())
    row = tx.execute(storage.CLOSE_CONTACT, {"id": contact_id, "closed_at": closed_at}).fetchone()
    if row is None:
        return get_open_or_closed(session, contact_id)
    contact = storage.contact_record(row)
    tx.record(contact.id, EventReason.CLOSED, contact.operator_id, None, closed_at)
    if contact.operator_id is not None and release_slot(tx, contact.operator_id, contact.id) and drain:
        drain_for_operators(session, [contact.operator_id])
    return contact


def release_slot(tx: storage.Tx, operator_id: int, contact_id: int) -> bool:
    """Give back the slot ``contact_id`` held with its operator; False if the counter had nothing to give back.

    The load counts the operator's open contacts, so it is at least 1 here;
    a counter at 0 was changed behind the engine's back: it stays at 0 (the
    closest to the truth) and the mismatch is logged.
    """
    if tx.execute(storage.RELEASE_SLOT, {"id": operator_id}).rowcount == 1:
        return True
    log.error("operator %s: load already 0 when contact %s gave its slot back", operator_id, contact_id)
    return False


def get_open_or_closed(session: Session, contact_id: int) -> ContactRecord:
    row = storage.Tx.of(session).execute(storage.GET_CONTACT, {"id": contact_id}).fetchone()
    if row is None:
        raise NotFound(_l("No contact with id %(id)s.", id=contact_id))
    return storage.contact_record(row)


def lock_contact(tx: storage.Tx, contact_id: int) -> ContactRecord:
    """The contact, its row locked until the transaction ends (the first lock of every manual change)."""
    contact = storage.lock_contact(tx, contact_id)
    if contact is None:
        raise NotFound(_l("No contact with id %(id)s.", id=contact_id))
    return contact


def assign_by_hand(
    session: Session, contact_id: int, operator_id: int, *, override: bool = False, drain: bool = True
) -> ContactRecord:
    """A supervisor gives an open contact (waiting or not) to a chosen operator.

    The operator must be active; past its limit only with ``override``, which
    the history records as such. The previous operator's slot is given back
    (and goes to a waiting contact at once, unless ``drain`` is off).
    Giving a contact to the operator it already has changes nothing, also
    when concurrent requests do so.
    """
    tx = storage.Tx.of(session)
    # The contact's row first, then both operators' rows in id order: every
    # manual change locks in this order, so they queue instead of deadlocking,
    # and what is read here cannot change before the move.
    contact = lock_contact(tx, contact_id)
    if contact.status != ContactStatus.OPEN:
        raise InvalidInput(_l("A closed contact cannot be assigned; reopen it first."), {"status": _l("Closed.")})
    if contact.operator_id == operator_id:
        return contact
    storage.lock_operators(tx, [contact.operator_id, operator_id])
    claim = storage.CLAIM_PAST_LIMIT if override else storage.CLAIM
    operator = tx.execute(claim, {"id": operator_id, "active": True}).fetchone()
    if operator is None:
        exists = tx.execute(storage.OPERATOR_STATE, {"id": operator_id}).fetchone()
        if exists is None:
            raise UnknownOperator(_l("No operator with id %(id)s.", id=operator_id), {"operator_id": _l("Unknown.")})
        message = _l("This operator is full; assign past the limit only with an override.")
        if not exists[0]:
            message = _l("This operator is inactive.")
        raise InvalidInput(message, {"operator_id": message})
    now = tx.time(utcnow())
    params = {"id": contact.id, "operator_id": operator_id, "assigned_at": now, "previous": contact.operator_id}
    if tx.execute(storage.MOVE_CONTACT, params).rowcount != 1:
        raise Conflict(_l("The contact changed meanwhile; look again."))
    # No row when the operator does not serve the source: such a contact is not counted in its share.
    tx.execute(storage.COUNT_ASSIGNMENT, {"source_id": contact.source_id, "operator_id": operator_id})
    full = operator[4] > operator[3]  # active_leads > max_active_leads after the claim
    reason = EventReason.OVERRIDE if override and full else EventReason.MANUAL
    tx.record(contact.id, reason, contact.operator_id, operator_id, now)
    if contact.operator_id is not None and release_slot(tx, contact.operator_id, contact.id) and drain:
        drain_for_operators(session, [contact.operator_id])
    return get_open_or_closed(session, contact.id)


def close_contacts(session: Session, contact_ids: Iterable[int]) -> list[ContactRecord]:
    """Close several contacts at once (all or, on an error, none: the caller rolls back).

    Every lock is taken before anything changes, in the one global order
    (the contacts by id, then their operators by id), so two bulk actions
    over crossing sets queue instead of deadlocking. The freed slots go to
    waiting contacts once, after all the closes (one batch at most).
    """
    tx = storage.Tx.of(session)
    contacts = [lock_contact(tx, contact_id) for contact_id in sorted(set(contact_ids))]
    storage.lock_operators(tx, [contact.operator_id for contact in contacts])
    closed = [close_contact(session, contact.id, drain=False) for contact in contacts]
    freed = [
        contact.operator_id for contact in contacts if contact.status == ContactStatus.OPEN and contact.operator_id
    ]
    drain_for_operators(session, freed)
    return closed


def assign_contacts_by_hand(
    session: Session, contact_ids: Iterable[int], operator_id: int, *, override: bool = False
) -> list[ContactRecord]:
    """Give several open contacts to one operator (all or, on an error, none: the caller rolls back).

    Locks as ``close_contacts`` does (the contacts by id, then the operators
    they leave and the one they go to, by id) before moving any, and gives
    the freed slots to waiting contacts once, after all the moves.
    """
    tx = storage.Tx.of(session)
    contacts = [lock_contact(tx, contact_id) for contact_id in sorted(set(contact_ids))]
    storage.lock_operators(tx, [contact.operator_id for contact in contacts] + [operator_id])
    moved = [assign_by_hand(session, c.id, operator_id, override=override, drain=False) for c in contacts]
    drain_for_operators(session, [c.operator_id for c in contacts if c.operator_id not in (None, operator_id)])
    return moved


def reopen_contact(session: Session, contact_id: int, rng: random.Random | None = None) -> ContactRecord:
    """Open a closed contact again: back to its operator if that one still serves the source and has room,
    otherwise through the source's strategy, otherwise it waits. Reopening an open contact changes nothing,
    also when concurrent requests reopen it: only the one that flips the status claims a slot."""
    tx = storage.Tx.of(session)
    contact = lock_contact(tx, contact_id)
    if contact.status == ContactStatus.OPEN:
        return contact
    if tx.execute(storage.REOPEN_CONTACT, {"id": contact.id}).rowcount != 1:
        return get_open_or_closed(session, contact.id)  # reopened by someone else first
    source = SourceRecord(*tx.execute(storage.SOURCE_BY_ID, {"id": contact.source_id}).fetchone())
    operator = None
    if contact.operator_id is not None:
        params = {"id": contact.operator_id, "active": True, "source_id": source.id}
        row = tx.execute(storage.CLAIM_IF_SERVING, params).fetchone()
        if row is not None:
            count_assignment(tx, source.id, row[0])  # the claim checked that its row exists
            operator = storage.operator_record(row)
    if operator is None:
        operator = assign_operator(session, source, rng)
    now = tx.time(utcnow())
    if operator is not None:
        params = {"id": contact.id, "operator_id": operator.id, "assigned_at": now, "previous": None}
        if tx.execute(storage.MOVE_CONTACT, params).rowcount != 1:  # cannot happen: we reopened it, under its lock
            raise RuntimeError(f"reopened contact {contact.id} changed under its lock")
    tx.record(contact.id, EventReason.REOPENED, None, operator.id if operator else None, now)
    return get_open_or_closed(session, contact.id)


# At most this many waiting contacts are assigned in one transaction: a change
# that frees capacity answers at once however long the queue, and on SQLite no
# drain holds the write lock for longer than one batch. The rest is assigned by
# the next batches: the next capacity events and `flask leadcrm drain`.
DRAIN_BATCH = 200
# Key in ``session.info`` overriding DRAIN_BATCH for the unit of work (see ``limit_drains``).
DRAIN_BATCH_KEY = "leadcrm_drain_batch"


def limit_drains(session: Session, batch: int) -> None:
    """Let the drains of this session's units of work assign at most ``batch`` contacts each."""
    session.info[DRAIN_BATCH_KEY] = batch


def drain_queue(
    session: Session, source_ids: Iterable[int], rng: random.Random | None = None, *, limit: int | None = None
) -> int:
    """Give waiting contacts of these sources an operator, oldest first, while anyone eligible has room,
    at most ``limit`` of them (default: one batch, DRAIN_BATCH).

    Each assignment goes through the source's strategy and the same atomic
    claim as a registration, so a freed operator does not take a whole
    backlog when others serving the source have room too, and no contact is
    assigned twice. The sources take turns, one contact each, so that one
    long queue does not use up the batch alone. A source's oldest waiting
    contacts are read from the front of the partial index of waiting contacts
    (``ix_contacts_waiting``), however long the queue. Returns how many
    contacts were assigned. Idempotent.
    """
    batch = limit if limit is not None else session.info.get(DRAIN_BATCH_KEY, DRAIN_BATCH)
    tx = storage.Tx.of(session)
    oldest = storage.OLDEST_WAITING if tx.dialect == "sqlite" else storage.OLDEST_WAITING_LOCKED
    sources = []
    for source_id in sorted(set(source_ids)):
        row = tx.execute(storage.SOURCE_BY_ID, {"id": source_id}).fetchone()
        if row is not None:
            sources.append(SourceRecord(*row))
    # A source's waiting contacts are read once, as many as the batch and its
    # operators' room can still take: enough, since the batch or the room ends
    # before they run out, and no more are locked than can go (a concurrent
    # drain skips locked rows: it would take newer contacts first). From then
    # on their rows are locked (PostgreSQL) or the write lock held (SQLite), so
    # they are written all at once after the picks, in two statements, rather
    # than two round trips per contact.
    queues: dict[int, deque[int]] = {}
    assignments: list[dict] = []
    while sources and len(assignments) < batch:
        for source in list(sources):
            if len(assignments) >= batch:
                break
            if source.id not in queues:
                room = tx.execute(storage.ROOM, {"source_id": source.id, "active": True}).fetchone()[0]
                params = {"source_id": source.id, "limit": min(batch - len(assignments), room)}
                queues[source.id] = deque(row[0] for row in tx.execute(oldest, params)) if room else deque()
            waiting = queues[source.id]
            operator = assign_operator(session, source, rng) if waiting else None
            if operator is None:  # its queue is empty, or everyone serving it is full
                sources.remove(source)
                continue
            assignments.append({"id": waiting.popleft(), "operator_id": operator.id, "assigned_at": tx.time(utcnow())})
    if assignments:
        if tx.execute_many(storage.ASSIGN_WAITING, assignments).rowcount != len(assignments):
            raise RuntimeError("a waiting contact changed under its lock")  # cannot happen under our locks
        tx.record_assignments(EventReason.QUEUE, assignments)
    return len(assignments)


def drain_for_operators(session: Session, operator_ids: Iterable[int | None], *, limit: int | None = None) -> int:
    """After operators got room: drain (one batch at most) the queues of every source they serve."""
    tx = storage.Tx.of(session)
    source_ids: set[int] = set()
    for operator_id in {i for i in operator_ids if i is not None}:
        source_ids.update(row[0] for row in tx.execute(storage.SOURCES_SERVED_BY, {"id": operator_id}))
    return drain_queue(session, source_ids, limit=limit) if source_ids else 0


def drain_all(session: Session, *, limit: int | None = None) -> int:
    """Drain every source that has waiting contacts, one batch at most (the safety-net sweep's step).

    Runs in the caller's transaction; ``leadcrm.cli.drain_backlog`` repeats it,
    one transaction per batch, until nothing more can be assigned.
    """
    tx = storage.Tx.of(session)
    return drain_queue(session, [row[0] for row in tx.execute(storage.SOURCES_WITH_WAITING, {})], limit=limit)
