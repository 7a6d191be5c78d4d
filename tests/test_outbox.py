"""Events out: written with the change they describe, numbered in commit order, read from the feed.

A scripted scenario through the API produces exactly the events it should,
in order, each carrying the actor and the state the API showed right after
the change; a rolled-back change leaves none; the feed pages with a cursor
and never passes over an event that commits late (PostgreSQL, where ids are
taken before commit); old events are forgotten.
"""

import threading
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from leadcrm import create_app, distribution, offers, outbox, webhooks
from leadcrm.database import begin_write
from leadcrm.extensions import db
from leadcrm.models import Event, Source, utcnow
from leadcrm.storage import Tx
from tests.helpers import add_operator, add_source, json_of, phone


def sequence(app: Flask) -> int:
    """The worker's sequencer step, in a transaction of its own."""
    with app.app_context():
        begin_write(db.session)
        n = outbox.sequence(Tx.of(db.session()))
        db.session.commit()
        db.session.remove()
        return n


def feed(client: FlaskClient, **args: Any) -> dict[str, Any]:
    answer = client.get("/api/v1/events", query_string=args)
    assert answer.status_code == 200, answer.get_json()
    return json_of(answer)


def all_events(client: FlaskClient, app: Flask) -> list[dict[str, Any]]:
    sequence(app)
    return feed(client, limit=1000)["events"]


def post(client: FlaskClient, url: str, body: Any = None, status: int = 200) -> Any:
    answer = client.post(url, json=body if body is not None else {})
    assert answer.status_code == status, answer.get_json()
    return answer.get_json()


def patch(client: FlaskClient, url: str, body: Any) -> Any:
    answer = client.patch(url, json=body)
    assert answer.status_code == 200, answer.get_json()
    return answer.get_json()


def test_a_scripted_day_produces_exactly_its_events_in_order_with_the_state_the_api_showed(
    app: Flask, client: FlaskClient
) -> None:
    anna = post(client, "/api/v1/operators/", {"name": "Anna", "max_active_leads": 1}, 201)
    boris = post(client, "/api/v1/operators/", {"name": "Boris", "max_active_leads": 2}, 201)
    bot = post(client, "/api/v1/sources/", {"name": "bot"}, 201)
    post(client, f"/api/v1/sources/{bot['id']}/config", [{"operator_id": anna["id"], "weight": 10}])
    seen = {e["id"] for e in all_events(client, app)}  # setting up: the weights' event

    def contact(contact_id: int) -> dict[str, Any]:
        return json_of(client.get(f"/api/v1/contacts/{contact_id}"))

    def step_events() -> list[dict[str, Any]]:
        new = [e for e in all_events(client, app) if e["id"] not in seen]
        seen.update(e["id"] for e in new)
        return new

    # 1. A new lead: assigned to Anna, the only operator serving the bot. Then a second one waits (Anna full).
    first = post(
        client, "/api/v1/contacts/register", {"source_id": bot["id"], "phone": "+79001112233", "name": "Олег"}, 201
    )
    c1 = first["contact"]["id"]
    events = step_events()
    assert [(e["type"], e["data"].get("reason")) for e in events] == [
        ("contact.registered", None),
        ("contact.assigned", "registered"),
    ]
    for e in events:
        assert e["data"]["contact"] == contact(c1) == first["contact"]
        assert e["data"]["operator"] == json_of(client.get(f"/api/v1/operators/{anna['id']}"))
        lead = json_of(client.get(f"/api/v1/leads/{first['lead']['id']}"))
        assert e["data"]["lead"] == {k: v for k, v in lead.items() if k != "contacts"}
        assert e["actor"] == "token:tests (#1)"
    second = post(client, "/api/v1/contacts/register", {"source_id": bot["id"], "phone": "+79004445566"}, 201)
    c2 = second["contact"]["id"]
    events = step_events()
    assert [e["type"] for e in events] == ["contact.registered", "contact.waiting"]
    assert events[1]["data"]["reason"] == "registered" and events[1]["data"]["operator"] is None

    # 2. Closing the first frees Anna: the waiting one is hers (reason queue), after the close.
    post(client, f"/api/v1/contacts/{c1}/close")
    events = step_events()
    assert [(e["type"], e["data"]["contact"]["id"], e["data"].get("reason")) for e in events] == [
        ("contact.closed", c1, None),
        ("contact.assigned", c2, "queue"),
    ]
    assert events[0]["data"]["contact"] == contact(c1) and events[1]["data"]["contact"] == contact(c2)

    # 3. Reopened while Anna is full: it waits. Boris then serves the bot: the weights, then the queue.
    post(client, f"/api/v1/contacts/{c1}/reopen")
    events = step_events()
    assert [(e["type"], e["data"].get("reason")) for e in events] == [
        ("contact.reopened", None),
        ("contact.waiting", "reopened"),
    ]
    post(
        client,
        f"/api/v1/sources/{bot['id']}/config",
        [{"operator_id": anna["id"], "weight": 10}, {"operator_id": boris["id"], "weight": 30}],
    )
    events = step_events()
    assert [e["type"] for e in events] == ["source.weights_changed", "contact.assigned"]
    assert events[0]["data"]["weights"] == [
        {"operator_id": anna["id"], "weight": 10},
        {"operator_id": boris["id"], "weight": 30},
    ]
    assert events[0]["data"]["source"] == json_of(client.get(f"/api/v1/sources/{bot['id']}"))
    assert events[1]["data"]["contact"]["operator_id"] == boris["id"] and events[1]["data"]["reason"] == "queue"

    # 4. By hand: the second contact to Boris (from Anna); Anna steps away.
    post(client, f"/api/v1/contacts/{c2}/assign", {"operator_id": boris["id"]})
    events = step_events()
    assert [(e["type"], e["data"]["reason"], e["data"]["previous_operator_id"]) for e in events] == [
        ("contact.assigned", "manual", anna["id"])
    ]
    assert events[0]["data"]["contact"] == contact(c2)
    patch(client, f"/api/v1/operators/{anna['id']}", {"presence": "away", "max_active_leads": 3})
    events = step_events()
    assert [e["type"] for e in events] == ["operator.updated"]
    assert events[0]["data"]["operator"] == json_of(client.get(f"/api/v1/operators/{anna['id']}"))
    assert sorted(events[0]["data"]["changed"]) == ["max_active_leads", "presence"]

    # Nothing that changed nothing: a PATCH to the same values, a second close, a repeated assignment.
    patch(client, f"/api/v1/operators/{anna['id']}", {"presence": "away"})
    post(client, f"/api/v1/contacts/{c2}/assign", {"operator_id": boris["id"]})
    assert step_events() == []

    # Every id is stable and unique; created_at and actor on each.
    everything = all_events(client, app)
    assert len({e["id"] for e in everything}) == len(everything)
    assert all(e["id"].startswith("evt_") and e["created_at"].endswith("Z") for e in everything)


def test_an_offer_taken_and_one_taken_back_make_their_events(app: Flask, client: FlaskClient) -> None:
    with app.app_context():
        anna, boris = add_operator("Anna"), add_operator("Boris")
        source = add_source("bot", {anna: 10, boris: 10}, strategy="deterministic")
        source.offer_timeout_seconds = 60
        db.session.commit()
        source_id = source.id
    taken = post(client, "/api/v1/contacts/register", {"source_id": source_id, "phone": "+79001112233"}, 201)
    post(client, f"/api/v1/contacts/{taken['contact']['id']}/accept")
    missed = post(client, "/api/v1/contacts/register", {"source_id": source_id, "phone": "+79001112234"}, 201)

    with app.app_context():
        begin_write(db.session)
        assert offers.expire_offers(db.session(), utcnow() + timedelta(seconds=61)) == 1
        db.session.commit()
    events = all_events(client, app)
    by_contact: dict[int, list[dict[str, Any]]] = {}
    for e in events:
        if e["type"].startswith("contact."):
            by_contact.setdefault(e["data"]["contact"]["id"], []).append(e)
    accepted = [e for e in by_contact[taken["contact"]["id"]] if e["type"] == "contact.accepted"]
    assert len(accepted) == 1 and accepted[0]["data"]["contact"]["accepted_at"] is not None
    last = by_contact[missed["contact"]["id"]][-1]
    assert last["type"] == "contact.assigned" and last["data"]["reason"] == "timeout"
    assert last["data"]["previous_operator_id"] == missed["contact"]["operator_id"]
    assert last["data"]["contact"]["operator_id"] not in (None, missed["contact"]["operator_id"])
    assert last["actor"] == "system"  # expired here without an actor; the worker acts as "worker"


def test_a_rolled_back_registration_leaves_no_event(app: Flask, ctx: None) -> None:
    source = add_source("bot", {add_operator("Anna"): 10})
    db.session.commit()
    before = db.session.scalar(sa.select(sa.func.count()).select_from(Event)) or 0
    begin_write(db.session)
    distribution.register_contact(db.session(), source=db.session.get_one(Source, source.id), identity=phone(1))
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Event)) == before + 2  # in the transaction
    db.session.rollback()
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Event)) == before


def test_the_feed_pages_with_its_cursor_filters_by_type_and_refuses_bad_arguments(
    app: Flask, client: FlaskClient
) -> None:
    with app.app_context():
        source = add_source("bot", {add_operator("Anna", limit=100): 10})
        db.session.commit()
        source_id = source.id
    for n in range(5):
        post(client, "/api/v1/contacts/register", {"source_id": source_id, "phone": f"+7900111{n:04d}"}, 201)
    # Not yet numbered: the feed shows nothing (not even the weights set up before) until the sequencer ran.
    assert feed(client)["events"] == []
    sequence(app)
    everything = feed(client, limit=1000)
    assert everything["has_more"] is False and len(everything["events"]) == 11
    pages, after = [], None
    while True:
        page = feed(client, limit=3, **({"after": after} if after else {}))
        pages.extend(page["events"])
        after = page["next"]
        if not page["has_more"]:
            break
    assert pages == everything["events"]
    assert feed(client, after=after)["events"] == [] and feed(client, after=after)["next"] == after
    registered = feed(client, types="contact.registered", limit=1000)["events"]
    assert [e["type"] for e in registered] == ["contact.registered"] * 5
    both = feed(client, types="contact.registered,contact.assigned", limit=1000)["events"]
    assert len(both) == 10
    for bad in ({"types": "contact.nope"}, {"after": "-1"}, {"after": "abc"}, {"limit": 0}, {"limit": 1001}, {"x": 1}):
        answer = client.get("/api/v1/events", query_string=bad)
        assert answer.status_code == 422 and answer.is_json, bad


def test_old_events_are_forgotten_with_their_deliveries_and_unnumbered_ones_never(app: Flask, ctx: None) -> None:
    source = add_source("bot", {add_operator("Anna"): 10})
    db.session.commit()
    begin_write(db.session)
    distribution.register_contact(db.session(), source=db.session.get_one(Source, source.id), identity=phone(1))
    db.session.commit()
    begin_write(db.session)
    outbox.sequence(Tx.of(db.session()))
    db.session.commit()
    begin_write(db.session)
    distribution.register_contact(db.session(), source=db.session.get_one(Source, source.id), identity=phone(2))
    db.session.commit()  # two events not numbered yet
    total = db.session.scalar(sa.select(sa.func.count()).select_from(Event)) or 0
    begin_write(db.session)
    forgotten = webhooks.forget_events(db.session(), utcnow() + timedelta(days=1), utcnow())
    db.session.commit()
    assert forgotten == total - 2
    left = db.session.scalars(sa.select(Event)).all()
    assert len(left) == 2 and all(e.position is None for e in left)


@pytest.fixture
def postgres_only(backend: Any) -> None:
    if backend.name != "postgresql":
        pytest.skip("SQLite has one writer at a time: no transaction commits behind another's id")


def test_an_event_that_commits_late_with_a_lower_id_is_not_passed_over(
    app: Flask, client: FlaskClient, database_url: str, postgres_only: None
) -> None:
    """PostgreSQL takes ids before commit: a slow transaction's event has a lower id than one committed
    before it. The feed must still list it, after the cursor a reader already holds."""
    with app.app_context():
        # Two sources with operators of their own: the slow transaction holds no row the fast one needs.
        source = add_source("bot", {add_operator("Anna", limit=100): 10})
        other = add_source("form", {add_operator("Boris", limit=100): 10})
        db.session.commit()
        source_id, other_id = source.id, other.id
    slow_app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": database_url})
    registered = threading.Event()
    go_on = threading.Event()

    def slow() -> None:
        with slow_app.app_context():
            begin_write(db.session)
            src = db.session.get_one(Source, source_id)
            distribution.register_contact(db.session(), source=src, identity=phone(1))
            registered.set()
            go_on.wait(20)
            db.session.commit()
            db.session.remove()

    thread = threading.Thread(target=slow)
    thread.start()
    assert registered.wait(20)
    post(client, "/api/v1/contacts/register", {"source_id": other_id, "phone": "+79002223344"}, 201)
    sequence(app)
    page = feed(client, limit=1000)
    fast_ids = [e["id"] for e in page["events"] if e["type"].startswith("contact.")]
    assert len(fast_ids) == 2
    go_on.set()
    thread.join(20)
    with slow_app.app_context():
        db.engine.dispose()
    sequence(app)
    later = feed(client, after=page["next"], limit=1000)["events"]
    assert [e["type"] for e in later] == ["contact.registered", "contact.assigned"]
    # Its ids are lower than those listed before it: a cursor by id would have skipped them.
    assert max(int(e["id"][4:]) for e in later) < min(int(i[4:]) for i in fast_ids)
