"""Contacts as CSV: what the contacts list shows, for spreadsheets and other systems."""

import csv
import io
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, aliased, scoped_session

from leadcrm.models import Contact, Lead, Operator, Source

HEADER = [
    "contact_id", "created_at", "status", "source", "operator", "assigned_at", "closed_at",
    "lead_id", "lead_name", "phone", "email", "external_id", "message",
]  # fmt: skip
# Any text cell (a customer's message, but also an operator's or a source's
# name) starting with = + - @ would run as a formula in a spreadsheet, so
# such cells are written with a leading apostrophe. Phones are E.164
# (+ and digits only) and go out as they are.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
BATCH = 1000


def _cell(value: object) -> object:
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def _time(value: datetime | None) -> str:
    return value.isoformat().replace("+00:00", "Z") if value is not None else ""


def contacts_csv(session: Session | scoped_session[Any], contacts: sa.Select) -> Iterator[str]:
    """The rows of ``contacts`` (a contacts query with its filters and order) as CSV text, in chunks.

    Read in batches, so an export of any size runs in constant memory. A view
    passes the request's scoped session itself, not the Session it holds now:
    the rows are read while the answer streams, after the view returned, and
    must use the session the context then has (a Session taken at the view
    kept its server-side cursor's transaction open past the request on
    PostgreSQL; tests/test_access.py's export case then hung).
    """
    ids = contacts.with_only_columns(Contact.id).subquery()
    handled_by = aliased(Operator)
    query = (
        sa.select(Contact, Source.name, handled_by.name, Lead)
        .join(ids, ids.c.id == Contact.id)
        .join(Source, Source.id == Contact.source_id)
        .join(Lead, Lead.id == Contact.lead_id)
        .outerjoin(handled_by, handled_by.id == Contact.operator_id)
        .order_by(Contact.id.desc())
        .execution_options(yield_per=BATCH)
    )
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(HEADER)
    for n, (contact, source_name, operator_name, lead) in enumerate(session.execute(query), start=1):
        writer.writerow(
            [
                contact.id, _time(contact.created_at), contact.status, _cell(source_name), _cell(operator_name or ""),
                _time(contact.assigned_at), _time(contact.closed_at), lead.id, _cell(lead.name or ""),
                lead.phone or "", _cell(lead.email or ""), _cell(lead.external_id or ""), _cell(contact.message or ""),
            ]
        )  # fmt: skip
        if n % BATCH == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()
