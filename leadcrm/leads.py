"""Leads: recognising the same customer across sources."""

from dataclasses import replace

import sqlalchemy as sa
from sqlalchemy.orm import Session

from leadcrm import storage
from leadcrm.errors import Conflict, InvalidInput, LeadConflict, Message, NotFound
from leadcrm.identity import LeadIdentity, normalize_phone
from leadcrm.models import Lead, utcnow
from leadcrm.storage import LeadRecord, Tx

IDENTIFIERS = ("external_id", "phone", "email")  # in the order they are trusted
# How often to look again when a concurrent request created the same lead first.
RESOLVE_ATTEMPTS = 3


def get_lead(session: Session, lead_id: int) -> Lead:
    lead = session.get(Lead, lead_id)
    if lead is None:
        raise NotFound(Message("No lead with id %(id)s.", id=lead_id))
    return lead


def resolve_lead(tx: Tx, identity: LeadIdentity, name: str | None) -> tuple[LeadRecord, bool]:
    """Find the lead ``identity`` points at, or create it. Returns (lead, created).

    The lead is looked up by external_id, then phone, then email. Identifiers
    and a name that the request brings and the found lead lacks are stored on
    it; ones it already has are kept (also when a concurrent request stored
    them a moment earlier). If the identifiers point at two different leads, LeadConflict is raised
    and nothing is written.
    """
    given = {field: getattr(identity, field) for field in IDENTIFIERS}
    wanted = {field: value for field, value in given.items() if value}
    for _ in range(RESOLVE_ATTEMPTS):
        found = storage.find_leads(tx, **given)
        owners = {field: lead for field, value in wanted.items() for lead in found if getattr(lead, field) == value}
        if len({lead.id for lead in owners.values()}) > 1:
            raise LeadConflict(
                Message("These identifiers belong to different leads."),
                {field: Message("Belongs to lead %(id)s.", id=lead.id) for field, lead in owners.items()},
            )
        lead = next(iter(owners.values()), None)
        if lead is None:
            created = storage.insert_lead(tx, **given, name=name, now=utcnow())
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
        if storage.fill_lead(tx, lead.id, changes):
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
        try:
            conditions.append(Lead.phone == normalize_phone(q, region))
        except InvalidInput:
            pass
        query = query.where(sa.or_(*conditions))
    return query
