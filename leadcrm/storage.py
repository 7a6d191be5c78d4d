"""The registration path's SQL, written out and run on the driver connection.

Registration is leadcrm's hot path, and on SQLite all writers take turns on
one lock, so whatever runs inside the write transaction limits throughput.
SQLAlchemy Core costs about 40 us of Python per statement on top of the
driver's 7 us (bench/results.md); this module runs the few statements of
``register`` and ``close`` directly on the DBAPI connection that SQLAlchemy
manages, inside the session's transaction. Everything else uses the ORM.

Statements are written once with ``:name`` placeholders and translated to
each driver's style; they use only SQL that SQLite (3.35+) and PostgreSQL
share (RETURNING, ON CONFLICT DO NOTHING).
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, scoped_session


@dataclass(frozen=True, slots=True)
class SourceRecord:
    id: int
    name: str
    strategy: str
    sticky: bool


@dataclass(frozen=True, slots=True)
class LeadRecord:
    id: int
    external_id: str | None
    phone: str | None
    email: str | None
    name: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class OperatorRecord:
    id: int
    name: str
    is_active: bool
    max_active_leads: int
    active_leads: int


@dataclass(frozen=True, slots=True)
class ContactRecord:
    id: int
    lead_id: int
    source_id: int
    operator_id: int | None
    status: str
    message: str | None
    created_at: datetime
    assigned_at: datetime | None
    closed_at: datetime | None


class Sql:
    """One statement with ``:name`` placeholders, in each driver's parameter style."""

    def __init__(self, text: str) -> None:
        self.text = " ".join(text.split())
        self.by_dialect = {"sqlite": self.text, "postgresql": re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", self.text)}


# Key in ``session.info`` naming who acts in the current unit of work (see ``act_as``).
ACTOR = "leadcrm_actor"


def act_as(session: Session | scoped_session[Session], actor: str | None) -> None:
    """Record ``actor`` in the history rows this session writes from now on."""
    session.info[ACTOR] = actor


class Tx:
    """The session's current transaction, seen at the driver level.

    Built once per unit of work (``Tx.of(session)``): going through the
    session for every statement would cost more than the statements.
    """

    __slots__ = ("dialect", "actor", "_connection", "_driver", "_errors")

    def __init__(self, session: Session) -> None:
        conn = session.connection()
        self.dialect: str = conn.dialect.name
        self._connection = conn
        self._driver = conn.connection.driver_connection
        self._errors = conn.dialect.loaded_dbapi.Error
        # Who makes this unit of work's changes ("user:ann", "token:crm (#2)"), for the history.
        self.actor: str | None = session.info.get(ACTOR)

    @classmethod
    def of(cls, session: Session | scoped_session[Session]) -> "Tx":
        """The Tx of the session's current transaction (beginning one if needed)."""
        if isinstance(session, scoped_session):
            session = session()
        cached = session.info.get("leadcrm_tx")
        if cached is not None and cached[0] is session.get_transaction():
            return cached[1]
        tx = cls(session)
        session.info["leadcrm_tx"] = (session.get_transaction(), tx)
        return tx

    def execute(self, statement: Sql, params: dict[str, Any]) -> Any:
        """Run ``statement``; returns the DBAPI cursor. Driver errors come out as SQLAlchemy's.

        A lost connection (the server closed it, a network cut) is invalidated
        as SQLAlchemy does for its own statements: the pool replaces it instead
        of handing the dead one to the next request, and ending the transaction
        does not try to talk to it again.
        """
        cursor = self._driver.cursor()
        sql = statement.by_dialect[self.dialect]
        try:
            cursor.execute(sql, params)
        except self._errors as exc:
            lost = self._connection.dialect.is_disconnect(exc, self._driver, cursor)
            if lost:
                self._connection.invalidate(exc)
            raise sa.exc.DBAPIError.instance(sql, params, exc, self._errors, connection_invalidated=lost) from exc
        return cursor

    def execute_many(self, statement: Sql, rows: list[dict[str, Any]]) -> Any:
        """Run ``statement`` once per row of parameters, in as few round trips as the driver manages;
        the cursor's rowcount is the total."""
        cursor = self._driver.cursor()
        sql = statement.by_dialect[self.dialect]
        try:
            cursor.executemany(sql, rows)
        except self._errors as exc:
            raise sa.exc.DBAPIError.instance(sql, rows, exc, self._errors) from exc
        return cursor

    def record(
        self, contact_id: int, reason: str, from_operator_id: int | None, to_operator_id: int | None, at: Any
    ) -> None:
        """Add one event to the contact's history (``at`` as ``time()`` gives it)."""
        params = {
            "contact_id": contact_id,
            "reason": reason,
            "from_operator_id": from_operator_id,
            "to_operator_id": to_operator_id,
            "created_at": at,
            "actor": self.actor,
        }
        self.execute(INSERT_EVENT, params)

    def record_assignments(self, reason: str, assignments: list[dict[str, Any]]) -> None:
        """Add one event per ``{"id", "operator_id", "assigned_at"}`` (a contact given its first operator)."""
        rows = [
            {
                "contact_id": a["id"],
                "reason": reason,
                "from_operator_id": None,
                "to_operator_id": a["operator_id"],
                "created_at": a["assigned_at"],
                "actor": self.actor,
            }
            for a in assignments
        ]
        self.execute_many(INSERT_EVENT, rows)

    def time(self, value: datetime) -> Any:
        """A UTC timestamp as the column stores it: SQLAlchemy's text format on SQLite."""
        if self.dialect == "sqlite":
            return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        return value


def lock_lead(tx: Tx, lead_id: int) -> None:
    """Take now the lock on the lead's row that storing its contact takes anyway (PostgreSQL).

    Every registration then locks the lead before an operator, in that order:
    one that waits for an operator never holds up one filling the lead in.
    """
    if tx.dialect != "sqlite":
        tx.execute(LOCK_LEAD, {"id": lead_id})


def lock_contact(tx: Tx, contact_id: int) -> ContactRecord | None:
    """The contact as it is now, its row locked until the transaction ends (PostgreSQL); None if unknown.

    Taken before any operator's row: contacts first, then operators, is the
    one order every path that changes a contact locks in. SQLite: the write
    lock already serialises writers.
    """
    row = tx.execute(GET_CONTACT if tx.dialect == "sqlite" else LOCK_CONTACT, {"id": contact_id}).fetchone()
    return contact_record(row) if row else None


def lock_operators(tx: Tx, operator_ids: Iterable[int | None]) -> None:
    """Lock these operators' rows in id order (PostgreSQL), so that requests that each change
    several operators queue instead of deadlocking. SQLite: the write lock already serialises."""
    if tx.dialect != "sqlite":
        for operator_id in sorted({i for i in operator_ids if i is not None}):
            tx.execute(LOCK_OPERATOR, {"id": operator_id})


def lock_source(tx: Tx, source_id: int) -> None:
    """Serialise changes to one source's weights and history: a row lock on PostgreSQL.

    On SQLite the write transaction already holds the database's only write lock.
    """
    if tx.dialect != "sqlite":
        tx.execute(LOCK_SOURCE, {"id": source_id})


def from_db_time(value: datetime | str | None) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


SOURCE_BY_NAME = Sql("SELECT id, name, strategy, sticky FROM sources WHERE name = :name")
SOURCE_BY_ID = Sql("SELECT id, name, strategy, sticky FROM sources WHERE id = :id")
# PostgreSQL only: SQLite's write transaction already excludes every other writer.
LOCK_SOURCE = Sql("SELECT id FROM sources WHERE id = :id FOR UPDATE")
LOCK_LEAD = Sql("SELECT id FROM leads WHERE id = :id FOR KEY SHARE")
LOCK_OPERATOR = Sql("SELECT id FROM operators WHERE id = :id FOR UPDATE")

LEAD_COLUMNS = "id, external_id, phone, email, name, created_at"
# An absent identifier is passed as NULL, and "column = NULL" matches nothing.
# An address is matched by its email_key (leadcrm.identity.email_key), whatever its case.
FIND_LEADS = Sql(
    f"SELECT {LEAD_COLUMNS} FROM leads WHERE external_id = :external_id OR phone = :phone OR email_key = :email_key"
)
# Nothing is inserted (no row returned) when a concurrent request stored one
# of these identifiers first.
INSERT_LEAD = Sql(
    "INSERT INTO leads (external_id, phone, email, email_key, name, created_at) "
    "VALUES (:external_id, :phone, :email, :email_key, :name, :created_at) ON CONFLICT DO NOTHING RETURNING id"
)

# The operators a source's next contact may go to: serving it, active, with
# room. (Picking among them in SQL with window functions measured slower on
# SQLite than these rows picked in Python: 1.7 ms vs 1.0 ms for 1,000.)
ELIGIBLE = Sql(
    """SELECT so.operator_id, so.weight, so.assigned_total
       FROM source_operators so JOIN operators o ON o.id = so.operator_id
       WHERE so.source_id = :source_id AND so.weight > 0 AND o.is_active = :active
         AND o.active_leads < o.max_active_leads
       ORDER BY so.operator_id"""
)
# How many contacts the operators eligible for a source could take now, in all.
ROOM = Sql(
    """SELECT coalesce(sum(o.max_active_leads - o.active_leads), 0)
       FROM source_operators so JOIN operators o ON o.id = so.operator_id
       WHERE so.source_id = :source_id AND so.weight > 0 AND o.is_active = :active
         AND o.active_leads < o.max_active_leads"""
)
# The conditional claim: no row comes back when the operator is full or inactive.
CLAIM = Sql(
    """UPDATE operators SET active_leads = active_leads + 1
       WHERE id = :id AND is_active = :active AND active_leads < max_active_leads
       RETURNING id, name, is_active, max_active_leads, active_leads"""
)
# sticky: the operator of the lead's latest assigned contact through the source ...
LATEST_OPERATOR = Sql(
    "SELECT operator_id FROM contacts WHERE lead_id = :lead_id AND source_id = :source_id "
    "AND operator_id IS NOT NULL ORDER BY id DESC LIMIT 1"
)
# ... claimed only if it still serves the source, is active and has room.
CLAIM_IF_SERVING = Sql(
    """UPDATE operators SET active_leads = active_leads + 1
       WHERE id = :id AND is_active = :active AND active_leads < max_active_leads
         AND EXISTS (SELECT 1 FROM source_operators
                     WHERE source_id = :source_id AND operator_id = :id AND weight > 0)
       RETURNING id, name, is_active, max_active_leads, active_leads"""
)
COUNT_ASSIGNMENT = Sql(
    "UPDATE source_operators SET assigned_total = assigned_total + 1 "
    "WHERE source_id = :source_id AND operator_id = :operator_id"
)
INSERT_CONTACT = Sql(
    "INSERT INTO contacts (lead_id, source_id, operator_id, status, message, created_at, assigned_at) "
    "VALUES (:lead_id, :source_id, :operator_id, 'open', :message, :created_at, :assigned_at) RETURNING id"
)

# The waiting queue: a source's oldest open contacts without an operator. Its
# WHERE is the predicate of the partial index ix_contacts_waiting (source_id,
# created_at, id), written the same way, so both databases read the oldest
# entry of the index instead of sorting the source's contacts
# (tests/test_distribution.py checks the plans). On PostgreSQL the rows are
# locked, and those locked by a concurrent drain are skipped.
OLDEST_WAITING = Sql(
    "SELECT id FROM contacts WHERE source_id = :source_id AND operator_id IS NULL AND status = 'open' "
    "ORDER BY created_at, id LIMIT :limit"
)
OLDEST_WAITING_LOCKED = Sql(OLDEST_WAITING.text + " FOR UPDATE SKIP LOCKED")
ASSIGN_WAITING = Sql(
    "UPDATE contacts SET operator_id = :operator_id, assigned_at = :assigned_at "
    "WHERE id = :id AND operator_id IS NULL AND status = 'open'"
)
SOURCES_SERVED_BY = Sql("SELECT source_id FROM source_operators WHERE operator_id = :id AND weight > 0")
# One probe of the waiting-queue index per source, not a pass over every waiting contact.
SOURCES_WITH_WAITING = Sql(
    "SELECT s.id FROM sources s WHERE EXISTS (SELECT 1 FROM contacts c WHERE c.source_id = s.id "
    "AND c.operator_id IS NULL AND c.status = 'open') ORDER BY s.id"
)

# The history: one row per change of a contact's assignment.
INSERT_EVENT = Sql(
    "INSERT INTO contact_events (contact_id, reason, from_operator_id, to_operator_id, created_at, actor) "
    "VALUES (:contact_id, :reason, :from_operator_id, :to_operator_id, :created_at, :actor)"
)

# Idempotency keys (leadcrm/idempotency.py).
FORGET_EXPIRED_KEY = Sql("DELETE FROM idempotency_keys WHERE caller = :caller AND key = :key AND created_at < :before")
FORGET_EXPIRED_KEYS = Sql("DELETE FROM idempotency_keys WHERE created_at < :before")
CLAIM_KEY = Sql(
    "INSERT INTO idempotency_keys (caller, key, request_hash, created_at) "
    "VALUES (:caller, :key, :request_hash, :created_at) ON CONFLICT DO NOTHING RETURNING key"
)
GET_KEY = Sql(
    "SELECT request_hash, status_code, response_body, location FROM idempotency_keys "
    "WHERE caller = :caller AND key = :key"
)
REMEMBER_ANSWER = Sql(
    "UPDATE idempotency_keys SET status_code = :status_code, response_body = :body, location = :location "
    "WHERE caller = :caller AND key = :key"
)

# Manual work: a supervisor moves an open contact, or reopens a closed one.
CLAIM_PAST_LIMIT = Sql(
    """UPDATE operators SET active_leads = active_leads + 1 WHERE id = :id AND is_active = :active
       RETURNING id, name, is_active, max_active_leads, active_leads"""
)
MOVE_CONTACT = Sql(
    "UPDATE contacts SET operator_id = :operator_id, assigned_at = :assigned_at "
    "WHERE id = :id AND status = 'open' AND operator_id IS NOT DISTINCT FROM :previous"
)
OPERATOR_STATE = Sql("SELECT is_active, active_leads, max_active_leads FROM operators WHERE id = :id")
REOPEN_CONTACT = Sql(
    "UPDATE contacts SET status = 'open', closed_at = NULL, operator_id = NULL, assigned_at = NULL "
    "WHERE id = :id AND status = 'closed'"
)

CONTACT_COLUMNS = "id, lead_id, source_id, operator_id, status, message, created_at, assigned_at, closed_at"
CLOSE_CONTACT = Sql(
    f"UPDATE contacts SET status = 'closed', closed_at = :closed_at "
    f"WHERE id = :id AND status = 'open' RETURNING {CONTACT_COLUMNS}"
)
GET_CONTACT = Sql(f"SELECT {CONTACT_COLUMNS} FROM contacts WHERE id = :id")
LOCK_CONTACT = Sql(GET_CONTACT.text + " FOR UPDATE")
# Gives back the slot of a contact that stopped counting; never below zero.
RELEASE_SLOT = Sql("UPDATE operators SET active_leads = active_leads - 1 WHERE id = :id AND active_leads > 0")


def lead_record(row: tuple) -> LeadRecord:
    return LeadRecord(*row[:5], created_at=from_db_time(row[5]))


def contact_record(row: tuple) -> ContactRecord:
    return ContactRecord(*row[:6], *(from_db_time(value) for value in row[6:9]))


def operator_record(row: tuple) -> OperatorRecord:
    return OperatorRecord(row[0], row[1], bool(row[2]), row[3], row[4])
