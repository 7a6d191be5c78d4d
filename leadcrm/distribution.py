"""The distribution engine: register a contact, pick its operator, close it.

Load (``Operator.active_leads``) is a counter changed only here, in the same
transaction as the contact it counts. An operator is claimed with one
conditional UPDATE (``... WHERE active_leads < max_active_leads``), so two
requests can never both take an operator's last free slot: whichever comes
second finds the condition false and picks again. That holds on SQLite (one
writer at a time) and on PostgreSQL (the UPDATE waits for the row lock and
re-checks the condition) alike, across any number of processes.
"""

import random
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from flask_babel import lazy_gettext as _l
from sqlalchemy.orm import Session

from leadcrm.errors import NotFound
from leadcrm.identity import LeadIdentity
from leadcrm.leads import resolve_lead
from leadcrm.models import CLOSED, OPEN, Contact, Lead, Operator, Source, SourceOperator, utcnow
from leadcrm.sources import lock_source

# Stateless and fork-safe: gunicorn workers never share a random sequence.
_system_random = random.SystemRandom()


@dataclass(frozen=True)
class Candidate:
    """An operator eligible for a source's next contact."""

    operator_id: int
    weight: int
    assigned_total: int  # contacts of this source it has been given so far


@dataclass(frozen=True)
class Registration:
    contact: Contact
    lead: Lead
    lead_created: bool
    operator: Operator | None


def eligible_candidates(session: Session, source_id: int) -> list[Candidate]:
    """Operators that serve the source, are active and have a free slot, by id."""
    rows = session.execute(
        sa.select(SourceOperator.operator_id, SourceOperator.weight, SourceOperator.assigned_total)
        .join(Operator, Operator.id == SourceOperator.operator_id)
        .where(
            SourceOperator.source_id == source_id,
            SourceOperator.weight > 0,
            Operator.is_active.is_(True),
            Operator.active_leads < Operator.max_active_leads,
        )
        .order_by(SourceOperator.operator_id)
    )
    return [Candidate(*row) for row in rows]


def pick_operator(candidates: list[Candidate], strategy: str, rng: random.Random | None = None) -> Candidate | None:
    """Choose among eligible candidates by the source's strategy.

    ``random``: each candidate with probability weight / total weight.
    ``deterministic``: the candidate furthest behind its weight share of the
    source's assigned contacts (smooth weighted round robin over the history):
    with W the candidates' total weight and n their assigned contacts, the one
    maximising (n + 1) * weight - W * assigned_total; ties go to the lowest id.
    """
    if not candidates:
        return None
    if strategy == "deterministic":
        total_weight = sum(c.weight for c in candidates)
        assigned = sum(c.assigned_total for c in candidates)
        return max(
            candidates,
            key=lambda c: ((assigned + 1) * c.weight - total_weight * c.assigned_total, -c.operator_id),
        )
    return (rng or _system_random).choices(candidates, weights=[c.weight for c in candidates])[0]


def claim_operator(session: Session, operator_id: int) -> Operator | None:
    """Take one slot of the operator's limit, if it is still active and has one."""
    return session.scalar(
        sa.update(Operator)
        .where(
            Operator.id == operator_id,
            Operator.is_active.is_(True),
            Operator.active_leads < Operator.max_active_leads,
        )
        .values(active_leads=Operator.active_leads + 1)
        .returning(Operator),
        execution_options={"populate_existing": True},
    )


def assign_operator(session: Session, source: Source, rng: random.Random | None = None) -> Operator | None:
    """Pick and claim an operator for one new contact of ``source``, or None."""
    if source.strategy == "deterministic":
        # The pick depends on every operator's history for this source: take
        # turns per source so that two requests do not both use the same counts.
        lock_source(session, source.id)
    candidates = eligible_candidates(session, source.id)
    while candidates:
        chosen = pick_operator(candidates, source.strategy, rng)
        assert chosen is not None
        operator = claim_operator(session, chosen.operator_id)
        if operator is not None:
            session.execute(
                sa.update(SourceOperator)
                .where(
                    SourceOperator.source_id == source.id,
                    SourceOperator.operator_id == operator.id,
                )
                .values(assigned_total=SourceOperator.assigned_total + 1),
                execution_options={"synchronize_session": False},
            )
            return operator
        # Another transaction took its last slot since we looked: pick again.
        candidates.remove(chosen)
    return None


def register_contact(
    session: Session,
    *,
    source: Source,
    identity: LeadIdentity,
    name: str | None = None,
    message: str | None = None,
    rng: random.Random | None = None,
) -> Registration:
    """Register a lead's contact through ``source`` and distribute it.

    Resolves (or creates) the lead, picks an eligible operator and stores the
    contact with it; when no operator is eligible the contact is stored open
    and unassigned. Flushes; the caller commits.
    """
    lead, lead_created = resolve_lead(session, identity, name)
    operator = assign_operator(session, source, rng)
    now = utcnow()
    contact = Contact(
        lead_id=lead.id,
        source_id=source.id,
        operator_id=operator.id if operator else None,
        status=OPEN,
        message=message,
        created_at=now,
        assigned_at=now if operator else None,
    )
    session.add(contact)
    session.flush()
    return Registration(contact=contact, lead=lead, lead_created=lead_created, operator=operator)


def close_contact(session: Session, contact_id: int) -> Contact:
    """Close an open contact and free its operator's slot.

    Closing a closed contact changes nothing. Only the request that actually
    flips the status gives the slot back, so concurrent closes free it once.
    """
    contact = session.scalar(
        sa.update(Contact)
        .where(Contact.id == contact_id, Contact.status == OPEN)
        .values(status=CLOSED, closed_at=utcnow())
        .returning(Contact),
        execution_options={"populate_existing": True},
    )
    if contact is None:
        contact = session.get(Contact, contact_id)
        if contact is None:
            raise NotFound(_l("No contact with id %(id)s.", id=contact_id))
        return contact
    if contact.operator_id is not None:
        session.execute(
            sa.update(Operator)
            .where(Operator.id == contact.operator_id)
            .values(active_leads=Operator.active_leads - 1),
            execution_options={"synchronize_session": False},
        )
    return contact


@dataclass(frozen=True)
class SourceShare:
    operator_id: int
    weight: int
    target_share: float
    assigned_total: int


@dataclass(frozen=True)
class SourceStatus:
    source: Source
    operators: list[SourceShare]


@dataclass(frozen=True)
class DistributionStatus:
    operators: list[Operator]
    sources: list[SourceStatus]
    unassigned_open: int


def distribution_status(session: Session) -> DistributionStatus:
    """Every operator's load and every source's weights and history, in four queries."""
    operators = list(session.scalars(sa.select(Operator).order_by(Operator.id)))
    sources = list(session.scalars(sa.select(Source).order_by(Source.id)))
    shares: dict[int, list[SourceOperator]] = {}
    for row in session.scalars(
        sa.select(SourceOperator)
        .where(SourceOperator.weight > 0)
        .order_by(SourceOperator.source_id, SourceOperator.operator_id)
    ):
        shares.setdefault(row.source_id, []).append(row)
    unassigned = session.scalar(
        sa.select(sa.func.count()).select_from(Contact).where(Contact.operator_id.is_(None), Contact.status == OPEN)
    )
    statuses = []
    for source in sources:
        rows = shares.get(source.id, [])
        total = sum(r.weight for r in rows)
        statuses.append(
            SourceStatus(
                source=source,
                operators=[SourceShare(r.operator_id, r.weight, r.weight / total, r.assigned_total) for r in rows],
            )
        )
    return DistributionStatus(operators=operators, sources=statuses, unassigned_open=unassigned or 0)


def contacts_query(
    *,
    status: str | None = None,
    operator_id: int | None = None,
    source_id: int | None = None,
    lead_id: int | None = None,
    unassigned: bool | None = None,
) -> sa.Select[tuple[Contact]]:
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


def waiting_by_source(session: Session) -> dict[int, Waiting]:
    """Queue length and oldest waiting contact per source (sources with a queue only)."""
    rows = session.execute(
        sa.select(Contact.source_id, sa.func.count(), sa.func.min(Contact.created_at))
        .where(Contact.operator_id.is_(None), Contact.status == OPEN)
        .group_by(Contact.source_id)
    )
    return {source_id: Waiting(count, _as_utc(oldest)) for source_id, count, oldest in rows}


def _as_utc(value: datetime | str | None) -> datetime | None:
    # Aggregates lose the column type: SQLite hands back text, PostgreSQL a datetime.
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)
