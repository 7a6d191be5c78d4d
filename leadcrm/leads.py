"""Leads: recognising the same customer across sources."""

from dataclasses import dataclass, replace

import sqlalchemy as sa
from sqlalchemy.orm import Session

from leadcrm import storage
from leadcrm.errors import Conflict, InvalidInput, LeadConflict, Message, NotFound
from leadcrm.identity import LeadIdentity, email_key, normalize_phone
from leadcrm.models import Contact, Lead, utcnow
from leadcrm.storage import LeadRecord, Tx

IDENTIFIERS = ("external_id", "phone", "email")  # in the order they are trusted
# How often to look again when a concurrent request created the same lead first.
RESOLVE_ATTEMPTS = 3


def get_lead(session: Session, lead_id: int) -> Lead:
    lead = session.get(Lead, lead_id)
    if lead is None:
        raise NotFound(Message("No lead with id %(id)s.", id=lead_id))
    return lead


def holds_identifier(lead: LeadRecord | Lead, field: str, value: str) -> bool:
    """Whether ``lead`` has identifier ``field`` (one of IDENTIFIERS) equal to ``value``; e-mail whatever its case."""
    stored = getattr(lead, field)
    if field == "email":
        # The key of the stored address, not the email_key column: a lead stored
        # apart before addresses were matched whatever their case has none (an
        # older lead holds it; see email_duplicates), and still holds its own
        # address when another identifier of the request finds it.
        return stored is not None and email_key(stored) == email_key(value)
    return bool(stored == value)


def resolve_lead(tx: Tx, identity: LeadIdentity, name: str | None) -> tuple[LeadRecord, bool]:
    """Find the lead ``identity`` points at, or create it. Returns (lead, created).

    The lead is looked up by external_id, then phone, then email (whatever
    its case: by ``email_key``). Identifiers and a name that the request
    brings and the found lead lacks are stored on it; ones it already has are
    kept (also when a concurrent request stored them a moment earlier). If
    the identifiers point at two different leads, LeadConflict is raised and
    nothing is written.
    """
    given = {field: getattr(identity, field) for field in IDENTIFIERS}
    wanted = {field: value for field, value in given.items() if value}
    key = email_key(identity.email) if identity.email else None
    for _ in range(RESOLVE_ATTEMPTS):
        found = storage.find_leads(tx, external_id=identity.external_id, phone=identity.phone, email_key=key)
        holders = {
            field: [lead for lead in found if holds_identifier(lead, field, value)] for field, value in wanted.items()
        }
        owners = {field: leads[0] for field, leads in holders.items() if leads}
        lead = next(iter(owners.values()), None)  # the one the most trusted identifier finds
        if lead is not None and any(lead not in leads for leads in holders.values() if leads):
            raise LeadConflict(
                Message("These identifiers belong to different leads."),
                {field: Message("Belongs to lead %(id)s.", id=owner.id) for field, owner in owners.items()},
            )
        if lead is None:
            created = storage.insert_lead(tx, **given, email_key=key, name=name, now=utcnow())
            if created is None:
                continue  # a concurrent request stored one of these identifiers first: look again
            return created, True
        changes = {field: value for field, value in wanted.items() if getattr(lead, field) is None}
        if name and lead.name is None:
            changes["name"] = name
        if not changes:
            storage.lock_lead(tx, lead.id)
            return lead, False
        # Only what is still empty is filled: a concurrent request may have filled it since we read,
        # or stored one of these identifiers on another lead; then look again (first come, first kept).
        values = changes | ({"email_key": email_key(changes["email"])} if "email" in changes else {})
        if storage.fill_lead(tx, lead.id, values):
            return replace(lead, **changes), False
    raise Conflict(Message("The lead was changed by concurrent requests; try again."))


def search_leads_query(q: str | None, region: str) -> sa.Select[Lead]:
    """Leads whose external_id, phone, email or name contains ``q``, newest first.

    When ``q`` reads as a phone number it also finds that number, so that
    "8 (900) 123-45-67" finds +79001234567.
    """
    query = sa.select(Lead).order_by(Lead.id.desc())
    if q:
        conditions = [
            column.icontains(q, autoescape=True) for column in (Lead.external_id, Lead.phone, Lead.email, Lead.name)
        ]
        # Whatever its case, non-ASCII letters too (SQLite's lower() folds only ASCII).
        conditions.append(Lead.email_key.contains(email_key(q), autoescape=True))
        try:
            conditions.append(Lead.phone == normalize_phone(q, region))
        except InvalidInput:
            pass
        query = query.where(sa.or_(*conditions))
    return query


@dataclass(frozen=True)
class EmailDuplicates:
    """Leads whose addresses differ only in case: stored apart before addresses were matched whatever their case.

    ``leads`` holds each with its number of contacts, oldest first. ``found``
    is the one that holds the address's key, which new registrations with
    any of these addresses find (the oldest, as the migration left it).
    """

    key: str
    found: Lead | None
    leads: list[tuple[Lead, int]]


def email_duplicates(session: Session) -> list[EmailDuplicates]:
    """Every group of leads whose e-mail addresses differ only in case, by key.

    Nothing is merged: what to do with them is a person's decision. A lead
    with an address but no key is one the 0008 migration found to share its
    key with an older lead; it stays as it was, found by its other identifiers.
    """
    strays = session.scalars(
        sa.select(Lead).where(Lead.email.is_not(None), Lead.email_key.is_(None)).order_by(Lead.id)
    ).all()
    keys = {email_key(lead.email) for lead in strays if lead.email}
    if not keys:
        return []
    holders = {lead.email_key: lead for lead in session.scalars(sa.select(Lead).where(Lead.email_key.in_(keys)))}
    groups: dict[str, list[Lead]] = {key: [holders[key]] if key in holders else [] for key in sorted(keys)}
    for lead in strays:
        groups[email_key(lead.email or "")].append(lead)
    ids = [lead.id for members in groups.values() for lead in members]
    counts: dict[int, int] = {
        lead_id: count
        for lead_id, count in session.execute(
            sa.select(Contact.lead_id, sa.func.count()).where(Contact.lead_id.in_(ids)).group_by(Contact.lead_id)
        )
    }
    return [
        EmailDuplicates(
            key=key,
            found=holders.get(key),
            leads=[(lead, counts.get(lead.id, 0)) for lead in sorted(members, key=lambda lead: lead.id)],
        )
        for key, members in groups.items()
    ]
