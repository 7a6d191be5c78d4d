"""Offers: a contact routed through a source with offer_timeout_seconds must be taken in time.

Through the JSON API and the domain (offers.accept, offers.expire_offers) on a real database: the
offer holds the operator's slot; taking it in time; the deadline passing (real seconds, the app's
LEADCRM_OFFER_TIMEOUT_MIN shortened to 1, the worker's step called with the real clock) takes it
back and routes it to someone else, or lets it wait; misses in a row set the operator away; a
supervisor's assignment, reopening, the queue and closing, each with offers.
"""

import time
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from leadcrm import accounts, offers, sources
from leadcrm.database import begin_write
from leadcrm.errors import InvalidInput
from leadcrm.extensions import db
from leadcrm.models import OperatorEvent, SourceOperator, User, utcnow
from leadcrm.vocabulary import OFFER_MISSES_MAX, OFFER_TIMEOUT_MAX, OFFER_TIMEOUT_MIN
from tests.helpers import PASSWORD, assert_load_matches_open_contacts, csrf_token_of, json_of, login_client

API = "/api/v1"
TIMEOUT = 1  # seconds to take an offer, in these tests (LEADCRM_OFFER_TIMEOUT_MIN is shortened to 1)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def assert_error(response: Any, status: int, code: str | None = None, fields: set[str] | None = None) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json, response.get_data(as_text=True)[:200]
    error = response.json["error"]
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code, error
    if fields is not None:
        assert set(error.get("fields") or {}) == fields, error
    return error


class World:
    """Operators (limit 5 each unless said) serving one source that makes offers of TIMEOUT seconds."""

    def __init__(self, app: Flask, client: FlaskClient, names: tuple[str, ...] = ("Anna", "Boris"), **source: Any):
        app.config["LEADCRM_OFFER_TIMEOUT_MIN"] = 1
        self.app, self.client = app, client
        self.ids: dict[str, int] = {}
        for name in names:
            self.ids[name] = self.ok("POST", "/operators/", {"name": name, "max_active_leads": 5})["id"]
        self.names = {operator_id: name for name, operator_id in self.ids.items()}
        self.source = self.add_source("web", {name: 1 for name in names}, offer_timeout_seconds=TIMEOUT, **source)
        self.phones = 0
        self.users: dict[str, tuple[FlaskClient, dict[str, str]]] = {}

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        response = self.client.open(f"{API}{path}", method=method, json=body)
        assert response.status_code in (200, 201), response.get_data(as_text=True)
        return json_of(response)

    def add_source(self, name: str, weights: dict[str, int], **fields: Any) -> int:
        source_id = self.ok("POST", "/sources/", {"name": name, **fields})["id"]
        self.weights(source_id, weights)
        return source_id

    def weights(self, source_id: int, weights: dict[str, int]) -> None:
        config = [{"operator_id": self.ids[name], "weight": weight} for name, weight in weights.items()]
        self.ok("POST", f"/sources/{source_id}/config", config)

    def register(self, source_id: int | None = None, phone: str | None = None) -> dict:
        """A new lead's contact (or ``phone``'s), as the registration answers it."""
        if phone is None:
            self.phones += 1
            phone = f"+7900{self.phones:07d}"
        body = {"source_id": source_id or self.source, "phone": phone}
        return self.ok("POST", "/contacts/register", body)

    def contact(self, contact_id: int) -> dict:
        return self.ok("GET", f"/contacts/{contact_id}")

    def holder(self, contact_id: int) -> str | None:
        operator_id = self.contact(contact_id)["operator_id"]
        return self.names[operator_id] if operator_id is not None else None

    def events(self, contact_id: int) -> list[tuple[str, str | None, str | None]]:
        return [
            (e["reason"], self.names.get(e["from_operator_id"]), self.names.get(e["to_operator_id"]))
            for e in self.ok("GET", f"/contacts/{contact_id}/events")
        ]

    def operator(self, name: str) -> dict:
        return self.ok("GET", f"/operators/{self.ids[name]}")

    def load(self, name: str) -> int:
        return self.operator(name)["active_leads"]

    def user(self, name: str) -> tuple[FlaskClient, dict[str, str]]:
        """The operator user working as ``name``: its browser session and CSRF header."""
        if name not in self.users:
            with self.app.app_context():
                user = accounts.create_user(
                    db.session(), username=name.lower(), password=PASSWORD, role="operator", operator_id=self.ids[name]
                )
                db.session.commit()
                session = login_client(self.app, db.session.get_one(User, user.id))
            page = session.get("/login", follow_redirects=True).get_data(as_text=True)
            self.users[name] = (session, {"X-CSRFToken": csrf_token_of(page)})
        return self.users[name]

    def accept_as(self, name: str, contact_id: int) -> Any:
        session, csrf = self.user(name)
        return session.post(f"{API}/contacts/{contact_id}/accept", headers=csrf)

    def expire(self) -> int:
        """The worker's offers step, with the real clock, in a transaction of its own."""
        with self.app.app_context():
            begin_write(db.session)
            expired = offers.expire_offers(db.session(), utcnow(), limit=100)
            db.session.commit()
            assert_load_matches_open_contacts()
            return expired

    def missed(self, name: str, source_id: int | None = None) -> int:
        with self.app.app_context():
            row = db.session.get_one(SourceOperator, (source_id or self.source, self.ids[name]))
            return row.missed_offers

    def history(self, name: str) -> list[tuple[str, str | None]]:
        with self.app.app_context():
            query = sa.select(OperatorEvent).where(OperatorEvent.operator_id == self.ids[name])
            return [(e.field, e.value) for e in db.session.scalars(query.order_by(OperatorEvent.id))]

    def check_load(self) -> None:
        with self.app.app_context():
            assert_load_matches_open_contacts()


def wait_past(*deadlines: str | None) -> None:
    """Sleep, really, until every one of these deadlines has passed."""
    latest = max(at(d) for d in deadlines if d is not None)
    left = (latest - utcnow()).total_seconds()
    if left >= 0:
        time.sleep(left + 0.05)
    assert utcnow() > latest


@pytest.fixture
def world(app: Flask, client: FlaskClient) -> World:
    return World(app, client)


# --- the offer ------------------------------------------------------------------------------


def test_a_registration_through_a_source_with_offers_is_an_offer_holding_the_slot(
    app: Flask, client: FlaskClient
) -> None:
    world = World(app, client, ("Anna",))
    source = world.add_source("bot", {"Anna": 1}, offer_timeout_seconds=60)
    registered = world.register(source)
    contact = registered["contact"]
    assert contact["operator_id"] == world.ids["Anna"]
    assert at(contact["offered_until"]) == at(contact["created_at"]) + timedelta(seconds=60)
    assert contact["accepted_at"] is None
    assert registered["assigned_operator"]["active_leads"] == 1 == world.load("Anna")
    assert world.contact(contact["id"]) == contact
    # A source without offers: the contact is simply the operator's, as before.
    plain = world.add_source("plain", {"Anna": 1})
    untimed = world.register(plain)["contact"]
    assert (untimed["offered_until"], untimed["accepted_at"]) == (None, None)
    world.check_load()


def test_a_returning_lead_of_a_sticky_source_gets_an_offer_too(app: Flask, client: FlaskClient) -> None:
    world = World(app, client, ("Anna", "Boris"))
    source = world.add_source("sticky", {"Anna": 1}, sticky=True, offer_timeout_seconds=60)
    first = world.register(source, phone="+79001112233")["contact"]
    world.weights(source, {"Anna": 1, "Boris": 1000})
    again = world.register(source, phone="+79001112233")["contact"]
    assert again["operator_id"] == first["operator_id"] == world.ids["Anna"]
    assert at(again["offered_until"]) == at(again["created_at"]) + timedelta(seconds=60)
    assert world.events(again["id"]) == [("sticky", None, "Anna")]


def test_the_operator_takes_its_offer_in_time_and_taking_it_again_changes_nothing(world: World) -> None:
    contact = world.register()["contact"]
    holder = world.holder(contact["id"])
    assert holder is not None
    before = utcnow()
    taken = world.accept_as(holder, contact["id"])
    assert taken.status_code == 200, taken.get_data(as_text=True)
    answer = json_of(taken)
    assert answer["offered_until"] is None and before <= at(answer["accepted_at"]) <= utcnow()
    assert (answer["operator_id"], answer["status"]) == (contact["operator_id"], "open")
    again = world.accept_as(holder, contact["id"])
    assert again.status_code == 200 and json_of(again) == answer
    assert world.contact(contact["id"]) == answer
    # Taken: the deadline passing changes nothing.
    wait_past(contact["offered_until"])
    assert world.expire() == 0
    assert world.contact(contact["id"]) == answer
    assert world.load(holder) == 1


def test_taking_an_offer_starts_the_misses_again_from_zero(app: Flask, client: FlaskClient) -> None:
    world = World(app, client, ("Anna",))
    first = world.register()["contact"]
    wait_past(first["offered_until"])
    assert world.expire() == 1
    assert world.missed("Anna") == 1
    second = world.register()["contact"]
    assert second["operator_id"] == world.ids["Anna"]
    assert world.accept_as("Anna", second["id"]).status_code == 200
    assert world.missed("Anna") == 0


def test_a_supervisor_takes_an_offer_for_its_operator(world: World) -> None:
    contact = world.register()["contact"]
    taken = world.ok("POST", f"/contacts/{contact['id']}/accept")
    assert taken["offered_until"] is None and taken["accepted_at"] is not None
    assert taken["operator_id"] == contact["operator_id"]


def test_a_supervisor_naming_the_operator_takes_only_that_ones_offer(world: World) -> None:
    contact = world.register()["contact"]
    holder = contact["operator_id"]
    other = next(i for i in world.ids.values() if i != holder)
    refused = world.client.post(f"{API}/contacts/{contact['id']}/accept?operator_id={other}")
    assert refused.status_code == 409 and json_of(refused)["error"]["code"]
    assert world.contact(contact["id"])["offered_until"] is not None  # nothing taken
    taken = world.ok("POST", f"/contacts/{contact['id']}/accept?operator_id={holder}")
    assert taken["operator_id"] == holder and taken["accepted_at"] is not None
    world.check_load()


def test_an_operator_user_may_not_take_anothers_contact(world: World) -> None:
    contact = world.register()["contact"]
    other = "Boris" if world.holder(contact["id"]) == "Anna" else "Anna"
    assert_error(world.accept_as(other, contact["id"]), 403, "forbidden")
    assert world.contact(contact["id"]) == contact  # still an offer to its operator
    assert_error(world.accept_as(other, 999), 404)


def test_taking_an_offer_after_its_deadline_is_409_before_and_after_the_worker_took_it_back(world: World) -> None:
    contact = world.register()["contact"]
    holder = world.holder(contact["id"])
    assert holder is not None
    wait_past(contact["offered_until"])
    # The worker has not looked yet: the deadline decides, not the worker.
    late = assert_error(world.accept_as(holder, contact["id"]), 409, "conflict")
    assert "ran out" in late["message"]
    assert world.contact(contact["id"]) == contact  # still the offer the worker will take back
    assert_error(world.client.post(f"{API}/contacts/{contact['id']}/accept"), 409, "conflict")  # nor for anyone
    assert world.expire() == 1
    # Taken back and offered to the other: still 409 for the one who missed it, not "not yours".
    late = assert_error(world.accept_as(holder, contact["id"]), 409, "conflict")
    assert "ran out" in late["message"]
    other = world.holder(contact["id"])
    assert other not in (None, holder)
    assert other is not None and world.accept_as(other, contact["id"]).status_code == 200


# --- the deadline passes --------------------------------------------------------------------


def test_an_offer_not_taken_goes_to_someone_else_and_never_back_to_who_missed_it(
    app: Flask, client: FlaskClient
) -> None:
    world = World(app, client, ("Anna", "Boris", "Carl"), offer_misses_away=OFFER_MISSES_MAX)
    contacts = [world.register()["contact"] for _ in range(6)]
    first = {c["id"]: world.names[c["operator_id"]] for c in contacts}
    wait_past(*(c["offered_until"] for c in contacts))
    started = utcnow()
    assert world.expire() == 6
    for c in contacts:
        now = world.contact(c["id"])
        missed_by, routed_to = first[c["id"]], world.names[now["operator_id"]]
        assert routed_to != missed_by
        assert world.events(c["id"]) == [("registered", None, missed_by), ("timeout", missed_by, routed_to)]
        assert now["accepted_at"] is None and now["status"] == "open"
        assert started <= at(now["assigned_at"]) <= utcnow()
        assert at(now["offered_until"]) == at(now["assigned_at"]) + timedelta(seconds=TIMEOUT)  # a new offer
    for name in world.ids:
        assert world.missed(name) == sum(1 for missed_by in first.values() if missed_by == name)
        assert world.load(name) == sum(1 for c in contacts if world.holder(c["id"]) == name)
    world.check_load()


def test_a_second_miss_goes_back_to_the_first_operator(world: World) -> None:
    contact = world.register()["contact"]
    first = world.holder(contact["id"])
    wait_past(contact["offered_until"])
    assert world.expire() == 1
    second = world.holder(contact["id"])
    assert second not in (None, first)
    wait_past(world.contact(contact["id"])["offered_until"])
    assert world.expire() == 1
    assert world.holder(contact["id"]) == first
    assert [e[0] for e in world.events(contact["id"])] == ["registered", "timeout", "timeout"]
    assert world.events(contact["id"])[2] == ("timeout", second, first)


def test_with_nobody_else_eligible_a_missed_offer_waits(app: Flask, client: FlaskClient) -> None:
    world = World(app, client, ("Anna", "Boris"))
    world.ok("PATCH", f"/operators/{world.ids['Boris']}", {"presence": "away"})
    contact = world.register()["contact"]
    assert world.holder(contact["id"]) == "Anna"
    wait_past(contact["offered_until"])
    assert world.expire() == 1
    waiting = world.contact(contact["id"])
    assert (waiting["operator_id"], waiting["offered_until"], waiting["assigned_at"]) == (None, None, None)
    assert waiting["status"] == "open"
    assert world.events(contact["id"]) == [("registered", None, "Anna"), ("timeout", "Anna", None)]
    assert world.load("Anna") == 0
    assert world.expire() == 0  # nothing more to take back
    # Anna leaves, Boris is back: the waiting contact goes to him, as an offer.
    world.ok("PATCH", f"/operators/{world.ids['Anna']}", {"presence": "away"})
    world.ok("PATCH", f"/operators/{world.ids['Boris']}", {"presence": "available"})
    offered = world.contact(contact["id"])
    assert offered["operator_id"] == world.ids["Boris"] and offered["offered_until"] is not None
    assert world.events(contact["id"])[-1] == ("queue", None, "Boris")
    world.check_load()


def test_misses_in_a_row_set_the_operator_away_until_it_sets_its_presence_again(
    app: Flask, client: FlaskClient
) -> None:
    world = World(app, client, ("Anna",), offer_misses_away=2)
    # A miss, a take, a miss: not in a row.
    missed = world.register()["contact"]
    wait_past(missed["offered_until"])
    assert world.expire() == 1
    taken = world.register()["contact"]
    assert world.accept_as("Anna", taken["id"]).status_code == 200
    missed_again = world.register()["contact"]
    wait_past(missed_again["offered_until"])
    assert world.expire() == 1
    anna = world.operator("Anna")
    assert (anna["presence"], anna["away_reason"], world.missed("Anna")) == ("available", None, 1)
    # A second miss in a row: away, for the reason leadcrm gives.
    third = world.register()["contact"]
    assert third["operator_id"] == world.ids["Anna"]
    wait_past(third["offered_until"])
    assert world.expire() == 1
    anna = world.operator("Anna")
    assert (anna["presence"], anna["away_reason"], anna["at_work"]) == ("away", "missed_offers", False)
    assert world.history("Anna") == [("presence", "missed_offers")]
    assert world.missed("Anna") == 0  # counted again from zero once she is back
    newest = world.register()
    assert newest["assigned_operator"] is None  # away: nothing new
    assert world.load("Anna") == 1  # she keeps the contact she took
    # Her user sets her available again: the reason goes, the waiting contacts come to her as offers.
    session, csrf = world.user("Anna")
    back = session.patch(f"{API}/operators/{world.ids['Anna']}", json={"presence": "available"}, headers=csrf)
    assert back.status_code == 200, back.get_data(as_text=True)
    assert (json_of(back)["presence"], json_of(back)["away_reason"]) == ("available", None)
    assert world.history("Anna") == [("presence", "missed_offers"), ("presence", "available")]
    for contact_id in (missed["id"], missed_again["id"], third["id"], newest["contact"]["id"]):
        offered = world.contact(contact_id)
        assert offered["operator_id"] == world.ids["Anna"] and offered["offered_until"] is not None
        assert world.events(contact_id)[-1] == ("queue", None, "Anna")
    assert world.load("Anna") == 5
    world.check_load()


def test_setting_presence_away_by_hand_clears_the_reason_too(app: Flask, client: FlaskClient) -> None:
    world = World(app, client, ("Anna",), offer_misses_away=1)
    contact = world.register()["contact"]
    wait_past(contact["offered_until"])
    assert world.expire() == 1
    assert world.operator("Anna")["away_reason"] == "missed_offers"
    anna = world.ok("PATCH", f"/operators/{world.ids['Anna']}", {"presence": "away"})
    assert (anna["presence"], anna["away_reason"]) == ("away", None)


# --- offers and the other ways a contact moves -------------------------------------------------


def test_a_supervisors_assignment_counts_as_taken(world: World) -> None:
    contact = world.register()["contact"]
    other = "Boris" if world.holder(contact["id"]) == "Anna" else "Anna"
    before = utcnow()
    moved = world.ok("POST", f"/contacts/{contact['id']}/assign", {"operator_id": world.ids[other]})
    assert moved["operator_id"] == world.ids[other] and moved["offered_until"] is None
    assert before <= at(moved["accepted_at"]) <= utcnow()
    wait_past(contact["offered_until"])
    assert world.expire() == 0
    assert world.contact(contact["id"]) == moved
    assert world.missed("Anna") == world.missed("Boris") == 0
    world.check_load()


def test_a_supervisor_assigning_an_offer_to_the_operator_it_is_offered_to_takes_it(world: World) -> None:
    contact = world.register()["contact"]
    holder = world.holder(contact["id"])
    assert holder is not None
    assigned = world.ok("POST", f"/contacts/{contact['id']}/assign", {"operator_id": world.ids[holder]})
    assert assigned["operator_id"] == world.ids[holder]
    assert assigned["offered_until"] is None and assigned["accepted_at"] is not None
    wait_past(contact["offered_until"])
    assert world.expire() == 0
    world.check_load()


def test_a_supervisor_assigning_to_the_offered_operator_past_the_deadline_before_the_worker_takes_it(
    world: World,
) -> None:
    contact = world.register()["contact"]
    holder = world.holder(contact["id"])
    assert holder is not None
    wait_past(contact["offered_until"])  # due, but the worker has not taken it back yet
    assigned = world.ok("POST", f"/contacts/{contact['id']}/assign", {"operator_id": world.ids[holder]})
    assert assigned["offered_until"] is None and assigned["accepted_at"] is not None
    assert world.expire() == 0 and world.holder(contact["id"]) == holder
    world.check_load()


def test_reopening_through_a_source_with_offers_makes_an_offer(world: World) -> None:
    contact = world.register()["contact"]
    holder = world.holder(contact["id"])
    assert holder is not None
    world.ok("POST", f"/contacts/{contact['id']}/accept")
    closed = world.ok("POST", f"/contacts/{contact['id']}/close")
    assert (closed["offered_until"], closed["status"]) == (None, "closed")
    reopened = world.ok("POST", f"/contacts/{contact['id']}/reopen")
    assert reopened["operator_id"] == world.ids[holder]  # back to its operator, which has room
    assert reopened["accepted_at"] is None  # to be taken again
    assert at(reopened["offered_until"]) == at(reopened["assigned_at"]) + timedelta(seconds=TIMEOUT)
    wait_past(reopened["offered_until"])
    assert world.expire() == 1
    assert world.holder(contact["id"]) not in (None, holder)
    assert world.events(contact["id"])[-2:] == [
        ("reopened", None, holder),
        ("timeout", holder, world.holder(contact["id"])),
    ]


def test_the_queue_drains_into_offers_and_closing_an_offer_ends_it(app: Flask, client: FlaskClient) -> None:
    world = World(app, client, ("Anna",))
    world.ok("PATCH", f"/operators/{world.ids['Anna']}", {"max_active_leads": 1})
    first = world.register()["contact"]
    second = world.register()["contact"]
    assert second["operator_id"] is None  # Anna is full
    closed = world.ok("POST", f"/contacts/{first['id']}/close")
    assert (closed["offered_until"], closed["accepted_at"]) == (None, None)  # no longer an offer
    drained = world.contact(second["id"])
    assert drained["operator_id"] == world.ids["Anna"]
    assert at(drained["offered_until"]) == at(drained["assigned_at"]) + timedelta(seconds=TIMEOUT)
    assert world.events(second["id"]) == [("registered", None, None), ("queue", None, "Anna")]
    world.ok("POST", f"/contacts/{second['id']}/accept")
    wait_past(first["offered_until"], drained["offered_until"])
    assert world.expire() == 0  # the closed one and the taken one: nothing to take back
    assert world.contact(first["id"]) == closed
    assert world.missed("Anna") == 0


def test_the_freed_slot_takes_a_contact_of_another_source_but_not_the_one_missed(
    app: Flask, client: FlaskClient
) -> None:
    world = World(app, client, ("Anna",))
    world.ok("PATCH", f"/operators/{world.ids['Anna']}", {"max_active_leads": 1})
    other = world.add_source("chat", {"Anna": 1})  # no offers
    offered = world.register()["contact"]
    waiting = world.register(other)["contact"]
    assert (offered["operator_id"], waiting["operator_id"]) == (world.ids["Anna"], None)
    wait_past(offered["offered_until"])
    assert world.expire() == 1
    missed = world.contact(offered["id"])
    assert missed["operator_id"] is None  # nobody else serves its source: it waits
    assert world.events(offered["id"]) == [("registered", None, "Anna"), ("timeout", "Anna", None)]
    taken = world.contact(waiting["id"])
    assert taken["operator_id"] == world.ids["Anna"] and taken["offered_until"] is None  # its source makes no offers
    assert world.events(waiting["id"]) == [("registered", None, None), ("queue", None, "Anna")]
    assert world.load("Anna") == 1
    assert (world.missed("Anna"), world.missed("Anna", other)) == (1, 0)
    world.check_load()


# --- the source's offer settings --------------------------------------------------------------


def test_a_sources_offer_settings_are_stored_shown_and_changed(client: FlaskClient) -> None:
    response = client.post(f"{API}/sources/", json={"name": "web"})
    source = json_of(response)
    assert (source["offer_timeout_seconds"], source["offer_misses_away"]) == (None, 3)
    on = {"offer_timeout_seconds": OFFER_TIMEOUT_MIN, "offer_misses_away": OFFER_MISSES_MAX}
    changed = json_of(client.patch(f"{API}/sources/{source['id']}", json=on))
    assert changed == {**source, **on}
    assert json_of(client.get(f"{API}/sources/{source['id']}")) == changed
    assert json_of(client.get(f"{API}/sources/"))["items"] == [changed]
    # Only the fields sent change; null turns offers off.
    renamed = json_of(client.patch(f"{API}/sources/{source['id']}", json={"name": "site"}))
    assert renamed == {**changed, "name": "site"}
    off = json_of(client.patch(f"{API}/sources/{source['id']}", json={"offer_timeout_seconds": None}))
    assert (off["offer_timeout_seconds"], off["offer_misses_away"]) == (None, OFFER_MISSES_MAX)
    longest = {"name": "bot", "offer_timeout_seconds": OFFER_TIMEOUT_MAX, "offer_misses_away": 1}
    assert json_of(client.post(f"{API}/sources/", json=longest))["offer_timeout_seconds"] == OFFER_TIMEOUT_MAX


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"offer_timeout_seconds": OFFER_TIMEOUT_MIN - 1}, {"offer_timeout_seconds"}),
        ({"offer_timeout_seconds": 0}, {"offer_timeout_seconds"}),
        ({"offer_timeout_seconds": -30}, {"offer_timeout_seconds"}),
        ({"offer_timeout_seconds": OFFER_TIMEOUT_MAX + 1}, {"offer_timeout_seconds"}),
        ({"offer_timeout_seconds": 10**200}, {"offer_timeout_seconds"}),
        ({"offer_timeout_seconds": 60.5}, {"offer_timeout_seconds"}),
        ({"offer_timeout_seconds": "60"}, {"offer_timeout_seconds"}),
        ({"offer_timeout_seconds": True}, {"offer_timeout_seconds"}),
        ({"offer_misses_away": 0}, {"offer_misses_away"}),
        ({"offer_misses_away": OFFER_MISSES_MAX + 1}, {"offer_misses_away"}),
        ({"offer_misses_away": None}, {"offer_misses_away"}),
    ],
)
def test_offer_settings_out_of_range_are_422_naming_the_field(
    client: FlaskClient, body: dict, fields: set[str]
) -> None:
    assert_error(client.post(f"{API}/sources/", json={"name": "web", **body}), 422, "validation_error", fields)
    assert json_of(client.get(f"{API}/sources/"))["total"] == 0
    source = json_of(client.post(f"{API}/sources/", json={"name": "web"}))
    assert_error(client.patch(f"{API}/sources/{source['id']}", json=body), 422, "validation_error", fields)
    assert json_of(client.get(f"{API}/sources/{source['id']}")) == source


def test_the_shortest_offer_timeout_is_the_servers_setting(app: Flask, client: FlaskClient) -> None:
    assert_error(client.post(f"{API}/sources/", json={"name": "web", "offer_timeout_seconds": 5}), 422)
    app.config["LEADCRM_OFFER_TIMEOUT_MIN"] = 5
    assert json_of(client.post(f"{API}/sources/", json={"name": "web", "offer_timeout_seconds": 5}))["id"]
    assert_error(client.post(f"{API}/sources/", json={"name": "bot", "offer_timeout_seconds": 4}), 422)


def test_the_domain_checks_the_offer_settings_itself(ctx: None) -> None:
    for timeout, misses, field in ((29, 3, "offer_timeout_seconds"), (30, 0, "offer_misses_away")):
        with pytest.raises(InvalidInput) as refused:
            sources.create_source(db.session(), name="web", offer_timeout_seconds=timeout, offer_misses_away=misses)
        assert set(refused.value.fields) == {field}
    source = sources.create_source(db.session(), name="web", offer_timeout_seconds=1, offer_timeout_min=1)
    with pytest.raises(InvalidInput):
        sources.update_source(db.session(), source, {"offer_timeout_seconds": 1})  # the default minimum: 30
    assert source.offer_timeout_seconds == 1


# --- two workers expiring crossing offers (PostgreSQL's row locks) ----------------------------


def test_two_workers_expiring_crossing_offers_lock_operators_in_id_order(
    backend: Any, app: Flask, client: FlaskClient
) -> None:
    """Anna's offer of one source and Boris's of another expire at once; each goes to the other. Two
    workers (threads here, one per server in real life) each take one: the one who missed it and the one
    it goes to are locked in id order, so the second worker queues behind the first instead of a deadlock.
    A third connection holds Anna's weight row for her source a moment, so that the second worker has
    locked Boris and claims Anna before the first claims Boris (the order that deadlocked)."""
    if backend.name != "postgresql":
        pytest.skip("row locks: PostgreSQL (on SQLite the workers take turns on the one write lock)")
    import threading

    world = World(app, client, ("Anna", "Boris"))
    other = world.add_source("chat", {"Anna": 1, "Boris": 1}, offer_timeout_seconds=TIMEOUT)
    anna, boris = world.ids["Anna"], world.ids["Boris"]
    world.ok("PATCH", f"/operators/{boris}", {"presence": "away"})
    first = world.register()["contact"]  # Anna's, from "web"
    world.ok("PATCH", f"/operators/{boris}", {"presence": "available"})
    world.ok("PATCH", f"/operators/{anna}", {"presence": "away"})
    second = world.register(other)["contact"]  # Boris's, from "chat"
    world.ok("PATCH", f"/operators/{anna}", {"presence": "available"})
    assert (first["operator_id"], second["operator_id"]) == (anna, boris)
    wait_past(first["offered_until"], second["offered_until"])

    failures: list[BaseException] = []

    def worker() -> None:
        try:
            with app.app_context():
                begin_write(db.session)
                assert offers.expire_offers(db.session(), utcnow()) == 1
                db.session.commit()
        except BaseException as exc:  # noqa: BLE001  (reported by the test)
            failures.append(exc)

    with app.app_context():
        holder = db.engine.connect()
        blocker = holder.begin()
        holder.execute(
            sa.text("SELECT 1 FROM source_operators WHERE source_id = :s AND operator_id = :o FOR UPDATE"),
            {"s": world.source, "o": anna},
        )
        one = threading.Thread(target=worker)
        one.start()  # takes Anna's offer, and waits at her weight row of "web"
        time.sleep(0.5)
        two = threading.Thread(target=worker)
        two.start()  # takes Boris's offer, and goes on to Anna
        time.sleep(0.5)
        blocker.rollback()
        holder.close()
        one.join(20)
        two.join(20)
    assert not one.is_alive() and not two.is_alive()
    assert not failures, failures
    assert (world.holder(first["id"]), world.holder(second["id"])) == ("Boris", "Anna")
    world.check_load()
