"""`flask leadcrm demo` on a real database, through Flask's CLI runner."""

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from leadcrm.extensions import db
from leadcrm.models import Operator
from tests.helpers import json_of
from tests.test_web import text


def test_demo_fills_an_empty_database_and_leaves_a_full_one_alone(app: Flask, client: FlaskClient) -> None:
    runner = app.test_cli_runner()
    result = runner.invoke(args=["leadcrm", "demo", "--leads", "40"])
    assert result.exit_code == 0, result.output
    assert "Created 12 operators, 4 sources and 40 leads." in result.output
    status = json_of(client.get("/api/v1/distribution_status/"))
    assert len(status["operators"]) == 12 and len(status["sources"]) == 4
    assert json_of(client.get("/api/v1/leads/"))["total"] == 40  # some wrote through two sources: still 40 leads
    contacts = json_of(client.get("/api/v1/contacts/?per_page=500"))
    assert contacts["total"] > 40
    open_assigned = json_of(client.get("/api/v1/contacts/?status=open&unassigned=false"))["total"]
    assert sum(op["active_leads"] for op in status["operators"]) == open_assigned
    again = runner.invoke(args=["leadcrm", "demo"])
    assert again.exit_code == 0 and "leaving it as it is" in again.output
    assert "Нагрузка" in text(client.get("/", headers={"Accept-Language": "ru"}))


def test_simulation_registers_and_closes_and_keeps_counters_exact(app: Flask, client: FlaskClient) -> None:
    runner = app.test_cli_runner()
    runner.invoke(args=["leadcrm", "demo", "--leads", "10"])
    before = json_of(client.get("/api/v1/contacts/"))["total"]
    result = runner.invoke(args=["leadcrm", "demo", "--simulate", "--steps", "25", "--rate", "1000"])
    assert result.exit_code == 0, result.output
    assert "Stopped after 25 registrations" in result.output
    assert json_of(client.get("/api/v1/contacts/"))["total"] == before + 25
    status = json_of(client.get("/api/v1/distribution_status/"))
    open_assigned = json_of(client.get("/api/v1/contacts/?status=open&unassigned=false"))["total"]
    assert sum(op["active_leads"] for op in status["operators"]) == open_assigned


def test_drain_command_is_a_safe_sweep(app: Flask, client: FlaskClient) -> None:
    runner = app.test_cli_runner()
    anna = json_of(client.post("/api/v1/operators/", json={"name": "Anna", "max_active_leads": 0}))
    client.post("/api/v1/sources/", json={"name": "s"})
    client.post("/api/v1/sources/1/config", json={"operator_id": anna["id"], "weight": 1})
    for n in range(3):
        client.post("/api/v1/contacts/register", json={"source_id": 1, "external_id": f"x{n}"})
    assert "Assigned 0 waiting contacts." in runner.invoke(args=["leadcrm", "drain"]).output
    with app.app_context():  # room made behind the engine's back, as a hand edit would
        db.session.execute(sa.update(Operator).values(max_active_leads=2))
        db.session.commit()
    assert "Assigned 2 waiting contacts." in runner.invoke(args=["leadcrm", "drain"]).output
    assert "Assigned 0 waiting contacts." in runner.invoke(args=["leadcrm", "drain"]).output
    assert json_of(client.get("/api/v1/operators/1"))["active_leads"] == 2


def test_drain_forgets_expired_idempotency_keys(app: Flask, client: FlaskClient) -> None:
    from datetime import timedelta

    from leadcrm.models import IdempotencyKey, utcnow

    client.post("/api/v1/sources/", json={"name": "s"})
    for key in ("old", "new"):
        client.post(
            "/api/v1/contacts/register", json={"source_id": 1, "external_id": key}, headers={"Idempotency-Key": key}
        )
    with app.app_context():
        db.session.execute(
            sa.update(IdempotencyKey).where(IdempotencyKey.key == "old").values(created_at=utcnow() - timedelta(days=2))
        )
        db.session.commit()
    assert "Forgot 1 expired idempotency key." in app.test_cli_runner().invoke(args=["leadcrm", "drain"]).output
    with app.app_context():
        assert db.session.scalars(sa.select(IdempotencyKey.key)).all() == ["new"]


def test_a_capacity_change_assigns_one_batch_and_the_drain_command_the_rest_batch_by_batch(
    app: Flask, client: FlaskClient
) -> None:
    """A backlog longer than one batch: raising the limit answers after one batch, so does a close,
    and `flask leadcrm drain` assigns the rest, oldest first, one transaction per batch."""
    app.config["LEADCRM_DRAIN_BATCH"] = 7
    anna = json_of(client.post("/api/v1/operators/", json={"name": "Anna", "max_active_leads": 0}))["id"]
    source = json_of(client.post("/api/v1/sources/", json={"name": "s"}))["id"]
    client.post(f"/api/v1/sources/{source}/config", json={"operator_id": anna, "weight": 1})
    waiting = [
        json_of(client.post("/api/v1/contacts/register", json={"source_id": source, "external_id": f"x{n}"}))["contact"]
        for n in range(30)
    ]

    def assigned() -> list[int]:
        items = json_of(client.get("/api/v1/contacts/?status=open&unassigned=false&per_page=100"))["items"]
        return sorted(contact["id"] for contact in items)

    assert client.patch(f"/api/v1/operators/{anna}", json={"max_active_leads": 1000}).status_code == 200
    assert assigned() == [contact["id"] for contact in waiting[:7]]  # one batch, the oldest
    assert client.post(f"/api/v1/contacts/{waiting[0]['id']}/close").status_code == 200
    assert assigned() == [contact["id"] for contact in waiting[1:14]]  # the next capacity event: the next batch

    commits = []

    def count_commit(connection: sa.Connection) -> None:
        commits.append(connection)

    with app.app_context():
        sa.event.listen(db.engine, "commit", count_commit)
        try:
            result = app.test_cli_runner().invoke(args=["leadcrm", "drain"])
        finally:
            sa.event.remove(db.engine, "commit", count_commit)
    assert "Assigned 16 waiting contacts." in result.output
    # 7 + 7 + 2, each batch committed on its own, then the Idempotency-Keys' sweep.
    assert len(commits) == 4
    assert assigned() == [contact["id"] for contact in waiting[1:]]
    assert json_of(client.get(f"/api/v1/operators/{anna}"))["active_leads"] == 29
    assert "Assigned 0 waiting contacts." in app.test_cli_runner().invoke(args=["leadcrm", "drain"]).output


def test_drain_on_a_busy_database_says_so(database_url: str, backend) -> None:
    """Another process holding SQLite's write lock: the command gives up after the busy timeout with a message."""
    import sqlite3

    from leadcrm import create_app

    if backend.name != "sqlite":
        pytest.skip("SQLite's single write lock")
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": database_url, "LEADCRM_SQLITE_BUSY_TIMEOUT": 0.3})
    path = sa.make_url(database_url).database
    assert path is not None  # a SQLite file
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        result = app.test_cli_runner().invoke(args=["leadcrm", "drain"])
    finally:
        holder.rollback()
        holder.close()
        with app.app_context():
            db.engine.dispose()
    assert result.exit_code == 1, result.output
    assert "The database is busy or unreachable" in result.output and "run the command again" in result.output
    assert "Traceback" not in result.output
