"""Odd input on every new field of operators at work, the idle rule to the second, and where the login
sends an operator user."""

from datetime import timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient

from leadcrm import operators, storage
from leadcrm.extensions import db
from leadcrm.models import Operator, utcnow
from leadcrm.storage import Tx
from leadcrm.vocabulary import IDLE_MINUTES_MAX, Role
from tests.helpers import PASSWORD, add_operator, add_source, add_user, csrf_token_of, login_client

HTMX = {"HX-Request": "true"}
ODD = ["", "\x00", "1\x00", "-1", "0", "1.5", "1e3", "9" * 30, "abc", "away\x00", " away", "AWAY", "٣", "[]"]


def post_form(client: FlaskClient, path: str, data: dict, htmx: bool = False):
    token = csrf_token_of(client.get("/account").get_data(as_text=True))
    if htmx:
        return client.post(path, data=data, headers={"X-CSRFToken": token, **HTMX})
    return client.post(path, data={"csrf_token": token, **data})


@pytest.fixture
def team(app: Flask, client: FlaskClient) -> dict:
    with app.app_context():
        anna = add_operator("Anna", 3)
        boris = add_operator("Boris", 2)
        db.session.commit()
        user = add_user("anna", Role.OPERATOR, operator_id=anna.id)
        return {"anna": anna.id, "boris": boris.id, "user": user.id, "anna_client": login_client(app, user)}


def test_odd_values_in_every_new_form_field_are_never_a_server_error(client: FlaskClient, team: dict) -> None:
    failed: list[object] = []
    for value in ODD:
        for htmx in (False, True):
            for path, data in [
                (f"/operators/{team['boris']}", {"presence": value}),
                (f"/operators/{team['boris']}", {"idle_away_minutes": value}),
                (f"/users/{team['user']}/operator", {"operator_id": value}),
                (f"/users/{team['user']}/role", {"role": "operator", "operator_id": value}),
                ("/users/", {"username": "x", "password": "long enough!", "role": "operator", "operator_id": value}),
            ]:
                response = post_form(client, path, data, htmx)
                if response.status_code >= 500:
                    failed.append((path, data, htmx, response.status_code))
            response = post_form(team["anna_client"], "/inbox/presence", {"presence": value, "next": value}, htmx)
            if response.status_code >= 500:
                failed.append(("/inbox/presence", value, htmx, response.status_code))
    assert not failed


@pytest.mark.parametrize("field", ["presence", "idle_away_minutes", "max_active_leads", "is_active", "bogus"])
def test_odd_json_values_of_operator_fields_are_json_errors(client: FlaskClient, team: dict, field: str) -> None:
    values: list[object] = [None, True, 1.5, -1, 0, 2**63, "x", "\x00", [], {}, 10**30, "5", IDLE_MINUTES_MAX + 1]
    for value in values:
        for response in (
            client.patch(f"/api/v1/operators/{team['boris']}", json={field: value}),
            client.post("/api/v1/operators/", json={"name": f"n{value!r}"[:40], "max_active_leads": 1, field: value}),
        ):
            assert response.status_code < 500 and response.is_json, (field, value, response.status_code)


@pytest.mark.usefixtures("ctx")
@pytest.mark.parametrize(("seconds_past", "eligible"), [(-3, True), (3, False)])
def test_the_idle_rule_holds_to_the_second_at_the_claim(seconds_past: int, eligible: bool) -> None:
    """Seen N minutes and 3 s ago is idle, N minutes less 3 s is not: the text timestamps of SQLite compare
    as time does, and the claim and the Python rule agree."""
    anna = add_operator("Anna", 10)
    source = add_source(weights={anna: 1})
    db.session.commit()
    operators.update_operator(db.session(), anna.id, {"idle_away_minutes": 7})
    db.session.get_one(Operator, anna.id).last_seen_at = utcnow() - timedelta(minutes=7, seconds=seconds_past)
    db.session.commit()
    record = storage.operator_by_id(Tx.of(db.session()), anna.id)
    assert record is not None and record.at_work(utcnow()) is eligible
    assert (storage.eligible_operators(Tx.of(db.session()), source.id) is not None) is eligible
    assert (storage.claim_operator(Tx.of(db.session()), anna.id) is not None) is eligible
    db.session.rollback()


def test_an_operator_user_who_opens_the_sites_address_lands_on_its_inbox_after_the_login(
    app: Flask, team: dict
) -> None:
    """The site's address ("/", the load table) is not an operator user's: the login sends it to its inbox,
    not back to a 403 page. A page it may open is still where the login goes back to."""
    browser = app.test_client()
    response = browser.get("/")
    assert response.status_code == 302 and response.location == "/login?next=/"
    csrf = csrf_token_of(browser.get("/login?next=/").get_data(as_text=True))
    data = {"csrf_token": csrf, "username": "anna", "password": PASSWORD}
    response = browser.post("/login", query_string={"next": "/"}, data=data)
    # Back to "/", which an operator user's visit turns into its inbox.
    assert response.status_code == 302 and response.location == "/"
    assert browser.get("/").location == "/inbox/"
    # Already logged in, the login page sends it on the same way.
    assert browser.get("/login", query_string={"next": "/users/"}).location == "/inbox/"
    assert browser.get("/login", query_string={"next": "/account"}).location == "/account"


@pytest.mark.parametrize("given", ["³", "²5", "Anna\x00", "9" * 40])
def test_the_shell_names_an_unknown_operator_for_any_text(app: Flask, given: str) -> None:
    """``--operator`` with digits int() does not read (superscripts), a NUL or a huge number: the usual error."""
    runner = app.test_cli_runner()
    answer = runner.invoke(
        args=["leadcrm", "users", "create", "vera", "--role", "operator", "--operator", given],
        input="pass phrase 1\n" * 2,
    )
    assert answer.exit_code == 1, answer.output
    assert "No operator named or numbered" in answer.output and isinstance(answer.exception, SystemExit)
