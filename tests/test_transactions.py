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


@pytest.fixture
def app(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Flask]:
    monkeypatch.setenv("LEADCRM_INSTANCE_PATH", str(tmp_path / "instance"))
    config = {"TESTING": True, "SQLALCHEMY_DATABASE_URI": database_url, "LEADCRM_SQLITE_BUSY_TIMEOUT": BUSY_TIMEOUT}
    app = create_app(config)
    app.add_url_rule(f"{API}/forgetful", "api.forgetful", allow(Role.SUPERVISOR)(_forgetful_view), methods=["POST"])
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
