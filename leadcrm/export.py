"""Contacts as CSV: what the contacts list shows, for spreadsheets and other systems.

Written as Excel and LibreOffice open it without an import dialog: UTF-8
with a byte-order mark (so Cyrillic is not read as Windows-1251), a comma or
a semicolon between cells (``SEPARATORS``: a spreadsheet in a locale whose
decimal mark is a comma, such as Russian, splits on semicolons), and times on
the organisation's wall clock as ``2026-12-01 18:31:00``, which both read as
a date and time (an ISO text with an offset stays text in Excel).
"""

import csv
import io
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

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
BOM = "\ufeff"
SEPARATORS = {"comma": ",", "semicolon": ";"}


def _cell(value: object) -> object:
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def wall_clock(value: datetime | None, zone: ZoneInfo) -> str:
    """A stored moment (UTC) as the organisation's wall clock shows it, to the second; "" for none."""
    if value is None:
        return ""
    if value.tzinfo is None:
        value = value.replace(tzinfo=ZoneInfo("UTC"))
    return value.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")


def contacts_csv(
    session: Session | scoped_session[Any], contacts: sa.Select, *, zone: ZoneInfo, separator: str = ","
) -> Iterator[str]:
    """The rows of ``contacts`` (a contacts query with its filters and order) as CSV text, in chunks:
    a byte-order mark first, cells split by ``separator``, times on ``zone``'s wall clock.

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
    buffer.write(BOM)
    writer = csv.writer(buffer, delimiter=separator)
    writer.writerow(HEADER)
    for n, (contact, source_name, operator_name, lead) in enumerate(session.execute(query), start=1):
        writer.writerow(
            [
                contact.id, wall_clock(contact.created_at, zone), contact.status, _cell(source_name),
                _cell(operator_name or ""), wall_clock(contact.assigned_at, zone), wall_clock(contact.closed_at, zone),
                lead.id, _cell(lead.name or ""),
                lead.phone or "", _cell(lead.email or ""), _cell(lead.external_id or ""), _cell(contact.message or ""),
            ]
        )  # fmt: skip
        if n % BATCH == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()
