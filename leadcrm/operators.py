"""Operators: the people contacts are distributed to."""

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from leadcrm import storage
from leadcrm.database import unique_or
from leadcrm.distribution import drain_for_operators
from leadcrm.errors import Message, NameTaken, UnknownOperator
from leadcrm.models import Operator
from leadcrm.storage import OperatorRecord, Tx


def get_operator(session: Session, operator_id: int) -> Operator:
    operator = session.get(Operator, operator_id)
    if operator is None:
        raise UnknownOperator(Message("No operator with id %(id)s.", id=operator_id))
    return operator


def list_operators_query() -> sa.Select[Operator]:
    return sa.select(Operator).order_by(Operator.id)


def create_operator(session: Session, *, name: str, max_active_leads: int, is_active: bool = True) -> Operator:
    """Add an operator; its name must be unique."""
    operator = Operator(name=name, max_active_leads=max_active_leads, is_active=is_active)
    with unique_or(session, _name_taken(name)):
        session.add(operator)
    return operator


def update_operator(session: Session, operator_id: int, changes: dict[str, Any]) -> OperatorRecord:
    """Change any of name, is_active, max_active_leads; returns the operator as it is afterwards.

    A limit below the current load is allowed: the operator keeps its open
    contacts and gets no new ones until the load falls under the limit. When
    the change gives the operator room (activated, limit raised), waiting
    contacts of the sources it serves are distributed in the same transaction,
    one batch at most (``distribution.DRAIN_BATCH``); later batches assign the rest.
    """
    tx = Tx.of(session)
    before = storage.lock_operator(tx, operator_id)
    if before is None:
        raise UnknownOperator(Message("No operator with id %(id)s.", id=operator_id))
    fields = {field: changes[field] for field in ("name", "is_active", "max_active_leads") if field in changes}
    with unique_or(session, _name_taken(fields.get("name", before.name))):
        after = storage.update_operator(tx, operator_id, **fields)
    if after is None:  # cannot happen: its row is locked
        raise RuntimeError(f"operator {operator_id} vanished under its lock")
    if (after.is_active and not before.is_active) or after.max_active_leads > before.max_active_leads:
        if drain_for_operators(tx, [operator_id]):
            after = storage.operator_by_id(tx, operator_id) or after  # its load grew
    return after


def _name_taken(name: str) -> NameTaken:
    return NameTaken(
        Message("An operator named “%(name)s” already exists.", name=name),
        {"name": Message("An operator with this name already exists.")},
    )
