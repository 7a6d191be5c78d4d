"""Operators: the people contacts are distributed to."""

from typing import Any

import sqlalchemy as sa
from flask_babel import lazy_gettext as _l
from sqlalchemy.orm import Session

from leadcrm.database import unique_or
from leadcrm.distribution import drain_for_operators
from leadcrm.errors import NameTaken, UnknownOperator
from leadcrm.models import Operator


def get_operator(session: Session, operator_id: int) -> Operator:
    operator = session.get(Operator, operator_id)
    if operator is None:
        raise UnknownOperator(_l("No operator with id %(id)s.", id=operator_id))
    return operator


def list_operators_query() -> sa.Select[tuple[Operator]]:
    return sa.select(Operator).order_by(Operator.id)


def create_operator(session: Session, *, name: str, max_active_leads: int, is_active: bool = True) -> Operator:
    """Add an operator; its name must be unique."""
    operator = Operator(name=name, max_active_leads=max_active_leads, is_active=is_active)
    with unique_or(session, _name_taken(name)):
        session.add(operator)
    return operator


def update_operator(session: Session, operator: Operator, changes: dict[str, Any]) -> Operator:
    """Change any of name, is_active, max_active_leads.

    A limit below the current load is allowed: the operator keeps its open
    contacts and gets no new ones until the load falls under the limit. When
    the change gives the operator room (activated, limit raised), waiting
    contacts of the sources it serves are distributed in the same transaction,
    one batch at most (``distribution.DRAIN_BATCH``); later batches assign the rest.
    """
    had_room_before = operator.is_active, operator.max_active_leads
    with unique_or(session, _name_taken(changes.get("name", operator.name))):
        for field in ("name", "is_active", "max_active_leads"):
            if field in changes:
                setattr(operator, field, changes[field])
    if (operator.is_active and not had_room_before[0]) or operator.max_active_leads > had_room_before[1]:
        drain_for_operators(session, [operator.id])
        session.refresh(operator)  # the drain changed its load in SQL
    return operator


def _name_taken(name: str) -> NameTaken:
    return NameTaken(
        _l("An operator named “%(name)s” already exists.", name=name),
        {"name": _l("An operator with this name already exists.")},
    )
