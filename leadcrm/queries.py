"""The read side: what the pages and the API show about distribution.

Status (loads, weights, shares, queues), contact lists and their filters,
histories, and the names pages show next to ids. Nothing here writes; the
engine that writes is ``leadcrm.distribution``.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypedDict

import sqlalchemy as sa
from sqlalchemy.orm import Session

from leadcrm.models import Contact, ContactEvent, Lead, Operator, Source, SourceOperator, from_stored_time
from leadcrm.storage import ContactRecord
from leadcrm.vocabulary import ContactStatus


@dataclass(frozen=True)
class SourceShare:
    operator_id: int
    weight: int
    target_share: float
    assigned_total: int


@dataclass(frozen=True)
class SourceStatus:
    source: sa.Row
    operators: list[SourceShare]
    waiting: "Waiting"


@dataclass(frozen=True)
class DistributionStatus:
    operators: list[sa.Row[int, str, bool, int, int]]
    sources: list[SourceStatus]
    unassigned_open: int


OPERATORS = Operator.__table__
SOURCE_OPERATORS = SourceOperator.__table__
CONTACTS = Contact.__table__


def operator_loads(session: Session) -> list[sa.Row[int, str, bool, int, int]]:
    """Every operator with its load and limit, by id (the counters: no history is read)."""
    op = OPERATORS.c
    query = sa.select(op.id, op.name, op.is_active, op.active_leads, op.max_active_leads).order_by(op.id)
    return list(session.connection().execute(query).all())


def unassigned_open(session: Session) -> int:
    """Open contacts waiting without an operator (an index range, not a scan of history)."""
    c = CONTACTS.c
    query = (
        sa.select(sa.func.count()).select_from(CONTACTS).where(c.operator_id.is_(None), c.status == ContactStatus.OPEN)
    )
    return session.connection().scalar(query) or 0


def distribution_status(session: Session) -> DistributionStatus:
    """Every operator's load, every source's weights, history and queue, in five queries."""
    conn = session.connection()
    sources = conn.execute(sa.select(Source.__table__).order_by(Source.__table__.c.id)).all()
    so = SOURCE_OPERATORS.c
    shares: dict[int, list[sa.Row]] = {}
    for row in conn.execute(
        sa.select(so.source_id, so.operator_id, so.weight, so.assigned_total)
        .where(so.weight > 0)
        .order_by(so.source_id, so.operator_id)
    ):
        shares.setdefault(row.source_id, []).append(row)
    queues = waiting_by_source(session)
    statuses = []
    for source in sources:
        rows = shares.get(source.id, [])
        total = sum(r.weight for r in rows)
        statuses.append(
            SourceStatus(
                source=source,
                operators=[SourceShare(r.operator_id, r.weight, r.weight / total, r.assigned_total) for r in rows],
                waiting=queues.get(source.id, NO_QUEUE),
            )
        )
    return DistributionStatus(
        operators=operator_loads(session), sources=statuses, unassigned_open=unassigned_open(session)
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
    """Operators to offer for a contact of ``source_id``: (serving it with room, everyone else), by name."""
    serving = set(
        session.scalars(
            sa.select(SourceOperator.operator_id).where(
                SourceOperator.source_id == source_id, SourceOperator.weight > 0
            )
        )
    )
    first: list[Operator] = []
    rest: list[Operator] = []
    for op in session.scalars(sa.select(Operator).order_by(Operator.name)):
        has_room = op.is_active and op.active_leads < op.max_active_leads
        (first if op.id in serving and has_room else rest).append(op)
    return first, rest
