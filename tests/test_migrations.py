"""The Alembic migrations: they build the models' schema, and they carry data.

Every revision in migrations/versions is taken from Alembic's script
directory, so a new migration is covered without touching this file: a
database is built at that revision, filled with real rows by SQL of that
revision's schema (only the columns that exist there), and upgraded to head
the way a server's start does it. Nothing may be lost or changed on the way.
"""

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask import Flask
from flask_migrate import upgrade

from leadcrm import create_app, distribution
from leadcrm.database import begin_write
from leadcrm.extensions import db
from leadcrm.identity import LeadIdentity
from leadcrm.models import Contact, Operator, Source, SourceOperator
from tests.helpers import assert_load_matches_open_contacts
from tests.servers import PROJECT_ROOT, api_session, create_token, gunicorn

SCRIPTS = ScriptDirectory(str(PROJECT_ROOT / "migrations"))
HEAD = SCRIPTS.get_current_head()
# Oldest first.
REVISIONS = [script.revision for script in reversed(list(SCRIPTS.walk_revisions()))]

T0 = datetime(2026, 11, 27, 18, 0, tzinfo=UTC)


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def contact(id: int, lead: int, source: int, operator: int | None, status: str, minute: int) -> dict[str, Any]:  # noqa: A002
    return {
        "id": id,
        "lead_id": lead,
        "source_id": source,
        "operator_id": operator,
        "status": status,
        "message": f"Здравствуйте, обращение {id}",
        "created_at": at(minute),
        "assigned_at": at(minute) if operator else None,
        "closed_at": at(minute + 5) if status == "closed" else None,
    }


def event(id: int, contact_id: int, reason: str, from_op: int | None, to_op: int | None) -> dict[str, Any]:  # noqa: A002
    actor = "user:olga" if id % 2 else None
    return {
        "id": id,
        "contact_id": contact_id,
        "reason": reason,
        "from_operator_id": from_op,
        "to_operator_id": to_op,
        "actor": actor,
        "created_at": at(10 + id),
    }


# The rows of a working install, in the order foreign keys need. At each
# revision, the tables and columns that exist there are written. Anna is full,
# Boris has room, Vera is inactive; two contacts of the web form wait (Anna is
# full and Vera inactive, so nobody may take them).
ROWS: dict[str, list[dict[str, Any]]] = {
    "operators": [
        {"id": 1, "name": "Anna", "is_active": True, "max_active_leads": 2, "active_leads": 2, "created_at": at(0)},
        {"id": 2, "name": "Борис", "is_active": True, "max_active_leads": 3, "active_leads": 1, "created_at": at(1)},
        {"id": 3, "name": "Vera", "is_active": False, "max_active_leads": 4, "active_leads": 0, "created_at": at(2)},
    ],
    "sources": [
        {"id": 1, "name": "telegram_bot", "strategy": "random", "sticky": True, "created_at": at(3)},
        {"id": 2, "name": "web_form", "strategy": "deterministic", "sticky": False, "created_at": at(4)},
    ],
    "source_operators": [
        {"source_id": 1, "operator_id": 1, "weight": 10, "assigned_total": 2},
        {"source_id": 1, "operator_id": 2, "weight": 30, "assigned_total": 2},
        {"source_id": 2, "operator_id": 1, "weight": 5, "assigned_total": 1},
        {"source_id": 2, "operator_id": 3, "weight": 7, "assigned_total": 0},
    ],
    "leads": [
        {
            "id": 1,
            "external_id": "tg:1001",
            "phone": "+79001234567",
            "email": None,
            "email_key": None,
            "name": "Иван",
            "created_at": at(5),
        },
        {
            "id": 2,
            "external_id": None,
            "phone": "+79007654321",
            "email": "olga@example.com",
            "email_key": "olga@example.com",
            "name": "Olga",
            "created_at": at(6),
        },
        # Its key in lower case as Python, not SQLite's ASCII-only lower(), has it.
        {
            "id": 3,
            "external_id": "tg:1003",
            "phone": None,
            "email": "Ёж@example.com",
            "email_key": "ёж@example.com",
            "name": None,
            "created_at": at(7),
        },
        # Olga again, stored apart before addresses were matched whatever their
        # case: kept apart, without the key (lead 2, the older, holds it).
        {
            "id": 4,
            "external_id": "tg:1004",
            "phone": None,
            "email": "Olga@example.com",
            "email_key": None,
            "name": "Ольга",
            "created_at": at(8),
        },
    ],
    "contacts": [
        contact(1, lead=1, source=1, operator=1, status="open", minute=10),
        contact(2, lead=2, source=2, operator=1, status="open", minute=11),
        contact(3, lead=1, source=1, operator=2, status="open", minute=12),
        contact(4, lead=3, source=1, operator=1, status="closed", minute=13),
        contact(5, lead=2, source=1, operator=2, status="closed", minute=14),
        contact(6, lead=3, source=2, operator=None, status="open", minute=15),
        contact(7, lead=1, source=2, operator=None, status="open", minute=16),
        contact(8, lead=4, source=2, operator=None, status="closed", minute=17),  # closed while it waited
    ],
    "contact_events": [
        event(1, 1, "registered", None, 1),
        event(2, 2, "registered", None, 1),
        event(3, 3, "registered", None, 2),
        event(4, 4, "registered", None, 1),
        event(5, 5, "registered", None, 2),
        event(6, 6, "registered", None, None),
        event(7, 7, "registered", None, None),
        event(8, 4, "closed", 1, None),
        event(9, 5, "closed", 2, None),
        event(10, 8, "registered", None, None),
        event(11, 8, "closed", None, None),
    ],
    "idempotency_keys": [
        {
            "caller": "token:1",
            "key": "retry-0001",
            "request_hash": "ab" * 32,
            "status_code": 201,
            "response_body": '{"contact": {"id": 6}}',
            "location": "/api/v1/contacts/6",
            "created_at": at(30),
        },
    ],
    "users": [
        {
            "id": 1,
            "username": "olga",
            "password_hash": "scrypt:32768:8:1$salt$" + "0" * 128,
            "role": "supervisor",
            "is_active": True,
            "created_at": at(0),
        },
        {
            "id": 2,
            "username": "ivan",
            "password_hash": "scrypt:32768:8:1$salt$" + "1" * 128,
            "role": "intake",
            "is_active": False,
            "created_at": at(1),
        },
    ],
    "api_tokens": [
        {
            "id": 1,
            "name": "Website form",
            "scope": "register",
            "token_hash": "c" * 64,
            "prefix": "lcrm_abcdefg",
            "created_by_id": 1,
            "created_at": at(2),
            "last_used_at": at(40),
            "revoked_at": None,
        },
    ],
    "login_failures": [{"id": 1, "key": "user:olga", "created_at": at(50)}],
    "login_sessions": [{"id_hash": "d" * 64, "user_id": 1, "created_at": at(51)}],
    "operator_events": [
        {"id": 1, "operator_id": 2, "field": "presence", "value": "away", "actor": "user:olga", "created_at": at(52)}
    ],
    # Борис works weekdays 09:00-18:00 in Moscow and 22:00-06:00 on Fridays; Anna takes a holiday.
    "operator_hours": [
        {"id": 1, "operator_id": 2, "weekday": 1, "starts": 9 * 60, "ends": 18 * 60},
        {"id": 2, "operator_id": 2, "weekday": 5, "starts": 22 * 60, "ends": 6 * 60},
    ],
    "operator_absences": [
        {"id": 1, "operator_id": 1, "starts_on": date(2026, 12, 24), "ends_on": date(2027, 1, 2), "note": "отпуск"}
    ],
    "settings": [{"key": "timezone", "value": "Europe/Moscow"}],
    "worker_beats": [{"name": "host-1:4242", "started_at": at(53), "beat_at": at(54)}],
    "drain_requests": [{"source_id": 2, "requested_at": at(55)}],
    # Two events out, one numbered in commit order; a webhook that got the first and waits for the second.
    "events": [
        {
            "id": 1,
            "position": 1,
            "type": "contact.registered",
            "subject": "contact:1",
            "actor": "user:olga",
            "created_at": at(56),
            "data": '{"contact": {"id": 1}}',
        },
        {
            "id": 2,
            "position": None,
            "type": "contact.closed",
            "subject": "contact:1",
            "actor": "token:crm (#2)",
            "created_at": at(57),
            "data": '{"contact": {"id": 1}}',
        },
    ],
    "event_sequence": [{"id": 1, "last_position": 1}],
    "webhooks": [
        {
            "id": 1,
            "url": "https://crm.example.com/hooks/leadcrm",
            "description": "Sales CRM",
            "events": '["contact.registered", "contact.closed"]',
            "secret": "whsec_" + "A" * 32,
            "enabled": True,
            "disabled_reason": None,
            "disabled_at": None,
            "failing_since": None,
            "last_success_at": at(58),
            "fanned_out_to": 1,  # before 0012
            "sent_to": 1,
            "created_at": at(55),
        },
    ],
    "webhook_deliveries": [
        {
            "id": 1,
            "webhook_id": 1,
            "event_id": 1,
            "position": 1,
            "subject": "contact:1",
            "state": "delivered",
            "attempts": 1,
            "next_attempt_at": at(56),
            "first_attempt_at": at(58),
            "leased_by": None,
            "leased_until": None,
            "delivered_at": at(58),
        },
    ],
    "webhook_attempts": [
        {
            "id": 1,
            "webhook_id": 1,
            "event_id": 1,
            "event_type": "contact.registered",
            "at": at(58),
            "status_code": 204,
            "duration_ms": 12,
            "error": None,
        },
    ],
}

# What rows written before a column existed hold in it after the upgrade (a
# value, or a function of the old row). A migration that adds a column to a
# table with rows must say it here.
EMAIL_KEYS = {lead["id"]: lead["email_key"] for lead in ROWS["leads"]}
ADDED_LATER: dict[tuple[str, str], Any] = {
    ("sources", "sticky"): False,
    ("idempotency_keys", "caller"): "",
    ("leads", "email_key"): lambda lead: EMAIL_KEYS[lead["id"]],
    # Operators stored before presence existed are at work, with no idle setting, never seen.
    ("operators", "presence"): "available",
    ("operators", "idle_away_minutes"): None,
    ("operators", "last_seen_at"): None,
    ("users", "operator_id"): None,
    # Stored before schedules and offers: always on shift in the organisation's zone, no offers.
    ("operators", "away_reason"): None,
    ("operators", "timezone"): None,
    ("operators", "shift_from"): None,
    ("operators", "shift_until"): None,
    ("operators", "schedule_due_at"): None,
    ("source_operators", "missed_offers"): 0,
    ("sources", "offer_timeout_seconds"): None,
    ("sources", "offer_misses_away"): 3,
    ("contacts", "offered_until"): None,
    ("contacts", "accepted_at"): None,
    # Webhook streams: no lease or pause yet; delivered_count counts the deliveries stored as delivered.
    ("webhooks", "stream_leased_by"): None,
    ("webhooks", "stream_leased_until"): None,
    ("webhooks", "stream_due_at"): None,
    ("webhooks", "stream_failures"): 0,
    ("webhooks", "delivered_count"): 1,
}

# Columns a later revision renamed (the value kept): (table, old name) -> new name.
RENAMED: dict[tuple[str, str], str] = {
    ("webhooks", "fanned_out_to"): "sent_to",
}

WAITING_CONTACTS = [6, 7]


def migrate_to(url: str, revision: str = "head") -> None:
    """Upgrade as a server's start does: the app's engine (SQLite: foreign keys on), Flask-Migrate."""
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": url})
    with app.app_context():
        upgrade(revision=revision)
        db.session.remove()
        db.engine.dispose()


def fill(url: str, rows: dict[str, list[dict[str, Any]]] = ROWS) -> None:
    """Write ``rows`` into the database as its current revision's schema allows."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            meta = sa.MetaData()
            meta.reflect(conn)
            unknown = set(meta.tables) - set(rows) - {"alembic_version"}
            assert not unknown, f"tables without test rows: {unknown}; add rows for them to ROWS"
            for name, table_rows in rows.items():
                if name not in meta.tables:
                    continue
                table = meta.tables[name]
                required = {
                    c.name for c in table.columns if not c.nullable and c.server_default is None and not c.autoincrement
                }
                for row in table_rows:
                    values = {key: value for key, value in row.items() if key in table.columns}
                    missing = required - set(values)
                    assert not missing, f"{name}: required columns without test values: {missing}"
                    conn.execute(table.insert().values(values))
                if conn.dialect.name == "postgresql" and "id" in table.columns:
                    # Rows written by the app took their ids from the sequence.
                    conn.execute(sa.text(f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), max(id)) FROM {name}"))
    finally:
        engine.dispose()


def snapshot(url: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table (alembic_version aside), in primary key order."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            meta = sa.MetaData()
            meta.reflect(conn)
            return {
                name: [
                    dict(row._mapping) for row in conn.execute(sa.select(table).order_by(*table.primary_key.columns))
                ]
                for name, table in meta.tables.items()
                if name != "alembic_version"
            }
    finally:
        engine.dispose()


@pytest.fixture
def instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LEADCRM_INSTANCE_PATH", str(tmp_path / "instance"))
    return tmp_path / "instance"


def test_migrations_match_the_models(app: Flask) -> None:
    with app.app_context(), db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, db.metadata) == []
        assert sa.inspect(conn).has_table("alembic_version")


def test_every_revision_is_listed() -> None:
    assert REVISIONS[0] == "0001_initial"
    assert REVISIONS[-1] == HEAD
    assert len(REVISIONS) == len(set(REVISIONS)) >= 6


@pytest.mark.parametrize("revision", REVISIONS)
def test_upgrade_from_every_revision_keeps_the_data(backend, tmp_path: Path, instance: Path, revision: str) -> None:
    url = backend.empty_url(tmp_path, f"at_{revision}")
    migrate_to(url, revision)
    fill(url)
    before = snapshot(url)
    assert before["contacts"] and before["operators"]

    migrate_to(url)

    after = snapshot(url)
    for name, rows in before.items():
        assert len(after[name]) == len(rows), name
        for old, new in zip(rows, after[name], strict=True):
            old = {RENAMED.get((name, key), key): value for key, value in old.items()}
            assert {key: new[key] for key in old} == old, name
            for key in set(new) - set(old):
                assert (name, key) in ADDED_LATER, f"{name}.{key} is new since {revision}: add it to ADDED_LATER"
                expected = ADDED_LATER[name, key]
                assert new[key] == (expected(old) if callable(expected) else expected), f"{name}.{key}"

    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": url})
    with app.app_context():
        with db.engine.connect() as conn:
            assert conn.scalar(sa.text("SELECT version_num FROM alembic_version")) == HEAD
            # The upgraded schema is exactly the models' (foreign keys, indexes and checks included).
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, db.metadata) == []
            if conn.dialect.name == "sqlite":
                assert conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall() == []
                assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
                assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"

        # Key values and counters, read through the models.
        loads = {
            op.name: (op.active_leads, op.max_active_leads, op.is_active)
            for op in db.session.scalars(sa.select(Operator))
        }
        assert loads == {"Anna": (2, 2, True), "Борис": (1, 3, True), "Vera": (0, 4, False)}
        assert_load_matches_open_contacts()
        totals = {
            (so.source_id, so.operator_id): (so.weight, so.assigned_total)
            for so in db.session.scalars(sa.select(SourceOperator))
        }
        assert totals == {(1, 1): (10, 2), (1, 2): (30, 2), (2, 1): (5, 1), (2, 3): (7, 0)}
        waiting = db.session.scalars(
            sa.select(Contact.id).where(Contact.operator_id.is_(None), Contact.status == "open")
        )
        assert list(waiting) == WAITING_CONTACTS
        assert db.session.get_one(Contact, 1).created_at == at(10)
        sticky = {source.name: source.sticky for source in db.session.scalars(sa.select(Source))}
        assert sticky == {"telegram_bot": "sticky" in before["sources"][0], "web_form": False}
        db.session.remove()

        # The app keeps working on it: new rows get new ids, counters follow.
        begin_write(db.session())
        source = db.session.get_one(Source, 1)
        registration = distribution.register_contact(
            db.session(), source=source, identity=LeadIdentity(phone="+79001112233")
        )
        assert registration.contact.id == 9
        assert registration.operator is not None and registration.operator.id == 2
        distribution.close_contact(db.session(), 1)
        # Addresses are found whatever their case; Olga's finds the older of her two leads.
        web_form = db.session.get(Source, 2)
        assert web_form is not None
        for address, lead_id in [("OLGA@example.com", 2), ("Olga@example.com", 2), ("ёЖ@EXAMPLE.com", 3)]:
            again = distribution.register_contact(db.session(), source=web_form, identity=LeadIdentity(email=address))
            assert (again.lead.id, again.lead_created) == (lead_id, False), address
        # Lead 4 is still found by its other identifier, with its own address.
        again = distribution.register_contact(
            db.session(), source=web_form, identity=LeadIdentity(external_id="tg:1004", email="olga@EXAMPLE.com")
        )
        assert (again.lead.id, again.lead.email) == (4, "Olga@example.com")
        db.session.commit()
        assert_load_matches_open_contacts()
        db.session.remove()

        # And they are reported, not merged.
        report = app.test_cli_runner().invoke(args=["leadcrm", "email-duplicates"])
        assert report.exit_code == 0, report.output
        assert report.output.splitlines() == [
            "olga@example.com: new registrations find lead 2",
            "  lead 2\tolga@example.com\t4 contacts\tfinds",
            "  lead 4\tOlga@example.com\t2 contacts\tkept apart",
            "1 address shared by more than one lead.",
        ]
        db.session.remove()
        db.engine.dispose()


def test_sqlite_upgrade_refuses_rows_that_violate_foreign_keys(
    tmp_path: Path, instance: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Foreign keys are off while tables are rebuilt, so they are checked before the upgrade commits."""
    url = f"sqlite:///{tmp_path / 'orphans.sqlite3'}"
    previous = REVISIONS[-2]
    migrate_to(url, previous)
    # A contact of a source that does not exist (written with foreign keys off, as SQLite allows).
    fill(
        url,
        ROWS
        | {"contacts": [*ROWS["contacts"], contact(99, lead=1, source=42, operator=None, status="open", minute=60)]},
    )
    before = snapshot(url)

    with pytest.raises(SystemExit):
        migrate_to(url)

    err = capfd.readouterr().err
    assert "1 row(s) violate foreign keys: contacts row 99: source_id -> sources." in err
    assert "nothing was changed" in err
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT version_num FROM alembic_version")) == previous
    engine.dispose()
    assert snapshot(url) == before


def served_contacts(base: str, token: str) -> dict[int, tuple[str, int | None]]:
    answer = api_session(token).get(f"{base}/api/v1/contacts/?per_page=500", timeout=10)
    assert answer.status_code == 200, answer.text
    return {item["id"]: (item["status"], item["operator_id"]) for item in answer.json()["items"]}


@pytest.mark.slow
def test_server_starts_on_an_sqlite_database_from_revision_0002(tmp_path: Path, instance: Path) -> None:
    """The failure reported: a database made before 0003 stopped gunicorn's master in the upgrade."""
    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    migrate_to(url, "0002_contact_events")
    fill(url)
    with gunicorn(url, tmp_path, workers=1) as base:
        token = create_token(url)
        contacts = served_contacts(base, token)
        assert contacts == {row["id"]: (row["status"], row["operator_id"]) for row in ROWS["contacts"]}
        answer = api_session(token).get(f"{base}/api/v1/distribution_status/", timeout=10)
        assert answer.status_code == 200
        loads = {op["name"]: op["active_leads"] for op in answer.json()["operators"]}
        assert loads == {"Anna": 2, "Борис": 1, "Vera": 0}


@pytest.mark.slow
def test_contacts_waiting_while_an_operator_has_room_are_assigned_when_the_server_starts(
    backend, tmp_path: Path, instance: Path
) -> None:
    """An install upgraded from a version that left contacts waiting needs no `flask leadcrm drain`."""
    url = backend.empty_url(tmp_path, "backlog")
    migrate_to(url, REVISIONS[-2])
    # Vera, serving the web form, is active with room: the two waiting contacts are hers to take.
    operators = [op | {"is_active": True} if op["name"] == "Vera" else op for op in ROWS["operators"]]
    fill(url, ROWS | {"operators": operators})
    with gunicorn(url, tmp_path, workers=1) as base:
        contacts = served_contacts(base, create_token(url))
    assert [contacts[contact_id] for contact_id in WAITING_CONTACTS] == [("open", 3), ("open", 3)]
    assert "Assigned 2 waiting contacts" in (tmp_path / "gunicorn.log").read_text()
    app = create_app({"SQLALCHEMY_DATABASE_URI": url})
    with app.app_context():
        assert db.session.get_one(Operator, 3).active_leads == 2
        assert db.session.get_one(SourceOperator, (2, 3)).assigned_total == 2
        assert_load_matches_open_contacts()
        db.session.remove()
        db.engine.dispose()


def test_upgraded_checks_know_operator_users_and_presence(backend, tmp_path: Path, instance: Path) -> None:
    """0009 rebuilt the users and operators checks: the new role and presence pass, nonsense does not."""
    url = backend.empty_url(tmp_path, "checks")
    migrate_to(url, REVISIONS[-2])
    fill(url)
    migrate_to(url)
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE users SET role = 'operator', operator_id = 2 WHERE id = 2"))
            conn.execute(sa.text("UPDATE operators SET presence = 'away', idle_away_minutes = 10 WHERE id = 1"))
        refused = [
            "UPDATE operators SET presence = 'lunch' WHERE id = 1",
            "UPDATE operators SET idle_away_minutes = 0 WHERE id = 1",
            "UPDATE users SET role = 'owner' WHERE id = 1",
            # Only an operator user works as an operator, and an operator has one user at most.
            "UPDATE users SET operator_id = 1 WHERE id = 1",
            "INSERT INTO users (username, password_hash, role, is_active, operator_id, created_at) "
            "VALUES ('twin', 'x', 'operator', true, 2, '2026-12-01 00:00:00')",
        ]
        for statement in refused:
            with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
                conn.execute(sa.text(statement))
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT role, operator_id FROM users WHERE id = 2")).one() == ("operator", 2)
    finally:
        engine.dispose()


def migrate_down_to(url: str, revision: str) -> None:
    """Downgrade as ``flask db downgrade <revision>`` does, on the app's engine."""
    from flask_migrate import downgrade

    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": url})
    with app.app_context():
        downgrade(revision=revision)
        db.session.remove()
        db.engine.dispose()


def test_0009_downgrades_with_operator_users_and_events_and_upgrades_again(
    backend, tmp_path: Path, instance: Path
) -> None:
    """Back to 0008 with operator users, operator events, presence and last-seen rows stored; then 0009 again."""
    url = backend.empty_url(tmp_path, "down")
    migrate_to(url, "0008_email_key")
    fill(url)
    migrate_to(url)
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE users SET role = 'operator', operator_id = 2 WHERE id = 2"))
            conn.execute(
                sa.text(
                    "UPDATE operators SET presence = 'away', idle_away_minutes = 10, "
                    "last_seen_at = '2026-12-01 10:00:00' WHERE id = 1"
                )
            )
            conn.execute(
                sa.text(
                    "INSERT INTO operator_events (operator_id, field, value, actor, created_at) "
                    "VALUES (1, 'presence', 'away', 'user:boss', '2026-12-01 10:00:00')"
                )
            )
        engine.dispose()
        migrate_down_to(url, "0008_email_key")
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == "0008_email_key"
            role, active = conn.execute(sa.text("SELECT role, is_active FROM users WHERE id = 2")).one()
            assert (role, bool(active)) == ("intake", False)
            assert "operator_events" not in sa.inspect(conn).get_table_names()
            assert "presence" not in {c["name"] for c in sa.inspect(conn).get_columns("operators")}
        engine.dispose()
        migrate_to(url)
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT presence FROM operators WHERE id = 1")).scalar() == "available"
            assert conn.execute(sa.text("SELECT count(*) FROM operator_events")).scalar() == 0
    finally:
        engine.dispose()


def test_0010_downgrades_with_schedules_offers_and_timeouts_and_upgrades_again(
    backend, tmp_path: Path, instance: Path
) -> None:
    """Back to 0009 with hours, absences, an offer, a timeout event and a schedule event stored; then 0010 again."""
    url = backend.empty_url(tmp_path, "down10")
    migrate_to(url, "0009_operators_at_work")
    fill(url)
    migrate_to(url)
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE sources SET offer_timeout_seconds = 60 WHERE id = 1"))
            conn.execute(sa.text("UPDATE contacts SET offered_until = '2026-12-01 10:01:00' WHERE id = 1"))
            conn.execute(
                sa.text(
                    "INSERT INTO contact_events (contact_id, reason, from_operator_id, to_operator_id, created_at) "
                    "VALUES (3, 'timeout', 1, 2, '2026-12-01 10:00:00')"
                )
            )
            conn.execute(
                sa.text(
                    "INSERT INTO operator_events (operator_id, field, value, actor, created_at) "
                    "VALUES (2, 'schedule', NULL, 'user:olga', '2026-12-01 10:00:00')"
                )
            )
        engine.dispose()
        migrate_down_to(url, "0009_operators_at_work")
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == "0009_operators_at_work"
            assert "operator_hours" not in sa.inspect(conn).get_table_names()
            assert "offered_until" not in {c["name"] for c in sa.inspect(conn).get_columns("contacts")}
            reasons = conn.execute(sa.text("SELECT reason FROM contact_events WHERE contact_id = 3")).scalars().all()
            assert "timeout" not in reasons and "manual" in reasons
            fields = conn.execute(sa.text("SELECT field FROM operator_events")).scalars().all()
            assert "schedule" not in fields
        engine.dispose()
        migrate_to(url)
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM operator_hours")).scalar() == 0
            assert conn.execute(sa.text("SELECT offer_timeout_seconds FROM sources WHERE id = 1")).scalar() is None
    finally:
        engine.dispose()


def test_0011_downgrades_with_events_webhooks_and_deliveries_and_upgrades_again(
    backend, tmp_path: Path, instance: Path
) -> None:
    """Back to 0010 with events (numbered and not), a webhook, a delivery and an attempt stored; then 0011 again."""
    url = backend.empty_url(tmp_path, "down11")
    migrate_to(url)
    fill(url)
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            contacts = conn.execute(sa.text("SELECT count(*) FROM contacts")).scalar()
        engine.dispose()
        migrate_down_to(url, "0010_clock")
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == "0010_clock"
            tables = set(sa.inspect(conn).get_table_names())
            gone = {"events", "event_sequence", "webhooks", "webhook_deliveries", "webhook_attempts"}
            assert not tables & gone, tables & gone
            assert conn.execute(sa.text("SELECT count(*) FROM contacts")).scalar() == contacts
        engine.dispose()
        migrate_to(url)
        with engine.connect() as conn:
            for table in ("events", "webhooks", "webhook_deliveries", "webhook_attempts"):
                assert conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar() == 0, table
            assert conn.execute(sa.text("SELECT count(*) FROM contacts")).scalar() == contacts
    finally:
        engine.dispose()


def test_0012_downgrades_with_a_stream_leased_and_paused_and_upgrades_again(
    backend, tmp_path: Path, instance: Path
) -> None:
    """Back to 0011: the cursor becomes fanned_out_to again and every delivery stays; then 0012 again."""
    url = backend.empty_url(tmp_path, "down12")
    migrate_to(url)
    fill(url)
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "UPDATE webhooks SET sent_to = 7, stream_leased_by = 'w:1', stream_leased_until = :at, "
                    "stream_due_at = :at, stream_failures = 2, delivered_count = 40"
                ),
                {"at": at(59)},
            )
            deliveries = conn.execute(sa.text("SELECT * FROM webhook_deliveries ORDER BY id")).fetchall()
        engine.dispose()
        migrate_down_to(url, "0011_events_out")
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == "0011_events_out"
            assert conn.execute(sa.text("SELECT fanned_out_to FROM webhooks")).scalar() == 7
            columns = {c["name"] for c in sa.inspect(conn).get_columns("webhooks")}
            assert not columns & {"sent_to", "stream_leased_by", "stream_due_at", "delivered_count"}
            assert conn.execute(sa.text("SELECT * FROM webhook_deliveries ORDER BY id")).fetchall() == deliveries
        engine.dispose()
        migrate_to(url)
        with engine.connect() as conn:
            row = conn.execute(
                sa.text(
                    "SELECT sent_to, stream_leased_by, stream_due_at, stream_failures, delivered_count FROM webhooks"
                )
            ).one()
            # Counted again from the deliveries stored as delivered (the one in ROWS).
            assert tuple(row) == (7, None, None, 0, 1)
    finally:
        engine.dispose()
