"""Sources (channels contacts arrive through) and their per-operator weights."""

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from flask_babel import lazy_gettext as _l
from sqlalchemy.orm import Session

from leadcrm import storage
from leadcrm.database import unique_or
from leadcrm.distribution import drain_queue
from leadcrm.errors import NameTaken, UnknownOperator, UnknownSource
from leadcrm.models import Operator, Source, SourceOperator
from leadcrm.storage import SourceRecord
from leadcrm.vocabulary import Strategy


def get_source(session: Session, source_id: int) -> Source:
    source = session.get(Source, source_id)
    if source is None:
        raise UnknownSource(_l("No source with id %(id)s.", id=source_id), {"source_id": _l("Unknown source.")})
    return source


def find_source(session: Session, *, source_id: int | None, source_name: str | None) -> SourceRecord:
    """The source named by id or by name (exactly one of them is given)."""
    if source_id is not None:
        row = storage.Tx.of(session).execute(storage.SOURCE_BY_ID, {"id": source_id}).fetchone()
        if row is None:
            raise UnknownSource(_l("No source with id %(id)s.", id=source_id), {"source_id": _l("Unknown source.")})
    else:
        row = storage.Tx.of(session).execute(storage.SOURCE_BY_NAME, {"name": source_name}).fetchone()
        if row is None:
            raise UnknownSource(
                _l("No source named “%(name)s”.", name=source_name), {"source_name": _l("Unknown source.")}
            )
    return SourceRecord(*row)


def list_sources_query() -> sa.Select[tuple[Source]]:
    return sa.select(Source).order_by(Source.id)


def create_source(session: Session, *, name: str, strategy: str = Strategy.RANDOM, sticky: bool = False) -> Source:
    source = Source(name=name, strategy=strategy, sticky=sticky)
    with unique_or(session, _name_taken(name)):
        session.add(source)
    return source


def update_source(session: Session, source: Source, changes: dict[str, Any]) -> Source:
    with unique_or(session, _name_taken(changes.get("name", source.name))):
        for field in ("name", "strategy", "sticky"):
            if field in changes:
                setattr(source, field, changes[field])
    return source


def source_weights(session: Session, source_id: int) -> list[SourceOperator]:
    """The operators serving a source (weight > 0), by operator id."""
    return list(
        session.scalars(
            sa.select(SourceOperator)
            .where(SourceOperator.source_id == source_id, SourceOperator.weight > 0)
            .order_by(SourceOperator.operator_id)
        )
    )


def serving_counts(session: Session) -> dict[int, int]:
    """How many operators serve each source (weight > 0), in one query; sources nobody serves are absent."""
    so = SourceOperator
    query = sa.select(so.source_id, sa.func.count()).where(so.weight > 0).group_by(so.source_id)
    return dict(session.execute(query).all())


def set_weight(session: Session, source: Source, operator_id: int, weight: int) -> None:
    """Set one operator's weight for ``source``; 0 stops it serving the source."""
    set_weights(session, source, {operator_id: weight}, replace=False)


def set_weights(session: Session, source: Source, weights: dict[int, int], *, replace: bool) -> None:
    """Set several operators' weights at once.

    With ``replace``, operators not in ``weights`` stop serving the source.
    Rows are kept at weight 0 rather than deleted, so that the source's
    assignment history per operator survives.
    """
    _check_operators_exist(session, weights.keys())
    storage.lock_source(storage.Tx.of(session), source.id)
    rows = {
        row.operator_id: row
        for row in session.scalars(sa.select(SourceOperator).where(SourceOperator.source_id == source.id))
    }
    if replace:
        for operator_id, row in rows.items():
            if operator_id not in weights:
                row.weight = 0
    grew = False  # an operator added or given more weight: waiting contacts may now have somewhere to go
    for operator_id, weight in weights.items():
        row = rows.get(operator_id)
        if row is None:
            if weight == 0:
                continue
            session.add(SourceOperator(source_id=source.id, operator_id=operator_id, weight=weight))
            grew = True
        else:
            grew = grew or weight > row.weight
            row.weight = weight
    session.flush()
    if grew:
        drain_queue(session, [source.id])  # one batch at most; later batches assign the rest


def _check_operators_exist(session: Session, operator_ids: Iterable[int]) -> None:
    wanted = set(operator_ids)
    if not wanted:
        return
    known = set(session.scalars(sa.select(Operator.id).where(Operator.id.in_(wanted))))
    missing = sorted(wanted - known)
    if missing:
        ids = ", ".join(map(str, missing))
        raise UnknownOperator(
            _l("No operator with id %(id)s.", id=ids), {"operator_id": _l("Unknown operator: %(ids)s.", ids=ids)}
        )


def _name_taken(name: str) -> NameTaken:
    return NameTaken(
        _l("A source named “%(name)s” already exists.", name=name),
        {"name": _l("A source with this name already exists.")},
    )
