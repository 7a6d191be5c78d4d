"""Operators: the people contacts are distributed to; their limits, presence and history."""

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from leadcrm import outbox, storage
from leadcrm.database import unique_or
from leadcrm.distribution import drain_for_operators
from leadcrm.errors import InvalidInput, Message, NameTaken, UnknownOperator
from leadcrm.models import Operator, OperatorEvent, utcnow
from leadcrm.storage import KEEP, OperatorRecord, Tx
from leadcrm.vocabulary import LAST_SEEN_EVERY, OperatorChange, Presence

# The fields update_operator changes, and those of them its history records.
FIELDS = ("name", "is_active", "max_active_leads", "presence", "idle_away_minutes")
RECORDED = tuple(change for change in OperatorChange if change != OperatorChange.SCHEDULE)


def get_operator(session: Session, operator_id: int) -> Operator:
    operator = session.get(Operator, operator_id)
    if operator is None:
        raise UnknownOperator(Message("No operator with id %(id)s.", id=operator_id))
    return operator


def find_operator(session: Session, name_or_id: str) -> Operator:
    """The operator with this name, or else with this id (the shell's ``--operator "Anna Smirnova"`` or ``3``)."""
    text = name_or_id.strip()
    # No name holds a NUL (PostgreSQL refuses one in a query); an id is ASCII digits ("³" is a digit to str).
    operator = None if "\x00" in text else session.scalar(sa.select(Operator).where(Operator.name == text))
    if operator is None and text.isascii() and text.isdigit() and len(text) < 10:
        operator = session.get(Operator, int(text))
    if operator is None:
        raise UnknownOperator(Message("No operator named or numbered “%(name)s”.", name=name_or_id))
    return operator


def list_operators_query() -> sa.Select[Operator]:
    return sa.select(Operator).order_by(Operator.id)


def create_operator(
    session: Session,
    *,
    name: str,
    max_active_leads: int,
    is_active: bool = True,
    presence: str = Presence.AVAILABLE,
    idle_away_minutes: int | None = None,
) -> Operator:
    """Add an operator; its name must be unique."""
    operator = Operator(
        name=name,
        max_active_leads=max_active_leads,
        is_active=is_active,
        presence=_presence(presence),
        idle_away_minutes=idle_away_minutes,
    )
    with unique_or(session, _name_taken(name)):
        session.add(operator)
    return operator


def _presence(presence: str) -> str:
    if presence not in tuple(Presence):
        message = Message("Presence is one of: %(values)s.", values=", ".join(Presence))
        raise InvalidInput(message, {"presence": message})
    return presence


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def update_operator(session: Session, operator_id: int, changes: dict[str, Any]) -> OperatorRecord:
    """Change any of name, is_active, max_active_leads, presence, idle_away_minutes (None: off);
    returns the operator as it is afterwards.

    Each change of activity, limit, presence or idle setting is recorded in
    the operator's history, naming the unit of work's actor. A limit below
    the current load is allowed: the operator keeps its open contacts and
    gets no new ones until the load falls under the limit; ``away`` keeps
    them too. When the change lets the operator take contacts again or take
    more (activated, limit raised, available again, idle setting eased),
    waiting contacts of the sources it serves are distributed in the same
    transaction, one batch at most (``distribution.DRAIN_BATCH``); later
    batches assign the rest.
    """
    tx = Tx.of(session)
    before = storage.lock_operator(tx, operator_id)
    if before is None:
        raise UnknownOperator(Message("No operator with id %(id)s.", id=operator_id))
    fields = {field: changes[field] for field in FIELDS if field in changes}
    if "presence" in fields:
        _presence(fields["presence"])
    idle = fields.pop("idle_away_minutes", KEEP)
    name_taken = _name_taken(fields.get("name", before.name))
    with unique_or(session, name_taken):
        after = storage.update_operator(tx, operator_id, idle_away_minutes=idle, **fields)
    if after is None:  # cannot happen: its row is locked
        raise RuntimeError(f"operator {operator_id} vanished under its lock")
    now = utcnow()
    changed = [field for field in RECORDED if getattr(before, field) != getattr(after, field)]
    for field in changed:
        storage.record_operator_event(tx, operator_id, field, _as_text(getattr(after, field)), now)
    if changed:
        outbox.operator_updated(tx, after, changed, now)
    gained = after.at_work(now) and (not before.at_work(now) or after.max_active_leads > before.max_active_leads)
    if gained and drain_for_operators(tx, [operator_id]):
        after = storage.operator_by_id(tx, operator_id) or after  # its load grew
    return after


def set_presence(session: Session, operator_id: int, presence: str) -> OperatorRecord:
    """Set the operator available or away (``update_operator`` with its presence alone)."""
    return update_operator(session, operator_id, {"presence": _presence(presence)})


def sign_of_life_due(operator: Operator | OperatorRecord, now: datetime) -> bool:
    """Is the stored last-seen time old enough to be written again (or none yet)?

    An open inbox refreshes every few seconds; writing once per LAST_SEEN_EVERY
    seconds keeps an idle setting of a minute or more exact.
    """
    seen = operator.last_seen_at
    return seen is None or now - seen >= timedelta(seconds=LAST_SEEN_EVERY)


def note_seen(session: Session, operator_id: int) -> OperatorRecord:
    """The operator's inbox is open: store its sign of life.

    An operator that was idle (away by its idle setting) is at work again:
    the waiting queues of the sources it serves drain in the same
    transaction, as for any capacity that appears.
    """
    tx = Tx.of(session)
    before = storage.lock_operator(tx, operator_id)
    if before is None:
        raise UnknownOperator(Message("No operator with id %(id)s.", id=operator_id))
    now = utcnow()
    after = storage.mark_seen(tx, operator_id, now)
    if after is None:  # cannot happen: its row is locked
        raise RuntimeError(f"operator {operator_id} vanished under its lock")
    if before.idle(now) and after.at_work(now) and drain_for_operators(tx, [operator_id]):
        after = storage.operator_by_id(tx, operator_id) or after
    return after


def history(session: Session, operator_id: int, limit: int = 20) -> list[OperatorEvent]:
    """The operator's latest changes, newest first."""
    query = (
        sa.select(OperatorEvent)
        .where(OperatorEvent.operator_id == operator_id)
        .order_by(OperatorEvent.id.desc())
        .limit(limit)
    )
    return list(session.scalars(query))


def histories(session: Session, operator_ids: list[int], per_operator: int = 5) -> dict[int, list[OperatorEvent]]:
    """The latest changes of several operators, newest first, in one query."""
    if not operator_ids:
        return {}
    ranked = (
        sa.select(
            OperatorEvent.id,
            sa.func.row_number()
            .over(partition_by=OperatorEvent.operator_id, order_by=OperatorEvent.id.desc())
            .label("n"),
        )
        .where(OperatorEvent.operator_id.in_(operator_ids))
        .subquery()
    )
    query = (
        sa.select(OperatorEvent)
        .join(ranked, ranked.c.id == OperatorEvent.id)
        .where(ranked.c.n <= per_operator)
        .order_by(OperatorEvent.operator_id, OperatorEvent.id.desc())
    )
    found: dict[int, list[OperatorEvent]] = {operator_id: [] for operator_id in operator_ids}
    for event in session.scalars(query):
        found[event.operator_id].append(event)
    return found


def _name_taken(name: str) -> NameTaken:
    return NameTaken(
        Message("An operator named “%(name)s” already exists.", name=name),
        {"name": Message("An operator with this name already exists.")},
    )
