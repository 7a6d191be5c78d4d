"""The distribution engine, called directly on a real SQLite database."""

import random
from collections import Counter
from collections.abc import Mapping

import pytest
import sqlalchemy as sa

from leadcrm import distribution, operators, queries, storage
from leadcrm.distribution import pick_operator, register_contact
from leadcrm.errors import Conflict, LeadConflict
from leadcrm.extensions import db
from leadcrm.identity import LeadIdentity, parse_identity
from leadcrm.leads import resolve_lead
from leadcrm.models import Contact, Lead, Operator, Source, SourceOperator, utcnow
from tests.helpers import add_operator, add_source, assert_load_matches_open_contacts, phone

pytestmark = pytest.mark.usefixtures("ctx")

# Chi-square critical values at p = 0.001 by degrees of freedom.
CHI2_CRITICAL_001 = {1: 10.83, 2: 13.82, 3: 16.27}


def chi_square(observed: Counter, expected: Mapping[int, float]) -> float:
    return sum((observed[k] - e) ** 2 / e for k, e in expected.items())


def assigned(source: Source, identity: LeadIdentity, rng: random.Random | None = None) -> int:
    """Register a contact that must go to an operator; that operator's id."""
    operator = register_contact(db.session(), source=source, identity=identity, rng=rng).operator
    assert operator is not None, "the contact waits"
    return operator.id


# --- lead identity -------------------------------------------------------------


def test_phone_numbers_in_any_format_are_one_lead() -> None:
    source = add_source(weights={add_operator("Anna"): 1})
    first = register_contact(
        db.session(),
        source=source,
        identity=parse_identity(external_id=None, phone="8 (900) 123-45-67", email=None, region="RU"),
    )
    second = register_contact(
        db.session(),
        source=source,
        identity=parse_identity(external_id=None, phone="+7 900 1234567", email=None, region="RU"),
    )
    assert first.lead.phone == "+79001234567"
    assert second.lead.id == first.lead.id
    assert first.lead_created and not second.lead_created


def test_same_customer_through_two_sources_is_one_lead() -> None:
    anna = add_operator("Anna")
    telegram = add_source("telegram_bot", {anna: 1})
    web = add_source("web_form", {anna: 1})
    a = register_contact(
        db.session(), source=telegram, identity=LeadIdentity(external_id="tg:42", phone="+79001234567")
    )
    b = register_contact(db.session(), source=web, identity=LeadIdentity(phone="+79001234567", email="x@example.com"))
    assert a.lead.id == b.lead.id
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Lead)) == 1
    assert {c.source_id for c in db.session.scalars(sa.select(Contact))} == {telegram.id, web.id}


def test_lookup_order_is_external_id_then_phone_then_email() -> None:
    by_external = Lead(external_id="crm-1")
    db.session.add(by_external)
    db.session.flush()
    lead, created = resolve_lead(
        storage.Tx.of(db.session()), LeadIdentity(external_id="crm-1", phone="+79001112233"), None
    )
    assert lead.id == by_external.id and not created


def test_a_lead_stored_through_the_orm_is_found_by_its_address_whatever_its_case() -> None:
    stored = Lead(email="Ivan.Petrov@example.com")
    db.session.add(stored)
    db.session.flush()
    assert stored.email_key == "ivan.petrov@example.com"
    lead, created = resolve_lead(storage.Tx.of(db.session()), LeadIdentity(email="IVAN.PETROV@example.com"), None)
    assert (lead.id, lead.email, created) == (stored.id, "Ivan.Petrov@example.com", False)


def test_identifiers_the_found_lead_lacks_are_stored_on_it() -> None:
    lead, _ = resolve_lead(storage.Tx.of(db.session()), LeadIdentity(phone="+79001234567"), None)
    again, created = resolve_lead(
        storage.Tx.of(db.session()),
        LeadIdentity(external_id="tg:7", phone="+79001234567", email="a@example.com"),
        "Ivan",
    )
    assert again.id == lead.id and not created
    assert (again.external_id, again.email, again.name) == ("tg:7", "a@example.com", "Ivan")


def test_known_identifiers_are_not_overwritten() -> None:
    lead, _ = resolve_lead(storage.Tx.of(db.session()), LeadIdentity(external_id="tg:7", phone="+79001234567"), "Ivan")
    again, _ = resolve_lead(
        storage.Tx.of(db.session()), LeadIdentity(external_id="tg:7", phone="+79007654321"), "Someone else"
    )
    assert again.id == lead.id
    assert (again.phone, again.name) == ("+79001234567", "Ivan")


def test_identifiers_of_two_different_leads_conflict_and_write_nothing() -> None:
    source = add_source(weights={add_operator("Anna"): 1})
    register_contact(db.session(), source=source, identity=LeadIdentity(phone="+79001234567"))
    register_contact(db.session(), source=source, identity=LeadIdentity(email="b@example.com"))
    db.session.commit()
    with pytest.raises(LeadConflict) as info:
        register_contact(
            db.session(), source=source, identity=LeadIdentity(phone="+79001234567", email="b@example.com")
        )
    assert set(info.value.fields) == {"phone", "email"}
    db.session.rollback()
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Contact)) == 2
    assert_load_matches_open_contacts()


def test_invalid_identifiers_name_their_fields() -> None:
    from leadcrm.errors import InvalidInput

    with pytest.raises(InvalidInput) as info:
        parse_identity(external_id=None, phone="12", email="not-an-email", region="RU")
    assert set(info.value.fields) == {"phone", "email"}
    with pytest.raises(InvalidInput):
        parse_identity(external_id="  ", phone="", email=None, region="RU")


# --- eligibility and limits ------------------------------------------------------


def test_only_active_operators_with_weight_and_room_are_eligible() -> None:
    serving = add_operator("Serving", 5)
    inactive = add_operator("Inactive", 5, active=False)
    zero = add_operator("ZeroWeight", 5)
    full = add_operator("Full", 0)
    add_operator("NotConfigured", 5)
    source = add_source(weights={serving: 1, inactive: 5, zero: 0, full: 5})
    assert {pick_operator(storage.Tx.of(db.session()), source, random.Random(n)) for n in range(50)} == {serving.id}
    for n in range(5):
        assert assigned(source, phone(n)) == serving.id


def test_limit_is_never_exceeded_and_the_rest_wait_unassigned() -> None:
    anna, boris = add_operator("Anna", 2), add_operator("Boris", 3)
    source = add_source(weights={anna: 1, boris: 1})
    results = [register_contact(db.session(), source=source, identity=phone(n)) for n in range(8)]
    by_operator = Counter(r.operator.id if r.operator else None for r in results)
    assert by_operator == {anna.id: 2, boris.id: 3, None: 3}
    waiting = [r.contact for r in results if r.operator is None]
    assert all(c.status == "open" and c.operator_id is None and c.assigned_at is None for c in waiting)
    assert_load_matches_open_contacts()


def test_no_operator_configured_stores_the_contact_unassigned() -> None:
    source = add_source()
    registration = register_contact(db.session(), source=source, identity=phone(1))
    assert registration.operator is None
    assert registration.contact.id is not None and registration.contact.status == "open"


def test_closing_frees_capacity_once() -> None:
    anna = add_operator("Anna", 1)
    source = add_source(weights={anna: 1})
    first = register_contact(db.session(), source=source, identity=phone(1))
    closed = distribution.close_contact(db.session(), first.contact.id)
    assert closed.status == "closed" and closed.closed_at is not None
    assert distribution.close_contact(db.session(), first.contact.id).closed_at == closed.closed_at
    db.session.refresh(anna)
    assert anna.active_leads == 0
    assert assigned(source, phone(3)) == anna.id
    assert_load_matches_open_contacts()


# --- the waiting queue -------------------------------------------------------------


def contact_operator(contact_id: int) -> int | None:
    return db.session.scalar(sa.select(Contact.operator_id).where(Contact.id == contact_id))


def test_closing_gives_the_freed_slot_to_the_oldest_waiting_contact() -> None:
    anna = add_operator("Anna", 1)
    source = add_source(weights={anna: 1})
    first = register_contact(db.session(), source=source, identity=phone(1))
    waiting = [register_contact(db.session(), source=source, identity=phone(n)).contact for n in (2, 3)]
    assert all(c.operator_id is None for c in waiting)
    distribution.close_contact(db.session(), first.contact.id)
    assert contact_operator(waiting[0].id) == anna.id  # the oldest first
    assert contact_operator(waiting[1].id) is None
    assert db.session.scalar(sa.select(Contact.assigned_at).where(Contact.id == waiting[0].id)) is not None
    assert_load_matches_open_contacts()


def test_raising_a_limit_activating_or_adding_a_weight_drains_the_queue() -> None:
    anna, boris, vera = add_operator("Anna", 0), add_operator("Boris", 5, active=False), add_operator("Vera", 5)
    source = add_source(weights={anna: 1, boris: 1})
    waiting = [register_contact(db.session(), source=source, identity=phone(n)).contact.id for n in range(6)]
    assert all(contact_operator(c) is None for c in waiting)
    operators.update_operator(db.session(), anna.id, {"max_active_leads": 2})
    assert [contact_operator(c) for c in waiting[:3]] == [anna.id, anna.id, None]
    operators.update_operator(db.session(), boris.id, {"is_active": True})
    assert [contact_operator(c) for c in waiting[2:]] == [boris.id] * 4
    extra = [register_contact(db.session(), source=source, identity=phone(n)).contact.id for n in range(10, 13)]
    assert [contact_operator(c) for c in extra] == [boris.id, None, None]
    from leadcrm import sources

    sources.set_weight(db.session(), source, vera.id, 3)
    assert [contact_operator(c) for c in extra[1:]] == [vera.id, vera.id]
    assert_load_matches_open_contacts()


@pytest.mark.parametrize("strategy", ["deterministic", "random"])
def test_the_strategy_shares_a_backlog_between_operators_with_room(strategy: str) -> None:
    anna, boris = add_operator("Anna", 100), add_operator("Boris", 100)
    source = add_source(strategy=strategy)  # nobody serves it yet: everything waits
    waiting = [register_contact(db.session(), source=source, identity=phone(n)).contact.id for n in range(40)]
    from leadcrm import sources

    sources.set_weights(db.session(), source, {anna.id: 1, boris.id: 1}, replace=True)
    shares = Counter(contact_operator(c) for c in waiting)
    assert sum(shares.values()) == 40 and None not in shares
    if strategy == "deterministic":
        assert shares == {anna.id: 20, boris.id: 20}
    else:
        assert 8 <= shares[anna.id] <= 32  # not the whole backlog to one of them
    assert_load_matches_open_contacts()


def test_drain_all_is_idempotent() -> None:
    anna = add_operator("Anna", 1)
    source = add_source(weights={anna: 1})
    for n in range(3):
        register_contact(db.session(), source=source, identity=phone(n))
    assert distribution.drain_all(db.session()) == 0  # nobody has room
    db.session.execute(sa.update(Operator).values(max_active_leads=2))  # behind the engine's back
    assert distribution.drain_all(db.session()) == 1
    assert distribution.drain_all(db.session()) == 0
    assert_load_matches_open_contacts()


def test_lowering_the_limit_below_the_load_only_stops_new_assignments() -> None:
    anna, boris = add_operator("Anna", 3), add_operator("Boris", 3)
    source = add_source(weights={anna: 1}, strategy="deterministic")
    for n in range(3):
        register_contact(db.session(), source=source, identity=phone(n))
    operators.update_operator(db.session(), anna.id, {"max_active_leads": 1})
    assert register_contact(db.session(), source=source, identity=phone(9)).operator is None
    db.session.refresh(anna)
    assert anna.active_leads == 3
    assert boris.active_leads == 0


# --- strategies ------------------------------------------------------------------


def test_random_pick_follows_weights() -> None:
    ops = [add_operator(f"Op{i}") for i in range(3)]
    source = add_source(weights={ops[0]: 10, ops[1]: 30, ops[2]: 60})
    rng = random.Random(2026)
    picks = Counter(pick_operator(storage.Tx.of(db.session()), source, rng) for _ in range(10_000))
    expected = {ops[0].id: 1_000, ops[1].id: 3_000, ops[2].id: 6_000}
    assert chi_square(picks, expected) < CHI2_CRITICAL_001[2], picks
    # The same test refuses an unweighted pick: it is not a test that always passes.
    uniform = Counter(rng.choice(list(expected)) for _ in range(10_000))
    assert chi_square(uniform, expected) > CHI2_CRITICAL_001[2]


def test_random_registrations_follow_weights_10_30() -> None:
    anna, boris = add_operator("Anna", 10_000), add_operator("Boris", 10_000)
    source = add_source(weights={anna: 10, boris: 30})
    rng = random.Random(7)
    picks = Counter(assigned(source, phone(n), rng) for n in range(2_000))
    assert chi_square(picks, {anna.id: 500, boris.id: 1_500}) < CHI2_CRITICAL_001[1], picks


def _assert_within_one(history: list[int], weights: dict[int, int]) -> None:
    total = sum(weights.values())
    counts: Counter = Counter()
    for n, operator_id in enumerate(history, start=1):
        counts[operator_id] += 1
        for op, w in weights.items():
            assert abs(counts[op] - n * w / total) <= 1, (n, op, counts, weights)


@pytest.mark.parametrize("seed", range(6))
def test_deterministic_strategy_stays_within_one_of_the_weight_share(seed: int) -> None:
    rng = random.Random(seed)
    ops = [add_operator(f"Op{i}", 10_000) for i in range(rng.randint(2, 6))]
    weights = {op: rng.randint(1, 60) for op in ops}
    source = add_source(weights=weights, strategy="deterministic")
    history = [assigned(source, phone(n)) for n in range(250)]
    _assert_within_one(history, {op.id: w for op, w in weights.items()})


def test_deterministic_registrations_stay_within_one_of_the_weight_share() -> None:
    ops = [add_operator(f"Op{i}", 1_000) for i in range(3)]
    weights = {ops[0]: 10, ops[1]: 30, ops[2]: 60}
    source = add_source(weights=weights, strategy="deterministic")
    history = [assigned(source, phone(n)) for n in range(300)]
    _assert_within_one(history, {op.id: w for op, w in weights.items()})
    totals = dict(
        db.session.execute(
            sa.select(SourceOperator.operator_id, SourceOperator.assigned_total).where(
                SourceOperator.source_id == source.id
            )
        ).all()
    )
    assert totals == {ops[0].id: 30, ops[1].id: 90, ops[2].id: 180}


def test_deterministic_skips_full_operators_and_keeps_balancing_the_rest() -> None:
    anna, boris, vera = add_operator("Anna", 2), add_operator("Boris", 100), add_operator("Vera", 100)
    source = add_source(weights={anna: 1, boris: 1, vera: 2}, strategy="deterministic")
    history = [assigned(source, phone(n)) for n in range(42)]
    counts = Counter(history)
    assert counts[anna.id] == 2
    assert abs(counts[vera.id] - 2 * counts[boris.id]) <= 2, counts


# --- manual work and returning leads -----------------------------------------------------


def test_assign_by_hand_moves_a_contact_and_frees_the_old_slot_for_the_queue() -> None:
    from leadcrm.errors import InvalidInput

    anna, boris = add_operator("Anna", 1), add_operator("Boris", 5)
    source = add_source(weights={anna: 1})
    first = register_contact(db.session(), source=source, identity=phone(1)).contact
    waiting = register_contact(db.session(), source=source, identity=phone(2)).contact
    moved = distribution.assign_by_hand(db.session(), first.id, boris.id)
    assert moved.operator_id == boris.id
    assert contact_operator(waiting.id) == anna.id  # Anna's freed slot went to the waiting contact
    with pytest.raises(InvalidInput):
        distribution.assign_by_hand(db.session(), first.id, anna.id)  # Anna is full again
    assert distribution.assign_by_hand(db.session(), first.id, anna.id, override=True).operator_id == anna.id
    reasons = [e.reason for e in queries.contact_events(db.session(), first.id)]
    assert reasons == ["registered", "manual", "override"]
    assert_load_matches_open_contacts()


def test_reopen_returns_to_the_operator_or_waits() -> None:
    anna = add_operator("Anna", 1)
    source = add_source(weights={anna: 1})
    first = register_contact(db.session(), source=source, identity=phone(1)).contact
    distribution.close_contact(db.session(), first.id)
    assert distribution.reopen_contact(db.session(), first.id).operator_id == anna.id
    distribution.close_contact(db.session(), first.id)
    register_contact(db.session(), source=source, identity=phone(2))  # takes Anna's only slot
    reopened = distribution.reopen_contact(db.session(), first.id)
    assert (reopened.status, reopened.operator_id) == ("open", None)  # it waits in the queue
    assert_load_matches_open_contacts()


def test_sticky_only_when_the_source_asks_for_it() -> None:
    ops = [add_operator(f"Op{i}", 100) for i in range(4)]
    plain = add_source("plain", weights=dict.fromkeys(ops, 1))
    sticky = add_source("sticky", weights=dict.fromkeys(ops, 1), sticky=True)
    rng = random.Random(3)
    plain_ops = {assigned(plain, phone(1), rng) for _ in range(12)}
    sticky_ops = {assigned(sticky, phone(1), rng) for _ in range(12)}
    assert len(plain_ops) > 1 and len(sticky_ops) == 1


# --- the queue's index and batches ------------------------------------------------------


def test_drains_take_turns_between_sources_and_stop_after_one_batch() -> None:
    anna = add_operator("Anna", 0)
    first, second = add_source("first", weights={anna: 1}), add_source("second", weights={anna: 1})
    for n in range(10):
        register_contact(db.session(), source=first, identity=phone(n))
        register_contact(db.session(), source=second, identity=phone(100 + n))
    db.session.execute(sa.update(Operator).values(max_active_leads=100))  # room, behind the engine's back
    assert distribution.drain_all(db.session(), limit=6) == 6
    assert open_contacts_by_source(assigned=True) == {first.id: 3, second.id: 3}
    assert distribution.drain_all(db.session(), limit=100) == 14
    assert distribution.drain_all(db.session(), limit=100) == 0
    assert_load_matches_open_contacts()


def open_contacts_by_source(*, assigned: bool) -> dict[int, int]:
    query = sa.select(Contact.source_id, sa.func.count()).where(Contact.status == "open")
    query = query.where(Contact.operator_id.is_not(None) if assigned else Contact.operator_id.is_(None))
    return dict(db.session.execute(query.group_by(Contact.source_id)).all())


def query_plan(statement: storage.Sql, params: dict) -> str:
    """The database's own plan for one of the engine's statements, as text."""
    tx = storage.Tx.of(db.session())
    explain = "EXPLAIN QUERY PLAN " if tx.dialect == "sqlite" else "EXPLAIN "
    assert tx._driver is not None
    cursor = tx._driver.cursor()
    cursor.execute(explain + statement.by_dialect[tx.dialect], params)
    return "\n".join(str(row[-1] if tx.dialect == "sqlite" else row[0]) for row in cursor.fetchall())


def test_the_oldest_waiting_contact_is_read_from_the_waiting_index() -> None:
    """The queue's picks use the partial index ix_contacts_waiting on both databases: no scan, no sort.

    A query whose WHERE does not imply the index's predicate (a bound
    parameter for the status, say) cannot use it, and every pick would sort
    the source's contacts: 76 s to drain 20,000.
    """
    anna = add_operator("Anna", 0)
    sources = [add_source(f"s{n}", weights={anna: 1}) for n in range(3)]
    tx = storage.Tx.of(db.session())
    # A long queue among more history (on a short one PostgreSQL rightly prefers to sort it all).
    now = utcnow()
    lead = register_contact(db.session(), source=sources[0], identity=phone(1)).lead.id
    rows = [
        {"lead_id": lead, "source_id": sources[n % 3].id, "status": "closed" if n % 5 else "open", "created_at": now}
        for n in range(15_000)
    ]
    db.session.execute(sa.insert(Contact), rows)
    if tx.dialect == "postgresql":
        db.session.execute(sa.text("ANALYZE contacts"))
    oldest = storage.OLDEST_WAITING if tx.dialect == "sqlite" else storage.OLDEST_WAITING_LOCKED
    plan = query_plan(oldest, {"source_id": sources[1].id, "limit": distribution.DRAIN_BATCH})
    assert "ix_contacts_waiting" in plan, plan
    assert "TEMP B-TREE" not in plan and "Sort" not in plan and "Seq Scan" not in plan, plan
    # Finding the sources with a queue reads an index too, not the history.
    plan = query_plan(storage.SOURCES_WITH_WAITING, {})
    assert "SCAN c\n" not in plan + "\n" and "Seq Scan on contacts" not in plan, plan


def test_the_engine_stores_timestamps_exactly_as_the_orm_does() -> None:
    """The hand-written statements write a timestamp in the column's own stored form (SQLAlchemy's
    text on SQLite), so comparisons and the waiting queue's order see one format, and it reads back equal."""
    anna = add_operator("Anna")
    source = add_source(weights={anna: 1})
    by_engine = register_contact(db.session(), source=source, identity=phone(1)).contact
    by_orm = Contact(lead_id=by_engine.lead_id, source_id=source.id, created_at=by_engine.created_at)
    db.session.add(by_orm)
    db.session.flush()
    stored: dict[int, object] = dict(db.session.execute(sa.text("SELECT id, created_at FROM contacts")).all())
    assert stored[by_engine.id] == stored[by_orm.id]
    if storage.Tx.of(db.session()).dialect == "sqlite":
        as_text = stored[by_engine.id]
        assert isinstance(as_text, str) and not as_text.endswith("+00:00")
    events = db.session.execute(sa.text("SELECT created_at FROM contact_events")).scalars().all()
    assert events == [stored[by_engine.id]]
    db.session.expire_all()
    assert db.session.get_one(Contact, by_engine.id).created_at == by_engine.created_at


def test_an_operator_closes_or_reopens_only_what_it_still_holds() -> None:
    """``held_by`` is checked under the contact's lock: a contact moved to Boris a moment before
    Anna's close (or reopen) is refused, and nothing changes."""
    anna, boris = add_operator("Anna", 5), add_operator("Boris", 5)
    source = add_source(weights={anna: 1})
    contact = register_contact(db.session(), source=source, identity=phone(1)).contact
    distribution.assign_by_hand(db.session(), contact.id, boris.id)
    with pytest.raises(Conflict):
        distribution.close_contact(db.session(), contact.id, held_by=anna.id)
    assert distribution.close_contact(db.session(), contact.id, held_by=boris.id).status == "closed"
    with pytest.raises(Conflict):
        distribution.reopen_contact(db.session(), contact.id, held_by=anna.id)
    assert db.session.get_one(Contact, contact.id).status == "closed"
    assert distribution.reopen_contact(db.session(), contact.id, held_by=boris.id).status == "open"
    assert_load_matches_open_contacts()
