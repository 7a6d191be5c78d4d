"""The JSON API of presence and of operator users: presence, the idle setting and at_work in the
answers, and an operator user's browser session reaching only its own operator, contacts and leads."""

from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from leadcrm import accounts
from leadcrm.extensions import db
from leadcrm.models import Operator, OperatorEvent, User, utcnow
from leadcrm.vocabulary import IDLE_MINUTES_MAX
from tests.helpers import PASSWORD, csrf_token_of, json_of, login_client

API = "/api/v1"


def assert_error(response: Any, status: int, fields: set[str] | None = None) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json, response.get_data(as_text=True)[:200]
    error = response.json["error"]
    assert isinstance(error["message"], str) and error["message"]
    if fields is not None:
        assert set(error.get("fields") or {}) == fields, error
    return error


class World:
    """Anna and Boris serving one source, a contact of each, and Anna's operator user's session."""

    def __init__(self, app: Flask, client: FlaskClient) -> None:
        self.client = client
        self.anna = self.post("/operators/", {"name": "Anna", "max_active_leads": 5})
        self.boris = self.post("/operators/", {"name": "Boris", "max_active_leads": 5})
        self.source = self.post("/sources/", {"name": "telegram_bot"})
        self.weights({self.anna["id"]: 1})
        self.annas = self.register("+79000000001")
        self.weights({self.boris["id"]: 1})
        self.boriss = self.register("+79000000002")
        assert self.annas["assigned_operator"]["id"] == self.anna["id"]
        assert self.boriss["assigned_operator"]["id"] == self.boris["id"]
        with app.app_context():
            user = accounts.create_user(
                db.session(), username="anna", password=PASSWORD, role="operator", operator_id=self.anna["id"]
            )
            db.session.commit()
            user = db.session.get_one(User, user.id)
            self.operator = login_client(app, user)
        page = self.operator.get("/login", follow_redirects=True).get_data(as_text=True)
        self.csrf = {"X-CSRFToken": csrf_token_of(page)}

    def post(self, path: str, body: Any) -> dict:
        response = self.client.post(f"{API}{path}", json=body)
        assert response.status_code in (200, 201), response.get_data(as_text=True)
        return json_of(response)

    def weights(self, weights: dict[int, int]) -> None:
        config = [{"operator_id": op, "weight": w} for op, w in weights.items()]
        self.post(f"/sources/{self.source['id']}/config", config)

    def register(self, phone: str) -> dict:
        return self.post("/contacts/register", {"source_id": self.source["id"], "phone": phone})

    def as_operator(self, method: str, path: str, body: Any = None, **query: Any) -> Any:
        headers = self.csrf if method != "GET" else {}
        return self.operator.open(f"{API}{path}", method=method, json=body, headers=headers, query_string=query)


@pytest.fixture
def world(app: Flask, client: FlaskClient) -> World:
    return World(app, client)


# --- the fields -----------------------------------------------------------------------------


def test_operators_answer_presence_idle_setting_last_seen_and_at_work(client: FlaskClient) -> None:
    created = client.post(
        f"{API}/operators/", json={"name": "Anna", "max_active_leads": 2, "presence": "away", "idle_away_minutes": 5}
    )
    assert created.status_code == 201
    anna = json_of(created)
    assert (anna["presence"], anna["idle_away_minutes"], anna["last_seen_at"], anna["at_work"]) == (
        "away",
        5,
        None,
        False,
    )
    # Available, but never seen with the idle setting on: idle, so not at work.
    anna = json_of(client.patch(f"{API}/operators/{anna['id']}", json={"presence": "available"}))
    assert (anna["presence"], anna["at_work"]) == ("available", False)
    # null turns the setting off: at work.
    anna = json_of(client.patch(f"{API}/operators/{anna['id']}", json={"idle_away_minutes": None}))
    assert (anna["idle_away_minutes"], anna["at_work"]) == (None, True)
    assert json_of(client.get(f"{API}/operators/{anna['id']}")) == anna
    assert json_of(client.get(f"{API}/operators/"))["items"] == [anna]
    status = json_of(client.get(f"{API}/distribution_status/"))["operators"]
    assert status == [
        {
            "operator_id": anna["id"],
            "name": "Anna",
            "is_active": True,
            "active_leads": 0,
            "max_active_leads": 2,
            "presence": "available",
            "at_work": True,
        }
    ]


def test_distribution_status_says_an_idle_operator_is_not_at_work(client: FlaskClient) -> None:
    client.post(f"{API}/operators/", json={"name": "Anna", "max_active_leads": 2, "idle_away_minutes": 5})
    client.post(f"{API}/operators/", json={"name": "Boris", "max_active_leads": 2, "presence": "away"})
    status = json_of(client.get(f"{API}/distribution_status/"))["operators"]
    assert [(o["presence"], o["at_work"]) for o in status] == [("available", False), ("away", False)]


@pytest.mark.parametrize("value", [0, -1, IDLE_MINUTES_MAX + 1, 2.5, "5", True, [5]])
def test_a_wrong_idle_setting_is_a_422_naming_it(client: FlaskClient, value: Any) -> None:
    assert_error(
        client.post(f"{API}/operators/", json={"name": "Anna", "max_active_leads": 2, "idle_away_minutes": value}),
        422,
        {"idle_away_minutes"},
    )
    client.post(f"{API}/operators/", json={"name": "Boris", "max_active_leads": 2})
    assert_error(client.patch(f"{API}/operators/1", json={"idle_away_minutes": value}), 422, {"idle_away_minutes"})


@pytest.mark.parametrize("value", [None, "asleep", "", "AWAY", 1])
def test_a_wrong_presence_is_a_422_naming_it(client: FlaskClient, value: Any) -> None:
    client.post(f"{API}/operators/", json={"name": "Boris", "max_active_leads": 2})
    assert_error(client.patch(f"{API}/operators/1", json={"presence": value}), 422, {"presence"})
    body = {"name": "Anna", "max_active_leads": 2, "presence": value}
    assert_error(client.post(f"{API}/operators/", json=body), 422, {"presence"})


def test_the_largest_idle_setting_is_taken(client: FlaskClient) -> None:
    body = {"name": "Anna", "max_active_leads": 2, "idle_away_minutes": IDLE_MINUTES_MAX}
    assert json_of(client.post(f"{API}/operators/", json=body))["idle_away_minutes"] == IDLE_MINUTES_MAX


def test_available_again_through_the_api_takes_the_waiting_contacts(world: World) -> None:
    client = world.client
    assert client.patch(f"{API}/operators/{world.boris['id']}", json={"presence": "away"}).status_code == 200
    waiting = world.register("+79000000003")
    assert waiting["assigned_operator"] is None
    boris = json_of(client.patch(f"{API}/operators/{world.boris['id']}", json={"presence": "available"}))
    assert boris["active_leads"] == 2
    assert json_of(client.get(f"{API}/contacts/{waiting['contact']['id']}"))["operator_id"] == world.boris["id"]


# --- an operator user ---------------------------------------------------------------------


def test_an_operator_user_reads_its_own_operator_only(world: World) -> None:
    own = world.as_operator("GET", f"/operators/{world.anna['id']}")
    assert own.status_code == 200 and json_of(own)["name"] == "Anna"
    assert_error(world.as_operator("GET", f"/operators/{world.boris['id']}"), 403)
    assert_error(world.as_operator("GET", "/operators/999"), 403)  # not its own: whether it exists is not said
    assert_error(world.as_operator("GET", "/operators/"), 403)


def test_an_operator_user_sets_its_own_presence_and_nothing_else(app: Flask, world: World) -> None:
    anna = f"/operators/{world.anna['id']}"
    away = world.as_operator("PATCH", anna, {"presence": "away"})
    assert away.status_code == 200, away.get_data(as_text=True)
    assert (json_of(away)["presence"], json_of(away)["at_work"]) == ("away", False)
    # Any other field, alone or with presence, is refused, and nothing changes.
    for body in ({"max_active_leads": 50}, {"presence": "available", "is_active": False}, {"name": "Queen"}):
        error = assert_error(world.as_operator("PATCH", anna, body), 403)
        assert "presence" in error["message"]
    assert_error(world.as_operator("PATCH", anna, {"idle_away_minutes": None}), 403)
    assert_error(world.as_operator("PATCH", f"/operators/{world.boris['id']}", {"presence": "away"}), 403)
    assert_error(world.as_operator("PATCH", anna, {"presence": "asleep"}), 422, {"presence"})
    after = json_of(world.client.get(f"{API}{anna}"))
    assert (after["presence"], after["max_active_leads"], after["name"], after["is_active"]) == (
        "away",
        5,
        "Anna",
        True,
    )
    assert json_of(world.client.get(f"{API}/operators/{world.boris['id']}"))["presence"] == "available"
    with app.app_context():
        events = db.session.scalars(sa.select(OperatorEvent).order_by(OperatorEvent.id)).all()
        assert [(e.operator_id, e.field, e.value, e.actor) for e in events] == [
            (world.anna["id"], "presence", "away", "user:anna")
        ]


def test_an_operator_user_lists_only_its_own_contacts(world: World) -> None:
    own = world.as_operator("GET", "/contacts/")
    assert own.status_code == 200
    assert [c["id"] for c in json_of(own)["items"]] == [world.annas["contact"]["id"]]
    assert json_of(own)["total"] == 1
    same = world.as_operator("GET", "/contacts/", operator_id=world.anna["id"])
    assert [c["id"] for c in json_of(same)["items"]] == [world.annas["contact"]["id"]]
    assert_error(world.as_operator("GET", "/contacts/", operator_id=world.boris["id"]), 403)
    assert_error(world.as_operator("GET", "/contacts/", unassigned="true"), 403)
    assert json_of(world.as_operator("GET", "/contacts/", status="closed"))["items"] == []


def test_an_operator_user_reads_closes_and_reopens_only_its_own_contacts(world: World) -> None:
    mine, theirs = world.annas["contact"]["id"], world.boriss["contact"]["id"]
    assert json_of(world.as_operator("GET", f"/contacts/{mine}"))["id"] == mine
    assert json_of(world.as_operator("GET", f"/contacts/{mine}/events"))[0]["reason"] == "registered"
    for method, path in (
        ("GET", f"/contacts/{theirs}"),
        ("GET", f"/contacts/{theirs}/events"),
        ("POST", f"/contacts/{theirs}/close"),
    ):
        assert_error(world.as_operator(method, path), 403)
    for method, path in (("GET", "/contacts/999"), ("GET", "/contacts/999/events"), ("POST", "/contacts/999/close")):
        assert_error(world.as_operator(method, path), 404)
    assert_error(world.as_operator("POST", "/contacts/999/reopen"), 404)
    assert json_of(world.client.get(f"{API}/contacts/{theirs}"))["status"] == "open"  # the refused close did nothing

    closed = world.as_operator("POST", f"/contacts/{mine}/close")
    assert closed.status_code == 200 and json_of(closed)["status"] == "closed"
    reopened = world.as_operator("POST", f"/contacts/{mine}/reopen")
    assert reopened.status_code == 200 and json_of(reopened)["status"] == "open"
    # Boris's closed contact: not Anna's to reopen.
    assert world.client.post(f"{API}/contacts/{theirs}/close").status_code == 200
    assert_error(world.as_operator("POST", f"/contacts/{theirs}/reopen"), 403)
    assert json_of(world.client.get(f"{API}/contacts/{theirs}"))["status"] == "closed"


def test_an_operator_user_reads_only_the_leads_of_its_contacts(world: World) -> None:
    lead = world.as_operator("GET", f"/leads/{world.annas['lead']['id']}")
    assert lead.status_code == 200 and json_of(lead)["phone"] == "+79000000001"
    assert_error(world.as_operator("GET", f"/leads/{world.boriss['lead']['id']}"), 403)
    assert_error(world.as_operator("GET", "/leads/999"), 404)


def test_an_operator_user_reads_only_its_own_contacts_of_a_lead(world: World) -> None:
    """Anna's lead writes again and Boris gets it: the lead shows Anna only her contact of it."""
    again = world.register("+79000000001")  # weights: Boris only, now
    assert again["assigned_operator"]["id"] == world.boris["id"]
    everyone = json_of(world.client.get(f"{API}/leads/{world.annas['lead']['id']}"))["contacts"]
    assert len(everyone) == 2
    mine = json_of(world.as_operator("GET", f"/leads/{world.annas['lead']['id']}"))["contacts"]
    assert [c["id"] for c in mine] == [world.annas["contact"]["id"]]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/leads/"),
        ("GET", "/sources/"),
        ("GET", "/distribution_status/"),
        ("GET", "/contacts/export.csv"),
        ("POST", "/operators/"),
        ("POST", "/contacts/register"),
        ("POST", "/contacts/1/assign"),
        ("GET", "/openapi.json"),
    ],
)
def test_an_operator_user_is_refused_the_rest_of_the_api_as_json(world: World, method: str, path: str) -> None:
    assert_error(world.as_operator(method, path, {} if method == "POST" else None), 403)


# --- the document -------------------------------------------------------------------------


def test_the_document_names_the_operator_roles_reach(client: FlaskClient) -> None:
    document = json_of(client.get(f"{API}/openapi.json"))
    descriptions = {
        operation["operationId"]: operation["description"]
        for item in document["paths"].values()
        for method, operation in item.items()
        if method != "parameters"
    }
    own_contacts = "Token scope: `full`. Roles: supervisor, intake, operator (its own contacts only)."
    for operation_id in ("listContacts", "getContact", "listContactEvents", "closeContact"):
        assert descriptions[operation_id].endswith(own_contacts), descriptions[operation_id]
    assert descriptions["reopenContact"].endswith("Roles: supervisor, operator (its own contacts only).")
    lead_reach = "a lead of its own contacts, with those contacts only"
    assert descriptions["getLead"].endswith(f"Roles: supervisor, intake, operator ({lead_reach}).")
    assert descriptions["getOperator"].endswith("Roles: supervisor, operator (its own operator only).")
    assert descriptions["updateOperator"].endswith("Roles: supervisor, operator (its own operator's presence only).")
    assert descriptions["listOperators"].endswith("Token scope: `full`. Role: supervisor.")
    schemas = document["components"]["schemas"]
    assert {"presence", "idle_away_minutes", "last_seen_at", "at_work"} <= set(schemas["OperatorOut"]["required"])
    assert {"presence", "at_work"} <= set(schemas["OperatorLoadOut"]["required"])
    assert {"presence", "idle_away_minutes"} <= set(schemas["OperatorUpdate"]["properties"])


@pytest.mark.parametrize(("minutes_ago", "at_work"), [(4, True), (6, False)])
def test_at_work_follows_the_last_sign_of_life(
    app: Flask, client: FlaskClient, minutes_ago: int, at_work: bool
) -> None:
    anna = json_of(
        client.post(f"{API}/operators/", json={"name": "Anna", "max_active_leads": 2, "idle_away_minutes": 5})
    )
    seen = utcnow() - timedelta(minutes=minutes_ago)
    with app.app_context():
        db.session.get_one(Operator, anna["id"]).last_seen_at = seen
        db.session.commit()
    answer = json_of(client.get(f"{API}/operators/{anna['id']}"))
    assert answer["at_work"] is at_work
    assert datetime.fromisoformat(answer["last_seen_at"]) == seen and answer["last_seen_at"].endswith("Z")
    status = json_of(client.get(f"{API}/distribution_status/"))["operators"]
    assert [o["at_work"] for o in status] == [at_work]
