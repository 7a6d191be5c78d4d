"""The operator's inbox, its presence switch, logging out as away, and what an operator user may reach."""

import re
from datetime import timedelta

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from leadcrm import accounts
from leadcrm.extensions import db
from leadcrm.models import Contact, Operator, OperatorEvent, User, utcnow
from leadcrm.vocabulary import Role
from tests.helpers import PASSWORD, add_user, csrf_token_of, json_of, login_client

API = "/api/v1"
HTMX = {"HX-Request": "true"}


def text(response) -> str:
    return response.get_data(as_text=True)


def add_operator_user(username: str, operator_id: int | None) -> User:
    user = add_user(username, Role.OPERATOR)
    if operator_id is not None:
        accounts.link_operator(db.session(), db.session.get_one(User, user.id), operator_id)
        db.session.commit()
    return user


@pytest.fixture
def desk(app: Flask, client: FlaskClient) -> dict:
    """Anna serves source "a", Boris serves "b"; users anna and boris work as them."""
    anna = json_of(client.post(f"{API}/operators/", json={"name": "Anna", "max_active_leads": 5}))
    boris = json_of(client.post(f"{API}/operators/", json={"name": "Boris", "max_active_leads": 5}))
    a = json_of(client.post(f"{API}/sources/", json={"name": "a"}))
    b = json_of(client.post(f"{API}/sources/", json={"name": "b"}))
    client.post(f"{API}/sources/{a['id']}/config", json=[{"operator_id": anna["id"], "weight": 1}])
    client.post(f"{API}/sources/{b['id']}/config", json=[{"operator_id": boris["id"], "weight": 1}])
    with app.app_context():
        anna_user = add_operator_user("anna", anna["id"])
        boris_user = add_operator_user("boris", boris["id"])
    return {
        "anna": anna,
        "boris": boris,
        "a": a,
        "b": b,
        "anna_client": login_client(app, anna_user),
        "boris_client": login_client(app, boris_user),
    }


def register(client: FlaskClient, source: dict, phone: str, message: str, name: str | None = None) -> dict:
    body = {"source_id": source["id"], "phone": phone, "message": message}
    if name:
        body["name"] = name
    response = client.post(f"{API}/contacts/register", json=body)
    assert response.status_code in (200, 201), text(response)
    return json_of(response)


def contact_id(registered: dict) -> int:
    return registered["contact"]["id"] if "contact" in registered else registered["id"]


def form(client: FlaskClient, path: str, data: dict, htmx: bool = False, **kw):
    csrf = csrf_token_of(text(client.get("/inbox/")))
    headers = {"X-CSRFToken": csrf, **HTMX} if htmx else {}
    return client.post(path, data=data if htmx else {"csrf_token": csrf, **data}, headers=headers, **kw)


def test_inbox_lists_own_open_contacts_oldest_first(client: FlaskClient, desk: dict) -> None:
    register(client, desk["a"], "+79000000001", "first of anna", name="Pyotr")
    register(client, desk["b"], "+79000000002", "boris has this")
    register(client, desk["a"], "+79000000003", "second of anna")
    closed = contact_id(register(client, desk["a"], "+79000000004", "closed already"))
    assert client.post(f"{API}/contacts/{closed}/close").status_code == 200
    page = text(desk["anna_client"].get("/inbox/"))
    assert "first of anna" in page and "second of anna" in page
    assert page.index("first of anna") < page.index("second of anna")
    assert "Pyotr" in page and "+79000000001" in page
    assert "boris has this" not in page
    # Closed today: below, folded away.
    assert page.index("second of anna") < page.index("<details") < page.index("+79000000004")
    assert "<title>(2) Inbox · leadcrm</title>" in page
    assert 'id="close-' in page


def test_the_poll_answers_the_live_section_with_the_count(client: FlaskClient, desk: dict) -> None:
    register(client, desk["a"], "+79000000001", "hello")
    fragment = desk["anna_client"].get("/inbox/", headers=HTMX)
    assert fragment.status_code == 200 and "HX-Request" in fragment.headers["Vary"]
    body = text(fragment)
    assert "<html" not in body and body.lstrip().startswith('<section id="inbox"')
    assert 'data-open-count="1"' in body and 'hx-trigger="every 2s' in body
    register(client, desk["a"], "+79000000002", "again")
    assert 'data-open-count="2"' in text(desk["anna_client"].get("/inbox/", headers=HTMX))


def _operator(app: Flask, operator_id: int) -> Operator:
    with app.app_context():
        operator = db.session.get_one(Operator, operator_id)
        db.session.expunge(operator)
        return operator


def test_opening_the_inbox_is_a_sign_of_life_written_at_most_every_30_seconds(app: Flask, desk: dict) -> None:
    assert _operator(app, desk["anna"]["id"]).last_seen_at is None
    desk["anna_client"].get("/inbox/")
    seen = _operator(app, desk["anna"]["id"]).last_seen_at
    assert seen is not None and utcnow() - seen < timedelta(seconds=10)
    desk["anna_client"].get("/inbox/", headers=HTMX)
    assert _operator(app, desk["anna"]["id"]).last_seen_at == seen


def test_an_idle_operator_opening_its_inbox_takes_the_waiting_contacts_at_once(
    app: Flask, client: FlaskClient, desk: dict
) -> None:
    with app.app_context():
        anna = db.session.get_one(Operator, desk["anna"]["id"])
        anna.idle_away_minutes = 1
        anna.last_seen_at = utcnow() - timedelta(minutes=5)
        db.session.commit()
    waiting = contact_id(register(client, desk["a"], "+79000000001", "while anna was idle"))
    with app.app_context():
        assert db.session.get_one(Contact, waiting).operator_id is None
    page = text(desk["anna_client"].get("/inbox/"))
    assert "while anna was idle" in page
    with app.app_context():
        assert db.session.get_one(Contact, waiting).operator_id == desk["anna"]["id"]


def test_closing_from_the_inbox_answers_the_inbox(app: Flask, client: FlaskClient, desk: dict) -> None:
    first = contact_id(register(client, desk["a"], "+79000000001", "one"))
    register(client, desk["a"], "+79000000002", "two")
    anna = desk["anna_client"]
    response = form(anna, f"/contacts/{first}/close", {"next": "/inbox/"}, htmx=True)
    assert response.status_code == 200
    body = text(response)
    assert body.lstrip().startswith('<section id="inbox"') and 'data-open-count="1"' in body
    assert f'id="close-{first}"' not in body and "contacts-changed" in response.headers["HX-Trigger"]
    with app.app_context():
        assert db.session.get_one(Contact, first).status == "closed"
    # Without JavaScript: back to the inbox.
    second = contact_id(register(client, desk["a"], "+79000000003", "three"))
    response = form(anna, f"/contacts/{second}/close", {"next": "/inbox/"})
    assert response.status_code == 302 and response.headers["Location"].endswith("/inbox/")
    # The contacts list keeps its row answer.
    third = contact_id(register(client, desk["a"], "+79000000004", "four"))
    csrf = csrf_token_of(text(client.get("/contacts/")))
    row = client.post(f"/contacts/{third}/close", data={"next": "/contacts/"}, headers={"X-CSRFToken": csrf, **HTMX})
    assert "<tr" in text(row) and 'id="inbox"' not in text(row)


def _events(app: Flask, operator_id: int) -> list[tuple[str, str | None, str | None]]:
    with app.app_context():
        rows = db.session.scalars(
            sa.select(OperatorEvent).where(OperatorEvent.operator_id == operator_id).order_by(OperatorEvent.id)
        )
        return [(e.field, e.value, e.actor) for e in rows]


def test_the_presence_switch_sets_away_and_the_history_names_the_user(
    app: Flask, client: FlaskClient, desk: dict
) -> None:
    anna = desk["anna_client"]
    page = text(anna.get("/inbox/"))
    assert 'id="presence-switch"' in page and 'aria-pressed="true"' in page
    response = form(anna, "/inbox/presence", {"presence": "away", "next": "/contacts/0"})
    assert response.status_code == 302  # an unknown target is fine to go back to: it is ours
    assert _operator(app, desk["anna"]["id"]).presence == "away"
    assert ("presence", "away", "user:anna") in _events(app, desk["anna"]["id"])
    page = text(anna.get("/inbox/"))
    assert "You are away" in page and 'aria-pressed="false"' in page
    # Away: a new contact of Anna's source waits.
    waiting = contact_id(register(client, desk["a"], "+79000000001", "nobody there"))
    with app.app_context():
        assert db.session.get_one(Contact, waiting).operator_id is None
    # Available again, with htmx: the switch comes back pressed, the queue drains to Anna.
    response = form(anna, "/inbox/presence", {"presence": "available"}, htmx=True)
    assert response.status_code == 200 and "operators-changed" in response.headers["HX-Trigger"]
    assert text(response).lstrip().startswith('<form id="presence-switch"') and 'aria-pressed="true"' in text(response)
    with app.app_context():
        assert db.session.get_one(Contact, waiting).operator_id == desk["anna"]["id"]
    # Elsewhere only our own pages are targets; nonsense is a 422 with a message.
    response = form(anna, "/inbox/presence", {"presence": "away", "next": "https://evil.example/"})
    assert response.headers["Location"].endswith("/inbox/")
    bad = form(anna, "/inbox/presence", {"presence": "asleep"})
    assert bad.status_code == 422 and "available or away" in text(bad)


def test_logging_out_sets_an_operator_user_away(app: Flask, desk: dict) -> None:
    anna = desk["anna_client"]
    page = text(anna.get("/inbox/"))
    assert "Logging out sets you away" in page
    response = anna.post("/logout", data={"csrf_token": csrf_token_of(page)})
    assert response.status_code == 302
    assert _operator(app, desk["anna"]["id"]).presence == "away"
    assert ("presence", "away", "user:anna") in _events(app, desk["anna"]["id"])
    assert anna.get("/inbox/").status_code == 302  # logged out


def test_logging_out_everywhere_sets_an_operator_user_away(app: Flask, desk: dict) -> None:
    response = form(desk["boris_client"], "/account/logout-everywhere", {})
    assert response.status_code == 302
    assert _operator(app, desk["boris"]["id"]).presence == "away"


def test_an_operator_user_reaches_only_its_own_contacts_and_leads(client: FlaskClient, desk: dict) -> None:
    mine = contact_id(register(client, desk["a"], "+79000000001", "anna's message"))
    theirs = contact_id(register(client, desk["b"], "+79000000002", "boris's message"))
    # The same lead wrote through both sources: Anna sees Boris's contact as a summary line.
    shared = contact_id(register(client, desk["b"], "+79000000001", "boris's secret"))
    closed = contact_id(register(client, desk["b"], "+79000000003", "closed"))
    client.post(f"{API}/contacts/{closed}/close")
    anna = desk["anna_client"]
    assert anna.get(f"/contacts/{theirs}").status_code == 403
    assert form(anna, f"/contacts/{theirs}/close", {}).status_code == 403
    assert form(anna, f"/contacts/{closed}/reopen", {}).status_code == 403
    assert anna.get("/contacts/999999").status_code == 404
    with anna.application.app_context():
        assert db.session.get_one(Contact, theirs).status == "open"
        assert db.session.get_one(Contact, closed).status == "closed"
        boris_lead = db.session.get_one(Contact, theirs).lead_id
        own_lead = db.session.get_one(Contact, mine).lead_id
    assert anna.get(f"/leads/{boris_lead}").status_code == 403
    lead_page = text(anna.get(f"/leads/{own_lead}"))
    assert "anna&#39;s message" in lead_page and "boris&#39;s secret" not in lead_page
    assert f'href="/contacts/{shared}"' not in lead_page and f'data-testid="lead-contact-{shared}"' in lead_page
    detail = text(anna.get(f"/contacts/{mine}"))
    assert "boris&#39;s secret" not in detail and f'data-testid="lead-contact-{shared}"' in detail
    assert 'name="operator_id"' not in detail  # no assign picker for an operator user
    # Its own: close, then reopen (a closed contact keeps its operator).
    assert form(anna, f"/contacts/{mine}/close", {}).status_code == 302
    assert "Reopen" in text(anna.get(f"/contacts/{mine}"))
    assert form(anna, f"/contacts/{mine}/reopen", {}).status_code == 302
    with anna.application.app_context():
        assert db.session.get_one(Contact, mine).status == "open"


def test_an_unlinked_operator_user_is_told_to_ask_a_supervisor(app: Flask) -> None:
    with app.app_context():
        olga = add_operator_user("olga", None)
    olga_client = login_client(app, olga)
    page = olga_client.get("/inbox/")
    assert page.status_code == 200
    assert "Your account is not linked to an operator; ask a supervisor." in text(page)
    assert 'id="presence-switch"' not in text(page)
    assert form(olga_client, "/inbox/presence", {"presence": "away"}).status_code == 403


def test_operator_users_land_on_their_inbox(app: Flask, desk: dict) -> None:
    browser = app.test_client()
    csrf = csrf_token_of(text(browser.get("/login")))
    response = browser.post("/login", data={"csrf_token": csrf, "username": "anna", "password": PASSWORD})
    assert response.status_code == 302 and response.headers["Location"].endswith("/inbox/")
    page = text(browser.get("/inbox/"))
    assert 'class="brand" href="/inbox/"' in page and 'href="/inbox/" aria-current="page"' in page
    # "/" is everyone's first address: an operator user is sent on to its inbox, never shown the load table.
    root = browser.get("/")
    assert root.status_code == 302 and root.headers["Location"].endswith("/inbox/")
    assert "load-table" not in text(root)
    fragment = browser.get("/", headers={"HX-Request": "true"})
    assert fragment.status_code == 302 and "load-table" not in text(fragment)


@pytest.mark.parametrize(
    ("asked", "lands"),
    [
        ("/", "/"),  # which then sends it to the inbox
        ("/contacts/", "/inbox/"),  # not its page: its home instead of "Not allowed"
        ("/users/", "/inbox/"),
        ("/no-such-page", "/inbox/"),
        ("/contacts/1", "/contacts/1"),  # a contact page is one of its pages (the contact itself is checked there)
    ],
)
def test_the_login_goes_back_only_to_a_page_the_user_may_see(app: Flask, desk: dict, asked: str, lands: str) -> None:
    browser = app.test_client()
    csrf = csrf_token_of(text(browser.get("/login")))
    form = {"csrf_token": csrf, "username": "anna", "password": PASSWORD}
    response = browser.post("/login", query_string={"next": asked}, data=form)
    assert response.status_code == 302 and response.headers["Location"] == lands


def test_a_supervisor_at_the_inbox_is_told_whose_page_it_is(client: FlaskClient) -> None:
    """Not "ask a supervisor": the one asking is one."""
    page = client.get("/inbox/")
    assert page.status_code == 403
    assert "operator user" in text(page) and "Ask a supervisor" not in text(page)


def test_becoming_available_from_the_switch_is_a_sign_of_life(app: Flask, client: FlaskClient, desk: dict) -> None:
    """An idle operator (its inbox closed for longer than its setting) saying "available" on any page is
    at work again at once: the waiting contact comes to it in the same request."""
    anna = desk["anna_client"]
    with app.app_context():
        operator = db.session.get_one(Operator, desk["anna"]["id"])
        operator.idle_away_minutes, operator.presence = 5, "away"
        operator.last_seen_at = utcnow() - timedelta(minutes=30)
        db.session.commit()
    waiting = contact_id(register(client, desk["a"], "+79000000071", "anyone?"))
    form(anna, "/inbox/presence", {"presence": "available", "next": "/account"})
    with app.app_context():
        assert db.session.get_one(Contact, waiting).operator_id == desk["anna"]["id"]


def test_reopening_what_a_colleague_then_gets_lands_on_the_inbox(app: Flask, client: FlaskClient, desk: dict) -> None:
    """Anna reopens her closed contact while away: it goes to someone else, and she is not sent to a
    page that is no longer hers (a 403)."""
    anna = desk["anna_client"]
    mine = contact_id(register(client, desk["a"], "+79000000072", "hello"))
    form(anna, f"/contacts/{mine}/close", {})
    # Boris serves her source too now, and she is away.
    client.post(f"{API}/sources/{desk['a']['id']}/config", json={"operator_id": desk["boris"]["id"], "weight": 1})
    form(anna, "/inbox/presence", {"presence": "away"})
    response = form(anna, f"/contacts/{mine}/reopen", {})
    assert response.status_code == 302 and response.headers["Location"].endswith("/inbox/")
    with app.app_context():
        assert db.session.get_one(Contact, mine).operator_id == desk["boris"]["id"]


def test_a_poll_of_an_unchanged_inbox_is_an_empty_204(app: Flask, client: FlaskClient, desk: dict) -> None:
    """The poll sends the version it shows; while nothing it shows changes, the answer is empty."""
    anna = desk["anna_client"]
    first = contact_id(register(client, desk["a"], "+79000000081", "first"))
    with app.app_context():  # ages that read the same for an hour: "2 hours"
        db.session.get_one(Contact, first).assigned_at = utcnow() - timedelta(hours=2)
        db.session.commit()
    poll = {"HX-Request": "true"}

    def version() -> str:
        found = re.search(r'hx-get="/inbox/\?v=(\w+)"', text(anna.get("/inbox/", headers=poll)))
        assert found
        return found.group(1)

    shown = version()
    unchanged = anna.get(f"/inbox/?v={shown}", headers=poll)
    assert unchanged.status_code == 204 and unchanged.get_data() == b""
    assert "HX-Request" in unchanged.headers["Vary"]
    # A new contact, a close, going away: each one a new version, and the whole section again.
    for change in (
        lambda: register(client, desk["a"], "+79000000082", "second"),
        lambda: form(anna, f"/contacts/{first}/close", {}),
        lambda: form(anna, "/inbox/presence", {"presence": "away"}),
    ):
        change()
        answer = anna.get(f"/inbox/?v={shown}", headers=poll)
        assert answer.status_code == 200 and 'id="inbox"' in text(answer)
        assert version() != shown
        shown = version()
    # A full page load always gets the page.
    assert anna.get(f"/inbox/?v={shown}").status_code == 200
