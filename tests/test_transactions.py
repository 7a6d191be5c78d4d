"""Transaction boundaries: each view that writes declares it (begin_write) after checking its input.

Invalid input never waits for SQLite's write lock, reads never take it, and a
view that writes without declaring it fails at its first write, on SQLite and
PostgreSQL alike (the request's transactions are read-only until then).
"""

import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from leadcrm import create_app, operators
from leadcrm.auth import allow
from leadcrm.database import UndeclaredWrite, begin_write, sqlite_file
from leadcrm.extensions import db
from leadcrm.models import Operator
from leadcrm.storage import Sql
from leadcrm.units import on_driver_connection, request_unit
from leadcrm.vocabulary import Role, TokenScope
from tests.helpers import add_token, add_user, login_client

API = "/api/v1"
BUSY_TIMEOUT = 1.0  # seconds a writer waits for SQLite's lock before its 503
AT_ONCE = 0.5  # well under the busy timeout


def _forgetful_view() -> dict[str, int]:
    """A view as someone might write it: it writes, and forgot begin_write()."""
    operator = operators.create_operator(db.session(), name="Forgotten", max_active_leads=1)
    db.session.commit()
    return {"id": operator.id}


FORGOTTEN_INSERT = Sql(
    "INSERT INTO operators (name, is_active, max_active_leads, active_leads, created_at) "
    "VALUES ('Forgotten', TRUE, 1, 0, CURRENT_TIMESTAMP)"
)


@on_driver_connection
def _forgetful_driver_view() -> dict[str, bool]:
    """The same mistake on the request's own driver connection (units.request_unit), as the registration works."""
    unit = request_unit()
    unit.execute(FORGOTTEN_INSERT, {})
    unit.commit()
    return {"written": True}


@on_driver_connection
def _early_driver_view() -> dict[str, bool]:
    """A driver-connection view that writes first and declares the write only after."""
    unit = request_unit()
    unit.execute(FORGOTTEN_INSERT, {})
    unit.begin_write()
    unit.commit()
    return {"written": True}


@pytest.fixture
def app(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Flask]:
    monkeypatch.setenv("LEADCRM_INSTANCE_PATH", str(tmp_path / "instance"))
    config = {"TESTING": True, "SQLALCHEMY_DATABASE_URI": database_url, "LEADCRM_SQLITE_BUSY_TIMEOUT": BUSY_TIMEOUT}
    app = create_app(config)
    app.add_url_rule(f"{API}/forgetful", "api.forgetful", allow(Role.SUPERVISOR)(_forgetful_view), methods=["POST"])
    for name, view in (("forgetful_driver", _forgetful_driver_view), ("early_driver", _early_driver_view)):
        app.add_url_rule(f"{API}/{name}", f"api.{name}", allow(Role.SUPERVISOR)(view), methods=["POST"])
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def boss(app: Flask) -> FlaskClient:
    """A supervisor's browser session that also sends a full token on the API."""
    with app.app_context():
        return login_client(app, add_user("boss", Role.SUPERVISOR), token=add_token("tests", TokenScope.FULL))


@pytest.fixture
def source(boss: FlaskClient) -> dict[str, Any]:
    operator = json_of(boss.post(f"{API}/operators/", json={"name": "Ann", "max_active_leads": 10}))
    source = json_of(boss.post(f"{API}/sources/", json={"name": "web_form"}))
    boss.post(f"{API}/sources/{source['id']}/config", json={"operator_id": operator["id"], "weight": 1})
    return source


def json_of(response: TestResponse) -> Any:
    return response.get_json()


def csrf_of(client: FlaskClient) -> str:
    found = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/intake/").get_data(as_text=True))
    assert found is not None
    return found.group(1)


@contextmanager
def write_lock_held_elsewhere(app: Flask) -> Iterator[None]:
    """SQLite's write lock taken by another connection to the same file (another program, a backup)."""
    with app.app_context():
        path = sqlite_file(str(db.engine.url))
    assert path is not None
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def timed(call: Callable[[], TestResponse]) -> tuple[float, TestResponse]:
    started = time.monotonic()
    response = call()
    return time.monotonic() - started, response


def sqlite_only(app: Flask) -> None:
    with app.app_context():
        if db.engine.dialect.name != "sqlite":
            pytest.skip("SQLite's single write lock")


def test_invalid_input_answers_at_once_while_the_write_lock_is_held_elsewhere(
    app: Flask, boss: FlaskClient, source: dict
) -> None:
    sqlite_only(app)
    csrf = csrf_of(boss)
    with write_lock_held_elsewhere(app):
        # The intake form, with a phone that is no phone: its field error, not a 503 after the busy timeout.
        took, page = timed(
            lambda: boss.post("/intake/", data={"csrf_token": csrf, "source_id": source["id"], "phone": "12"})
        )
        assert page.status_code == 422 and took < AT_ONCE, took
        assert 'aria-invalid="true"' in page.get_data(as_text=True)
        took, empty = timed(lambda: boss.post("/intake/", data={"csrf_token": csrf, "source_id": source["id"]}))
        assert empty.status_code == 422 and took < AT_ONCE, took
        # The API: an invalid registration is a 422 at once too.
        took, api = timed(
            lambda: boss.post(f"{API}/contacts/register", json={"source_id": source["id"], "phone": "12"})
        )
        assert api.status_code == 422 and took < AT_ONCE, took
        # A valid one still needs the lock: it waits for it, then gives up with a 503.
        body = {"source_id": source["id"], "phone": "+79001234567"}
        took, valid = timed(lambda: boss.post(f"{API}/contacts/register", json=body))
        assert valid.status_code == 503 and took >= BUSY_TIMEOUT * 0.9, took
        form = {"csrf_token": csrf, **{k: str(v) for k, v in body.items()}}
        took, valid_page = timed(lambda: boss.post("/intake/", data=form))
        assert valid_page.status_code == 503 and took >= BUSY_TIMEOUT * 0.9, took
        # Reads never wait.
        took, read = timed(lambda: boss.get("/intake/"))
        assert read.status_code == 200 and took < AT_ONCE
    assert boss.post(f"{API}/contacts/register", json=body).status_code == 201


def test_reads_and_refused_input_never_begin_a_write_transaction(
    app: Flask, boss: FlaskClient, source: dict[str, Any]
) -> None:
    sqlite_only(app)
    begun: list[str] = []
    with app.app_context():
        engine = db.engine
    sa.event.listen(
        engine, "before_cursor_execute", lambda *args: begun.append(args[2]) if "BEGIN" in args[2] else None
    )
    csrf = csrf_of(boss)
    for page in ("/", "/intake/", "/contacts/", "/operators/", f"/sources/{source['id']}", "/users/"):
        assert boss.get(page).status_code == 200
    assert boss.get(f"{API}/distribution_status/").status_code == 200
    assert boss.post("/intake/", data={"csrf_token": csrf, "source_id": source["id"], "phone": "12"}).status_code == 422
    assert boss.post("/operators/", data={"csrf_token": csrf, "name": "", "max_active_leads": "-1"}).status_code == 422
    assert boss.post(f"{API}/operators/", json={"name": ""}).status_code == 422
    assert "BEGIN IMMEDIATE" not in begun
    assert (
        boss.post("/intake/", data={"csrf_token": csrf, "source_id": source["id"], "phone": "+79001234567"}).status_code
        == 302
    )
    assert begun.count("BEGIN IMMEDIATE") == 1


def test_a_view_that_writes_without_declaring_it_fails_and_writes_nothing(app: Flask, boss: FlaskClient) -> None:
    with pytest.raises(UndeclaredWrite, match="wrote without begin_write"):
        boss.post(f"{API}/forgetful")
    with app.app_context():
        assert db.session.scalar(sa.select(Operator).where(Operator.name == "Forgotten")) is None


@pytest.mark.parametrize("view", ["forgetful_driver", "early_driver"])
def test_a_driver_connection_view_that_writes_without_declaring_it_first_fails(
    app: Flask, boss: FlaskClient, view: str
) -> None:
    """The rule holds on the hot path's own driver connection too: a view declared
    @on_driver_connection that writes before request_unit().begin_write() (on SQLite: without the
    write lock, in autocommit) fails instead of going on: at its commit on both databases (PostgreSQL's
    transaction is then rolled back), and on SQLite already at the late begin_write. A write before a
    late begin_write is no harm on PostgreSQL, which has no write lock, and is not looked for there."""
    with app.app_context():
        sqlite = db.engine.dialect.name == "sqlite"
    if view == "early_driver" and not sqlite:
        assert boss.post(f"{API}/{view}").status_code == 200
        return
    with pytest.raises(UndeclaredWrite, match="wrote without begin_write"):
        boss.post(f"{API}/{view}")
    with app.app_context():
        written = db.session.scalar(sa.select(sa.func.count()).where(Operator.name == "Forgotten"))
        # SQLite's reads before begin_write run in autocommit: the row is stored already, the failure is loud.
        assert written == (1 if sqlite else 0)


def test_begin_write_ends_the_read_open_then_and_refuses_changes_made_before_it(app: Flask, boss: FlaskClient) -> None:
    boss.post(f"{API}/operators/", json={"name": "Ann", "max_active_leads": 1})
    with app.test_request_context("/healthz"):
        app.preprocess_request()  # a request's session: read-only until begin_write
        ann = db.session.scalars(sa.select(Operator)).one()
        assert db.session().in_transaction()
        begin_write(db.session)
        assert not db.session().in_transaction()
        assert "max_active_leads" not in ann.__dict__  # expired: read again under the write lock
        ann.max_active_leads = 2
        with pytest.raises(RuntimeError, match="changes made before the write was declared"):
            begin_write(db.session)
        db.session.commit()
    with app.app_context():
        assert db.session.scalars(sa.select(Operator.max_active_leads)).one() == 2


def test_every_write_from_a_page_is_limited_to_one_drain_batch(
    app: Flask, boss: FlaskClient, source: dict[str, Any]
) -> None:
    app.config["LEADCRM_DRAIN_BATCH"] = 3
    ann = json_of(boss.get(f"{API}/operators/"))["items"][0]
    boss.patch(f"{API}/operators/{ann['id']}", json={"max_active_leads": 0})
    for n in range(5):
        boss.post(f"{API}/contacts/register", json={"source_id": source["id"], "external_id": f"w{n}"})
    # The operators page raises the limit: one batch of the waiting contacts is assigned in that request.
    form = {"csrf_token": csrf_of(boss), "max_active_leads": "10"}
    assert boss.post(f"/operators/{ann['id']}", data=form).status_code == 302
    assert json_of(boss.get(f"{API}/operators/{ann['id']}"))["active_leads"] == 3


# --- the registration's own driver connection ----------------------------------------


def test_a_registration_that_fails_inside_its_write_gives_the_lock_and_its_connection_back(
    app: Flask, boss: FlaskClient, source: dict[str, Any]
) -> None:
    """The API's registration runs on a driver connection of its own (units.request_unit): one
    refused after it took the write lock (an unknown source is only found out inside it, a lead
    conflict only at the lead) rolls back and returns the connection when the request ends, so
    the next writer gets the lock at once and the pool never runs dry."""
    pool_size = 2 + 2  # pool_size + max_overflow on PostgreSQL; SQLite's pool is larger still
    lead_a = boss.post(f"{API}/contacts/register", json={"source_id": source["id"], "phone": "+79001110001"})
    boss.post(f"{API}/contacts/register", json={"source_id": source["id"], "email": "b@example.com"})
    for n in range(3 * pool_size):
        unknown = boss.post(f"{API}/contacts/register", json={"source_name": f"nowhere-{n}", "phone": "+79001110009"})
        assert unknown.status_code == 404, unknown.get_data(as_text=True)
        conflict = boss.post(
            f"{API}/contacts/register",
            json={"source_id": source["id"], "phone": "+79001110001", "email": "b@example.com"},
            headers={"Idempotency-Key": f"conflict-{n}"},
        )
        assert conflict.status_code == 409, conflict.get_data(as_text=True)
        body = {"source_id": source["id"], "phone": f"+7902{n:07d}"}
        elapsed, ok = timed(lambda: boss.post(f"{API}/contacts/register", json=body))  # noqa: B023 - called at once
        assert ok.status_code == 201 and elapsed < AT_ONCE, (n, elapsed, ok.status_code)
    # Nothing of the refused ones stayed: no lead for the unknown source's phone, no key of a conflict.
    with app.app_context():
        assert db.session.scalar(sa.text("SELECT count(*) FROM leads WHERE phone = '+79001110009'")) == 0
        assert db.session.scalar(sa.text("SELECT count(*) FROM idempotency_keys")) == 0
        assert db.session.scalar(sa.text("SELECT count(*) FROM contacts")) == 2 + 3 * pool_size
    assert lead_a.status_code == 201


def test_a_logged_in_user_registers_through_the_api_on_the_driver_connection_as_themselves(
    app: Flask, boss: FlaskClient, source: dict[str, Any]
) -> None:
    """A browser session (no token; its CSRF token) calling the registration: the unit of work
    on the driver connection acts as the user (its history says so, a token's says the token),
    a replay answers the first, and a request without the CSRF token is refused before the write."""
    with app.app_context():
        browser = login_client(app, add_user("ivy", Role.INTAKE))
        register = add_token("crm", TokenScope.REGISTER)
    csrf = csrf_of(browser)
    sent = {"source_id": source["id"], "phone": "+79001110001"}
    first = browser.post(f"{API}/contacts/register", json=sent, headers={"X-CSRFToken": csrf, "Idempotency-Key": "k"})
    assert first.status_code == 201, first.get_data(as_text=True)
    replay = browser.post(f"{API}/contacts/register", json=sent, headers={"X-CSRFToken": csrf, "Idempotency-Key": "k"})
    assert replay.headers.get("Idempotent-Replayed") == "true" and replay.get_json() == first.get_json()
    refused = browser.post(f"{API}/contacts/register", json={**sent, "phone": "+79001110002"})
    assert refused.status_code == 400 and json_of(refused)["error"]["code"] == "csrf_failed"
    by_token = app.test_client()
    by_token.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {register}"
    second = by_token.post(f"{API}/contacts/register", json={**sent, "phone": "+79001110003"})
    assert second.status_code == 201, second.get_data(as_text=True)
    actors = {
        response.get_json()["contact"]["id"]: [
            event["actor"]
            for event in json_of(boss.get(f"{API}/contacts/{response.get_json()['contact']['id']}/events"))
        ]
        for response in (first, second)
    }
    assert actors == {
        first.get_json()["contact"]["id"]: ["user:ivy"],
        second.get_json()["contact"]["id"]: ["token:crm (#2)"],
    }
    with app.app_context():
        assert db.session.scalar(sa.text("SELECT count(*) FROM contacts")) == 2
