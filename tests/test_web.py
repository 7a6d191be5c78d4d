"""The HTML pages through the Flask test client: full pages, htmx fragments, forms, CSRF, languages."""

import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from babel.messages.pofile import read_po
from flask import Flask
from flask.testing import FlaskClient
from flask_babel import gettext

from leadcrm.extensions import db
from leadcrm.models import Contact, utcnow
from leadcrm.web.ages import format_age
from tests.helpers import csrf_token_of, json_of
from tests.servers import PROJECT_ROOT

HTMX = {"HX-Request": "true"}
PAGES = ["/", "/operators/", "/sources/", "/report/", "/intake/", "/contacts/", "/leads/"]


def token(client: FlaskClient, path: str = "/") -> str:
    return csrf_token_of(client.get(path).get_data(as_text=True))


def post_form(client: FlaskClient, path: str, data: dict, htmx: bool = False, **kw):
    headers = {"X-CSRFToken": token(client)} if htmx else {}
    if htmx:
        headers.update(HTMX)
    else:
        data = {"csrf_token": token(client), **data}
    return client.post(path, data=data, headers=headers, **kw)


def text(response) -> str:
    return response.get_data(as_text=True)


@pytest.fixture
def setup(client: FlaskClient) -> dict:
    """Anna (limit 2) and Boris (limit 1) serve telegram_bot with weights 10 / 30, through the API."""
    api = "/api/v1"
    anna = json_of(client.post(f"{api}/operators/", json={"name": "Anna", "max_active_leads": 2}))
    boris = json_of(client.post(f"{api}/operators/", json={"name": "Boris", "max_active_leads": 1}))
    source = json_of(client.post(f"{api}/sources/", json={"name": "telegram_bot"}))
    client.post(
        f"{api}/sources/{source['id']}/config",
        json=[{"operator_id": anna["id"], "weight": 10}, {"operator_id": boris["id"], "weight": 30}],
    )
    return {"anna": anna, "boris": boris, "source": source}


# --- every page -------------------------------------------------------------------------


@pytest.mark.parametrize("path", PAGES)
def test_every_page_renders_in_full_and_as_a_fragment(client: FlaskClient, setup: dict, path: str) -> None:
    full = client.get(path)
    assert full.status_code == 200
    assert "<html" in text(full) and 'href="/intake/"' in text(full)
    assert "HX-Request" in full.headers["Vary"]
    fragment = client.get(path, headers=HTMX)
    assert fragment.status_code == 200
    assert "<html" not in text(fragment) and "<nav" not in text(fragment)
    assert "HX-Request" in fragment.headers["Vary"]


@pytest.mark.parametrize("path", ["/sources/1", "/leads/1"])
def test_detail_pages_render(client: FlaskClient, setup: dict, path: str) -> None:
    client.post("/api/v1/contacts/register", json={"source_id": 1, "phone": "+79001234567"})
    assert client.get(path).status_code == 200
    assert "<html" not in text(client.get(path, headers=HTMX))


@pytest.mark.parametrize(
    "path", ["/sources/99", "/leads/99", "/operators/99", "/contacts/99/close", "/contacts/99/reopen"]
)
def test_unknown_ids_are_404_pages(client: FlaskClient, path: str) -> None:
    response = (
        client.get(path)
        if "/sources/" in path or "/leads/" in path
        else post_form(client, path, {"max_active_leads": "1"})
    )
    assert response.status_code == 404
    assert "<html" in text(response).lower()


@pytest.mark.parametrize(
    "path",
    [
        "/intake/?registered=99999999999999999999999",
        "/intake/?registered=-1",
        "/leads/?page=99999999999999999999999",
        "/leads/?q=" + "x" * 5000,
        "/contacts/?page=99999999999999999999999&operator_id=-5",
        "/language/xx",
    ],
)
def test_odd_query_strings_never_fail(client: FlaskClient, setup: dict, path: str) -> None:
    assert client.get(path).status_code in (200, 302)


def test_load_page_shows_each_queue_and_its_age(client: FlaskClient, setup: dict) -> None:
    client.patch("/api/v1/operators/1", json={"max_active_leads": 0})
    client.patch("/api/v1/operators/2", json={"max_active_leads": 0})
    for n in range(2):
        client.post("/api/v1/contacts/register", json={"source_id": 1, "external_id": f"w{n}"})
    html = text(client.get("/", headers=HTMX))
    assert 'data-testid="unassigned-open">2<' in html
    assert "telegram_bot · oldest waiting for" in html and "second" in html
    assert "ждёт" in text(client.get("/", headers={**HTMX, "Accept-Language": "ru"}))


# An age, and how the load page's sentence says it: one unit, whole, rounded down.
AGES = [
    (59, "59 seconds", "59 секунд"),
    (60, "1 minute", "1 минуту"),
    (61, "1 minute", "1 минуту"),
    (90, "1 minute", "1 минуту"),
    (2 * 60, "2 minutes", "2 минуты"),
    (5 * 60, "5 minutes", "5 минут"),
    (21 * 60, "21 minutes", "21 минуту"),
    (3600, "1 hour", "1 час"),
    (22 * 3600, "22 hours", "22 часа"),
    (2 * 86400, "2 days", "2 дня"),
]


def test_an_age_reads_the_same_whatever_its_seconds_in_both_languages(app: Flask) -> None:
    for seconds, english, russian in AGES:
        for language, said, sentence in [
            ("en", english, f"oldest waiting for {english}"),
            ("ru", russian, f"самое старое ждёт {russian}"),
        ]:
            with app.test_request_context("/", headers={"Accept-Language": language}):
                assert format_age(timedelta(seconds=seconds)) == said, (seconds, language)
                assert gettext("oldest waiting for %(age)s", age=format_age(timedelta(seconds=seconds))) == sentence


def test_load_page_says_how_many_wait_and_for_how_long_in_both_languages(
    app: Flask, client: FlaskClient, setup: dict
) -> None:
    client.patch("/api/v1/operators/1", json={"max_active_leads": 0})
    client.patch("/api/v1/operators/2", json={"max_active_leads": 0})

    def wait(count: int) -> None:
        for n in range(count):
            client.post("/api/v1/contacts/register", json={"source_id": 1, "external_id": f"w{count}-{n}"})
        with app.app_context():  # the oldest came in 21 minutes and 20 seconds ago
            oldest = db.session.scalar(sa.select(sa.func.min(Contact.id)))
            db.session.execute(
                sa.update(Contact).where(Contact.id == oldest).values(created_at=utcnow() - timedelta(seconds=1280))
            )
            db.session.commit()

    def summary(language: str) -> str:
        html = text(client.get("/", headers={**HTMX, "Accept-Language": language}))
        number = re.search(r'data-testid="unassigned-open">(\d+)</span>\s*<span>([^<]*)</span>', html)
        age = re.search(r"telegram_bot · ([^<]*)</span>", html)
        assert number and age, html
        return f"{number.group(1)} {number.group(2)} · {age.group(1)}"

    wait(1)
    assert summary("en") == "1 contact waiting, no operator · oldest waiting for 21 minutes"
    assert summary("ru") == "1 обращение ожидает, без оператора · самое старое ждёт 21 минуту"
    wait(2)
    assert summary("en") == "3 contacts waiting, no operator · oldest waiting for 21 minutes"
    assert summary("ru") == "3 обращения ожидают, без оператора · самое старое ждёт 21 минуту"
    wait(2)
    assert summary("ru") == "5 обращений ожидают, без оператора · самое старое ждёт 21 минуту"


def test_empty_states_say_what_to_do_first(client: FlaskClient) -> None:
    assert "No operators yet" in text(client.get("/"))
    assert "There are no sources yet" in text(client.get("/intake/"))
    assert "No contacts yet" in text(client.get("/contacts/"))


# --- CSRF ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/operators/", "/sources/", "/intake/", "/contacts/1/close"])
def test_forms_without_csrf_token_are_refused(client: FlaskClient, setup: dict, path: str) -> None:
    response = client.post(path, data={"name": "X", "max_active_leads": "1"})
    assert response.status_code == 400
    assert "could not be accepted" in text(response)
    assert json_of(client.get("/api/v1/operators/"))["total"] == 2


def test_htmx_requests_send_the_token_in_a_header(client: FlaskClient) -> None:
    response = client.post("/operators/", data={"name": "X", "max_active_leads": "1"}, headers=HTMX)
    assert response.status_code == 400
    assert post_form(client, "/operators/", {"name": "X", "max_active_leads": "1"}, htmx=True).status_code == 200


# --- operators --------------------------------------------------------------------------------


def test_create_operator_without_javascript_redirects(client: FlaskClient) -> None:
    response = post_form(client, "/operators/", {"name": "Anna", "max_active_leads": "3", "is_active": "y"})
    assert response.status_code == 302 and response.headers["Location"] == "/operators/"
    assert "Anna" in text(client.get("/operators/"))


def test_create_operator_with_htmx_returns_the_section(client: FlaskClient) -> None:
    response = post_form(client, "/operators/", {"name": "Anna", "max_active_leads": "3"}, htmx=True)
    assert response.status_code == 200
    assert 'id="operators-section"' in text(response) and "Anna" in text(response)
    assert "<html" not in text(response)
    assert "operators-changed" in response.headers["HX-Trigger"]
    assert json_of(client.get("/api/v1/operators/1"))["is_active"] is False  # unchecked box: inactive


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"name": "Anna", "max_active_leads": "-1"}, "max_active_leads", "between 0 and"),
        ({"name": "Anna", "max_active_leads": "many"}, "max_active_leads", "Not a valid integer"),
        ({"name": "  ", "max_active_leads": "2"}, "name", "This field is required"),
        ({"name": "Taken", "max_active_leads": "2"}, "name", "already exists"),
    ],
)
def test_operator_form_errors_appear_next_to_the_field(
    client: FlaskClient, data: dict, field: str, message: str
) -> None:
    client.post("/api/v1/operators/", json={"name": "Taken", "max_active_leads": 1})
    for htmx in (False, True):
        response = post_form(client, "/operators/", data, htmx=htmx)
        assert response.status_code == 422
        html = text(response)
        assert f'<p class="error" id="{field}-error">' in html and message in html
        assert f'value="{data["max_active_leads"]}"' in html  # what was typed stays
    assert json_of(client.get("/api/v1/operators/"))["total"] == 1


def test_limit_changes_in_place(client: FlaskClient, setup: dict) -> None:
    response = post_form(client, "/operators/1", {"max_active_leads": "7"}, htmx=True)
    assert response.status_code == 200
    html = text(response)
    assert html.lstrip().startswith('<tr id="operator-1"') and 'value="7"' in html
    assert json_of(client.get("/api/v1/operators/1"))["max_active_leads"] == 7
    bad = post_form(client, "/operators/1", {"max_active_leads": "-5"}, htmx=True)
    assert bad.status_code == 422
    assert 'value="-5"' in text(bad) and 'id="limit-1-error"' in text(bad)
    assert json_of(client.get("/api/v1/operators/1"))["max_active_leads"] == 7
    no_js = post_form(client, "/operators/1", {"max_active_leads": "-5"})
    assert no_js.status_code == 422 and 'id="limit-1-error"' in text(no_js) and "<html" in text(no_js)


def test_active_toggle_changes_in_place(client: FlaskClient, setup: dict) -> None:
    response = post_form(client, "/operators/2", {"is_active": "0"}, htmx=True)
    assert response.status_code == 200 and 'aria-pressed="false"' in text(response)
    assert json_of(client.get("/api/v1/operators/2"))["is_active"] is False
    post_form(client, "/operators/2", {"is_active": "1"})
    assert json_of(client.get("/api/v1/operators/2"))["is_active"] is True


def test_a_raised_limit_shows_the_load_its_drain_gave(client: FlaskClient, setup: dict) -> None:
    """Raising a limit assigns waiting contacts in the same request; the row it answers shows that load."""
    for operator in ("anna", "boris"):
        client.patch(f"/api/v1/operators/{setup[operator]['id']}", json={"max_active_leads": 0})
    for n in range(3):
        client.post("/api/v1/contacts/register", json={"source_id": setup["source"]["id"], "phone": f"+7900000001{n}"})
    response = post_form(client, f"/operators/{setup['anna']['id']}", {"max_active_leads": "2"}, htmx=True)
    assert response.status_code == 200
    assert '<td class="num">2</td>' in text(response)
    assert json_of(client.get(f"/api/v1/operators/{setup['anna']['id']}"))["active_leads"] == 2


# --- sources ---------------------------------------------------------------------------------


def test_create_source_goes_to_its_weights(client: FlaskClient) -> None:
    response = post_form(client, "/sources/", {"name": "web_form", "strategy": "deterministic"})
    assert response.status_code == 302 and response.headers["Location"] == "/sources/1"
    assert json_of(client.get("/api/v1/sources/1"))["strategy"] == "deterministic"
    duplicate = post_form(client, "/sources/", {"name": "web_form", "strategy": "random"})
    assert duplicate.status_code == 422 and "already exists" in text(duplicate)


def test_weights_editor_saves_and_shows_new_shares(client: FlaskClient, setup: dict) -> None:
    page = text(client.get("/sources/1"))
    assert "25.0 %" in page and "75.0 %" in page
    client.post("/api/v1/operators/", json={"name": "Vera", "max_active_leads": 3})
    assert "Not serving it yet" in text(client.get("/sources/1"))
    response = post_form(
        client,
        "/sources/1",
        {"weight-1": "10", "weight-2": "", "weight-3": "30", "strategy": "deterministic"},
        htmx=True,
    )
    assert response.status_code == 200
    html = text(response)
    assert 'data-testid="share-3">75.0 %' in html and 'data-testid="share-1">25.0 %' in html
    assert "weight-2" in html.split("Not serving it yet")[1]
    assert client.get("/api/v1/sources/1/config").json == [
        {"operator_id": 1, "weight": 10},
        {"operator_id": 3, "weight": 30},
    ]
    assert json_of(client.get("/api/v1/sources/1"))["strategy"] == "deterministic"


@pytest.mark.parametrize("typed", ["-3", "²", "1.5", "9" * 5000, "1000001", "ten"])
def test_any_bad_weight_is_an_inline_error(client: FlaskClient, setup: dict, typed: str) -> None:
    response = post_form(client, "/sources/1", {"weight-1": typed, "weight-2": "50"}, htmx=True)
    assert response.status_code == 422 and "A whole number" in text(response)
    assert json_of(client.get("/api/v1/sources/1/config"))[1]["weight"] == 30


def test_bad_weight_keeps_what_was_typed_and_saves_nothing(client: FlaskClient, setup: dict) -> None:
    response = post_form(client, "/sources/1", {"weight-1": "-3", "weight-2": "50"}, htmx=True)
    assert response.status_code == 422
    html = text(response)
    assert 'value="-3"' in html and 'value="50"' in html and "A whole number" in html
    assert json_of(client.get("/api/v1/sources/1/config"))[1]["weight"] == 30


# --- report ----------------------------------------------------------------------------------


def test_report_shows_target_and_actual_shares_and_waiting(client: FlaskClient, setup: dict) -> None:
    for n in range(4):
        client.post("/api/v1/contacts/register", json={"source_id": 1, "external_id": f"e{n}"})
    html = text(client.get("/report/"))
    assert "target 25.0 %" in html and "target 75.0 %" in html
    assert "actual 66.7 %" in html and "actual 33.3 %" in html  # Anna got 2 of 3, Boris 1 of 3
    assert 'data-testid="waiting-1">1 waiting unassigned' in html


# --- intake ------------------------------------------------------------------------------------


def test_intake_registers_and_returns_a_fresh_form(client: FlaskClient, setup: dict) -> None:
    data = {"source_id": "1", "phone": "8 900 123-45-67", "name": "Ivan", "message": "Hi"}
    response = post_form(client, "/intake/", data, htmx=True)
    assert response.status_code == 200
    html = text(response)
    assert "Assigned to" in html and "new lead" in html
    assert "8 900 123-45-67" not in html and 'value="Ivan"' not in html  # the form is cleared
    assert re.search(r'<option selected value="1">|<option value="1" selected>', html)  # the source stays chosen
    assert "autofocus" in html
    assert response.headers["HX-Trigger"] == "contacts-changed"
    again = text(post_form(client, "/intake/", {"source_id": "1", "phone": "+79001234567"}, htmx=True))
    assert "returning lead" in again


def test_intake_finds_a_lead_by_its_address_whatever_its_case(client: FlaskClient, setup: dict) -> None:
    first = text(post_form(client, "/intake/", {"source_id": "1", "email": "Ivan.Petrov@Example.com"}, htmx=True))
    assert "new lead" in first
    again = text(post_form(client, "/intake/", {"source_id": "1", "email": "ivan.petrov@example.com"}, htmx=True))
    assert "returning lead" in again and "Ivan.Petrov@example.com" in again
    assert json_of(client.get("/api/v1/leads/"))["total"] == 1


def test_intake_without_javascript_redirects_to_the_result(client: FlaskClient, setup: dict) -> None:
    response = post_form(client, "/intake/", {"source_id": "1", "email": "a@example.com"})
    assert response.status_code == 302
    page = text(client.get(response.headers["Location"]))
    assert "Assigned to" in page and "a@example.com" in page


def test_intake_with_nobody_free_says_waiting(client: FlaskClient, setup: dict) -> None:
    for n in range(3):
        post_form(client, "/intake/", {"source_id": "1", "external_id": f"x{n}"}, htmx=True)
    html = text(post_form(client, "/intake/", {"source_id": "1", "external_id": "x9"}, htmx=True))
    assert "Waiting: no operator is free" in html


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"source_id": "1", "phone": "12345", "email": "me@", "name": "Ivan"}, ["phone-error", "email-error"]),
        ({"source_id": "1", "name": "Ivan"}, ["phone-error", "email-error", "external_id-error"]),
        ({"source_id": "99", "phone": "+79001234567", "name": "Ivan"}, ["source_id-error"]),
        ({"source_id": "x", "phone": "+79001234567", "name": "Ivan"}, ["source_id-error"]),
    ],
)
def test_intake_errors_are_inline_and_keep_what_was_typed(
    client: FlaskClient, setup: dict, data: dict, expected: list
) -> None:
    for htmx in (False, True):
        response = post_form(client, "/intake/", data, htmx=htmx)
        assert response.status_code == 422
        html = text(response)
        for error_id in expected:
            assert f'id="{error_id}"' in html
        assert 'value="Ivan"' in html
    assert json_of(client.get("/api/v1/contacts/"))["total"] == 0


def test_intake_lead_conflict_is_shown_and_nothing_is_lost(client: FlaskClient, setup: dict) -> None:
    client.post("/api/v1/contacts/register", json={"source_id": 1, "phone": "+79001234567"})
    client.post("/api/v1/contacts/register", json={"source_id": 1, "email": "b@example.com"})
    data = {"source_id": "1", "phone": "+79001234567", "email": "b@example.com", "message": "keep me"}
    response = post_form(client, "/intake/", data, htmx=True)
    assert response.status_code == 422
    html = text(response)
    assert "belong to different leads" in html and "Belongs to lead 1" in html
    assert "keep me" in html
    assert json_of(client.get("/api/v1/contacts/"))["total"] == 2


# --- contacts and leads ------------------------------------------------------------------------


def test_contacts_list_filters(client: FlaskClient, setup: dict) -> None:
    for n in range(4):
        client.post("/api/v1/contacts/register", json={"source_id": 1, "external_id": f"e{n}", "message": f"msg-{n}"})
    html = text(client.get("/contacts/?unassigned=true", headers=HTMX))
    assert "msg-3" in html and "msg-0" not in html
    html = text(client.get("/contacts/?status=open&operator_id=2"))
    assert html.count('<tr id="contact-') == 1
    assert client.get("/contacts/?operator_id=abc&status=nonsense").status_code == 200


def test_the_export_link_splits_on_semicolons_in_russian_and_on_commas_in_english(client: FlaskClient) -> None:
    def links(headers: dict[str, str]) -> list[tuple[str, str]]:
        page = client.get("/contacts/?status=open", headers=headers).get_data(as_text=True)
        found: list[tuple[str, str]] = re.findall(
            r'href="(/api/v1/contacts/export\.csv\?[^"]*)" download>([^<]*)<', page
        )
        return found

    (main, main_label), (other, other_label) = links({"Accept-Language": "ru"})
    assert "sep=semicolon" in main and "status=open" in main and main_label == "Выгрузить CSV"
    assert "sep=comma" in other and "запят" in other_label
    (main, _), (other, other_label) = links({"Accept-Language": "en"})
    assert "sep=comma" in main and "sep=semicolon" in other and other_label == "separated by semicolons"
    assert client.get(main.replace("&amp;", "&")).data.startswith(b"\xef\xbb\xbfcontact_id,")


def test_close_from_the_list_updates_the_row_and_the_load(client: FlaskClient, setup: dict) -> None:
    contact = json_of(client.post("/api/v1/contacts/register", json={"source_id": 1, "phone": "+79001234567"}))
    operator_id = contact["assigned_operator"]["id"]
    response = post_form(client, f"/contacts/{contact['contact']['id']}/close", {}, htmx=True)
    assert response.status_code == 200
    assert "closed" in text(response) and "<html" not in text(response)
    assert response.headers["HX-Trigger"] == "contacts-changed"
    assert f'data-testid="load-{operator_id}">0 / ' in text(client.get("/"))
    no_js = post_form(client, f"/contacts/{contact['contact']['id']}/close", {"next": "/contacts/?status=open"})
    assert no_js.status_code == 302 and no_js.headers["Location"] == "/contacts/?status=open"


def test_a_closed_contact_that_never_had_an_operator_is_not_shown_waiting(client: FlaskClient, setup: dict) -> None:
    client.patch("/api/v1/operators/1", json={"max_active_leads": 0})
    client.patch("/api/v1/operators/2", json={"max_active_leads": 0})
    waiting = json_of(client.post("/api/v1/contacts/register", json={"source_id": 1, "external_id": "w1"}))["contact"]
    assert waiting["operator_id"] is None

    def badges(html: str) -> list[str]:
        row = re.search(rf'<tr id="contact-{waiting["id"]}".*?</tr>', html, re.S)
        assert row, html
        return re.findall(r'<span class="badge[^"]*">([^<]*)</span>', row.group(0))

    assert badges(text(client.get("/contacts/"))) == ["waiting"]
    # Closed from the list (htmx answers with the row), then the list, the contact's and the lead's pages.
    closed_row = text(post_form(client, f"/contacts/{waiting['id']}/close", {}, htmx=True))
    assert badges(closed_row) == ["closed, no operator", "closed"]
    assert badges(text(client.get("/contacts/"))) == ["closed, no operator", "closed"]
    for path in (f"/contacts/{waiting['id']}", f"/leads/{waiting['lead_id']}"):
        html = text(client.get(path))
        assert "closed, no operator" in html and ">waiting<" not in html, path
    ru = text(client.get("/contacts/", headers={"Accept-Language": "ru"}))
    assert "закрыто без оператора" in ru and ">ожидает<" not in ru


def test_leads_search_and_detail(client: FlaskClient, setup: dict) -> None:
    client.post("/api/v1/sources/", json={"name": "web_form"})
    client.post("/api/v1/contacts/register", json={"source_id": 1, "phone": "+79001234567", "name": "Ivan Petrov"})
    client.post("/api/v1/contacts/register", json={"source_id": 2, "phone": "89001234567", "message": "second"})
    assert "Ivan Petrov" in text(client.get("/leads/?q=8 900 123 45 67", headers=HTMX))
    assert "No leads match" in text(client.get("/leads/?q=nobody"))
    detail = text(client.get("/leads/1"))
    assert "telegram_bot" in detail and "web_form" in detail and "second" in detail


def test_user_text_is_escaped(client: FlaskClient, setup: dict) -> None:
    client.post(
        "/api/v1/contacts/register", json={"source_id": 1, "external_id": "x", "name": "<script>alert(1)</script>"}
    )
    for path in ("/contacts/", "/leads/", "/leads/1"):
        html = text(client.get(path))
        assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)" in html


# --- history -----------------------------------------------------------------------------


def test_contact_and_lead_pages_show_the_history(client: FlaskClient, setup: dict) -> None:
    client.patch("/api/v1/operators/2", json={"is_active": False})
    for n in range(3):  # Anna takes two, the third waits
        client.post("/api/v1/contacts/register", json={"source_id": 1, "phone": "+79001234567", "message": f"m{n}"})
    post_form(client, "/contacts/1/close", {}, htmx=True)  # contact 3 leaves the queue for Anna
    page = text(client.get("/contacts/3"))
    assert "from the queue" in page and "registered" in page and "Anna" in page
    assert "<html" in page and "History" in page
    lead_page = text(client.get("/leads/1"))
    assert lead_page.count('href="/contacts/1"') >= 1 and "closed" in lead_page and "from the queue" in lead_page
    ru = text(client.get("/contacts/3", headers={"Accept-Language": "ru"}))
    assert "из очереди" in ru and "История" in ru
    assert client.get("/contacts/99").status_code == 404


# --- languages ---------------------------------------------------------------------------------


def test_language_follows_the_browser_and_can_be_switched(client: FlaskClient) -> None:
    assert "<h1>Нагрузка</h1>" in text(client.get("/", headers={"Accept-Language": "ru-RU,ru;q=0.9"}))
    assert "<h1>Load</h1>" in text(client.get("/", headers={"Accept-Language": "de"}))
    response = client.get("/language/ru?next=/operators/")
    assert response.status_code == 302 and response.headers["Location"] == "/operators/"
    assert "<h1>Операторы</h1>" in text(client.get("/operators/"))  # remembered in a cookie
    client.get("/language/en")
    assert "<h1>Operators</h1>" in text(client.get("/operators/", headers={"Accept-Language": "ru"}))


def test_form_errors_are_translated(client: FlaskClient) -> None:
    ru = {"Accept-Language": "ru"}
    html = text(client.get("/operators/", headers=ru))
    csrf = csrf_token_of(html)
    response = client.post("/operators/", data={"csrf_token": csrf, "name": "", "max_active_leads": "-1"}, headers=ru)
    assert response.status_code == 422
    assert "Обязательное поле." in text(response) and "Значение должно быть между 0 и 1000000." in text(response)


def test_domain_messages_are_shown_in_the_pages_language(client: FlaskClient, setup: dict) -> None:
    """The domain says what is wrong in Messages; the page translates them for its reader."""
    ru = {"Accept-Language": "ru"}
    csrf = token(client)
    taken = client.post(
        "/operators/", data={"csrf_token": csrf, "name": "Anna", "max_active_leads": "1"}, headers=ru
    )  # fmt: skip
    assert taken.status_code == 422 and "Оператор с таким именем уже есть." in text(taken)
    bad_phone = client.post("/intake/", data={"csrf_token": csrf, "source_id": "1", "phone": "12"}, headers=ru)
    assert bad_phone.status_code == 422 and "Такого номера телефона не бывает." in text(bad_phone)
    english = client.post("/intake/", data={"csrf_token": csrf, "source_id": "1", "phone": "12"})
    assert "Not a valid phone number." in text(english)


@pytest.mark.parametrize("target", ["//evil.example/", "https://evil.example/", "evil", "/\\evil.example/"])
def test_language_switch_never_redirects_elsewhere(client: FlaskClient, target: str) -> None:
    assert client.get(f"/language/ru?next={target}").headers["Location"] == "/"


def test_api_answers_in_english_whatever_the_browser_says(client: FlaskClient) -> None:
    response = client.get("/api/v1/operators/9", headers={"Accept-Language": "ru"})
    assert json_of(response)["error"]["message"] == "No operator with id 9."


def test_russian_catalog_is_complete(tmp_path: Path) -> None:
    pot = tmp_path / "messages.pot"
    subprocess.run(
        [Path(sys.executable).parent / "pybabel", "extract", "-F", "babel.cfg", "-k", "_l",
         "-k", "lazy_gettext", "-k", "Message", "--no-location", "--omit-header", "-o", str(pot), "."],
        cwd=PROJECT_ROOT, check=True, capture_output=True,
    )  # fmt: skip
    with open(pot, "rb") as f:
        wanted = {m.id for m in read_po(f) if m.id}
    with open(PROJECT_ROOT / "translations/ru/LC_MESSAGES/messages.po", "rb") as f:
        catalog = read_po(f)
    translated = {m.id for m in catalog if m.id and all(m.string if isinstance(m.string, tuple) else [m.string])}
    assert not catalog.fuzzy
    assert [m.id for m in catalog if m.id and m.fuzzy] == [], "fuzzy guesses left from `make translations`"
    assert wanted - translated == set(), "untranslated: run `make translations` and fill translations/ru"


def test_load_counters_follow_web_actions(client: FlaskClient, setup: dict) -> None:
    for n in range(3):
        post_form(client, "/intake/", {"source_id": "1", "external_id": f"x{n}"}, htmx=True)
    post_form(client, "/contacts/1/close", {}, htmx=True)
    status = json_of(client.get("/api/v1/distribution_status/"))
    assert sum(op["active_leads"] for op in status["operators"]) == 2
    open_contacts = json_of(client.get("/api/v1/contacts/?status=open&unassigned=false"))["total"]
    assert open_contacts == 2


# --- manual work ----------------------------------------------------------------------------


def test_assign_and_reassign_from_the_contact_page(client: FlaskClient, setup: dict) -> None:
    client.patch("/api/v1/operators/2", json={"is_active": False})
    for n in range(3):  # Anna 2/2, the third waits
        client.post("/api/v1/contacts/register", json={"source_id": 1, "external_id": f"x{n}"})
    page = text(client.get("/contacts/3"))
    assert "Assign to an operator" in page and "Serve this source and have room" not in page  # nobody has room
    refused = post_form(client, "/contacts/3/assign", {"operator_id": "1"})
    assert refused.status_code == 422 and 'id="operator_id-error"' in text(refused) and "override" in text(refused)
    assert json_of(client.get("/api/v1/contacts/3"))["operator_id"] is None
    done = post_form(client, "/contacts/3/assign", {"operator_id": "1", "override": "1"})
    assert done.status_code == 302 and done.headers["Location"] == "/contacts/3"
    assert json_of(client.get("/api/v1/contacts/3"))["operator_id"] == 1
    assert "assigned past the limit" in text(client.get("/contacts/3"))
    client.patch("/api/v1/operators/2", json={"is_active": True})
    assert "Serve this source and have room" in text(client.get("/contacts/3"))
    post_form(client, "/contacts/3/assign", {"operator_id": "2"})
    assert json_of(client.get("/api/v1/contacts/3"))["operator_id"] == 2
    assert post_form(client, "/contacts/3/assign", {"operator_id": "abc"}).status_code == 422


def test_reopen_from_the_contact_page(client: FlaskClient, setup: dict) -> None:
    client.post("/api/v1/contacts/register", json={"source_id": 1, "external_id": "x"})
    post_form(client, "/contacts/1/close", {})
    assert "Reopen" in text(client.get("/contacts/1"))
    response = post_form(client, "/contacts/1/reopen", {})
    assert response.status_code == 302
    assert json_of(client.get("/api/v1/contacts/1"))["status"] == "open"
    assert "reopened" in text(client.get("/contacts/1"))


def test_bulk_close_and_reassign_all_or_nothing(client: FlaskClient, setup: dict) -> None:
    client.patch("/api/v1/operators/2", json={"max_active_leads": 10})
    client.patch("/api/v1/operators/1", json={"max_active_leads": 10})
    for n in range(4):
        client.post("/api/v1/contacts/register", json={"source_id": 1, "external_id": f"x{n}"})
    page = text(client.get("/contacts/"))
    assert page.count('form="bulk-form"') == 4 and 'href="/api/v1/contacts/export.csv?sep=comma"' in page
    closed = post_form(client, "/contacts/bulk", {"action": "close", "contact_id": ["1", "2"], "next": "/contacts/"})
    assert closed.status_code == 302 and closed.headers["Location"] == "/contacts/"
    assert [c["status"] for c in json_of(client.get("/api/v1/contacts/?per_page=10"))["items"]] == [
        "open",
        "open",
        "closed",
        "closed",
    ]
    moved = post_form(client, "/contacts/bulk", {"action": "reassign", "operator_id": "2", "contact_id": ["3", "4"]})
    assert moved.status_code == 302
    assert {json_of(client.get(f"/api/v1/contacts/{n}"))["operator_id"] for n in (3, 4)} == {2}
    # Anna full (limit 0): reassigning both to her fails, so neither moves.
    client.patch("/api/v1/operators/1", json={"max_active_leads": 0})
    refused = post_form(client, "/contacts/bulk", {"action": "reassign", "operator_id": "1", "contact_id": ["3", "4"]})
    assert refused.status_code == 422 and "override" in text(refused)
    assert {json_of(client.get(f"/api/v1/contacts/{n}"))["operator_id"] for n in (3, 4)} == {2}
    assert post_form(client, "/contacts/bulk", {"action": "close"}).status_code == 422
    assert post_form(client, "/contacts/bulk", {"action": "dance", "contact_id": "3"}).status_code == 422
