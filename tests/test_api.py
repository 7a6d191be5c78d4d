"""The JSON API v1 through the Flask test client, on a real SQLite file."""

import io
import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import given, settings
from hypothesis import strategies as st

from leadcrm.api.contacts import registration_json
from leadcrm.api.schemas import ContactOut, DistributionStatusOut, LeadOut, OperatorOut, RegistrationOut
from leadcrm.database import begin_write
from leadcrm.distribution import Registration
from leadcrm.extensions import db
from leadcrm.models import Contact
from leadcrm.outbox import lead_json
from leadcrm.storage import ContactRecord, LeadRecord, OperatorRecord
from leadcrm.vocabulary import IDLE_MINUTES_MAX, INT_MAX, AwayReason, Presence
from tests.helpers import json_of

API = "/api/v1"


def post(client: FlaskClient, path: str, body: Any = None, **kw: Any) -> Any:
    return client.post(API + path, json=body, **kw)


def create_operator(client: FlaskClient, name: str = "Anna", limit: int = 5, **extra: Any) -> dict:
    response = post(client, "/operators/", {"name": name, "max_active_leads": limit, **extra})
    assert response.status_code == 201, response.json
    return response.json


def create_source(client: FlaskClient, name: str = "telegram_bot", **extra: Any) -> dict:
    response = post(client, "/sources/", {"name": name, **extra})
    assert response.status_code == 201, response.json
    return response.json


def assert_error(response: Any, status: int, code: str | None = None, fields: set[str] | None = None) -> None:
    assert response.status_code == status, response.json
    assert response.is_json, response.data[:200]
    error = response.json["error"]
    assert isinstance(error["message"], str) and error["message"]
    if code:
        assert error["code"] == code
    if fields is not None:
        assert set(error.get("fields", {})) == fields, error


@pytest.fixture
def setup(client: FlaskClient) -> dict:
    """Two operators (limits 2 and 1) serving one source with weights 10 / 30."""
    anna = create_operator(client, "Anna", 2)
    boris = create_operator(client, "Boris", 1)
    source = create_source(client)
    response = post(
        client,
        f"/sources/{source['id']}/config",
        [{"operator_id": anna["id"], "weight": 10}, {"operator_id": boris["id"], "weight": 30}],
    )
    assert response.status_code == 200
    return {"anna": anna, "boris": boris, "source": source}


# --- operators -------------------------------------------------------------------


def test_create_operator_returns_it_with_location(client: FlaskClient) -> None:
    response = post(client, "/operators/", {"name": "  Anna  ", "max_active_leads": 3})
    assert response.status_code == 201
    assert response.json == {
        "id": 1,
        "name": "Anna",
        "is_active": True,
        "max_active_leads": 3,
        "active_leads": 0,
        "presence": "available",
        "idle_away_minutes": None,
        "last_seen_at": None,
        "at_work": True,
        "away_reason": None,
        "on_shift": True,
        "next_shift_change_at": None,
    }
    assert response.headers["Location"] == "/api/v1/operators/1"
    assert client.get(response.headers["Location"]).json == response.json


def test_list_operators_is_paginated(client: FlaskClient) -> None:
    for n in range(5):
        create_operator(client, f"Op{n}")
    page = json_of(client.get(f"{API}/operators/?page=2&per_page=2"))
    assert [o["name"] for o in page["items"]] == ["Op2", "Op3"]
    assert (page["page"], page["per_page"], page["total"]) == (2, 2, 5)
    assert json_of(client.get(f"{API}/operators/"))["per_page"] == 50


@pytest.mark.parametrize("query", ["per_page=501", "per_page=0", "page=0", "page=x", "per_page=-1"])
def test_bad_paging_is_422(client: FlaskClient, query: str) -> None:
    assert_error(client.get(f"{API}/operators/?{query}"), 422, "validation_error")


def test_patch_operator_changes_only_given_fields(client: FlaskClient) -> None:
    operator = create_operator(client, "Anna", 5)
    response = client.patch(f"{API}/operators/{operator['id']}", json={"is_active": False})
    assert response.status_code == 200
    assert response.json == {**operator, "is_active": False, "at_work": False}
    response = client.patch(f"{API}/operators/{operator['id']}", json={"name": "Anya", "max_active_leads": 0})
    assert response.json == {**operator, "is_active": False, "at_work": False, "name": "Anya", "max_active_leads": 0}


def test_lowering_the_limit_below_the_load_is_allowed(client: FlaskClient, setup: dict) -> None:
    anna = setup["anna"]
    client.patch(f"{API}/operators/{setup['boris']['id']}", json={"is_active": False})
    for n in range(2):
        post(client, "/contacts/register", {"source_id": setup["source"]["id"], "phone": f"+7900000000{n}"})
    response = client.patch(f"{API}/operators/{anna['id']}", json={"max_active_leads": 1})
    assert response.status_code == 200
    assert (json_of(response)["active_leads"], json_of(response)["max_active_leads"]) == (2, 1)
    third = post(client, "/contacts/register", {"source_id": setup["source"]["id"], "phone": "+79000000009"})
    assert third.json["assigned_operator"] is None


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"name": "X", "max_active_leads": -1}, {"max_active_leads"}),
        ({"name": "X", "max_active_leads": "5"}, {"max_active_leads"}),
        ({"name": "X", "max_active_leads": 2.5}, {"max_active_leads"}),
        ({"name": "X", "max_active_leads": True}, {"max_active_leads"}),
        ({"name": "X", "max_active_leads": 10**30}, {"max_active_leads"}),
        ({"name": "", "max_active_leads": 1}, {"name"}),
        ({"name": "   ", "max_active_leads": 1}, {"name"}),
        ({"name": "x" * 201, "max_active_leads": 1}, {"name"}),
        ({"name": "X" * 100_000, "max_active_leads": 1}, {"name"}),
        ({"name": 5, "max_active_leads": 1}, {"name"}),
        ({"name": "X", "max_active_leads": 1, "is_active": "yes"}, {"is_active"}),
        ({"name": "X", "max_active_leads": 1, "colour": "red"}, {"colour"}),
        ({"max_active_leads": 1}, {"name"}),
        ({"name": "X"}, {"max_active_leads"}),
        ([], {"body"}),
        ("operator", {"body"}),
        ("null", {"body"}),
    ],
)
def test_invalid_operator_is_422_with_fields(client: FlaskClient, body: Any, fields: set[str]) -> None:
    data = body if body == "null" else json.dumps(body)
    response = client.post(f"{API}/operators/", data=data, content_type="application/json")
    assert_error(response, 422, "validation_error", fields)
    assert json_of(client.get(f"{API}/operators/"))["total"] == 0


@pytest.mark.parametrize("body", [{"name": None}, {"max_active_leads": None}, {"is_active": None}, {"x": 1}])
def test_invalid_patch_is_422_and_changes_nothing(client: FlaskClient, body: dict) -> None:
    operator = create_operator(client)
    assert_error(client.patch(f"{API}/operators/{operator['id']}", json=body), 422, "validation_error")
    assert client.get(f"{API}/operators/{operator['id']}").json == operator


def test_duplicate_operator_name_is_409(client: FlaskClient) -> None:
    create_operator(client, "Anna")
    assert_error(post(client, "/operators/", {"name": "Anna", "max_active_leads": 1}), 409, "name_taken", {"name"})
    boris = create_operator(client, "Boris")
    assert_error(client.patch(f"{API}/operators/{boris['id']}", json={"name": "Anna"}), 409, "name_taken")
    assert json_of(client.get(f"{API}/operators/{boris['id']}"))["name"] == "Boris"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/operators/99"),
        ("patch", "/operators/99"),
        ("get", "/sources/99"),
        ("patch", "/sources/99"),
        ("get", "/sources/99/config"),
        ("post", "/sources/99/config"),
        ("get", "/contacts/99"),
        ("post", "/contacts/99/close"),
        ("get", "/leads/99"),
        ("get", "/operators/0"),
        ("get", "/operators/-1"),
        ("get", "/operators/abc"),
        ("get", "/operators/99999999999999999999999"),
        ("get", "/nowhere"),
    ],
)
def test_unknown_ids_are_404_json(client: FlaskClient, method: str, path: str) -> None:
    response = getattr(client, method)(API + path, json={"operator_id": 1, "weight": 1, "name": "X"})
    assert_error(response, 404)


# --- malformed requests ----------------------------------------------------------


def test_malformed_json_is_400(client: FlaskClient) -> None:
    response = client.post(f"{API}/operators/", data='{"name": "A",', content_type="application/json")
    assert_error(response, 400, "bad_request")
    response = client.post(f"{API}/operators/", data=b"\xff\xfe", content_type="application/json")
    assert_error(response, 400, "bad_request")


def test_deeply_nested_json_is_400_not_500(client: FlaskClient) -> None:
    response = client.post(f"{API}/contacts/register", data="[" * 200_000, content_type="application/json")
    assert_error(response, 400)


def test_not_json_is_415(client: FlaskClient) -> None:
    response = client.post(f"{API}/operators/", data="name=Anna", content_type="application/x-www-form-urlencoded")
    assert_error(response, 415, "unsupported_media_type")


def test_wrong_method_is_405_json_with_allow(client: FlaskClient) -> None:
    response = client.delete(f"{API}/operators/")
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]


def test_oversized_body_is_413_json(client: FlaskClient) -> None:
    response = client.post(f"{API}/operators/", data="x" * (2 * 1024 * 1024), content_type="application/json")
    assert_error(response, 413)


def _chunked(client: FlaskClient, path: str, body: bytes, content_type: str) -> Any:
    """A body sent without Content-Length (Transfer-Encoding: chunked), as gunicorn hands it over."""
    return client.post(
        path,
        input_stream=io.BytesIO(body),
        content_type=content_type,
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )


def test_an_oversized_chunked_body_is_413_not_cut_to_the_limit(client: FlaskClient, setup: dict) -> None:
    # Measured under gunicorn: werkzeug stops reading a chunked body at the limit, and the
    # first MiB alone was parsed (a 400 "Unterminated string", or for a form, its fields cut short).
    big = b'{"source_id": 1, "message": "' + b"a" * (1024 * 1024) + b'"}'
    assert_error(_chunked(client, f"{API}/contacts/register", big, "application/json"), 413)
    padded = b'{"source_id": 1, "phone": "+79001234567"}' + b" " * (2 * 1024 * 1024)
    assert_error(_chunked(client, f"{API}/contacts/register", padded, "application/json"), 413)
    small = _chunked(
        client, f"{API}/contacts/register", b'{"source_id": 1, "phone": "+79001234567"}', "application/json"
    )
    assert small.status_code == 201, small.json
    form = b"source_id=1&phone=%2B79001234568&message=" + b"a" * (2 * 1024 * 1024)
    assert _chunked(client, "/intake/", form, "application/x-www-form-urlencoded").status_code == 413
    assert json_of(client.get(f"{API}/contacts/"))["total"] == 1


# --- sources and weights ------------------------------------------------------------


def test_source_crud(client: FlaskClient) -> None:
    source = create_source(client, "web_form")
    assert source == {
        "id": 1,
        "name": "web_form",
        "strategy": "random",
        "sticky": False,
        "offer_timeout_seconds": None,
        "offer_misses_away": 3,
    }
    assert client.get(f"{API}/sources/1").json == source
    changed = client.patch(f"{API}/sources/1", json={"strategy": "deterministic"}).json
    assert changed == {**source, "strategy": "deterministic"}
    assert json_of(client.get(f"{API}/sources/"))["items"] == [changed]
    assert_error(post(client, "/sources/", {"name": "web_form"}), 409, "name_taken")
    assert_error(post(client, "/sources/", {"name": "x", "strategy": "round_robin"}), 422, fields={"strategy"})


def test_config_object_sets_one_weight_and_array_replaces_all(client: FlaskClient) -> None:
    a, b, c = (create_operator(client, n)["id"] for n in ("A", "B", "C"))
    source = create_source(client)["id"]
    url = f"/sources/{source}/config"
    assert post(client, url, {"operator_id": b, "weight": 3}).json == [{"operator_id": b, "weight": 3}]
    assert post(client, url, {"operator_id": a, "weight": 1}).json == [
        {"operator_id": a, "weight": 1},
        {"operator_id": b, "weight": 3},
    ]
    assert post(client, url, {"operator_id": a, "weight": 0}).json == [{"operator_id": b, "weight": 3}]
    replaced = post(client, url, [{"operator_id": c, "weight": 5}, {"operator_id": a, "weight": 2}])
    assert replaced.status_code == 200
    assert replaced.json == [{"operator_id": a, "weight": 2}, {"operator_id": c, "weight": 5}]
    assert client.get(API + url).json == replaced.json
    assert post(client, url, []).json == []


@pytest.mark.parametrize(
    ("body", "status", "fields"),
    [
        ({"operator_id": 1, "weight": -1}, 422, {"weight"}),
        ({"operator_id": 1, "weight": "3"}, 422, {"weight"}),
        ({"operator_id": 1}, 422, {"weight"}),
        ({"operator_id": 99, "weight": 1}, 404, {"operator_id"}),
        ([{"operator_id": 1, "weight": 1}, {"operator_id": 1, "weight": 2}], 422, {"1.operator_id"}),
        ([{"operator_id": 1, "weight": 1}, {"operator_id": 1}], 422, {"1.weight"}),
        ([{"operator_id": 1, "weight": 1}, {"operator_id": 99, "weight": 2}], 404, {"operator_id"}),
        ("weights", 422, {"body"}),
    ],
)
def test_bad_config_changes_nothing(client: FlaskClient, body: Any, status: int, fields: set[str]) -> None:
    create_operator(client, "A")
    source = create_source(client)["id"]
    post(client, f"/sources/{source}/config", {"operator_id": 1, "weight": 7})
    assert_error(post(client, f"/sources/{source}/config", body), status, fields=fields)
    assert client.get(f"{API}/sources/{source}/config").json == [{"operator_id": 1, "weight": 7}]


# --- registration ---------------------------------------------------------------------


def test_register_assigns_an_operator(client: FlaskClient, setup: dict) -> None:
    response = post(
        client,
        "/contacts/register",
        {"source_name": "telegram_bot", "phone": "8 900 123-45-67", "name": "Ivan", "message": "Hello"},
    )
    assert response.status_code == 201
    body = response.json
    assert set(body) == {"contact", "lead", "lead_created", "assigned_operator"} and body["lead_created"] is True
    assert body["assigned_operator"]["id"] in (setup["anna"]["id"], setup["boris"]["id"])
    assert body["assigned_operator"]["active_leads"] == 1
    assert body["lead"]["phone"] == "+79001234567" and body["lead"]["name"] == "Ivan"
    contact = body["contact"]
    assert contact["operator_id"] == body["assigned_operator"]["id"]
    assert (contact["status"], contact["message"], contact["closed_at"]) == ("open", "Hello", None)
    assert contact["created_at"].endswith("Z") and contact["assigned_at"]
    assert response.headers["Location"] == f"/api/v1/contacts/{contact['id']}"
    assert client.get(response.headers["Location"]).json == contact


def test_register_with_nobody_eligible_waits_unassigned(client: FlaskClient, setup: dict) -> None:
    codes = [
        post(client, "/contacts/register", {"source_id": setup["source"]["id"], "external_id": f"tg:{n}"})
        for n in range(5)
    ]
    assert [r.status_code for r in codes] == [201] * 5
    waiting = [r.json for r in codes if r.json["assigned_operator"] is None]
    assert len(waiting) == 2  # capacity is 2 + 1
    assert all(w["contact"]["operator_id"] is None and w["contact"]["status"] == "open" for w in waiting)
    listed = json_of(client.get(f"{API}/contacts/?unassigned=true"))
    assert sorted(c["id"] for c in listed["items"]) == sorted(w["contact"]["id"] for w in waiting)
    assert json_of(client.get(f"{API}/distribution_status/"))["unassigned_open"] == 2


def test_same_lead_through_two_sources(client: FlaskClient, setup: dict) -> None:
    create_source(client, "web_form")
    first = post(
        client, "/contacts/register", {"source_name": "telegram_bot", "external_id": "tg:1", "phone": "+79001234567"}
    )
    second = post(
        client, "/contacts/register", {"source_name": "web_form", "phone": "89001234567", "email": "I@Example.com"}
    )
    assert first.json["lead"]["id"] == second.json["lead"]["id"]
    lead = json_of(client.get(f"{API}/leads/{first.json['lead']['id']}"))
    assert lead["email"] == "I@example.com" and lead["external_id"] == "tg:1"
    assert [c["source_id"] for c in lead["contacts"]] == [2, 1]  # newest first


def test_lead_conflict_is_409_and_stores_nothing(client: FlaskClient, setup: dict) -> None:
    post(client, "/contacts/register", {"source_id": 1, "phone": "+79001234567"})
    post(client, "/contacts/register", {"source_id": 1, "email": "b@example.com"})
    response = post(client, "/contacts/register", {"source_id": 1, "phone": "+79001234567", "email": "b@example.com"})
    assert_error(response, 409, "lead_conflict", {"phone", "email"})
    assert json_of(client.get(f"{API}/contacts/"))["total"] == 2


def test_an_address_finds_its_lead_whatever_its_case(app: Flask, client: FlaskClient, setup: dict) -> None:
    first = post(client, "/contacts/register", {"source_id": 1, "email": "Ivan.Petrov@Example.com"}).json
    assert first["lead"]["email"] == "Ivan.Petrov@example.com"  # as typed (the domain normalised), for display
    again = post(client, "/contacts/register", {"source_id": 1, "email": "ivan.petrov@EXAMPLE.com"}).json
    assert (again["lead"]["id"], again["lead_created"]) == (first["lead"]["id"], False)
    assert again["lead"]["email"] == "Ivan.Petrov@example.com"
    # An address filled in on a lead found by its phone is found whatever its case, too.
    maria = post(client, "/contacts/register", {"source_id": 1, "phone": "+79001234567"}).json["lead"]["id"]
    post(client, "/contacts/register", {"source_id": 1, "phone": "+79001234567", "email": "Maria@Example.com"})
    assert (
        post(client, "/contacts/register", {"source_id": 1, "email": "MARIA@example.com"}).json["lead"]["id"] == maria
    )
    # Ivan's address in another case is Ivan's: Maria's phone with it names two leads.
    taken = post(
        client, "/contacts/register", {"source_id": 1, "phone": "+79001234567", "email": "IVAN.PETROV@example.com"}
    )
    assert_error(taken, 409, "lead_conflict", {"phone", "email"})
    # A register token is told the address it sent, not how another source typed it.
    form = _register_token_client(app)
    echoed = form.post(f"{API}/contacts/register", json={"source_id": 1, "email": "IVAN.petrov@example.com"})
    assert json_of(echoed)["lead"] == {"id": first["lead"]["id"], "email": "IVAN.petrov@example.com"}
    assert "Ivan.Petrov" not in echoed.text
    assert json_of(client.get(f"{API}/leads/"))["total"] == 2


def test_lead_search_finds_an_address_whatever_its_case(client: FlaskClient, setup: dict) -> None:
    post(client, "/contacts/register", {"source_id": 1, "email": "Ivan.Petrov@Example.com"})
    post(client, "/contacts/register", {"source_id": 1, "email": "Ёж@Пример.рф"})

    def found(q: str) -> list[str | None]:
        return [lead["email"] for lead in json_of(client.get(f"{API}/leads/", query_string={"q": q}))["items"]]

    assert found("ivan.petrov@example.com") == found("IVAN.PETROV") == ["Ivan.Petrov@example.com"]
    # Cyrillic letters too, which SQLite's lower() leaves as they are.
    assert found("ёж@") == found("ЁЖ@ПРИМЕР.РФ") == ["Ёж@пример.рф"]


@pytest.mark.parametrize(
    ("body", "status", "fields"),
    [
        ({"phone": "+79001234567"}, 422, {"source_id", "source_name"}),
        ({"source_id": 1, "source_name": "telegram_bot", "phone": "+79001234567"}, 422, {"source_id", "source_name"}),
        ({"source_id": 1}, 422, {"external_id", "phone", "email"}),
        ({"source_id": 1, "phone": "  ", "email": ""}, 422, {"external_id", "phone", "email"}),
        ({"source_id": 1, "phone": "12"}, 422, {"phone"}),
        ({"source_id": 1, "phone": "call me"}, 422, {"phone"}),
        ({"source_id": 1, "email": "not-an-address"}, 422, {"email"}),
        ({"source_id": 1, "phone": "1", "email": "x@"}, 422, {"phone", "email"}),
        ({"source_id": "1", "phone": "+79001234567"}, 422, {"source_id"}),
        ({"source_id": 0, "phone": "+79001234567"}, 422, {"source_id"}),
        ({"source_id": 1, "phone": 79001234567}, 422, {"phone"}),
        ({"source_id": 1, "external_id": "x" * 201}, 422, {"external_id"}),
        ({"source_id": 1, "external_id": "x", "message": "m" * 10_001}, 422, {"message"}),
        ({"source_id": 1, "external_id": "x", "name": "n" * 201}, 422, {"name"}),
        ({"source_id": 99, "phone": "+79001234567"}, 404, {"source_id"}),
        ({"source_name": "nope", "phone": "+79001234567"}, 404, {"source_name"}),
    ],
)
def test_bad_registration_is_refused_and_stores_nothing(
    client: FlaskClient, setup: dict, body: dict, status: int, fields: set[str]
) -> None:
    assert_error(post(client, "/contacts/register", body), status, fields=fields)
    assert json_of(client.get(f"{API}/contacts/"))["total"] == 0
    assert json_of(client.get(f"{API}/leads/"))["total"] == 0


# --- contacts and leads ---------------------------------------------------------------


def test_close_frees_the_slot_and_is_idempotent(client: FlaskClient, setup: dict) -> None:
    client.patch(f"{API}/operators/{setup['anna']['id']}", json={"is_active": False})
    first = post(client, "/contacts/register", {"source_id": 1, "phone": "+79000000001"}).json
    assert first["assigned_operator"]["name"] == "Boris"
    closed = post(client, f"/contacts/{first['contact']['id']}/close")
    assert closed.status_code == 200
    assert closed.json["status"] == "closed" and closed.json["closed_at"]
    again = post(client, f"/contacts/{first['contact']['id']}/close")
    assert again.status_code == 200 and again.json == closed.json
    assert json_of(client.get(f"{API}/operators/{setup['boris']['id']}"))["active_leads"] == 0
    third = post(client, "/contacts/register", {"source_id": 1, "phone": "+79000000003"}).json
    assert third["assigned_operator"]["name"] == "Boris"


def test_waiting_contacts_get_the_capacity_that_appears(client: FlaskClient, setup: dict) -> None:
    client.patch(f"{API}/operators/{setup['anna']['id']}", json={"is_active": False})
    first = post(client, "/contacts/register", {"source_id": 1, "phone": "+79000000001"}).json
    waiting = [json_of(post(client, "/contacts/register", {"source_id": 1, "external_id": f"w{n}"})) for n in range(3)]
    assert all(w["assigned_operator"] is None for w in waiting)
    status = json_of(client.get(f"{API}/distribution_status/"))
    assert status["sources"][0]["waiting"] == 3
    assert status["sources"][0]["oldest_waiting_at"] == waiting[0]["contact"]["created_at"]
    # Closing Boris's contact hands his slot to the oldest waiting contact, in the same request.
    post(client, f"/contacts/{first['contact']['id']}/close")
    assert json_of(client.get(f"{API}/contacts/{waiting[0]['contact']['id']}"))["operator_id"] == setup["boris"]["id"]
    # Activating Anna (limit 2) takes the next two; the answer shows her new load.
    anna = json_of(client.patch(f"{API}/operators/{setup['anna']['id']}", json={"is_active": True}))
    assert anna["active_leads"] == 2
    assert json_of(client.get(f"{API}/contacts/?unassigned=true"))["total"] == 0
    status = json_of(client.get(f"{API}/distribution_status/"))
    assert (status["sources"][0]["waiting"], status["sources"][0]["oldest_waiting_at"]) == (0, None)


def test_a_retry_with_the_same_idempotency_key_gets_the_first_answer(client: FlaskClient, setup: dict) -> None:
    body = {"source_id": 1, "phone": "+79001234567", "message": "hello"}
    first = post(client, "/contacts/register", body, headers={"Idempotency-Key": "order-42"})
    assert first.status_code == 201 and "Idempotent-Replayed" not in first.headers
    # The same JSON, spelled differently, is the same request.
    retry = client.post(
        f"{API}/contacts/register",
        data='{"message":"hello",  "phone":"+79001234567","source_id":1}',
        content_type="application/json",
        headers={"Idempotency-Key": "order-42"},
    )
    assert retry.status_code == 201 and retry.headers["Idempotent-Replayed"] == "true"
    assert retry.data == first.data and retry.headers["Location"] == first.headers["Location"]
    assert json_of(client.get(f"{API}/contacts/"))["total"] == 1
    assert json_of(client.get(f"{API}/operators/{json_of(first)['assigned_operator']['id']}"))["active_leads"] == 1
    # The same key with another body is refused, and stores nothing.
    other = post(client, "/contacts/register", {**body, "message": "other"}, headers={"Idempotency-Key": "order-42"})
    assert_error(other, 409, "idempotency_key_reused", {"Idempotency-Key"})
    # Another key is another registration; no key, too.
    assert post(client, "/contacts/register", body, headers={"Idempotency-Key": "order-43"}).json["contact"]["id"] == 2
    assert post(client, "/contacts/register", body).json["contact"]["id"] == 3


def test_an_idempotency_key_with_a_nul_character_is_refused_as_any_text_is(client: FlaskClient, setup: dict) -> None:
    """PostgreSQL cannot store a NUL: such a key is a 422 before the write, not a 500 inside it
    (gunicorn refuses NUL in headers; a server or proxy that passes it must not matter)."""
    body = {"source_id": 1, "phone": "+79001234567"}
    refused = post(client, "/contacts/register", body, headers={"Idempotency-Key": "order\x0042"})
    assert_error(refused, 422, "validation_error", {"Idempotency-Key"})
    assert post(client, "/contacts/register", body, headers={"Idempotency-Key": "order-42"}).status_code == 201


def test_idempotency_keys_expire_after_a_day(app, client: FlaskClient, setup: dict) -> None:
    from datetime import timedelta

    import sqlalchemy as sa

    from leadcrm.extensions import db
    from leadcrm.models import IdempotencyKey, utcnow

    body = {"source_id": 1, "external_id": "x"}
    post(client, "/contacts/register", body, headers={"Idempotency-Key": "k"})
    with app.app_context():
        db.session.execute(sa.update(IdempotencyKey).values(created_at=utcnow() - timedelta(hours=25)))
        db.session.commit()
    again = post(client, "/contacts/register", body, headers={"Idempotency-Key": "k"})
    assert again.status_code == 201 and "Idempotent-Replayed" not in again.headers
    assert again.json["contact"]["id"] == 2


def test_a_failed_request_does_not_use_up_its_key(client: FlaskClient, setup: dict) -> None:
    bad = post(
        client, "/contacts/register", {"source_id": 99, "phone": "+79001234567"}, headers={"Idempotency-Key": "k"}
    )
    assert_error(bad, 404)
    good = post(
        client, "/contacts/register", {"source_id": 1, "phone": "+79001234567"}, headers={"Idempotency-Key": "k"}
    )
    assert good.status_code == 201


@pytest.mark.parametrize("key", ["", "   ", "k" * 201])
def test_bad_idempotency_keys_are_422(client: FlaskClient, setup: dict, key: str) -> None:
    response = post(
        client, "/contacts/register", {"source_id": 1, "external_id": "x"}, headers={"Idempotency-Key": key}
    )
    assert_error(response, 422, fields={"Idempotency-Key"})


def test_sticky_source_sends_a_returning_lead_back_to_its_operator(client: FlaskClient, setup: dict) -> None:
    assert json_of(client.patch(f"{API}/sources/1", json={"sticky": True}))["sticky"] is True
    for name in ("anna", "boris"):
        client.patch(f"{API}/operators/{setup[name]['id']}", json={"max_active_leads": 100})
    first = post(client, "/contacts/register", {"source_id": 1, "phone": "+79001234567"}).json
    operator = first["assigned_operator"]["id"]
    other_lead = post(client, "/contacts/register", {"source_id": 1, "phone": "+79007654321"}).json
    for _ in range(6):  # random weights 10 / 30 would scatter these; sticky keeps them together
        again = post(client, "/contacts/register", {"source_id": 1, "phone": "8 900 123-45-67"}).json
        assert again["assigned_operator"]["id"] == operator
        assert json_of(client.get(f"{API}/contacts/{again['contact']['id']}/events"))[0]["reason"] == "sticky"
    assert other_lead["lead"]["id"] != first["lead"]["id"]
    # Once that operator stops serving the source, the normal strategy applies.
    post(client, "/sources/1/config", {"operator_id": operator, "weight": 0})
    moved = post(client, "/contacts/register", {"source_id": 1, "phone": "+79001234567"}).json
    assert moved["assigned_operator"]["id"] != operator
    assert json_of(client.get(f"{API}/contacts/{moved['contact']['id']}/events"))[0]["reason"] == "registered"
    # A full operator is skipped the same way.
    client.patch(f"{API}/operators/{moved['assigned_operator']['id']}", json={"max_active_leads": 0})
    assert (
        post(client, "/contacts/register", {"source_id": 1, "phone": "+79001234567"}).json["assigned_operator"] is None
    )


def test_sticky_is_off_by_default_and_validated(client: FlaskClient) -> None:
    assert create_source(client)["sticky"] is False
    assert_error(post(client, "/sources/", {"name": "x", "sticky": "yes"}), 422, fields={"sticky"})
    assert_error(client.patch(f"{API}/sources/1", json={"sticky": None}), 422, fields={"sticky"})


def test_every_assignment_change_is_in_the_contact_history(client: FlaskClient, setup: dict) -> None:
    client.patch(f"{API}/operators/{setup['anna']['id']}", json={"is_active": False})
    boris = setup["boris"]["id"]
    first = post(client, "/contacts/register", {"source_id": 1, "external_id": "a"}).json["contact"]["id"]
    second = post(client, "/contacts/register", {"source_id": 1, "external_id": "b"}).json["contact"]["id"]
    post(client, f"/contacts/{first}/close")
    post(client, f"/contacts/{first}/close")  # changes nothing, records nothing

    def events(contact_id: int) -> list[tuple]:
        response = client.get(f"{API}/contacts/{contact_id}/events")
        assert response.status_code == 200
        for event in json_of(response):
            assert (
                event["contact_id"] == contact_id
                and event["created_at"].endswith("Z")
                and event["actor"] == "token:tests (#1)"
            )
        return [(e["reason"], e["from_operator_id"], e["to_operator_id"]) for e in json_of(response)]

    assert events(first) == [("registered", None, boris), ("closed", boris, None)]
    assert events(second) == [("registered", None, None), ("queue", None, boris)]
    assert_error(client.get(f"{API}/contacts/99/events"), 404)


def test_contacts_filters(client: FlaskClient, setup: dict) -> None:
    for n in range(5):  # room for 3: contacts 4 and 5 wait
        post(client, "/contacts/register", {"source_id": 1, "external_id": f"e{n}"})
    post(client, "/contacts/1/close")  # its slot goes to contact 4

    def listed(query: str) -> list[int]:
        response = client.get(f"{API}/contacts/?{query}")
        assert response.status_code == 200
        return [c["id"] for c in json_of(response)["items"]]

    assert listed("") == [5, 4, 3, 2, 1]
    assert listed("status=closed") == [1]
    assert listed("status=open") == [5, 4, 3, 2]
    assert listed("unassigned=true") == [5]
    assert listed("unassigned=false&status=open") == [4, 3, 2]
    boris = setup["boris"]["id"]
    everything = json_of(client.get(f"{API}/contacts/"))["items"]
    assert listed(f"operator_id={boris}") == [c["id"] for c in everything if c["operator_id"] == boris]
    assert listed(f"operator_id={boris}")  # Boris got at least one
    assert listed("source_id=1&lead_id=2") == [2]
    assert listed("source_id=2") == []
    for bad in ("status=pending", "operator_id=x", "unassigned=maybe", "lead_id=-3"):
        assert_error(client.get(f"{API}/contacts/?{bad}"), 422)


def test_lead_search(client: FlaskClient, setup: dict) -> None:
    post(client, "/contacts/register", {"source_id": 1, "phone": "+79001234567", "name": "Ivan Petrov"})
    post(client, "/contacts/register", {"source_id": 1, "email": "maria@example.com", "external_id": "tg:100%"})

    def found(q: str) -> list[str | None]:
        return [
            lead["name"] or lead["email"]
            for lead in json_of(client.get(f"{API}/leads/", query_string={"q": q}))["items"]
        ]

    assert found("petrov") == ["Ivan Petrov"]
    assert found("8 (900) 123-45-67") == ["Ivan Petrov"]
    assert found("maria@") == ["maria@example.com"]
    assert found("100%") == ["maria@example.com"]
    assert found("%") == ["maria@example.com"]  # a literal percent sign, not a wildcard
    assert found("nobody") == []
    assert len(found("")) == 2


# --- status and docs ------------------------------------------------------------------


def test_distribution_status(client: FlaskClient, setup: dict) -> None:
    for n in range(4):
        post(client, "/contacts/register", {"source_id": 1, "external_id": f"e{n}"})
    status = json_of(client.get(f"{API}/distribution_status/"))
    DistributionStatusOut.model_validate(status)  # the documented shape
    assert status["operators"] == [
        {"operator_id": 1, "name": "Anna", "is_active": True, "active_leads": 2, "max_active_leads": 2}
        | {"presence": "available", "at_work": True},
        {"operator_id": 2, "name": "Boris", "is_active": True, "active_leads": 1, "max_active_leads": 1}
        | {"presence": "available", "at_work": True},
    ]
    (source,) = status["sources"]
    assert (source["source_id"], source["name"], source["strategy"]) == (1, "telegram_bot", "random")
    assert source["operators"] == [
        {"operator_id": 1, "weight": 10, "target_share": 0.25, "assigned_total": 2},
        {"operator_id": 2, "weight": 30, "target_share": 0.75, "assigned_total": 1},
    ]
    assert status["unassigned_open"] == 1


def test_openapi_documents_every_api_route(app: Flask, client: FlaskClient) -> None:
    document = json_of(client.get(f"{API}/openapi.json"))
    assert document["openapi"].startswith("3.")
    documented = {
        (path, method) for path, item in document["paths"].items() for method in item if method != "parameters"
    }
    routed = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith(API) and rule.endpoint != "api.openapi_json":
            path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule.removeprefix(API))
            assert rule.methods is not None  # Flask gives every rule its methods
            routed |= {(path, m.lower()) for m in rule.methods - {"HEAD", "OPTIONS"}}
    assert documented == routed
    schemas = document["components"]["schemas"]
    assert {"RegisterIn", "RegistrationOut", "ErrorOut", "DistributionStatusOut"} <= set(schemas)


def served_document(client: FlaskClient) -> dict[str, Any]:
    document = client.get(f"{API}/openapi.json").get_json()
    assert isinstance(document, dict)
    return document


def test_every_operation_has_its_own_operation_id(client: FlaskClient) -> None:
    # Clients generated from the document name their functions after it: explicit, unique, camelCase.
    document = served_document(client)
    ids = [op["operationId"] for item in document["paths"].values() for m, op in item.items() if m != "parameters"]
    assert len(ids) == len(set(ids)) == 37
    assert all(re.fullmatch(r"[a-z]+(?:[A-Z][a-z]+)+", operation_id) for operation_id in ids), ids
    assert {"registerContact", "listContacts", "getContact", "closeContact", "getDistributionStatus"} <= set(ids)


def test_fields_that_may_be_left_out_but_not_null_claim_no_default(client: FlaskClient) -> None:
    schemas = served_document(client)["components"]["schemas"]
    for name in ("OperatorUpdate", "SourceUpdate"):
        schema = schemas[name]
        assert "required" not in schema, name
        for field, prop in schema["properties"].items():
            if (name, field) in (("OperatorUpdate", "idle_away_minutes"), ("SourceUpdate", "offer_timeout_seconds")):
                # The fields whose null is a value (the setting off): nullable, still with no default.
                assert "default" not in prop and {"type": "null"} in prop["anyOf"], prop
                continue
            assert "default" not in prop and "anyOf" not in prop and prop.get("type") != "null", (name, field)
    # Left out, nothing changes; sent as null, refused.
    client.post(f"{API}/operators/", json={"name": "Anna", "max_active_leads": 2})
    unchanged = client.patch(f"{API}/operators/1", json={}).get_json()
    assert unchanged is not None and unchanged["max_active_leads"] == 2
    assert client.patch(f"{API}/operators/1", json={"max_active_leads": None}).status_code == 422


def test_docs_page_uses_local_assets_only(client: FlaskClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "http://" not in html and "https://" not in html
    swagger = "/static/vendor/swagger-ui-5.35.0"
    for asset in (f"{swagger}/swagger-ui-bundle.js", f"{swagger}/swagger-ui.css", "/static/docs.js"):
        assert asset in html
        with client.get(asset) as response:
            assert response.status_code == 200


# --- manual work, reopening, export ---------------------------------------------------------


def test_assign_by_hand_respects_limits_unless_overridden(client: FlaskClient, setup: dict) -> None:
    anna, boris = setup["anna"]["id"], setup["boris"]["id"]
    client.patch(f"{API}/operators/{boris}", json={"is_active": False})
    a = post(client, "/contacts/register", {"source_id": 1, "external_id": "a"}).json["contact"]["id"]
    post(client, "/contacts/register", {"source_id": 1, "external_id": "b"})  # Anna is full now (2/2)
    waiting = post(client, "/contacts/register", {"source_id": 1, "external_id": "c"}).json["contact"]["id"]
    assert_error(post(client, f"/contacts/{waiting}/assign", {"operator_id": anna}), 422, fields={"operator_id"})
    assert_error(post(client, f"/contacts/{waiting}/assign", {"operator_id": boris}), 422, fields={"operator_id"})
    assert_error(post(client, f"/contacts/{waiting}/assign", {"operator_id": 99}), 404, fields={"operator_id"})
    assert_error(post(client, "/contacts/99/assign", {"operator_id": anna}), 404)
    assert_error(post(client, f"/contacts/{waiting}/assign", {"operator_id": anna, "override": "yes"}), 422)
    moved = post(client, f"/contacts/{waiting}/assign", {"operator_id": anna, "override": True})
    assert moved.status_code == 200 and moved.json["operator_id"] == anna
    assert json_of(client.get(f"{API}/operators/{anna}"))["active_leads"] == 3  # past the limit of 2, on purpose
    events = json_of(client.get(f"{API}/contacts/{waiting}/events"))
    assert (events[-1]["reason"], events[-1]["from_operator_id"], events[-1]["to_operator_id"]) == (
        "override",
        None,
        anna,
    )
    # Moving a contact from Anna to Boris (active again, with room) gives Anna's slot back.
    client.patch(f"{API}/operators/{boris}", json={"is_active": True})
    assert post(client, f"/contacts/{a}/assign", {"operator_id": boris}).json["operator_id"] == boris
    assert json_of(client.get(f"{API}/operators/{anna}"))["active_leads"] == 2
    assert json_of(client.get(f"{API}/contacts/{a}/events"))[-1]["reason"] == "manual"
    post(client, f"/contacts/{a}/close")
    assert_error(post(client, f"/contacts/{a}/assign", {"operator_id": anna}), 422)


def test_reopen_goes_back_to_the_operator_or_through_distribution(client: FlaskClient, setup: dict) -> None:
    anna, boris = setup["anna"]["id"], setup["boris"]["id"]
    first = post(client, "/contacts/register", {"source_id": 1, "external_id": "a"}).json
    operator = first["assigned_operator"]["id"]
    contact = first["contact"]["id"]
    post(client, f"/contacts/{contact}/close")
    reopened = post(client, f"/contacts/{contact}/reopen")
    assert reopened.status_code == 200
    assert (reopened.json["status"], reopened.json["operator_id"], reopened.json["closed_at"]) == (
        "open",
        operator,
        None,
    )
    assert json_of(client.get(f"{API}/contacts/{contact}/events"))[-1]["reason"] == "reopened"
    assert post(client, f"/contacts/{contact}/reopen").json == reopened.json  # open already: nothing changes
    # Its operator now inactive: the strategy picks the other one.
    post(client, f"/contacts/{contact}/close")
    client.patch(f"{API}/operators/{operator}", json={"is_active": False})
    other = ({anna, boris} - {operator}).pop()
    assert post(client, f"/contacts/{contact}/reopen").json["operator_id"] == other
    assert_error(post(client, "/contacts/99/reopen"), 404)
    status = json_of(client.get(f"{API}/distribution_status/"))
    open_assigned = json_of(client.get(f"{API}/contacts/?status=open&unassigned=false"))["total"]
    assert sum(o["active_leads"] for o in status["operators"]) == open_assigned


def test_export_csv_follows_the_filters_and_defuses_formulas(client: FlaskClient, setup: dict) -> None:
    import csv
    import io

    post(client, "/contacts/register", {"source_id": 1, "phone": "+79001234567", "name": "=HYPERLINK(1)"})
    post(client, "/contacts/register", {"source_id": 1, "email": "b@example.com", "message": 'a, "quoted"\nline'})
    post(client, "/contacts/1/close")
    response = client.get(f"{API}/contacts/export.csv")
    assert response.status_code == 200 and response.mimetype == "text/csv"
    assert "attachment" in response.headers["Content-Disposition"]
    assert response.data.startswith(b"\xef\xbb\xbfcontact_id,")  # UTF-8 with a byte-order mark
    rows = list(csv.DictReader(io.StringIO(response.data.decode("utf-8-sig"))))
    assert [r["contact_id"] for r in rows] == ["2", "1"]
    assert rows[1]["lead_name"] == "'=HYPERLINK(1)" and rows[1]["phone"] == "+79001234567"
    assert rows[0]["message"] == 'a, "quoted"\nline' and rows[1]["status"] == "closed"
    assert rows[1]["operator"] in ("Anna", "Boris") and re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", rows[1]["closed_at"]
    )
    opened = client.get(f"{API}/contacts/export.csv?status=open").data.decode("utf-8-sig")
    only_open = list(csv.DictReader(io.StringIO(opened)))
    assert [r["contact_id"] for r in only_open] == ["2"]
    assert_error(client.get(f"{API}/contacts/export.csv?status=nonsense"), 422)
    assert_error(client.get(f"{API}/contacts/export.csv?sep=tab"), 422)


def test_unknown_query_parameters_are_refused_like_unknown_fields(client: FlaskClient) -> None:
    response = client.get(f"{API}/contacts/?stauts=open")
    assert_error(response, 422)
    assert json_of(response)["error"]["fields"] == {"stauts": "Not a parameter of this endpoint."}
    assert client.get(f"{API}/contacts/?status=open").status_code == 200
    twice = client.get(f"{API}/contacts/?page=1&page=2")
    assert_error(twice, 422)
    assert json_of(twice)["error"]["fields"] == {"page": "Give it once."}


def test_integral_json_numbers_are_integers_and_fractions_are_refused(client: FlaskClient) -> None:
    created = client.post(f"{API}/operators/", json={"name": "Anna", "max_active_leads": 3.0})
    assert created.status_code == 201 and json_of(created)["max_active_leads"] == 3
    assert_error(client.post(f"{API}/operators/", json={"name": "Boris", "max_active_leads": 3.5}), 422)
    assert_error(client.post(f"{API}/operators/", json={"name": "Boris", "max_active_leads": True}), 422)
    assert_error(client.post(f"{API}/operators/", json={"name": " \n ", "max_active_leads": 1}), 422)


def test_ids_out_of_range_in_the_path_are_not_found(client: FlaskClient) -> None:
    for method in ("GET", "PATCH"):
        assert_error(client.open(f"{API}/operators/2147483648", method=method, json={"name": "x"}), 404)


def test_text_lengths_count_as_sent_and_blank_or_nul_text_is_named(client: FlaskClient) -> None:
    response = client.post(f"{API}/operators/", json={"name": "\n" + "a" * 200, "max_active_leads": 1})
    assert_error(response, 422, fields={"name"})
    response = client.post(f"{API}/operators/", json={"name": "   ", "max_active_leads": 1})
    assert json_of(response)["error"]["fields"] == {"name": "Must not be blank."}
    response = client.post(f"{API}/sources/", json={"name": "web\x00form"})
    assert json_of(response)["error"]["fields"] == {"name": "Must not contain the NUL character."}
    assert json_of(client.post(f"{API}/operators/", json={"name": " Anna ", "max_active_leads": 1}))["name"] == "Anna"


# --- what a caller may learn, and what the parser refuses (issue 10) --------------


def _register_token_client(app: Flask, name: str = "form") -> FlaskClient:
    from leadcrm.extensions import db
    from leadcrm.vocabulary import TokenScope
    from tests.helpers import add_token

    with app.app_context():
        secret = add_token(name, TokenScope.REGISTER)
        db.session.remove()
    token_client = app.test_client()
    token_client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {secret}"
    return token_client


def test_a_register_token_learns_only_what_it_sent(app: Flask, client: FlaskClient, setup: dict) -> None:
    full = {"source_id": 1, "external_id": "crm-7", "phone": "+79001234567", "email": "ivan@example.com"}
    first = post(client, "/contacts/register", {**full, "name": "Ivan Petrov"})
    assert first.status_code == 201 and first.json["lead_created"] is True
    # A caller that may read leads sees the whole lead.
    assert first.json["lead"]["email"] == "ivan@example.com" and first.json["lead"]["name"] == "Ivan Petrov"
    form = _register_token_client(app)
    # Only a phone, in another format: the answer must not reveal the e-mail, external id or name.
    probe = form.post(f"{API}/contacts/register", json={"source_id": 1, "phone": "8 900 123-45-67"})
    assert probe.status_code == 201, probe.json
    assert json_of(probe)["lead"] == {"id": json_of(first)["lead"]["id"], "phone": "+79001234567"}
    assert json_of(probe)["lead_created"] is False
    assert json_of(probe)["contact"]["lead_id"] == json_of(first)["lead"]["id"]
    assert "ivan@example.com" not in probe.text and "Ivan" not in probe.text and "crm-7" not in probe.text
    # A name or identifier it sends that the lead does not hold is not echoed as the lead's.
    other = form.post(f"{API}/contacts/register", json={"source_id": 1, "phone": "+79001234567", "name": "Someone"})
    assert json_of(other)["lead"] == {"id": json_of(first)["lead"]["id"], "phone": "+79001234567"}
    new = form.post(f"{API}/contacts/register", json={"source_id": 1, "email": "New@Example.com", "name": "Olga"})
    assert json_of(new)["lead_created"] is True
    assert json_of(new)["lead"] == {"id": json_of(new)["lead"]["id"], "email": "New@example.com", "name": "Olga"}


def test_a_register_token_is_not_told_which_lead_holds_an_identifier(
    app: Flask, client: FlaskClient, setup: dict
) -> None:
    # A lead conflict writes nothing: naming the leads would be a silent lookup of customers by phone or e-mail.
    ivan = post(client, "/contacts/register", {"source_id": 1, "phone": "+79001234567"}).json["lead"]["id"]
    post(client, "/contacts/register", {"source_id": 1, "email": "olga@example.com"})
    body = {"source_id": 1, "phone": "+79001234567", "email": "olga@example.com"}
    form = _register_token_client(app)
    refused = form.post(f"{API}/contacts/register", json=body)
    assert_error(refused, 409, "lead_conflict", {"phone", "email"})
    assert not re.search(r"\d", refused.text), refused.text  # no lead id, in any field
    # A caller that may read leads is still told which ones.
    assert post(client, "/contacts/register", body).json["error"]["fields"]["phone"] == f"Belongs to lead {ivan}."


def test_idempotency_keys_belong_to_their_caller(app: Flask, client: FlaskClient, setup: dict) -> None:
    body = {"source_id": 1, "phone": "+79001234567", "message": "hello"}
    form = _register_token_client(app, "form")
    other = _register_token_client(app, "other form")
    first = form.post(f"{API}/contacts/register", json=body, headers={"Idempotency-Key": "order-1"})
    assert first.status_code == 201
    # Another caller with the same key and body neither replays the first answer nor is refused: it is its own key.
    theirs = other.post(f"{API}/contacts/register", json=body, headers={"Idempotency-Key": "order-1"})
    assert theirs.status_code == 201 and "Idempotent-Replayed" not in theirs.headers
    assert json_of(theirs)["contact"]["id"] != json_of(first)["contact"]["id"]
    # ... nor can it probe which keys another caller used (a different body is not "reused").
    probe = other.post(f"{API}/contacts/register", json={**body, "message": "x"}, headers={"Idempotency-Key": "k2"})
    assert probe.status_code == 201
    # The first caller still gets its own answer back.
    again = form.post(f"{API}/contacts/register", json=body, headers={"Idempotency-Key": "order-1"})
    assert again.headers["Idempotent-Replayed"] == "true" and again.data == first.data


def test_duplicate_keys_in_a_json_body_are_400(client: FlaskClient, setup: dict) -> None:
    response = client.post(
        f"{API}/operators/", data='{"name": "A", "max_active_leads": 1, "name": "B"}', content_type="application/json"
    )
    assert_error(response, 400, "bad_request")
    assert "'name' appears twice" in json_of(response)["error"]["message"]
    nested = '[{"operator_id": 1, "weight": 1, "weight": 5}]'
    assert_error(client.post(f"{API}/sources/1/config", data=nested, content_type="application/json"), 400)
    assert json_of(client.get(f"{API}/operators/"))["total"] == 2
    assert json_of(client.get(f"{API}/sources/1/config"))[0]["weight"] == 10


def test_a_huge_integer_is_refused_in_the_domains_words(client: FlaskClient) -> None:
    for digits in ("9" * 5000, "-" + "9" * 5000, "9" * 101):
        body = '{"name": "A", "max_active_leads": ' + digits + "}"
        response = client.post(f"{API}/operators/", data=body, content_type="application/json")
        assert_error(response, 422, "validation_error", {"max_active_leads"})
        assert "4300" not in response.text and "digits" not in response.text
    assert json_of(client.get(f"{API}/operators/"))["total"] == 0


def test_the_openapi_document_says_exactly_one_source(client: FlaskClient) -> None:
    import jsonschema_rs

    document = json_of(client.get(f"{API}/openapi.json"))
    schema = {**document["components"]["schemas"]["RegisterIn"], "components": document["components"]}
    validator = jsonschema_rs.Draft202012Validator(schema)
    assert validator.is_valid({"source_id": 1, "phone": "+79001234567"})
    assert validator.is_valid({"source_name": "bot", "source_id": None, "phone": "+79001234567"})
    assert not validator.is_valid({"phone": "+79001234567"})
    assert not validator.is_valid({"source_id": 1, "source_name": "bot", "phone": "+79001234567"})
    assert not validator.is_valid({"source_id": None, "source_name": None, "phone": "+79001234567"})


def test_export_opens_in_a_russian_spreadsheet_semicolons_bom_and_the_organisations_clock(
    app: Flask, client: FlaskClient, setup: dict
) -> None:
    """Cyrillic survives as UTF-8 (a byte-order mark tells Excel), cells split on semicolons, and times are
    on the organisation's wall clock on both sides of a DST change (Berlin: UTC+2 in July, UTC+1 in December)."""
    import csv
    import io

    assert client.put(f"{API}/settings", json={"timezone": "Europe/Berlin"}).status_code == 200
    post(client, "/contacts/register", {"source_id": 1, "phone": "+79001234567", "name": "Ольга; «Рога и копыта»"})
    post(client, "/contacts/register", {"source_id": 1, "phone": "+79001234568", "message": "Перезвоните, 3,5 млн"})
    with app.app_context():
        begin_write(db.session)
        summer, winter = datetime(2026, 7, 1, 21, 30, tzinfo=UTC), datetime(2026, 12, 1, 23, 5, 9, tzinfo=UTC)
        db.session.execute(sa.update(Contact).where(Contact.id == 1).values(created_at=summer, assigned_at=summer))
        db.session.execute(sa.update(Contact).where(Contact.id == 2).values(created_at=winter, assigned_at=winter))
        db.session.commit()
    response = client.get(f"{API}/contacts/export.csv?sep=semicolon")
    assert response.status_code == 200 and response.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert response.data.startswith("\ufeffcontact_id;created_at;".encode())
    rows = {r["contact_id"]: r for r in csv.DictReader(io.StringIO(response.data.decode("utf-8-sig")), delimiter=";")}
    assert rows["1"]["lead_name"] == "Ольга; «Рога и копыта»" and rows["2"]["message"] == "Перезвоните, 3,5 млн"
    # The next day, in Berlin, for the winter one: the day boundary follows the organisation's zone.
    assert rows["1"]["created_at"] == rows["1"]["assigned_at"] == "2026-07-01 23:30:00"
    assert rows["2"]["created_at"] == "2026-12-02 00:05:09" and rows["2"]["closed_at"] == ""
    commas = client.get(f"{API}/contacts/export.csv").data.decode("utf-8-sig")
    assert commas.startswith("contact_id,created_at,") and '"Перезвоните, 3,5 млн"' in commas


def test_export_defuses_formulas_in_operator_and_source_names(client: FlaskClient) -> None:
    import csv
    import io

    operator = create_operator(client, '=HYPERLINK("http://evil.example","x")', 3)
    source = create_source(client, "@SUM(1+1)")
    post(client, f"/sources/{source['id']}/config", {"operator_id": operator["id"], "weight": 1})
    post(client, "/contacts/register", {"source_id": source["id"], "phone": "+79001234567", "email": "-1@example.com"})
    rows = list(csv.DictReader(io.StringIO(client.get(f"{API}/contacts/export.csv").data.decode("utf-8-sig"))))
    assert rows[0]["operator"] == "'" + operator["name"] and rows[0]["source"] == "'@SUM(1+1)"
    assert rows[0]["email"] == "'-1@example.com" and rows[0]["phone"] == "+79001234567"


def test_fractions_are_read_exactly_and_never_rounded_into_integers(client: FlaskClient, setup: dict) -> None:
    tiny = "0." + "0" * 5000 + "1"
    body = '{"operator_id": 1, "weight": ' + tiny + "}"
    assert_error(client.post(f"{API}/sources/1/config", data=body, content_type="application/json"), 422)
    assert json_of(client.get(f"{API}/sources/1/config"))[0]["weight"] == 10  # not removed by a weight rounded to 0
    nearly_one = '{"source_id": 1.0000000000000001, "phone": "+79001234567"}'
    response = client.post(f"{API}/contacts/register", data=nearly_one, content_type="application/json")
    assert_error(response, 422, fields={"source_id"})
    # Integral numbers written as fractions are still integers (JSON Schema agrees).
    assert post(client, "/contacts/register", {"source_id": 1.0, "phone": "+79001234567"}).status_code == 201
    huge = '{"name": "A", "max_active_leads": 1e999999999}'
    assert_error(client.post(f"{API}/operators/", data=huge, content_type="application/json"), 422)


# --- the registration's answer, built without pydantic --------------------------------

utc_times = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC))
texts = st.none() | st.text(max_size=30)


@settings(max_examples=300, deadline=None)
@given(
    contact=st.builds(
        ContactRecord,
        id=st.integers(1, INT_MAX),
        lead_id=st.integers(1, INT_MAX),
        source_id=st.integers(1, INT_MAX),
        operator_id=st.none() | st.integers(1, INT_MAX),
        status=st.sampled_from(["open", "closed"]),
        message=texts,
        created_at=utc_times,
        assigned_at=st.none() | utc_times,
        closed_at=st.none() | utc_times,
        offered_until=st.none() | utc_times,
        accepted_at=st.none() | utc_times,
    ),
    lead=st.builds(
        LeadRecord,
        id=st.integers(1, INT_MAX),
        external_id=texts,
        phone=texts,
        email=texts,
        name=texts,
        created_at=utc_times,
    ),
    operator=st.none()
    | st.builds(
        OperatorRecord,
        id=st.integers(1, INT_MAX),
        name=st.text(max_size=30),
        is_active=st.booleans(),
        max_active_leads=st.integers(0, INT_MAX),
        active_leads=st.integers(0, INT_MAX),
        presence=st.sampled_from(list(Presence)),
        idle_away_minutes=st.none() | st.integers(1, IDLE_MINUTES_MAX),
        last_seen_at=st.none() | utc_times,
        away_reason=st.none() | st.sampled_from(list(AwayReason)),
        shift_from=st.none() | utc_times,
        shift_until=st.none() | utc_times,
    ),
    lead_created=st.booleans(),
)
def test_the_registration_answer_built_from_records_is_what_the_schema_says(
    contact: ContactRecord, lead: LeadRecord, operator: OperatorRecord | None, lead_created: bool
) -> None:
    registration = Registration(contact=contact, lead=lead, lead_created=lead_created, operator=operator)
    by_schema = RegistrationOut(
        contact=ContactOut.model_validate(contact),
        lead=LeadOut.model_validate(lead),
        lead_created=lead_created,
        assigned_operator=OperatorOut.model_validate(operator) if operator else None,
    ).model_dump(mode="json")
    built = registration_json(registration, lead_json(lead))
    assert json.dumps(built) == json.dumps(by_schema)
