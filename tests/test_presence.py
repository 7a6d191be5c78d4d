"""Presence and the idle setting in the engine, on both databases: an operator that is away (or idle)
gets no new contacts by any route, keeps what it has, and the claim itself decides it."""

import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from leadcrm import distribution, operators, sources, storage
from leadcrm.distribution import register_contact
from leadcrm.extensions import db
from leadcrm.models import Contact, Operator, OperatorEvent, Source, utcnow
from leadcrm.storage import Tx, act_as
from leadcrm.vocabulary import Presence
from tests.helpers import add_operator, add_source, assert_load_matches_open_contacts, phone

pytestmark = pytest.mark.usefixtures("ctx")


def operator_of(source_id: int, n: int) -> int | None:
    """Register contact ``n`` through the source; the id of the operator it went to (None: it waits)."""
    source = db.session.get_one(Source, source_id)
    operator = register_contact(db.session(), source=source, identity=phone(n)).operator
    return operator.id if operator is not None else None


def fresh(operator_id: int) -> Operator:
    """The operator as stored now (its row is written by the engine's own statements, not the ORM)."""
    db.session.expire_all()
    return db.session.get_one(Operator, operator_id)


def set_away(operator: Operator) -> None:
    operators.set_presence(db.session(), operator.id, Presence.AWAY)
    db.session.commit()


def seen_minutes_ago(operator: Operator, minutes: float | None, idle_away_minutes: int | None) -> None:
    operators.update_operator(db.session(), operator.id, {"idle_away_minutes": idle_away_minutes})
    row = fresh(operator.id)
    row.last_seen_at = None if minutes is None else utcnow() - timedelta(minutes=minutes)
    db.session.commit()


# --- away: nothing new, by any route ----------------------------------------------------


def test_an_away_operator_gets_no_new_contacts_but_keeps_its_open_ones() -> None:
    anna, boris = add_operator("Anna", 10), add_operator("Boris", 10)
    source = add_source(weights={anna: 1})
    db.session.commit()
    assert [operator_of(source.id, n) for n in range(2)] == [anna.id, anna.id]
    sources.set_weights(db.session(), source, {anna.id: 1, boris.id: 1}, replace=True)
    db.session.commit()
    set_away(anna)
    assert {operator_of(source.id, 100 + n) for n in range(8)} == {boris.id}
    db.session.commit()
    db.session.expire_all()
    assert fresh(anna.id).active_leads == 2  # kept, not taken away
    open_of_anna = sa.select(sa.func.count()).select_from(Contact)
    assert db.session.scalar(open_of_anna.where(Contact.operator_id == anna.id, Contact.status == "open")) == 2
    assert_load_matches_open_contacts()


def test_a_source_served_only_by_away_operators_queues() -> None:
    anna = add_operator("Anna", 10)
    source = add_source(weights={anna: 1})
    db.session.commit()
    set_away(anna)
    assert operator_of(source.id, 1) is None
    db.session.commit()
    assert fresh(anna.id).active_leads == 0


def test_a_sticky_lead_does_not_go_back_to_an_away_operator() -> None:
    anna, boris = add_operator("Anna", 10), add_operator("Boris", 10)
    source = add_source(weights={anna: 1, boris: 1}, sticky=True)
    db.session.commit()
    set_away(boris)
    assert operator_of(source.id, 1) == anna.id  # the lead's operator through this source
    operators.set_presence(db.session(), boris.id, Presence.AVAILABLE)
    set_away(anna)
    assert operator_of(source.id, 1) == boris.id  # the same lead again: not back to Anna, away
    db.session.commit()
    assert_load_matches_open_contacts()


def test_a_reopened_contact_does_not_go_back_to_an_away_operator() -> None:
    anna, boris = add_operator("Anna", 10), add_operator("Boris", 10)
    source = add_source(weights={anna: 1})
    db.session.commit()
    first = register_contact(db.session(), source=source, identity=phone(1)).contact
    assert first.operator_id == anna.id
    distribution.close_contact(db.session(), first.id)
    db.session.commit()
    set_away(anna)
    reopened = distribution.reopen_contact(db.session(), first.id)
    assert (reopened.status, reopened.operator_id) == ("open", None)  # it waits: Anna is away
    db.session.commit()
    # Serving the source too, Boris (available) takes the next reopen.
    distribution.close_contact(db.session(), first.id)
    sources.set_weights(db.session(), source, {anna.id: 1, boris.id: 1}, replace=True)
    db.session.commit()
    assert distribution.reopen_contact(db.session(), first.id).operator_id == boris.id
    db.session.commit()
    assert_load_matches_open_contacts()


def test_a_supervisor_may_still_assign_by_hand_to_an_away_operator() -> None:
    anna, boris = add_operator("Anna", 10), add_operator("Boris", 10)
    source = add_source(weights={boris: 1})
    db.session.commit()
    contact = register_contact(db.session(), source=source, identity=phone(1)).contact
    db.session.commit()
    set_away(anna)
    moved = distribution.assign_by_hand(db.session(), contact.id, anna.id)
    db.session.commit()
    assert moved.operator_id == anna.id
    assert fresh(anna.id).active_leads == 1
    assert_load_matches_open_contacts()


# --- idle: decided at the claim from the stored last-seen time ---------------------------


@pytest.mark.parametrize(
    ("seen", "setting", "eligible"),
    [
        (6, 5, False),  # seen 6 minutes ago, away after 5
        (4, 5, True),
        (None, 5, False),  # never seen, the setting on
        (None, None, True),  # the setting off: whatever the last sign of life
        (60 * 24, None, True),
    ],
)
def test_idle_setting_decides_eligibility(seen: float | None, setting: int | None, eligible: bool) -> None:
    anna = add_operator("Anna", 10)
    source = add_source(weights={anna: 1})
    db.session.commit()
    seen_minutes_ago(anna, seen, setting)
    assert (storage.eligible_operators(Tx.of(db.session()), source.id) is not None) is eligible
    assert (storage.claim_operator(Tx.of(db.session()), anna.id) is not None) is eligible  # the claim agrees
    db.session.rollback()
    assert (operator_of(source.id, 1) == anna.id) is eligible
    db.session.commit()
    assert_load_matches_open_contacts()


# --- available again: the queues drain at once -------------------------------------------


def test_turning_available_drains_the_queues_it_serves_oldest_first_in_the_same_transaction() -> None:
    anna = add_operator("Anna", 2)
    served = add_source("served", weights={anna: 1})
    other = add_source("other")  # nobody serves it: its contact waits whatever happens
    db.session.commit()
    act_as(db.session(), "user:olga")
    set_away(anna)
    waiting = [register_contact(db.session(), source=served, identity=phone(n)).contact.id for n in range(3)]
    register_contact(db.session(), source=other, identity=phone(9))
    db.session.commit()
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Contact).where(Contact.operator_id.is_(None))) == 4

    after = operators.set_presence(db.session(), anna.id, Presence.AVAILABLE)
    assert after.active_leads == 2
    assigned = {c.id: c.operator_id for c in db.session.scalars(sa.select(Contact).where(Contact.id.in_(waiting)))}
    assert assigned == {waiting[0]: anna.id, waiting[1]: anna.id, waiting[2]: None}  # oldest first, to its limit
    db.session.rollback()  # one transaction: undone together
    db.session.expire_all()
    assert fresh(anna.id).presence == Presence.AWAY
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Contact).where(Contact.operator_id.is_(None))) == 4

    act_as(db.session(), "user:olga")
    operators.set_presence(db.session(), anna.id, Presence.AVAILABLE)
    db.session.commit()
    events = db.session.scalars(
        sa.select(OperatorEvent).where(OperatorEvent.operator_id == anna.id).order_by(OperatorEvent.id)
    ).all()
    assert [(e.field, e.value, e.actor) for e in events] == [
        ("presence", "away", "user:olga"),
        ("presence", "available", "user:olga"),
    ]
    assert_load_matches_open_contacts()


# --- the claim statement itself refuses ---------------------------------------------------


def test_the_claim_itself_refuses_an_away_operator() -> None:
    anna = add_operator("Anna", 10)
    db.session.commit()
    assert storage.claim_operator(Tx.of(db.session()), anna.id) is not None  # available: claimed
    db.session.rollback()
    set_away(anna)
    assert storage.claim_operator(Tx.of(db.session()), anna.id) is None
    db.session.rollback()
    assert fresh(anna.id).active_leads == 0


# --- PostgreSQL: two transactions interleaved --------------------------------------------


def postgres_only() -> None:
    if db.engine.dialect.name != "postgresql":
        pytest.skip("SQLite's one write lock serialises writers: the interleaving cannot happen")


def anna_and_boris() -> tuple[int, int, int]:
    anna, boris = add_operator("Anna", 10), add_operator("Boris", 10)
    source = add_source(weights={anna: 1000, boris: 1})
    db.session.commit()
    return anna.id, boris.id, source.id


def test_away_committed_between_the_pick_and_the_claim_is_seen_by_the_claim() -> None:
    postgres_only()
    anna, boris, source_id = anna_and_boris()
    with Session(db.engine) as first, Session(db.engine) as second:
        tx = Tx.of(first)
        eligible = storage.eligible_operators(tx, source_id)
        assert eligible is not None and anna in {eligible.operator_id(i) for i in range(len(eligible))}
        operators.set_presence(second, anna, Presence.AWAY)
        second.commit()
        assert storage.claim_and_count(tx, anna, source_id) is None
        source = storage.source_by_id(tx, source_id)
        assert source is not None
        chosen = distribution.assign_operator(tx, source)
        assert chosen is not None and chosen.id == boris
        first.rollback()


def test_a_claim_waiting_for_an_away_not_yet_committed_rechecks_after_the_commit() -> None:
    postgres_only()
    anna, _, source_id = anna_and_boris()
    with Session(db.engine) as first, Session(db.engine) as second:
        tx = Tx.of(first)
        assert storage.eligible_operators(tx, source_id) is not None
        operators.set_presence(second, anna, Presence.AWAY)  # its row locked, not committed
        result: list[object] = []
        claim = threading.Thread(
            target=lambda: result.append(storage.claim_and_count(tx, anna, source_id)), daemon=True
        )
        claim.start()
        claim.join(0.5)
        assert claim.is_alive(), "the claim did not wait for the other transaction's row lock"
        second.commit()
        claim.join(10)
        assert not claim.is_alive()
        assert result == [None]  # PostgreSQL re-checked the condition on the committed row: away
        first.rollback()
    db.session.expire_all()
    assert fresh(anna).active_leads == 0
