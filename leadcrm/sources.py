"""Sources (channels contacts arrive through) and their per-operator weights."""

from collections.abc import Iterable
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session

from leadcrm import outbox, storage
from leadcrm.database import unique_or
from leadcrm.distribution import drain_queue
from leadcrm.errors import InvalidInput, Message, NameTaken, UnknownOperator, UnknownSource
from leadcrm.models import Operator, Source, SourceOperator, utcnow
from leadcrm.storage import SourceRecord, Tx, Weight
from leadcrm.vocabulary import OFFER_MISSES_DEFAULT, OFFER_MISSES_MAX, OFFER_TIMEOUT_MAX, OFFER_TIMEOUT_MIN, Strategy

# The fields update_source changes.
FIELDS = ("name", "strategy", "sticky", "offer_timeout_seconds", "offer_misses_away")


def get_source(session: Session, source_id: int) -> Source:
    source = session.get(Source, source_id)
    if source is None:
        raise UnknownSource(
            Message("No source with id %(id)s.", id=source_id), {"source_id": Message("Unknown source.")}
        )
    return source


def find_source(session: Session | Tx, *, source_id: int | None, source_name: str | None) -> SourceRecord:
    """The source named by id or by name (exactly one of them is given)."""
    tx = Tx.of(session)
    if source_id is not None:
        source = storage.source_by_id(tx, source_id)
        if source is None:
            raise UnknownSource(
                Message("No source with id %(id)s.", id=source_id), {"source_id": Message("Unknown source.")}
            )
    else:
        source = storage.source_by_name(tx, source_name or "")
        if source is None:
            raise UnknownSource(
                Message("No source named “%(name)s”.", name=source_name), {"source_name": Message("Unknown source.")}
            )
    return source


def list_sources_query() -> sa.Select[Source]:
    return sa.select(Source).order_by(Source.id)


def create_source(
    session: Session,
    *,
    name: str,
    strategy: str = Strategy.RANDOM,
    sticky: bool = False,
    offer_timeout_seconds: int | None = None,
    offer_misses_away: int = OFFER_MISSES_DEFAULT,
    offer_timeout_min: int = OFFER_TIMEOUT_MIN,
) -> Source:
    """Add a source; its name must be unique. With ``offer_timeout_seconds`` (None: off) routing makes offers:
    see ``check_offers`` for the bounds (``offer_timeout_min``: the edge's LEADCRM_OFFER_TIMEOUT_MIN)."""
    check_offers(offer_timeout_seconds, offer_misses_away, offer_timeout_min)
    source = Source(
        name=name,
        strategy=strategy,
        sticky=sticky,
        offer_timeout_seconds=offer_timeout_seconds,
        offer_misses_away=offer_misses_away,
    )
    with unique_or(session, _name_taken(name)):
        session.add(source)
    return source


def update_source(
    session: Session, source: Source, changes: dict[str, Any], *, offer_timeout_min: int = OFFER_TIMEOUT_MIN
) -> Source:
    """Change any of name, strategy, sticky, offer_timeout_seconds (None: off) and offer_misses_away.

    A new offer setting applies to contacts routed from now on; offers made already keep their deadline.
    """
    check_offers(
        changes.get("offer_timeout_seconds", source.offer_timeout_seconds),
        changes.get("offer_misses_away", source.offer_misses_away),
        offer_timeout_min,
    )
    with unique_or(session, _name_taken(changes.get("name", source.name))):
        for field in FIELDS:
            if field in changes:
                setattr(source, field, changes[field])
    return source


def check_offers(offer_timeout_seconds: int | None, offer_misses_away: int, offer_timeout_min: int) -> None:
    """An offer's time to take it is off (None) or ``offer_timeout_min`` to OFFER_TIMEOUT_MAX seconds; the
    misses in a row before the operator is set away, 1 to OFFER_MISSES_MAX. InvalidInput naming the field."""
    if offer_timeout_seconds is not None and not offer_timeout_min <= offer_timeout_seconds <= OFFER_TIMEOUT_MAX:
        message = Message(
            "The time to take an offer is %(min)s to %(max)s seconds, or none (no offers).",
            min=offer_timeout_min,
            max=OFFER_TIMEOUT_MAX,
        )
        raise InvalidInput(message, {"offer_timeout_seconds": message})
    if not 1 <= offer_misses_away <= OFFER_MISSES_MAX:
        message = Message("Missed offers before away: 1 to %(max)s.", max=OFFER_MISSES_MAX)
        raise InvalidInput(message, {"offer_misses_away": message})


def set_offers(
    session: Session,
    source_id: int,
    *,
    offer_timeout_seconds: int | None,
    offer_misses_away: int,
    offer_timeout_min: int,
) -> None:
    """Set whether the source's routed contacts are offers, and how many missed in a row set an operator away.

    ``offer_timeout_seconds`` None turns offers off. Offers made already keep
    their deadlines; the next contacts routed follow the new setting. Checked
    as ``check_offers`` does (``offer_timeout_min``: LEADCRM_OFFER_TIMEOUT_MIN).
    """
    check_offers(offer_timeout_seconds, offer_misses_away, offer_timeout_min)
    update = (
        sa.update(Source)
        .where(Source.id == source_id)
        .values(offer_timeout_seconds=offer_timeout_seconds, offer_misses_away=offer_misses_away)
    )
    if cast("sa.CursorResult[Any]", session.execute(update)).rowcount != 1:
        raise UnknownSource(
            Message("No source with id %(id)s.", id=source_id), {"source_id": Message("Unknown source.")}
        )


def source_weights(session: Session, source_id: int) -> list[Weight]:
    """The operators serving a source (weight > 0), by operator id."""
    return storage.source_weights(Tx.of(session), source_id)


def serving_counts(session: Session) -> dict[int, int]:
    """How many operators serve each source (weight > 0), in one query; sources nobody serves are absent."""
    so = SourceOperator
    query = sa.select(so.source_id, sa.func.count()).where(so.weight > 0).group_by(so.source_id)
    return dict(session.execute(query).all())


def set_weight(session: Session, source: Source | SourceRecord, operator_id: int, weight: int) -> None:
    """Set one operator's weight for ``source``; 0 stops it serving the source."""
    set_weights(session, source, {operator_id: weight}, replace=False)


def set_weights(session: Session, source: Source | SourceRecord, weights: dict[int, int], *, replace: bool) -> None:
    """Set several operators' weights at once.

    With ``replace``, operators not in ``weights`` stop serving the source.
    Rows are kept at weight 0 rather than deleted, so that the source's
    assignment history per operator survives. Waiting contacts the new
    weights give somewhere to go are assigned at once (one batch at most).
    """
    _check_operators_exist(session, weights.keys())
    tx = Tx.of(session)
    storage.lock_source(tx, source.id)
    stored = storage.all_weights(tx, source.id)
    wanted = dict(weights)
    if replace:
        wanted.update({operator_id: 0 for operator_id in stored if operator_id not in weights})
    changed = {op: w for op, w in wanted.items() if op in stored and stored[op] != w}
    added = {op: w for op, w in wanted.items() if op not in stored and w > 0}
    storage.store_weights(tx, source.id, changed=changed, added=added)
    if changed or added:
        record = storage.source_by_id(tx, source.id)
        if record is not None:
            outbox.weights_changed(tx, record, utcnow())
    # An operator added or given more weight: waiting contacts may now have somewhere to go.
    if added or any(w > stored[op] for op, w in changed.items()):
        drain_queue(tx, [source.id])  # one batch at most; later batches assign the rest


def _check_operators_exist(session: Session, operator_ids: Iterable[int]) -> None:
    wanted = set(operator_ids)
    if not wanted:
        return
    known = set(session.scalars(sa.select(Operator.id).where(Operator.id.in_(wanted))))
    missing = sorted(wanted - known)
    if missing:
        ids = ", ".join(map(str, missing))
        raise UnknownOperator(
            Message("No operator with id %(id)s.", id=ids),
            {"operator_id": Message("Unknown operator: %(ids)s.", ids=ids)},
        )


def _name_taken(name: str) -> NameTaken:
    return NameTaken(
        Message("A source named “%(name)s” already exists.", name=name),
        {"name": Message("A source with this name already exists.")},
    )
