"""The distribution engine: register a contact, pick its operator, close it.

Load (``Operator.active_leads``) is a counter changed only here, in the same
transaction as the contact it counts. An operator is claimed with one
conditional UPDATE (``... WHERE active_leads < max_active_leads``), so two
requests can never both take an operator's last free slot: whichever comes
second finds the condition false and picks again. That holds on SQLite (one
writer at a time) and on PostgreSQL (the UPDATE waits for the row lock and
re-checks the condition) alike, across any number of processes.

The public functions take the unit of work's session and derive its
transaction (``storage.Tx``) once; everything below them takes that
transaction, and every statement goes through ``leadcrm.storage``.
"""

import logging
import random
from bisect import bisect_right
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import accumulate

from sqlalchemy.orm import Session

from leadcrm import outbox, storage
from leadcrm.errors import Conflict, InvalidInput, Message, NotFound, UnknownOperator
from leadcrm.identity import LeadIdentity
from leadcrm.leads import resolve_lead
from leadcrm.models import Source, utcnow
from leadcrm.storage import Assignment, ContactRecord, LeadRecord, OperatorRecord, SourceRecord, Tx
from leadcrm.vocabulary import ContactStatus, EventReason, EventType, Strategy

log = logging.getLogger(__name__)

# Stateless and fork-safe: gunicorn workers never share a random sequence.
_system_random = random.SystemRandom()


@dataclass(frozen=True)
class Registration:
    contact: ContactRecord
    lead: LeadRecord
    lead_created: bool
    operator: OperatorRecord | None


def pick_operator(
    tx: Tx, source: Source | SourceRecord, rng: random.Random | None = None, *, exclude: int | None = None
) -> int | None:
    """The operator the source's strategy picks for its next contact; None if nobody is eligible.

    Eligible: serves the source (weight > 0), at work (active, available, not idle), load below its limit.
    ``random``: each eligible operator with probability weight / total weight.
    ``deterministic``: the one furthest behind its weight share of the source's
    assigned contacts (smooth weighted round robin over the history): with W
    the eligible operators' total weight and n their assigned contacts, the one
    maximising (n + 1) * weight - W * assigned_total; ties go to the lowest id.
    ``exclude``: an operator left out (the one whose offer of the contact timed out).
    Nothing is claimed here.
    """
    eligible = storage.eligible_operators(tx, source.id)
    if eligible is not None and exclude is not None:
        eligible = eligible.without(exclude)
    if eligible is None:
        return None
    if source.strategy == Strategy.DETERMINISTIC:
        weights, assigned_totals = eligible.weights(), eligible.assigned_totals()
        total_weight, assigned = sum(weights), sum(assigned_totals)
        behind = [(assigned + 1) * w - total_weight * n for w, n in zip(weights, assigned_totals, strict=True)]
        return eligible.operator_id(behind.index(max(behind)))  # the first: the lowest id among ties
    # Lay the weights end to end and see where a uniform point falls.
    ends = list(accumulate(eligible.weights()))
    return eligible.operator_id(bisect_right(ends, (rng or _system_random).random() * ends[-1]))


def count_assignment(tx: Tx, source_id: int, operator_id: int) -> None:
    """Add one to the operator's assigned_total for the source, whose row the caller knows exists.

    Rows of source_operators are never deleted (a weight of 0 keeps them), so
    a miss means the database was changed behind the engine's back.
    """
    if not storage.count_assignment(tx, source_id, operator_id):
        raise RuntimeError(f"no source_operators row for source {source_id}, operator {operator_id}")


def assign_operator(
    tx: Tx, source: Source | SourceRecord, rng: random.Random | None = None, *, exclude: int | None = None
) -> OperatorRecord | None:
    """Pick and claim an operator for one new contact of ``source`` (never ``exclude``), or None."""
    if source.strategy == Strategy.DETERMINISTIC:
        # The pick depends on every operator's history for this source: take
        # turns per source so that two requests do not both use the same counts.
        storage.lock_source(tx, source.id)
    while (operator_id := pick_operator(tx, source, rng, exclude=exclude)) is not None:
        claimed = storage.claim_and_count(tx, operator_id, source.id)
        if claimed is not None:
            operator, counted = claimed
            if not counted:  # it was eligible, so its row exists: the database was changed behind our back
                raise RuntimeError(f"no source_operators row for source {source.id}, operator {operator.id}")
            return operator
        # Another transaction took its last slot since we looked (PostgreSQL):
        # it is no longer eligible, so the next pick skips it.
    return None


def back_to_latest_operator(tx: Tx, source: Source | SourceRecord, lead_id: int) -> OperatorRecord | None:
    """For a sticky source: claim the operator of the lead's latest contact through it, if it still can take it."""
    latest = storage.latest_operator(tx, lead_id, source.id)
    if latest is None:
        return None
    operator = storage.claim_if_serving(tx, latest, source.id)
    if operator is not None:
        count_assignment(tx, source.id, operator.id)  # the claim checked that its row exists
    return operator


def register_contact(
    session: Session | Tx,
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
    and unassigned. Writes in the session's transaction (or in the unit of
    work ``session`` is: the API's runs on a driver connection); the caller commits.
    """
    tx = Tx.of(session)
    lead, lead_created = resolve_lead(tx, identity, name)
    operator = None
    reason = EventReason.REGISTERED
    if source.sticky and not lead_created:
        operator = back_to_latest_operator(tx, source, lead.id)
        reason = EventReason.STICKY if operator else reason
    if operator is None:
        operator = assign_operator(tx, source, rng)
    now = utcnow()
    contact = storage.insert_contact(
        tx,
        lead_id=lead.id,
        source_id=source.id,
        operator_id=operator.id if operator else None,
        message=message,
        reason=reason,
        now=now,
        offered_until=source.offer_deadline(now) if operator else None,
    )
    outbox.registered(tx, contact, lead, operator, reason, now)
    return Registration(contact=contact, lead=lead, lead_created=lead_created, operator=operator)


def close_contact(session: Session, contact_id: int, *, held_by: int | None = None) -> ContactRecord:
    """Close an open contact and free its operator's slot.

    Closing a closed contact changes nothing. Only the request that actually
    flips the status gives the slot back, so concurrent closes free it once.
    The freed slot goes to a waiting contact at once (one batch at most).
    With ``held_by`` (an operator user closing its own), the contact must be
    that operator's, checked under the contact's lock: one reassigned a moment
    before is refused (Conflict), not closed.
    """
    tx = Tx.of(session)
    if held_by is not None:
        _check_held_by(lock_contact(tx, contact_id), held_by)
    return _close(tx, contact_id, drain=True)


def _check_held_by(contact: ContactRecord, operator_id: int) -> None:
    if contact.operator_id != operator_id:
        raise Conflict(Message("This contact is no longer yours: it was given to someone else a moment ago."))


def _close(tx: Tx, contact_id: int, *, drain: bool) -> ContactRecord:
    """``close_contact``; without ``drain`` the freed slot is left for the caller, which drains once for several."""
    contact = storage.close_contact(tx, contact_id, utcnow())
    if contact is None:
        return get_contact(tx, contact_id)
    outbox.contact_changed(tx, contact.id, [EventType.CONTACT_CLOSED])
    if contact.operator_id is not None and release_slot(tx, contact.operator_id, contact.id) and drain:
        drain_for_operators(tx, [contact.operator_id])
    return contact


def release_slot(tx: Tx, operator_id: int, contact_id: int) -> bool:
    """Give back the slot ``contact_id`` held with its operator; False if the counter had nothing to give back.

    The load counts the operator's open contacts, so it is at least 1 here;
    a counter at 0 was changed behind the engine's back: it stays at 0 (the
    closest to the truth) and the mismatch is logged.
    """
    if storage.release_slot(tx, operator_id):
        return True
    log.error("operator %s: load already 0 when contact %s gave its slot back", operator_id, contact_id)
    return False


def get_contact(tx: Tx, contact_id: int) -> ContactRecord:
    """The contact as it is now; NotFound if there is none."""
    contact = storage.get_contact(tx, contact_id)
    if contact is None:
        raise NotFound(Message("No contact with id %(id)s.", id=contact_id))
    return contact


def lock_contact(tx: Tx, contact_id: int) -> ContactRecord:
    """The contact, its row locked until the transaction ends (the first lock of every manual change).

    Contacts first, then operators, is the one order every path that changes
    a contact locks in.
    """
    contact = storage.lock_contact(tx, contact_id)
    if contact is None:
        raise NotFound(Message("No contact with id %(id)s.", id=contact_id))
    return contact


def assign_by_hand(session: Session, contact_id: int, operator_id: int, *, override: bool = False) -> ContactRecord:
    """A supervisor gives an open contact (waiting or not) to a chosen operator.

    The operator must be active; past its limit only with ``override``, which
    the history records as such. The previous operator's slot is given back
    (and goes to a waiting contact at once).
    Giving a contact to the operator it already has changes nothing, also
    when concurrent requests do so, except that an offer to it counts as taken.
    """
    return _assign_by_hand(Tx.of(session), contact_id, operator_id, override=override, drain=True)


def _assign_by_hand(tx: Tx, contact_id: int, operator_id: int, *, override: bool, drain: bool) -> ContactRecord:
    """``assign_by_hand``; without ``drain`` the freed slot is left for the caller, which drains once for several."""
    # The contact's row first, then both operators' rows in id order: every
    # manual change locks in this order, so they queue instead of deadlocking,
    # and what is read here cannot change before the move.
    contact = lock_contact(tx, contact_id)
    if contact.status != ContactStatus.OPEN:
        raise InvalidInput(
            Message("A closed contact cannot be assigned; reopen it first."), {"status": Message("Closed.")}
        )
    if contact.operator_id == operator_id:
        if contact.offered_until is not None and storage.take_offer_by_hand(tx, contact.id, operator_id, utcnow()):
            outbox.contact_changed(tx, contact.id, [EventType.CONTACT_ACCEPTED])
            return get_contact(tx, contact.id)  # a supervisor's choice of its operator: taken
        return contact
    storage.lock_operators(tx, [contact.operator_id, operator_id])
    operator = (storage.claim_past_limit if override else storage.claim_by_hand)(tx, operator_id)
    if operator is None:
        state = storage.operator_by_id(tx, operator_id)
        if state is None:
            raise UnknownOperator(
                Message("No operator with id %(id)s.", id=operator_id), {"operator_id": Message("Unknown.")}
            )
        message = Message("This operator is full; assign past the limit only with an override.")
        if not state.is_active:
            message = Message("This operator is inactive.")
        raise InvalidInput(message, {"operator_id": message})
    now = utcnow()
    moved = storage.move_contact(
        tx, contact.id, previous=contact.operator_id, operator_id=operator_id, now=now, accepted=True
    )
    if not moved:
        raise Conflict(Message("The contact changed meanwhile; look again."))
    # Not counted when the operator does not serve the source: such a contact is not part of its share.
    storage.count_assignment(tx, contact.source_id, operator_id)
    reason = EventReason.OVERRIDE if override and operator.past_limit else EventReason.MANUAL
    storage.record_event(tx, contact.id, reason, contact.operator_id, operator_id, now)
    outbox.contact_changed(
        tx, contact.id, [EventType.CONTACT_ASSIGNED], reason=reason, previous_operator_id=contact.operator_id, now=now
    )
    if contact.operator_id is not None and release_slot(tx, contact.operator_id, contact.id) and drain:
        drain_for_operators(tx, [contact.operator_id])
    return get_contact(tx, contact.id)


def close_contacts(session: Session, contact_ids: Iterable[int]) -> list[ContactRecord]:
    """Close several contacts at once (all or, on an error, none: the caller rolls back).

    Every lock is taken before anything changes, in the one global order
    (the contacts by id, then their operators by id), so two bulk actions
    over crossing sets queue instead of deadlocking. The freed slots go to
    waiting contacts once, after all the closes (one batch at most).
    """
    tx = Tx.of(session)
    contacts = [lock_contact(tx, contact_id) for contact_id in sorted(set(contact_ids))]
    storage.lock_operators(tx, [contact.operator_id for contact in contacts])
    closed = [_close(tx, contact.id, drain=False) for contact in contacts]
    freed = [
        contact.operator_id for contact in contacts if contact.status == ContactStatus.OPEN and contact.operator_id
    ]
    drain_for_operators(tx, freed)
    return closed


def assign_contacts_by_hand(
    session: Session, contact_ids: Iterable[int], operator_id: int, *, override: bool = False
) -> list[ContactRecord]:
    """Give several open contacts to one operator (all or, on an error, none: the caller rolls back).

    Locks as ``close_contacts`` does (the contacts by id, then the operators
    they leave and the one they go to, by id) before moving any, and gives
    the freed slots to waiting contacts once, after all the moves.
    """
    tx = Tx.of(session)
    contacts = [lock_contact(tx, contact_id) for contact_id in sorted(set(contact_ids))]
    storage.lock_operators(tx, [contact.operator_id for contact in contacts] + [operator_id])
    moved = [_assign_by_hand(tx, c.id, operator_id, override=override, drain=False) for c in contacts]
    drain_for_operators(tx, [c.operator_id for c in contacts if c.operator_id not in (None, operator_id)])
    return moved


def reopen_contact(
    session: Session, contact_id: int, rng: random.Random | None = None, *, held_by: int | None = None
) -> ContactRecord:
    """Open a closed contact again: back to its operator if that one still serves the source, is at work
    and has room, otherwise through the source's strategy, otherwise it waits. Reopening an open contact
    changes nothing, also when concurrent requests reopen it: only the one that flips the status claims a
    slot. With ``held_by`` (an operator user), the contact must be that operator's, checked under its lock."""
    tx = Tx.of(session)
    contact = lock_contact(tx, contact_id)
    if held_by is not None:
        _check_held_by(contact, held_by)
    if contact.status == ContactStatus.OPEN:
        return contact
    if not storage.reopen_contact(tx, contact.id):
        return get_contact(tx, contact.id)  # reopened by someone else first
    source = storage.source_by_id(tx, contact.source_id)
    if source is None:  # cannot happen: the contact's foreign key holds it
        raise RuntimeError(f"contact {contact.id} has no source {contact.source_id}")
    operator = None
    if contact.operator_id is not None:
        operator = storage.claim_if_serving(tx, contact.operator_id, source.id)
        if operator is not None:
            count_assignment(tx, source.id, operator.id)  # the claim checked that its row exists
    if operator is None:
        operator = assign_operator(tx, source, rng)
    now = utcnow()
    if operator is not None:
        offered_until = source.offer_deadline(now)
        if not storage.move_contact(
            tx, contact.id, previous=None, operator_id=operator.id, now=now, offered_until=offered_until
        ):
            raise RuntimeError(f"reopened contact {contact.id} changed under its lock")  # cannot happen: we hold it
    storage.record_event(tx, contact.id, EventReason.REOPENED, None, operator.id if operator else None, now)
    outbox.contact_changed(
        tx, contact.id, [EventType.CONTACT_REOPENED, EventType.CONTACT_ASSIGNED], reason=EventReason.REOPENED, now=now
    )
    return get_contact(tx, contact.id)


# At most this many waiting contacts are assigned in one transaction: a change
# that frees capacity answers at once however long the queue, and on SQLite no
# drain holds the write lock for longer than one batch. The rest is assigned by
# the next batches: the worker, asked to (storage.request_drain), and `flask leadcrm drain`.
DRAIN_BATCH = 200
# Key in ``session.info`` overriding DRAIN_BATCH for the unit of work (see ``limit_drains``).
DRAIN_BATCH_KEY = "leadcrm_drain_batch"


def limit_drains(session: Session, batch: int) -> None:
    """Let the drains of this session's units of work assign at most ``batch`` contacts each."""
    session.info[DRAIN_BATCH_KEY] = batch


def drain_queue(
    tx: Tx, source_ids: Iterable[int], rng: random.Random | None = None, *, limit: int | None = None
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
    batch = limit if limit is not None else tx.info.get(DRAIN_BATCH_KEY, DRAIN_BATCH)
    sources = [s for s in (storage.source_by_id(tx, i) for i in sorted(set(source_ids))) if s is not None]
    # A source's waiting contacts are read once, as many as the batch and its
    # operators' room can still take: enough, since the batch or the room ends
    # before they run out, and no more are locked than can go (a concurrent
    # drain skips locked rows: it would take newer contacts first). From then
    # on their rows are locked (PostgreSQL) or the write lock held (SQLite), so
    # they are written all at once after the picks, in two statements, rather
    # than two round trips per contact.
    queues: dict[int, deque[int]] = {}
    assignments: list[Assignment] = []
    while sources and len(assignments) < batch:
        for source in list(sources):
            if len(assignments) >= batch:
                break
            if source.id not in queues:
                room = storage.room(tx, source.id)
                queues[source.id] = deque(storage.oldest_waiting(tx, source.id, min(batch - len(assignments), room)))
            waiting = queues[source.id]
            operator = assign_operator(tx, source, rng) if waiting else None
            if operator is None:  # its queue is empty, or everyone serving it is full
                sources.remove(source)
                continue
            now = utcnow()
            assignments.append(Assignment(waiting.popleft(), operator.id, now, source.offer_deadline(now)))
    if sources and len(assignments) >= batch:
        # The batch ended before these queues did: the worker drains them further, in batches of their own.
        storage.request_drain(tx, [source.id for source in sources], utcnow())
    if assignments:
        if storage.assign_waiting(tx, assignments) != len(assignments):
            raise RuntimeError("a waiting contact changed under its lock")  # cannot happen under our locks
        storage.record_assignments(tx, EventReason.QUEUE, assignments)
        for assignment in assignments:
            outbox.contact_changed(
                tx,
                assignment.contact_id,
                [EventType.CONTACT_ASSIGNED],
                reason=EventReason.QUEUE,
                now=assignment.assigned_at,
            )
    return len(assignments)


def drain_for_operators(tx: Tx, operator_ids: Iterable[int | None], *, limit: int | None = None) -> int:
    """After operators got room: drain (one batch at most) the queues of every source they serve."""
    source_ids: set[int] = set()
    for operator_id in {i for i in operator_ids if i is not None}:
        source_ids.update(storage.sources_served_by(tx, operator_id))
    return drain_queue(tx, source_ids, limit=limit) if source_ids else 0


def drain_all(session: Session, *, limit: int | None = None) -> int:
    """Drain every source that has waiting contacts, one batch at most (the safety-net sweep's step).

    Runs in the caller's transaction; ``leadcrm.cli.drain_backlog`` repeats it,
    one transaction per batch, until nothing more can be assigned.
    """
    tx = Tx.of(session)
    return drain_queue(tx, storage.sources_with_waiting(tx), limit=limit)
