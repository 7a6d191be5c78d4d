"""Leads: recognising the same customer across sources."""

from dataclasses import replace

import sqlalchemy as sa
from flask_babel import lazy_gettext as _l
from sqlalchemy.orm import Session

from leadcrm import storage
from leadcrm.errors import Conflict, InvalidInput, LeadConflict, NotFound
from leadcrm.identity import LeadIdentity, normalize_phone
from leadcrm.models import Lead, utcnow
from leadcrm.storage import LeadRecord

IDENTIFIERS = ("external_id", "phone", "email")  # in the order they are trusted
# How often to look again when a concurrent request created the same lead first.
RESOLVE_ATTEMPTS = 3


def get_lead(session: Session, lead_id: int) -> Lead:
    lead = session.get(Lead, lead_id)
    if lead is None:
        raise NotFound(_l("No lead with id %(id)s.", id=lead_id))
    return lead


def resolve_lead(session: Session, identity: LeadIdentity, name: str | None) -> tuple[LeadRecord, bool]:
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
        found = [storage.lead_record(row) for row in storage.Tx.of(session).execute(storage.FIND_LEADS, given)]
        owners = {field: lead for field, value in wanted.items() for lead in found if getattr(lead, field) == value}
        if len({lead.id for lead in owners.values()}) > 1:
            raise LeadConflict(
                _l("These identifiers belong to different leads."),
                {field: _l("Belongs to lead %(id)s.", id=lead.id) for field, lead in owners.items()},
            )
        lead = next(iter(owners.values()), None)
        if lead is None:
            now = utcnow()
            params = {**given, "name": name, "created_at": storage.Tx.of(session).time(now)}
            row = storage.Tx.of(session).execute(storage.INSERT_LEAD, params).fetchone()
            if row is None:
                continue  # a concurrent request stored one of these identifiers first: look again
            return LeadRecord(id=row[0], **given, name=name, created_at=now), True
        changes = {field: value for field, value in wanted.items() if getattr(lead, field) is None}
        if name and lead.name is None:
            changes["name"] = name
        if not changes:
            storage.lock_lead(storage.Tx.of(session), lead.id)
            return lead, False
        # Only fill what is still empty: a concurrent request may have filled it since we read.
        still_empty = [getattr(Lead, field).is_(None) for field in changes]
        try:
            with session.begin_nested():
                filled = session.execute(sa.update(Lead).where(Lead.id == lead.id, *still_empty).values(**changes))
        except sa.exc.IntegrityError:
            continue  # an identifier we add was just stored on another lead: look again
        if filled.rowcount == 1:
            return replace(lead, **changes), False
        # Someone filled one of these first; first come, first kept: look again.
    raise Conflict(_l("The lead was changed by concurrent requests; try again."))


def search_leads_query(q: str | None, region: str) -> sa.Select[tuple[Lead]]:
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
