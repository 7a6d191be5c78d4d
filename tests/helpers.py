"""Small builders shared by the tests; they go through the domain functions."""

import sqlalchemy as sa

from leadcrm import operators, sources
from leadcrm.extensions import db
from leadcrm.identity import LeadIdentity
from leadcrm.models import OPEN, Contact, Operator, Source


def add_operator(name: str, limit: int = 10, *, active: bool = True) -> Operator:
    return operators.create_operator(db.session, name=name, max_active_leads=limit, is_active=active)


def add_source(name: str = "telegram_bot", weights: dict[Operator, int] | None = None, **kw: object) -> Source:
    source = sources.create_source(db.session, name=name, **kw)
    if weights:
        sources.set_weights(db.session, source, {op.id: w for op, w in weights.items()}, replace=True)
    return source


def phone(n: int) -> LeadIdentity:
    return LeadIdentity(phone=f"+7900{n:07d}")


def open_contacts_by_operator() -> dict[int | None, int]:
    rows = db.session.execute(
        sa.select(Contact.operator_id, sa.func.count()).where(Contact.status == OPEN).group_by(Contact.operator_id)
    )
    return {operator_id: count for operator_id, count in rows}


def assert_load_matches_open_contacts() -> None:
    """The maintained counter equals the truth in the contacts table, for every operator."""
    open_by_operator = open_contacts_by_operator()
    for operator in db.session.scalars(sa.select(Operator)):
        db.session.refresh(operator)
        assert operator.active_leads == open_by_operator.get(operator.id, 0), operator
