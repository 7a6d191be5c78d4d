"""The read side: what the pages and the API show about distribution.

Status (loads, weights, shares, queues), contact lists and their filters,
histories, and the names pages show next to ids. Nothing here writes; the
engine that writes is ``leadcrm.distribution``.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import NamedTuple, TypedDict
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.orm import Session

from leadcrm.models import (
    CLOSED,
    Contact,
    ContactEvent,
    Lead,
    Operator,
    OperatorAbsence,
    Source,
    SourceOperator,
    from_stored_time,
    utcnow,
)
from leadcrm.storage import ContactRecord, is_idle, is_on_shift
from leadcrm.vocabulary import ContactStatus, EventReason, Presence


class SourceShare(NamedTuple):
    """One operator serving a source: its weight, its target share of the source, its assigned contacts."""

    operator_id: int
    weight: int
    target_share: float
    assigned_total: int


class OperatorLoad(NamedTuple):
    id: int
    name: str
    is_active: bool
    active_leads: int
    max_active_leads: int
    presence: str
    idle: bool  # away by its idle setting: its inbox has not been open for idle_away_minutes
    away_reason: str | None = None  # set away by leadcrm (missed offers)
    on_shift: bool = True
    next_shift_change_at: datetime | None = None

    @property
    def state(self) -> str:
        """What the load table shows: ``available``, ``away``, ``idle`` (away (idle)), ``off_shift`` or ``inactive``."""
        if not self.is_active:
            return "inactive"
        if self.presence != Presence.AVAILABLE:
            return "away"
        if self.idle:
            return "idle"
        return "available" if self.on_shift else "off_shift"

    @property
    def at_work(self) -> bool:
        """May take contacts now, room aside (as the claims decide)."""
        return self.state == "available"


@dataclass(frozen=True, slots=True)
class SourceStatus:
    source: sa.Row
    operators: list[SourceShare]
    waiting: "Waiting"


@dataclass(frozen=True, slots=True)
class DistributionStatus:
    operators: list[OperatorLoad]
    sources: list[SourceStatus]
    unassigned_open: int


OPERATORS = Operator.__table__
SOURCE_OPERATORS = SourceOperator.__table__
CONTACTS = Contact.__table__

# Plain rows from the driver, built into tuples once: the status of 1,000
# operators and 30 sources has thousands of rows, and SQLAlchemy's Row and a
# dataclass per row cost more than the queries (bench/results.md). The target
# share is computed by the database, the same IEEE division Python would do.
OPERATOR_LOADS = (
    "SELECT id, name, is_active, active_leads, max_active_leads, presence, idle_away_minutes, last_seen_at, "
    "away_reason, shift_from, shift_until FROM operators ORDER BY id"
)
SHARES = (
    "SELECT source_id, operator_id, weight, "
    "CAST(weight AS DOUBLE PRECISION) / sum(weight) OVER (PARTITION BY source_id), assigned_total "
    "FROM source_operators WHERE weight > 0 ORDER BY source_id, operator_id"
)


# (id, name, is_active, active_leads, max_active_leads, presence, idle_away_minutes, and as stored:
# last_seen_at; then away_reason, shift_from and shift_until as stored)
Stored = datetime | str | None
LoadRow = tuple[int, str, bool, int, int, str, int | None, Stored, str | None, Stored, Stored]


def operator_load_rows(session: Session) -> list[LoadRow]:
    """Every operator as (id, name, is_active, active_leads, max_active_leads, presence,
    idle_away_minutes, last_seen_at, away_reason, shift_from, shift_until, times as stored), by id:
    plain driver rows."""
    return list(session.connection().exec_driver_sql(OPERATOR_LOADS).cursor.fetchall())


def next_shift_change(shift_from: datetime | None, shift_until: datetime | None, now: datetime) -> datetime | None:
    """When an operator with this stretch on shift next goes on or off shift (None: not foreseen)."""
    if shift_from is not None and now < shift_from:
        return shift_from
    return shift_until if shift_until is not None and now < shift_until else None


def operator_loads(session: Session) -> list[OperatorLoad]:
    """Every operator with its load, limit, presence and shift, by id (the counters: no history is read)."""
    now = utcnow()
    loads = []
    for op_id, name, active, load, limit, presence, idle, seen, reason, starts, ends in operator_load_rows(session):
        shift_from, shift_until = from_stored_time(starts), from_stored_time(ends)
        loads.append(
            OperatorLoad(
                op_id,
                name,
                bool(active),
                load,
                limit,
                presence,
                is_idle(idle, from_stored_time(seen), now),
                reason,
                is_on_shift(shift_from, shift_until, now),
                next_shift_change(shift_from, shift_until, now),
            )
        )
    return loads


def absent_until(session: Session, now: datetime, organisation: str) -> dict[int, date]:
    """The operators absent ``now`` (a day of an absence, in the operator's time zone; ``organisation``'s
    for those without one of their own), each with the last day they are away: absences that touch
    (24-31 December, 1-2 January) are one. Absences that ended before yesterday are not read."""
    # Every zone's today is within a day of UTC's.
    since = now.astimezone(UTC).date() - timedelta(days=1)
    rows = session.execute(
        sa.select(OperatorAbsence.operator_id, OperatorAbsence.starts_on, OperatorAbsence.ends_on, Operator.timezone)
        .join(Operator, Operator.id == OperatorAbsence.operator_id)
        .where(OperatorAbsence.ends_on >= since)
        .order_by(OperatorAbsence.operator_id, OperatorAbsence.starts_on)
    )
    absent: dict[int, date] = {}
    today: dict[str, date] = {}
    for operator_id, starts_on, ends_on, timezone in rows:
        zone = timezone or organisation
        if zone not in today:
            today[zone] = now.astimezone(ZoneInfo(zone)).date()
        last = absent.get(operator_id)
        if last is not None:
            if starts_on <= last + timedelta(days=1):
                absent[operator_id] = max(last, ends_on)
        elif starts_on <= today[zone] <= ends_on:
            absent[operator_id] = ends_on
    return absent


def share_rows(session: Session) -> list[tuple[int, int, int, float, int]]:
    """Every serving operator of every source as (source_id, operator_id, weight, target_share,
    assigned_total), by source and operator: plain driver rows."""
    return list(session.connection().exec_driver_sql(SHARES).cursor.fetchall())


def unassigned_open(session: Session) -> int:
    """Open contacts waiting without an operator (an index range, not a scan of history)."""
    c = CONTACTS.c
    query = (
        sa.select(sa.func.count()).select_from(CONTACTS).where(c.operator_id.is_(None), c.status == ContactStatus.OPEN)
    )
    return session.connection().scalar(query) or 0


def source_rows(session: Session) -> Sequence[sa.Row]:
    """Every source's row, by id."""
    return session.connection().execute(sa.select(Source.__table__).order_by(Source.__table__.c.id)).all()


def distribution_status(session: Session) -> DistributionStatus:
    """Every operator's load, every source's weights, history and queue, in five queries, one pass each."""
    sources = source_rows(session)
    shares: dict[int, list[SourceShare]] = {source.id: [] for source in sources}
    make = SourceShare._make
    for source_id, *share in share_rows(session):
        shares[source_id].append(make(share))
    queues = waiting_by_source(session)
    return DistributionStatus(
        operators=operator_loads(session),
        sources=[SourceStatus(source, shares[source.id], queues.get(source.id, NO_QUEUE)) for source in sources],
        unassigned_open=unassigned_open(session),
    )


def contacts_query(
    *,
    status: str | None = None,
    operator_id: int | None = None,
    source_id: int | None = None,
    lead_id: int | None = None,
    unassigned: bool | None = None,
) -> sa.Select[Contact]:
    """Contacts matching the filters, newest first."""
    query = sa.select(Contact).order_by(Contact.id.desc())
    if status is not None:
        query = query.where(Contact.status == status)
    if operator_id is not None:
        query = query.where(Contact.operator_id == operator_id)
    if source_id is not None:
        query = query.where(Contact.source_id == source_id)
    if lead_id is not None:
        query = query.where(Contact.lead_id == lead_id)
    if unassigned is True:
        query = query.where(Contact.operator_id.is_(None))
    elif unassigned is False:
        query = query.where(Contact.operator_id.is_not(None))
    return query


@dataclass(frozen=True)
class Waiting:
    """A source's queue: open contacts with no operator yet."""

    count: int
    oldest_created_at: datetime | None


NO_QUEUE = Waiting(0, None)


def waiting_by_source(session: Session) -> dict[int, Waiting]:
    """Queue length and oldest waiting contact per source (sources with a queue only)."""
    rows = session.execute(
        sa.select(Contact.source_id, sa.func.count(), sa.func.min(Contact.created_at))
        .where(Contact.operator_id.is_(None), Contact.status == ContactStatus.OPEN)
        .group_by(Contact.source_id)
    )
    # An aggregate loses the column's type: SQLite hands back text, PostgreSQL a datetime.
    return {source_id: Waiting(count, from_stored_time(oldest)) for source_id, count, oldest in rows}


def contact_events(session: Session, contact_id: int) -> list[ContactEvent]:
    """A contact's history, oldest first."""
    query = sa.select(ContactEvent).where(ContactEvent.contact_id == contact_id).order_by(ContactEvent.id)
    return list(session.scalars(query))


def missed_offer(session: Session, contact_id: int, operator_id: int) -> bool:
    """Was the contact offered to the operator and taken back from it when the time ran out?"""
    query = sa.select(ContactEvent.id).where(
        ContactEvent.contact_id == contact_id,
        ContactEvent.reason == EventReason.TIMEOUT,
        ContactEvent.from_operator_id == operator_id,
    )
    return session.scalar(query.limit(1)) is not None


def history_of(session: Session, contact_ids: list[int]) -> tuple[list[ContactEvent], dict[int, Operator]]:
    """The events of these contacts, oldest first, and the operators they name."""
    events = list(
        session.scalars(
            sa.select(ContactEvent).where(ContactEvent.contact_id.in_(contact_ids)).order_by(ContactEvent.id)
        )
    )
    named = {e.from_operator_id for e in events} | {e.to_operator_id for e in events}
    named.discard(None)
    operators = {op.id: op for op in session.scalars(sa.select(Operator).where(Operator.id.in_(named)))}
    return events, operators


class Names(TypedDict):
    """The leads, sources and operators some contacts refer to, by id: what pages show next to the ids."""

    leads: dict[int, Lead]
    sources: dict[int, Source]
    operators: dict[int, Operator]


def names_for(session: Session, contacts: Sequence[Contact | ContactRecord]) -> Names:
    """Leads, sources and operators the listed contacts refer to, in three queries."""

    lead_ids = {c.lead_id for c in contacts}
    source_ids = {c.source_id for c in contacts}
    operator_ids = {c.operator_id for c in contacts if c.operator_id}
    leads: Iterable[Lead] = session.scalars(sa.select(Lead).where(Lead.id.in_(lead_ids))) if lead_ids else []
    sources: Iterable[Source] = (
        session.scalars(sa.select(Source).where(Source.id.in_(source_ids))) if source_ids else []
    )
    operators: Iterable[Operator] = (
        session.scalars(sa.select(Operator).where(Operator.id.in_(operator_ids))) if operator_ids else []
    )
    return {
        "leads": {lead.id: lead for lead in leads},
        "sources": {source.id: source for source in sources},
        "operators": {operator.id: operator for operator in operators},
    }


def operator_choices(session: Session, source_id: int) -> tuple[list[Operator], list[Operator]]:
    """Operators to offer for a contact of ``source_id``: (serving it, at work, with room; everyone else), by name.

    Away, idle and inactive operators are among the others: a supervisor may still choose one by hand."""
    serving = set(
        session.scalars(
            sa.select(SourceOperator.operator_id).where(
                SourceOperator.source_id == source_id, SourceOperator.weight > 0
            )
        )
    )
    first: list[Operator] = []
    rest: list[Operator] = []
    now = utcnow()
    for op in session.scalars(sa.select(Operator).order_by(Operator.name)):
        # At work (active, available, not idle) with room: the operators routing would pick.
        idle = is_idle(op.idle_away_minutes, op.last_seen_at, now)
        at_work = op.is_active and op.presence == Presence.AVAILABLE and not idle
        has_room = at_work and op.active_leads < op.max_active_leads
        (first if op.id in serving and has_room else rest).append(op)
    return first, rest


def operator_holds_lead(session: Session, operator_id: int, lead_id: int) -> bool:
    """Has the operator been given at least one contact of the lead (open or closed)?"""
    held = sa.select(sa.exists().where(Contact.lead_id == lead_id, Contact.operator_id == operator_id))
    return bool(session.scalar(held))


# An operator's inbox, polled every 2 s by every open inbox: the statements are built once (building
# them per request cost more than running them). The closed ones are spelled as the partial index
# ix_contacts_closed_by_operator is (status = 'closed'), so both databases use it.
INBOX_OPEN = (
    sa.select(Contact)
    .where(Contact.operator_id == sa.bindparam("operator_id"), Contact.status == ContactStatus.OPEN)
    # Offers waiting to be taken first, the nearest deadline first; then the rest, oldest assignment first.
    .order_by(Contact.offered_until.is_(None), Contact.offered_until, Contact.assigned_at, Contact.id)
)
# The closed-today list ends here: older closed contacts are on the contacts' own pages.
INBOX_CLOSED_MAX = 100
INBOX_CLOSED = (
    sa.select(Contact)
    .where(
        Contact.operator_id == sa.bindparam("operator_id"), sa.text(CLOSED), Contact.closed_at >= sa.bindparam("since")
    )
    .order_by(Contact.closed_at.desc(), Contact.id.desc())
    .limit(INBOX_CLOSED_MAX)
)


def inbox_of(session: Session, operator_id: int, *, since: datetime) -> tuple[list[Contact], list[Contact]]:
    """An operator's open contacts (offers to take first, nearest deadline first; then oldest assignment
    first), and those it closed since ``since``, newest first."""
    open_contacts = list(session.scalars(INBOX_OPEN, {"operator_id": operator_id}))
    closed = list(session.scalars(INBOX_CLOSED, {"operator_id": operator_id, "since": since}))
    return open_contacts, closed
