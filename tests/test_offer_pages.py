"""The pages' side of offers: a source's offer settings, Take and the countdown in the inbox, the
offer on the contacts' pages and in their history. Real databases, real time: a deadline passes by
sleeping past it (with LEADCRM_OFFER_TIMEOUT_MIN lowered to 1 second), never by changing the clock."""

import re
import time
from datetime import timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient

from leadcrm import accounts, offers
from leadcrm.database import begin_write
from leadcrm.extensions import db
from leadcrm.models import Contact, Source, User, utcnow
from leadcrm.vocabulary import OFFER_TIMEOUT_MAX, Role
from tests.helpers import add_user, csrf_token_of, json_of, login_client

API = "/api/v1"
HTMX = {"HX-Request": "true"}


def text(response) -> str:
    return response.get_data(as_text=True)


def post(client: FlaskClient, path: str, data: dict, htmx: bool = False):
    """A form sent as the page sends it: htmx with the token in its header, or a plain POST with the field."""
    csrf = csrf_token_of(text(client.get("/", follow_redirects=True)))
    if htmx:
        return client.post(path, data=data, headers={"X-CSRFToken": csrf, **HTMX})
    return client.post(path, data={"csrf_token": csrf, **data})


@pytest.fixture
def desk(app: Flask, client: FlaskClient) -> dict:
    """Anna serves source "a" (its only operator); Boris serves "b"; users anna and boris work as them."""
    anna = json_of(client.post(f"{API}/operators/", json={"name": "Anna", "max_active_leads": 5}))
    boris = json_of(client.post(f"{API}/operators/", json={"name": "Boris", "max_active_leads": 5}))
    a = json_of(client.post(f"{API}/sources/", json={"name": "a"}))
    b = json_of(client.post(f"{API}/sources/", json={"name": "b"}))
    client.post(f"{API}/sources/{a['id']}/config", json=[{"operator_id": anna["id"], "weight": 1}])
    client.post(f"{API}/sources/{b['id']}/config", json=[{"operator_id": boris["id"], "weight": 1}])
    users = {}
    with app.app_context():
        for name, operator in (("anna", anna), ("boris", boris)):
            user = add_user(name, Role.OPERATOR)
            accounts.link_operator(db.session(), db.session.get_one(User, user.id), operator["id"])
            db.session.commit()
            users[name] = user
    return {
        "anna": anna,
        "boris": boris,
        "a": a,
        "b": b,
        "anna_client": login_client(app, users["anna"]),
        "boris_client": login_client(app, users["boris"]),
    }


def save_editor(client: FlaskClient, source: dict, anna: dict, timeout: str, misses: str = "3"):
    """The source's editor as the page sends it: Anna's weight, the strategy, and the offers' fields."""
    data = {
        f"weight-{anna['id']}": "1",
        "strategy": "random",
        "offer_timeout_seconds": timeout,
        "offer_misses_away": misses,
    }
    return post(client, f"/sources/{source['id']}", data, htmx=True)


def stored_offers(app: Flask, source_id: int) -> tuple[int | None, int]:
    with app.app_context():
        source = db.session.get_one(Source, source_id)
        return source.offer_timeout_seconds, source.offer_misses_away


def stored_contact(app: Flask, contact_id: int) -> Contact:
    with app.app_context():
        contact = db.session.get_one(Contact, contact_id)
        db.session.expunge(contact)
        return contact


def register(client: FlaskClient, source: dict, phone: str, message: str, name: str | None = None) -> int:
    body = {"source_id": source["id"], "phone": phone, "message": message, **({"name": name} if name else {})}
    response = client.post(f"{API}/contacts/register", json=body)
    assert response.status_code == 201, text(response)
    registered = json_of(response)
    return registered["contact"]["id"] if "contact" in registered else registered["id"]


def offer_source(app: Flask, client: FlaskClient, desk: dict, seconds: int) -> None:
    """Source "a" makes offers of ``seconds``, set through its page (the minimum lowered for short ones)."""
    app.config["LEADCRM_OFFER_TIMEOUT_MIN"] = min(seconds, 30)
    assert save_editor(client, desk["a"], desk["anna"], str(seconds)).status_code == 200
    assert stored_offers(app, desk["a"]["id"])[0] == seconds


def row_of(page: str, contact_id: int) -> str:
    """The inbox row of one contact (the list item, up to the next one or the list's end)."""
    found = re.search(rf'<li class="inbox-row[^"]*" id="inbox-contact-{contact_id}".*?</li>', page, re.S)
    assert found, page
    return found.group(0)


# --- the sources page ------------------------------------------------------------------------


def test_the_sources_page_sets_the_offer_timeout_and_the_misses_before_away(
    app: Flask, client: FlaskClient, desk: dict
) -> None:
    page = text(client.get(f"/sources/{desk['a']['id']}"))
    assert "Offer timeout (seconds)" in page and "Missed offers before away" in page
    assert re.search(r'id="offer_timeout_seconds"[^>]*value=""', page)  # off: empty
    assert re.search(r'id="offer_misses_away"[^>]*value="3"', page)  # the default
    response = save_editor(client, desk["a"], desk["anna"], "45", "5")
    assert response.status_code == 200
    assert re.search(r'id="offer_timeout_seconds"[^>]*value="45"', text(response))
    assert stored_offers(app, desk["a"]["id"]) == (45, 5)
    assert "take within 45 s" in text(client.get("/sources/"))
    # The longest allowed, then empty: offers off again.
    assert save_editor(client, desk["a"], desk["anna"], str(OFFER_TIMEOUT_MAX), "1").status_code == 200
    assert stored_offers(app, desk["a"]["id"]) == (OFFER_TIMEOUT_MAX, 1)
    assert save_editor(client, desk["a"], desk["anna"], "", "100").status_code == 200
    assert stored_offers(app, desk["a"]["id"]) == (None, 100)
    # A plain form POST (no JavaScript): saved, then back to the page.
    data = {f"weight-{desk['anna']['id']}": "1", "offer_timeout_seconds": "30", "offer_misses_away": "2"}
    response = post(client, f"/sources/{desk['a']['id']}", data)
    assert response.status_code == 302
    assert stored_offers(app, desk["a"]["id"]) == (30, 2)


@pytest.mark.parametrize(
    ("timeout", "misses", "wrong"),
    [
        ("29", "3", "offer_timeout_seconds"),  # below the configured minimum (30)
        ("0", "3", "offer_timeout_seconds"),
        ("-30", "3", "offer_timeout_seconds"),
        (str(OFFER_TIMEOUT_MAX + 1), "3", "offer_timeout_seconds"),
        ("1.5", "3", "offer_timeout_seconds"),
        ("ten", "3", "offer_timeout_seconds"),
        ("9" * 5000, "3", "offer_timeout_seconds"),
        ("60", "0", "offer_misses_away"),
        ("60", "101", "offer_misses_away"),
        ("60", "", "offer_misses_away"),
        ("60", "many", "offer_misses_away"),
    ],
)
def test_the_sources_page_refuses_bad_offer_values_next_to_the_field(
    app: Flask, client: FlaskClient, desk: dict, timeout: str, misses: str, wrong: str
) -> None:
    response = save_editor(client, desk["a"], desk["anna"], timeout, misses)
    assert response.status_code == 422
    html = text(response)
    assert f'id="{wrong}-error"' in html and f'id="{wrong}" ' in html
    typed = timeout if wrong == "offer_timeout_seconds" else misses
    assert re.search(rf'id="{wrong}"[^>]*value="{re.escape(typed)}"', html)  # what was typed, kept
    assert 'aria-invalid="true"' in html
    assert stored_offers(app, desk["a"]["id"]) == (None, 3)  # nothing saved


def test_the_offer_timeouts_minimum_is_the_configured_one(app: Flask, client: FlaskClient, desk: dict) -> None:
    refused = save_editor(client, desk["a"], desk["anna"], "1")
    assert refused.status_code == 422 and "From 30 to 86,400 seconds" in text(refused)
    app.config["LEADCRM_OFFER_TIMEOUT_MIN"] = 1
    assert save_editor(client, desk["a"], desk["anna"], "1").status_code == 200
    assert stored_offers(app, desk["a"]["id"]) == (1, 3)
    refused = save_editor(client, desk["a"], desk["anna"], "0")
    assert refused.status_code == 422 and "From 1 to 86,400 seconds" in text(refused)


def test_an_editor_post_without_the_offer_fields_keeps_them(app: Flask, client: FlaskClient, desk: dict) -> None:
    assert save_editor(client, desk["a"], desk["anna"], "60", "4").status_code == 200
    response = post(client, f"/sources/{desk['a']['id']}", {f"weight-{desk['anna']['id']}": "2"}, htmx=True)
    assert response.status_code == 200
    assert stored_offers(app, desk["a"]["id"]) == (60, 4)


# --- the inbox: Take and the countdown -------------------------------------------------------


def test_an_offered_contact_comes_first_with_take_and_a_countdown(app: Flask, client: FlaskClient, desk: dict) -> None:
    plain = register(client, desk["a"], "+79000000001", "before offers", name="Pyotr")
    offer_source(app, client, desk, 60)
    offered = register(client, desk["a"], "+79000000002", "an offer", name="Sergei")
    page = text(desk["anna_client"].get("/inbox/"))
    # First in the list though it came later, and marked.
    assert page.index(f'id="inbox-contact-{offered}"') < page.index(f'id="inbox-contact-{plain}"')
    row = row_of(page, offered)
    assert 'class="inbox-row offered"' in row and 'class="badge offer"' in row
    assert f'id="take-{offered}"' in row and f'action="/inbox/contacts/{offered}/take"' in row
    deadline = stored_contact(app, offered).offered_until
    assert deadline is not None
    assert f'Offered, take it before <time datetime="{deadline.isoformat()}">{deadline:%H:%M}</time>.' in row
    countdown = re.search(
        r'<time class="countdown" datetime="([^"]+)" aria-live="off" data-milliseconds-left="(\d+)"', row
    )
    assert countdown, row
    assert countdown.group(1) == deadline.isoformat() and 55_000 <= int(countdown.group(2)) <= 60_000
    assert re.search(r">\s*(0:5\d|1:00) left\s*</time>", row)
    assert 'data-ran-out-text="The time ran out."' in row and 'data-left-text="{time} left"' in row
    assert f'aria-describedby="lead-of-{offered} offer-of-{offered}"' in row
    # The contact that is simply Anna's: no Take, no countdown.
    plain_row = row_of(page, plain)
    assert "inbox-take" not in plain_row and "countdown" not in plain_row and "offered" not in plain_row


def test_take_accepts_the_offer_and_answers_the_inbox(app: Flask, client: FlaskClient, desk: dict) -> None:
    offer_source(app, client, desk, 60)
    offered = register(client, desk["a"], "+79000000001", "an offer", name="Pyotr")
    response = post(desk["anna_client"], f"/inbox/contacts/{offered}/take", {}, htmx=True)
    assert response.status_code == 200
    html = text(response)
    assert html.lstrip().startswith('<section id="inbox"')
    # The message goes out of band into the live region above the list, which the polls never replace.
    notice = r'<p class="notice inbox-message" id="inbox-notice" role="status" hx-swap-oob="innerHTML">(.*?)</p>'
    found = re.search(notice, html)
    assert found and found.group(1) == "Taken: Pyotr is yours now."
    assert html.index("</section>") < found.start()
    assert "HX-Trigger" not in response.headers  # the answer is the inbox; an event would replace it
    assert "inbox-notice" not in text(desk["anna_client"].get("/inbox/", headers=HTMX))  # a poll leaves it
    row = row_of(html, offered)
    assert "inbox-take" not in row and "countdown" not in row and "taken at" in row
    contact = stored_contact(app, offered)
    assert contact.offered_until is None and contact.accepted_at is not None
    assert utcnow() - contact.accepted_at < timedelta(seconds=10)
    assert contact.operator_id == desk["anna"]["id"]
    # Taking it again changes nothing; without JavaScript the answer is the inbox again, by redirect.
    again = post(desk["anna_client"], f"/inbox/contacts/{offered}/take", {})
    assert again.status_code == 302 and again.headers["Location"].endswith("/inbox/")
    assert stored_contact(app, offered).accepted_at == contact.accepted_at
    # The next action from the inbox (a Close) clears the message.
    closed = post(desk["anna_client"], f"/contacts/{offered}/close", {"next": "/inbox/"}, htmx=True)
    found = re.search(notice, text(closed))
    assert closed.status_code == 200 and found and found.group(1) == ""


def test_take_after_the_deadline_says_why_in_place(app: Flask, client: FlaskClient, desk: dict) -> None:
    offer_source(app, client, desk, 1)
    offered = register(client, desk["a"], "+79000000001", "too late", name="Pyotr")
    time.sleep(1.3)
    anna = desk["anna_client"]
    page = text(anna.get("/inbox/"))
    assert re.search(r'data-milliseconds-left="0"[^>]*>\s*The time ran out.\s*</time>', row_of(page, offered))
    response = post(anna, f"/inbox/contacts/{offered}/take", {}, htmx=True)
    assert response.status_code == 200  # htmx swaps it: the inbox, saying why
    html = text(response)
    assert html.lstrip().startswith('<section id="inbox"')
    problem = re.search(
        r'<p class="error inbox-message" id="inbox-problem" role="alert" hx-swap-oob="innerHTML">(.*?)</p>', html
    )
    assert problem and problem.group(1) == "The time to take this contact ran out; it is being offered to someone else."
    assert "Changed meanwhile" not in html  # not the error page
    contact = stored_contact(app, offered)
    assert contact.offered_until is not None and contact.accepted_at is None
    # Without JavaScript: the whole inbox page with the same words, as a 409.
    plain = post(anna, f"/inbox/contacts/{offered}/take", {})
    assert plain.status_code == 409 and "<html" in text(plain)
    assert "The time to take this contact ran out" in text(plain)


def test_take_of_an_offer_given_to_someone_else_says_so_in_place(app: Flask, client: FlaskClient, desk: dict) -> None:
    offer_source(app, client, desk, 1)
    offered = register(client, desk["a"], "+79000000001", "missed", name="Pyotr")
    both = [{"operator_id": desk["anna"]["id"], "weight": 1}, {"operator_id": desk["boris"]["id"], "weight": 1}]
    assert client.post(f"{API}/sources/{desk['a']['id']}/config", json=both).status_code == 200
    time.sleep(1.3)
    with app.app_context():  # the worker's step, run here: the offer goes to Boris
        begin_write(db.session)
        assert offers.expire_offers(db.session(), utcnow(), limit=10) == 1
        db.session.commit()
    assert stored_contact(app, offered).operator_id == desk["boris"]["id"]
    response = post(desk["anna_client"], f"/inbox/contacts/{offered}/take", {}, htmx=True)
    assert response.status_code == 200
    assert "This contact is no longer offered to this operator" in text(response)
    contact = stored_contact(app, offered)
    assert contact.operator_id == desk["boris"]["id"] and contact.accepted_at is None
    # The history says it was not taken in time.
    detail = text(client.get(f"/contacts/{offered}"))
    assert re.search(r"<td>not taken in time</td>\s*<td>Anna</td>\s*<td>Boris</td>", detail)


def test_someone_elses_contact_never_offered_to_the_operator_is_refused(client: FlaskClient, desk: dict) -> None:
    borises = register(client, desk["b"], "+79000000001", "boris has this")
    response = post(desk["anna_client"], f"/inbox/contacts/{borises}/take", {}, htmx=True)
    assert response.status_code == 403


def test_the_poll_version_changes_when_an_offer_is_taken_or_runs_out(
    app: Flask, client: FlaskClient, desk: dict
) -> None:
    offer_source(app, client, desk, 3)
    taken = register(client, desk["a"], "+79000000001", "to take")
    missed = register(client, desk["a"], "+79000000002", "to miss")
    with app.app_context():  # ages that read the same for an hour ("2 hours"): only the offers change
        for contact_id in (taken, missed):
            db.session.get_one(Contact, contact_id).assigned_at = utcnow() - timedelta(hours=2)
        db.session.commit()
    anna = desk["anna_client"]

    def version() -> str:
        found = re.search(r'hx-get="/inbox/\?v=(\w+)"', text(anna.get("/inbox/", headers=HTMX)))
        assert found
        return found.group(1)

    shown = version()
    assert anna.get(f"/inbox/?v={shown}", headers=HTMX).status_code == 204
    assert post(anna, f"/inbox/contacts/{taken}/take", {}, htmx=True).status_code == 200
    answer = anna.get(f"/inbox/?v={shown}", headers=HTMX)
    assert answer.status_code == 200 and "taken at" in row_of(text(answer), taken)
    shown = version()
    assert anna.get(f"/inbox/?v={shown}", headers=HTMX).status_code == 204
    time.sleep(3.3)  # the other offer's deadline passes: the poll shows it ran out
    answer = anna.get(f"/inbox/?v={shown}", headers=HTMX)
    assert answer.status_code == 200 and "The time ran out." in row_of(text(answer), missed)


# --- the contacts' pages ---------------------------------------------------------------------


def test_the_contact_pages_show_the_offer_and_when_it_was_taken(app: Flask, client: FlaskClient, desk: dict) -> None:
    offer_source(app, client, desk, 60)
    offered = register(client, desk["a"], "+79000000001", "an offer")
    deadline = stored_contact(app, offered).offered_until
    assert deadline is not None
    until = f'offered until <time datetime="{deadline.isoformat()}">{deadline:%H:%M}</time>'
    assert until in text(client.get(f"/contacts/{offered}"))
    assert until in text(client.get("/contacts/"))
    assert until in text(desk["anna_client"].get(f"/contacts/{offered}"))  # the operator's own
    assert post(desk["anna_client"], f"/inbox/contacts/{offered}/take", {}, htmx=True).status_code == 200
    accepted = stored_contact(app, offered).accepted_at
    assert accepted is not None
    detail = text(client.get(f"/contacts/{offered}"))
    assert "offered until" not in detail
    assert f'<dt>Taken</dt><dd><time datetime="{accepted.isoformat()}">{accepted:%Y-%m-%d %H:%M}</time></dd>' in detail
    listed = text(client.get("/contacts/"))
    assert "offered until" not in listed and f'taken <time datetime="{accepted.isoformat()}">' in listed
