"""The engine's data layer: its hand-written SQL, behind named functions that return typed records.

Registration is leadcrm's hot path, and on SQLite all writers take turns on
one lock, so whatever runs inside the write transaction limits throughput.
SQLAlchemy Core costs about 40 us of Python per statement on top of the
driver's 7 us (bench/results.md); the statements here run directly on the
DBAPI connection that SQLAlchemy manages, inside the session's transaction
(``Tx``). The engine (``leadcrm.distribution`` and the domain modules beside
it) calls the functions below with the ``Tx`` of its unit of work and gets
records back: it never sees parameters, rows or dialects. What the pages
list and the API reads go through the ORM (``leadcrm.queries``).

Statements are written once with ``:name`` placeholders, translated to each
driver's style at import; they use only SQL that SQLite (3.35+) and
PostgreSQL share (RETURNING, ON CONFLICT DO NOTHING). Where the databases
differ (row locks), the functions here choose.
"""

import json
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import combinations
from operator import itemgetter
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, scoped_session

from leadcrm.database import UndeclaredWrite
from leadcrm.models import UTCDateTime, from_stored_time, offer_deadline, utcnow
from leadcrm.vocabulary import ContactStatus, EventReason, EventType, Presence

# --- records ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SourceRecord:
    id: int
    name: str
    strategy: str
    sticky: bool
    offer_timeout_seconds: int | None = None
    offer_misses_away: int = 3

    def offer_deadline(self, now: datetime) -> datetime | None:
        """When a contact routed now must be taken by its operator; None when the source makes no offers."""
        return offer_deadline(self.offer_timeout_seconds, now)


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
    presence: str
    idle_away_minutes: int | None
    last_seen_at: datetime | None
    away_reason: str | None = None
    shift_from: datetime | None = None
    shift_until: datetime | None = None

    @property
    def past_limit(self) -> bool:
        """More open contacts than its limit allows (given past it by hand, or its limit lowered)."""
        return self.active_leads > self.max_active_leads

    def idle(self, now: datetime) -> bool:
        """Away because its inbox has not been open for ``idle_away_minutes`` (never, with the setting off)."""
        return is_idle(self.idle_away_minutes, self.last_seen_at, now)

    def on_shift(self, now: datetime) -> bool:
        """Within its stretch on shift (working hours minus absences; always, with neither)."""
        return is_on_shift(self.shift_from, self.shift_until, now)

    def at_work(self, now: datetime) -> bool:
        """Active, available, not idle and on shift: it may take contacts now, if it has room (the claims' rule)."""
        return is_at_work(
            self.is_active,
            self.presence,
            self.idle_away_minutes,
            self.last_seen_at,
            now,
            shift_from=self.shift_from,
            shift_until=self.shift_until,
        )


def is_at_work(
    is_active: bool,
    presence: str,
    idle_away_minutes: int | None,
    last_seen_at: datetime | None,
    now: datetime,
    *,
    shift_from: datetime | None,
    shift_until: datetime | None,
) -> bool:
    """The claims' at-work rule (``_at_work``), in Python, for what the pages and the API show."""
    return (
        is_active
        and presence == Presence.AVAILABLE
        and not is_idle(idle_away_minutes, last_seen_at, now)
        and is_on_shift(shift_from, shift_until, now)
    )


def is_on_shift(shift_from: datetime | None, shift_until: datetime | None, now: datetime) -> bool:
    """The claims' shift rule, in Python: ``shift_from <= now < shift_until``, a NULL end being open."""
    return (shift_from is None or shift_from <= now) and (shift_until is None or now < shift_until)


def is_idle(idle_away_minutes: int | None, last_seen_at: datetime | None, now: datetime) -> bool:
    """The claims' idle rule, in Python: the setting is on and the last sign of life is older (or none)."""
    if idle_away_minutes is None:
        return False
    return last_seen_at is None or last_seen_at < now - timedelta(minutes=idle_away_minutes)


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
    offered_until: datetime | None = None
    accepted_at: datetime | None = None


class EligibleOperators:
    """The operators a source's next contact may go to, in id order: each one's weight and its
    history for the source (assigned_total), read by column and an operator picked by position.

    Columns rather than one record per operator: they are built in C from the rows, where a
    record per operator costs about 1 us on the hot path (1 ms for 1,000 operators).
    """

    __slots__ = ("_rows",)

    def __init__(self, rows: list[tuple[int, int, int]]) -> None:
        self._rows = rows  # (operator_id, weight, assigned_total), as ELIGIBLE selects them

    def __len__(self) -> int:
        return len(self._rows)

    def weights(self) -> list[int]:
        return list(map(_WEIGHT, self._rows))

    def assigned_totals(self) -> list[int]:
        return list(map(_ASSIGNED_TOTAL, self._rows))

    def operator_id(self, position: int) -> int:
        """The id of the operator at ``position`` of ``weights()`` and ``assigned_totals()``."""
        return self._rows[position][0]

    def without(self, operator_id: int) -> "EligibleOperators | None":
        """The same operators but ``operator_id`` (one that let the contact's offer pass); None if nobody is left."""
        rows = [row for row in self._rows if row[0] != operator_id]
        return EligibleOperators(rows) if rows else None


_WEIGHT, _ASSIGNED_TOTAL = itemgetter(1), itemgetter(2)


@dataclass(frozen=True, slots=True)
class Weight:
    """One operator's weight for a source."""

    operator_id: int
    weight: int


@dataclass(frozen=True, slots=True)
class Assignment:
    """A waiting contact given its first operator."""

    contact_id: int
    operator_id: int
    assigned_at: datetime
    offered_until: datetime | None = None  # its source makes offers: to be taken before then


@dataclass(frozen=True, slots=True)
class StoredKey:
    """An Idempotency-Key as stored: the request it was taken for, and the answer once there is one."""

    request_hash: str
    status_code: int | None
    response_body: str | None
    location: str | None


# --- the transaction ------------------------------------------------------------------


class Sql:
    """One statement with ``:name`` placeholders, in each driver's parameter style.

    ``postgresql`` is the statement's PostgreSQL text where the two databases
    spell it differently (time arithmetic); ``text`` is then SQLite's.
    """

    def __init__(self, text: str, *, postgresql: str | None = None) -> None:
        self.text = " ".join(text.split())
        self.postgresql_text = " ".join((postgresql or text).split())
        self.by_dialect = {
            "sqlite": self.text,
            "postgresql": re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", self.postgresql_text),
        }


# Key in ``session.info`` naming who acts in the current unit of work (see ``act_as``).
ACTOR = "leadcrm_actor"
# The column type of every timestamp: its bind processor is the stored form (see Tx.stored).
_TIMESTAMP = UTCDateTime()


def _as_is(value: Any) -> Any:
    return value


def act_as(session: Session | scoped_session[Session], actor: str | None) -> None:
    """Record ``actor`` in the history rows this session writes from now on."""
    session.info[ACTOR] = actor


class Tx:
    """The session's current transaction, seen at the driver level.

    Built once per unit of work (``Tx.of(session)``) and passed down:
    going through the session for every statement would cost more than the
    statements.
    """

    __slots__ = ("dialect", "actor", "info", "row_locks", "_connection", "_sa_dialect", "_driver", "_errors", "_stored")

    def __init__(self, session: Session) -> None:
        conn = session.connection()
        self._connection: sa.Connection | None = conn
        self._set_up(conn.dialect, conn.connection.driver_connection, session.info)

    def _set_up(self, dialect: sa.Dialect, driver: Any, info: dict[Any, Any]) -> None:
        self.dialect: str = dialect.name
        # SQLite's write transaction already excludes every other writer; PostgreSQL locks rows.
        self.row_locks = self.dialect != "sqlite"
        self._sa_dialect = dialect
        self._driver: Any = driver
        self._errors = dialect.loaded_dbapi.Error
        # A timestamp as the column stores it: exactly what UTCDateTime writes through SQLAlchemy.
        self._stored = _TIMESTAMP.dialect_impl(dialect).bind_processor(dialect) or _as_is
        # Who makes this unit of work's changes ("user:ann", "token:crm (#2)"), for the history.
        self.actor: str | None = info.get(ACTOR)
        # The session's settings for its units of work (distribution.limit_drains).
        self.info: dict[Any, Any] = info

    @classmethod
    def of(cls, session: "Session | scoped_session[Session] | Tx") -> "Tx":
        """The Tx of the session's current transaction (beginning one if needed); a Tx as it is."""
        if isinstance(session, Tx):
            return session
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
            lost = self._sa_dialect.is_disconnect(exc, self._driver, cursor)
            if lost:
                self._invalidate(exc)
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

    def stored(self, value: datetime) -> Any:
        """A UTC timestamp as its column stores it (SQLAlchemy's text format on SQLite)."""
        return self._stored(value)

    def _invalidate(self, exc: BaseException) -> None:
        assert self._connection is not None
        self._connection.invalidate(exc)

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """Undo the statements of the ``with`` body, and only them, if it raises."""
        assert self._connection is not None
        with self._connection.begin_nested():
            yield


class DriverTx(Tx):
    """A unit of work on a pooled driver connection of its own, beside the ORM session: the hot path.

    No Session and no SQLAlchemy transaction events: BEGIN and COMMIT are
    the driver's (measured: the session-managed write transaction cost
    0.4 ms of a registration's 1.9, of which BEGIN IMMEDIATE and COMMIT
    need 0.07). Before ``begin_write`` a statement is a read: on SQLite it
    runs as its own read transaction (autocommit, no write lock); on
    PostgreSQL the first statement begins the transaction that the write
    then continues, so a read before the write (the token check) costs no
    transaction of its own. ``close`` rolls back what was not committed and
    gives the connection back to the pool.
    """

    __slots__ = ("_pooled", "_writing", "_changes_at_start")

    def __init__(self, engine: sa.Engine, info: dict[Any, Any]) -> None:
        self._connection = None
        self._pooled = engine.raw_connection()
        self._writing = False
        self._set_up(engine.dialect, self._pooled.driver_connection, info)
        if self.dialect == "postgresql" and self._driver.read_only:
            self._driver.read_only = False  # left by a read-only request of the session's (database.reads_only)
        # SQLite's own count of rows this connection changed: a read before begin_write changes none.
        self._changes_at_start: int | None = self._driver.total_changes if self.dialect == "sqlite" else None

    def _invalidate(self, exc: BaseException) -> None:
        self._pooled.invalidate(exc)

    def _driver_call(self, what: str, call: Any) -> None:
        """BEGIN, COMMIT or ROLLBACK at the driver; its errors come out as SQLAlchemy's, as execute's do."""
        try:
            call()
        except self._errors as exc:
            lost = self._sa_dialect.is_disconnect(exc, self._driver, None)
            if lost:
                self._invalidate(exc)
            raise sa.exc.DBAPIError.instance(what, None, exc, self._errors, connection_invalidated=lost) from exc

    def begin_write(self) -> None:
        """From here on the unit writes. SQLite: take the write lock now, waiting for it as
        ``database.begin_write`` does (a 503 when it does not come); PostgreSQL: nothing changes."""
        if self._writing:
            return
        if self.dialect == "sqlite":
            if self._driver.total_changes != self._changes_at_start:
                raise UndeclaredWrite()  # it wrote in autocommit, without the write lock: a bug in the view
            self._driver.expect_no_writes(False)
            self._driver.lock_for_write()  # raises database.write_lock_busy when it gives up
            try:
                self._driver_call("BEGIN IMMEDIATE", lambda: self._driver.execute("BEGIN IMMEDIATE"))
            except BaseException:
                self._driver.rollback()  # gives the file lock back
                raise
        self._writing = True

    def commit(self) -> None:
        """Commit the write; a unit that never declared one (``begin_write``) is refused, rolled back at ``close``."""
        if not self._writing:
            raise UndeclaredWrite()
        self._driver_call("COMMIT", self._driver.commit)
        self._writing = False

    def close(self) -> None:
        """Roll back what is not committed and give the connection back to the pool (never raises)."""
        try:
            if self._pooled.is_valid:
                self._driver.rollback()
        except self._errors:
            self._pooled.invalidate()
        finally:
            self._pooled.close()

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        self.execute(SAVEPOINT, {})
        try:
            yield
        except BaseException:
            self.execute(ROLLBACK_TO_SAVEPOINT, {})
            raise
        self.execute(RELEASE_SAVEPOINT, {})


SAVEPOINT = Sql("SAVEPOINT leadcrm_unit")
ROLLBACK_TO_SAVEPOINT = Sql("ROLLBACK TO SAVEPOINT leadcrm_unit")
RELEASE_SAVEPOINT = Sql("RELEASE SAVEPOINT leadcrm_unit")


# --- API tokens ----------------------------------------------------------------------

TOKEN_BY_HASH = Sql(
    "SELECT id, name, scope, last_used_at FROM api_tokens WHERE token_hash = :token_hash AND revoked_at IS NULL"
)


@dataclass(frozen=True, slots=True)
class TokenRecord:
    id: int
    name: str
    scope: str
    last_used_at: datetime | None


def token_by_hash(tx: Tx, token_hash: str) -> TokenRecord | None:
    """The live (not revoked) token whose secret has this SHA-256, or None: one prebuilt statement."""
    row = tx.execute(TOKEN_BY_HASH, {"token_hash": token_hash}).fetchone()
    return TokenRecord(row[0], row[1], row[2], from_stored_time(row[3])) if row else None


# --- sources and weights --------------------------------------------------------------

SOURCE_COLUMNS = "id, name, strategy, sticky, offer_timeout_seconds, offer_misses_away"
SOURCE_BY_NAME = Sql(f"SELECT {SOURCE_COLUMNS} FROM sources WHERE name = :name")
SOURCE_BY_ID = Sql(f"SELECT {SOURCE_COLUMNS} FROM sources WHERE id = :id")
LOCK_SOURCE = Sql("SELECT id FROM sources WHERE id = :id FOR UPDATE")
SOURCE_WEIGHTS = Sql(
    "SELECT operator_id, weight FROM source_operators WHERE source_id = :source_id AND weight > 0 ORDER BY operator_id"
)
# Every row, weight 0 included (operators that served the source once).
ALL_WEIGHTS = Sql("SELECT operator_id, weight FROM source_operators WHERE source_id = :source_id")
UPDATE_WEIGHT = Sql(
    "UPDATE source_operators SET weight = :weight WHERE source_id = :source_id AND operator_id = :operator_id"
)
INSERT_WEIGHT = Sql(
    "INSERT INTO source_operators (source_id, operator_id, weight, assigned_total) "
    "VALUES (:source_id, :operator_id, :weight, 0)"
)
SOURCES_SERVED_BY = Sql("SELECT source_id FROM source_operators WHERE operator_id = :id AND weight > 0")
# One probe of the waiting-queue index per source, not a pass over every waiting contact.
SOURCES_WITH_WAITING = Sql(
    "SELECT s.id FROM sources s WHERE EXISTS (SELECT 1 FROM contacts c WHERE c.source_id = s.id "
    "AND c.operator_id IS NULL AND c.status = 'open') ORDER BY s.id"
)


def _source(row: Any) -> SourceRecord | None:
    return SourceRecord(row[0], row[1], row[2], bool(row[3]), row[4], row[5]) if row else None


def source_by_id(tx: Tx, source_id: int) -> SourceRecord | None:
    return _source(tx.execute(SOURCE_BY_ID, {"id": source_id}).fetchone())


def source_by_name(tx: Tx, name: str) -> SourceRecord | None:
    return _source(tx.execute(SOURCE_BY_NAME, {"name": name}).fetchone())


def lock_source(tx: Tx, source_id: int) -> None:
    """Serialise changes to one source's weights and history: a row lock on PostgreSQL.

    On SQLite the write transaction already holds the database's only write lock.
    """
    if tx.row_locks:
        tx.execute(LOCK_SOURCE, {"id": source_id})


def source_weights(tx: Tx, source_id: int) -> list[Weight]:
    """The operators serving a source (weight > 0), by operator id."""
    return [Weight(operator_id, weight) for operator_id, weight in tx.execute(SOURCE_WEIGHTS, {"source_id": source_id})]


def all_weights(tx: Tx, source_id: int) -> dict[int, int]:
    """Every operator's weight for the source, 0 for those that no longer serve it."""
    return dict(tx.execute(ALL_WEIGHTS, {"source_id": source_id}).fetchall())


def store_weights(tx: Tx, source_id: int, changed: dict[int, int], added: dict[int, int]) -> None:
    """Write new weights: ``changed`` for operators that have a row for the source, ``added`` for new ones."""
    if changed:
        rows = [{"source_id": source_id, "operator_id": op, "weight": w} for op, w in changed.items()]
        tx.execute_many(UPDATE_WEIGHT, rows)
    if added:
        rows = [{"source_id": source_id, "operator_id": op, "weight": w} for op, w in added.items()]
        tx.execute_many(INSERT_WEIGHT, rows)


def sources_served_by(tx: Tx, operator_id: int) -> list[int]:
    """The ids of the sources the operator serves (weight > 0)."""
    return [row[0] for row in tx.execute(SOURCES_SERVED_BY, {"id": operator_id})]


def sources_with_waiting(tx: Tx) -> list[int]:
    """The ids of the sources that have waiting contacts, in order."""
    return [row[0] for row in tx.execute(SOURCES_WITH_WAITING, {})]


# --- operators: eligibility and the claims --------------------------------------------

OPERATOR_COLUMNS = (
    "id, name, is_active, max_active_leads, active_leads, presence, idle_away_minutes, last_seen_at, "
    "away_reason, shift_from, shift_until"
)
_OPERATOR_WIDTH = len(OPERATOR_COLUMNS.split(","))


def _at_work(table: str, dialect: str) -> str:
    """The condition that the operator row ``table`` may take contacts now, its load aside: active,
    available, not idle (its last sign of life no older than its idle setting, if one is on), and
    on shift (within its stretch from its working hours and absences, ``leadcrm.schedules``).

    Idleness and the shift are decided here, at the claim, from stored times: a shift that ended
    a moment ago stops the claim even before the worker looks at the next one. ``:now`` is the
    unit of work's time, as a timestamp column stores it.
    """
    now = {"sqlite": ":now", "postgresql": "CAST(:now AS TIMESTAMPTZ)"}[dialect]
    seen_since = {
        # SQLite keeps timestamps as text (SQLAlchemy's format, which sorts as time does).
        "sqlite": f"strftime('%Y-%m-%d %H:%M:%f', :now, '-' || {table}.idle_away_minutes || ' minutes')",
        "postgresql": f"{now} - make_interval(mins => {table}.idle_away_minutes)",
    }[dialect]
    return (
        f"{table}.is_active = :active AND {table}.presence = '{Presence.AVAILABLE}' "
        f"AND ({table}.idle_away_minutes IS NULL OR {table}.last_seen_at >= {seen_since}) "
        f"AND ({table}.shift_from IS NULL OR {table}.shift_from <= {now}) "
        f"AND ({table}.shift_until IS NULL OR {table}.shift_until > {now})"
    )


def _per_dialect(template: str, table: str) -> Sql:
    """A statement whose ``{at_work}`` is ``_at_work(table)``, spelled for each database."""
    return Sql(
        template.format(at_work=_at_work(table, "sqlite")),
        postgresql=template.format(at_work=_at_work(table, "postgresql")),
    )


# The operators a source's next contact may go to: serving it, at work, with
# room. (Picking among them in SQL with window functions measured slower on
# SQLite than these rows picked in Python: 1.7 ms vs 1.0 ms for 1,000.)
ELIGIBLE = _per_dialect(
    """SELECT so.operator_id, so.weight, so.assigned_total
       FROM source_operators so JOIN operators o ON o.id = so.operator_id
       WHERE so.source_id = :source_id AND so.weight > 0 AND {at_work}
         AND o.active_leads < o.max_active_leads
       ORDER BY so.operator_id""",
    "o",
)
# How many contacts the operators eligible for a source could take now, in all.
ROOM = _per_dialect(
    """SELECT coalesce(sum(o.max_active_leads - o.active_leads), 0)
       FROM source_operators so JOIN operators o ON o.id = so.operator_id
       WHERE so.source_id = :source_id AND so.weight > 0 AND {at_work}
         AND o.active_leads < o.max_active_leads""",
    "o",
)
# The conditional claim of routing: no row comes back when the operator is full,
# inactive, away or idle. One statement checks all of it, so a contact never goes
# to someone who went away a moment earlier on another server (PostgreSQL re-checks
# the condition on the row it waited for).
CLAIM = _per_dialect(
    f"""UPDATE operators SET active_leads = active_leads + 1
       WHERE id = :id AND {{at_work}} AND active_leads < max_active_leads
       RETURNING {OPERATOR_COLUMNS}""",
    "operators",
)
# A supervisor assigning by hand: active, with room. Presence and shifts do not stop a
# supervisor's choice (the picker shows them); the override goes past the limit too.
CLAIM_BY_HAND = Sql(
    f"""UPDATE operators SET active_leads = active_leads + 1
       WHERE id = :id AND is_active = :active AND active_leads < max_active_leads
       RETURNING {OPERATOR_COLUMNS}"""
)
CLAIM_PAST_LIMIT = Sql(
    f"""UPDATE operators SET active_leads = active_leads + 1 WHERE id = :id AND is_active = :active
       RETURNING {OPERATOR_COLUMNS}"""
)
# Claimed only if it still serves the source, is at work and has room (sticky, reopen).
CLAIM_IF_SERVING = _per_dialect(
    f"""UPDATE operators SET active_leads = active_leads + 1
       WHERE id = :id AND {{at_work}} AND active_leads < max_active_leads
         AND EXISTS (SELECT 1 FROM source_operators
                     WHERE source_id = :source_id AND operator_id = :id AND weight > 0)
       RETURNING {OPERATOR_COLUMNS}""",
    "operators",
)
COUNT_ASSIGNMENT = Sql(
    "UPDATE source_operators SET assigned_total = assigned_total + 1 "
    "WHERE source_id = :source_id AND operator_id = :operator_id"
)
# PostgreSQL: the claim and its count in one round trip. The count's UPDATE reads
# the claim's RETURNING, so it runs after it (the operator's row is locked first,
# as in the two statements SQLite runs) and only when the claim took a slot.
CLAIM_AND_COUNT = Sql(
    f"""WITH claimed AS ({CLAIM.postgresql_text}),
            counted AS (UPDATE source_operators SET assigned_total = assigned_total + 1
                        WHERE source_id = :source_id AND operator_id IN (SELECT id FROM claimed)
                        RETURNING operator_id)
       SELECT {OPERATOR_COLUMNS}, (SELECT count(*) FROM counted) FROM claimed"""
)
# Gives back the slot of a contact that stopped counting; never below zero.
RELEASE_SLOT = Sql("UPDATE operators SET active_leads = active_leads - 1 WHERE id = :id AND active_leads > 0")
OPERATOR_BY_ID = Sql(f"SELECT {OPERATOR_COLUMNS} FROM operators WHERE id = :id")
LOCK_OPERATOR = Sql(OPERATOR_BY_ID.text + " FOR UPDATE")
# A field left out (NULL) keeps its value: none of these columns holds NULL. The idle
# setting does (NULL is off), so whether it changes is a parameter of its own.
UPDATE_OPERATOR = Sql(
    f"""UPDATE operators SET name = coalesce(:name, name), is_active = coalesce(:is_active, is_active),
         max_active_leads = coalesce(:max_active_leads, max_active_leads),
         presence = coalesce(:presence, presence),
         away_reason = CASE WHEN :presence IS NULL THEN away_reason ELSE CAST(:away_reason AS VARCHAR) END,
         idle_away_minutes = CASE WHEN :set_idle THEN CAST(:idle_away_minutes AS INTEGER) ELSE idle_away_minutes END
       WHERE id = :id RETURNING {OPERATOR_COLUMNS}"""
)
# The inbox open: the operator's sign of life.
MARK_SEEN = Sql(f"UPDATE operators SET last_seen_at = :now WHERE id = :id RETURNING {OPERATOR_COLUMNS}")
INSERT_OPERATOR_EVENT = Sql(
    "INSERT INTO operator_events (operator_id, field, value, actor, created_at) "
    "VALUES (:operator_id, :field, :value, :actor, :created_at)"
)


def _operator(row: Any) -> OperatorRecord | None:
    if not row:
        return None
    return OperatorRecord(
        row[0],
        row[1],
        bool(row[2]),
        row[3],
        row[4],
        row[5],
        row[6],
        from_stored_time(row[7]),
        row[8],
        from_stored_time(row[9]),
        from_stored_time(row[10]),
    )


def _now(tx: Tx) -> Any:
    """The time the at-work condition is decided at: now, as a timestamp column stores it."""
    return tx.stored(utcnow())


def eligible_operators(tx: Tx, source_id: int) -> EligibleOperators | None:
    """The operators the source's next contact may go to (serving it, at work, with room), by id; None if nobody."""
    rows = tx.execute(ELIGIBLE, {"source_id": source_id, "active": True, "now": _now(tx)}).fetchall()
    return EligibleOperators(rows) if rows else None


def eligible_operator_ids(tx: Tx, source_id: int) -> list[int]:
    """The ids of ``eligible_operators`` (for locking them in id order before claiming one)."""
    eligible = eligible_operators(tx, source_id)
    return [eligible.operator_id(i) for i in range(len(eligible))] if eligible is not None else []


def room(tx: Tx, source_id: int) -> int:
    """How many contacts the operators eligible for the source could take now, in all."""
    return tx.execute(ROOM, {"source_id": source_id, "active": True, "now": _now(tx)}).fetchone()[0]


def claim_operator(tx: Tx, operator_id: int) -> OperatorRecord | None:
    """Routing's claim: take one slot of the operator's limit, if it is at work (active, available,
    not idle) and has one."""
    return _operator(tx.execute(CLAIM, {"id": operator_id, "active": True, "now": _now(tx)}).fetchone())


def claim_by_hand(tx: Tx, operator_id: int) -> OperatorRecord | None:
    """A supervisor's claim: take one slot of the operator's limit, if it is active and has one."""
    return _operator(tx.execute(CLAIM_BY_HAND, {"id": operator_id, "active": True}).fetchone())


def claim_past_limit(tx: Tx, operator_id: int) -> OperatorRecord | None:
    """Take one slot of the operator's load whatever its limit, if it is active."""
    return _operator(tx.execute(CLAIM_PAST_LIMIT, {"id": operator_id, "active": True}).fetchone())


def claim_if_serving(tx: Tx, operator_id: int, source_id: int) -> OperatorRecord | None:
    """Take one slot of the operator's limit if it is active, has one, and still serves the source."""
    params = {"id": operator_id, "active": True, "source_id": source_id, "now": _now(tx)}
    return _operator(tx.execute(CLAIM_IF_SERVING, params).fetchone())


def claim_and_count(tx: Tx, operator_id: int, source_id: int) -> tuple[OperatorRecord, bool] | None:
    """``claim_operator``, and when it takes a slot, ``count_assignment`` for the source: the
    operator and whether its row for the source was counted; None if nothing was claimed."""
    if tx.dialect == "postgresql":
        params = {"id": operator_id, "active": True, "source_id": source_id, "now": _now(tx)}
        row = tx.execute(CLAIM_AND_COUNT, params).fetchone()
        if row is None:
            return None
        operator = _operator(row[:_OPERATOR_WIDTH])
        assert operator is not None
        return operator, row[_OPERATOR_WIDTH] == 1
    operator = claim_operator(tx, operator_id)
    if operator is None:
        return None
    return operator, count_assignment(tx, source_id, operator_id)


def count_assignment(tx: Tx, source_id: int, operator_id: int) -> bool:
    """Add one to the operator's assigned_total for the source; False if it has no row for the source."""
    return tx.execute(COUNT_ASSIGNMENT, {"source_id": source_id, "operator_id": operator_id}).rowcount == 1


def release_slot(tx: Tx, operator_id: int) -> bool:
    """Give back one slot of the operator's load; False if the load was already 0 (it stays 0)."""
    return tx.execute(RELEASE_SLOT, {"id": operator_id}).rowcount == 1


def operator_by_id(tx: Tx, operator_id: int) -> OperatorRecord | None:
    return _operator(tx.execute(OPERATOR_BY_ID, {"id": operator_id}).fetchone())


def lock_operator(tx: Tx, operator_id: int) -> OperatorRecord | None:
    """The operator as it is now, its row locked until the transaction ends (PostgreSQL); None if unknown."""
    return _operator(tx.execute(LOCK_OPERATOR if tx.row_locks else OPERATOR_BY_ID, {"id": operator_id}).fetchone())


def lock_operators(tx: Tx, operator_ids: Iterable[int | None]) -> None:
    """Lock these operators' rows in id order (PostgreSQL), so that requests that each change
    several operators queue instead of deadlocking. SQLite: the write lock already serialises."""
    if tx.row_locks:
        for operator_id in sorted({i for i in operator_ids if i is not None}):
            tx.execute(LOCK_OPERATOR, {"id": operator_id})


class Keep:
    """A field of ``update_operator`` left as it is, where None is a value (the idle setting's off)."""


KEEP = Keep()


def update_operator(
    tx: Tx,
    operator_id: int,
    *,
    name: str | None = None,
    is_active: bool | None = None,
    max_active_leads: int | None = None,
    presence: str | None = None,
    away_reason: str | None = None,
    idle_away_minutes: int | None | Keep = KEEP,
) -> OperatorRecord | None:
    """Change the fields given (None keeps one as it is; for the idle setting, where None is off,
    KEEP does); the operator as it is then, or None if unknown. A presence given replaces the
    away reason with ``away_reason`` (None: set by a person).

    A name another operator has raises sa.exc.IntegrityError.
    """
    params = {
        "id": operator_id,
        "name": name,
        "is_active": is_active,
        "max_active_leads": max_active_leads,
        "presence": presence,
        "away_reason": away_reason,
        "set_idle": not isinstance(idle_away_minutes, Keep),
        "idle_away_minutes": None if isinstance(idle_away_minutes, Keep) else idle_away_minutes,
    }
    return _operator(tx.execute(UPDATE_OPERATOR, params).fetchone())


def mark_seen(tx: Tx, operator_id: int, now: datetime) -> OperatorRecord | None:
    """Store the operator's last sign of life; the operator as it is then, or None if unknown."""
    return _operator(tx.execute(MARK_SEEN, {"id": operator_id, "now": tx.stored(now)}).fetchone())


def record_operator_event(tx: Tx, operator_id: int, field: str, value: str | None, now: datetime) -> None:
    """Add one change to the operator's history, naming the unit of work's actor."""
    params = {
        "operator_id": operator_id,
        "field": field,
        "value": value,
        "actor": tx.actor,
        "created_at": tx.stored(now),
    }
    tx.execute(INSERT_OPERATOR_EVENT, params)


# --- leads ----------------------------------------------------------------------------

LEAD_FIELDS = ("external_id", "phone", "email", "name")
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
# Filling a lead's empty fields, one statement per set of fields: each is set
# only while still empty, so what a concurrent request stored first is kept.
# An address comes with its key.
FILL_LEAD = {
    fields: Sql(
        "UPDATE leads SET "
        + ", ".join(
            f"{field} = :{field}" + (", email_key = :email_key" if field == "email" else "") for field in fields
        )
        + " WHERE id = :id AND "
        + " AND ".join(f"{field} IS NULL" for field in fields)
    )
    for n in range(1, len(LEAD_FIELDS) + 1)
    for fields in combinations(LEAD_FIELDS, n)
}
LOCK_LEAD = Sql("SELECT id FROM leads WHERE id = :id FOR KEY SHARE")
# For a sticky source: the operator of the lead's latest assigned contact through it.
LATEST_OPERATOR = Sql(
    "SELECT operator_id FROM contacts WHERE lead_id = :lead_id AND source_id = :source_id "
    "AND operator_id IS NOT NULL ORDER BY id DESC LIMIT 1"
)


def find_leads(tx: Tx, *, external_id: str | None, phone: str | None, email_key: str | None) -> list[LeadRecord]:
    """The leads holding any of these identifiers, an address by its key (None: not looked for)."""
    params = {"external_id": external_id, "phone": phone, "email_key": email_key}
    return [
        LeadRecord(row[0], row[1], row[2], row[3], row[4], from_stored_time(row[5]))
        for row in tx.execute(FIND_LEADS, params)
    ]


def insert_lead(
    tx: Tx,
    *,
    external_id: str | None,
    phone: str | None,
    email: str | None,
    email_key: str | None,
    name: str | None,
    now: datetime,
) -> LeadRecord | None:
    """Store a new lead; None (nothing stored) when a concurrent request stored one of its identifiers first."""
    params = {"external_id": external_id, "phone": phone, "email": email, "email_key": email_key, "name": name}
    params["created_at"] = tx.stored(now)
    row = tx.execute(INSERT_LEAD, params).fetchone()
    return LeadRecord(row[0], external_id, phone, email, name, now) if row else None


def fill_lead(tx: Tx, lead_id: int, values: dict[str, str]) -> bool:
    """Store ``values`` (of LEAD_FIELDS, and ``email_key`` with an address) in the lead's columns that are
    still empty.

    False, and nothing stored, when one of them is no longer empty or another
    lead already holds one of these identifiers.
    """
    statement = FILL_LEAD[tuple(field for field in LEAD_FIELDS if field in values)]  # email_key: with email
    try:
        with tx.savepoint():
            return tx.execute(statement, {"id": lead_id, **values}).rowcount == 1
    except sa.exc.IntegrityError:
        return False


def lock_lead(tx: Tx, lead_id: int) -> None:
    """Take now the lock on the lead's row that storing its contact takes anyway (PostgreSQL).

    Every registration then locks the lead before an operator, in that order:
    one that waits for an operator never holds up one filling the lead in.
    """
    if tx.row_locks:
        tx.execute(LOCK_LEAD, {"id": lead_id})


def latest_operator(tx: Tx, lead_id: int, source_id: int) -> int | None:
    """The operator of the lead's latest assigned contact through the source, if any."""
    row = tx.execute(LATEST_OPERATOR, {"lead_id": lead_id, "source_id": source_id}).fetchone()
    return row[0] if row else None


# --- contacts and their history -------------------------------------------------------

CONTACT_FIELDS = (
    "id, lead_id, source_id, operator_id, status, message, created_at, assigned_at, closed_at",
    "offered_until, accepted_at",
)
CONTACT_COLUMNS = ", ".join(CONTACT_FIELDS)
INSERT_CONTACT = Sql(
    "INSERT INTO contacts (lead_id, source_id, operator_id, status, message, created_at, assigned_at, offered_until) "
    "VALUES (:lead_id, :source_id, :operator_id, 'open', :message, :created_at, :assigned_at, :offered_until) "
    "RETURNING id"
)
# PostgreSQL: the new contact and its first history event in one statement.
INSERT_CONTACT_AND_EVENT = Sql(
    f"""WITH c AS ({INSERT_CONTACT.text.replace("RETURNING id", "RETURNING id, operator_id, created_at")}),
            e AS (INSERT INTO contact_events (contact_id, reason, from_operator_id, to_operator_id, created_at, actor)
                  SELECT c.id, CAST(:reason AS VARCHAR), CAST(NULL AS INTEGER), c.operator_id, c.created_at,
                         CAST(:actor AS VARCHAR) FROM c)
       SELECT id FROM c"""
)
GET_CONTACT = Sql(f"SELECT {CONTACT_COLUMNS} FROM contacts WHERE id = :id")
LOCK_CONTACT = Sql(GET_CONTACT.text + " FOR UPDATE")
# An offer closed before it was taken is no longer an offer (closing it was taking it).
CLOSE_CONTACT = Sql(
    f"UPDATE contacts SET status = 'closed', closed_at = :closed_at, offered_until = NULL "
    f"WHERE id = :id AND status = 'open' RETURNING {CONTACT_COLUMNS}"
)
# A move by hand counts as taken (accepted_at); one by routing may be an offer (offered_until).
MOVE_CONTACT = Sql(
    "UPDATE contacts SET operator_id = :operator_id, assigned_at = :assigned_at, "
    "offered_until = :offered_until, accepted_at = :accepted_at "
    "WHERE id = :id AND status = 'open' AND operator_id IS NOT DISTINCT FROM :previous"
)
REOPEN_CONTACT = Sql(
    "UPDATE contacts SET status = 'open', closed_at = NULL, operator_id = NULL, assigned_at = NULL, "
    "offered_until = NULL, accepted_at = NULL WHERE id = :id AND status = 'closed'"
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
    "UPDATE contacts SET operator_id = :operator_id, assigned_at = :assigned_at, offered_until = :offered_until "
    "WHERE id = :id AND operator_id IS NULL AND status = 'open'"
)
# The history: one row per change of a contact's assignment.
INSERT_EVENT = Sql(
    "INSERT INTO contact_events (contact_id, reason, from_operator_id, to_operator_id, created_at, actor) "
    "VALUES (:contact_id, :reason, :from_operator_id, :to_operator_id, :created_at, :actor)"
)


def _contact(row: Any) -> ContactRecord | None:
    if not row:
        return None
    created_at = from_stored_time(row[6])
    return ContactRecord(
        row[0],
        row[1],
        row[2],
        row[3],
        row[4],
        row[5],
        created_at,
        from_stored_time(row[7]),
        from_stored_time(row[8]),
        from_stored_time(row[9]),
        from_stored_time(row[10]),
    )


def insert_contact(
    tx: Tx,
    *,
    lead_id: int,
    source_id: int,
    operator_id: int | None,
    message: str | None,
    reason: str,
    now: datetime,
    offered_until: datetime | None = None,
) -> ContactRecord:
    """Store a new open contact (assigned to ``operator_id`` if one is given, as an offer to be taken
    before ``offered_until`` if that is given) and its first history event."""
    at = tx.stored(now)
    params = {
        "lead_id": lead_id,
        "source_id": source_id,
        "operator_id": operator_id,
        "message": message,
        "created_at": at,
        "assigned_at": at if operator_id is not None else None,
        "offered_until": tx.stored(offered_until) if offered_until is not None else None,
    }
    if tx.dialect == "postgresql":  # one round trip for both rows
        params["reason"], params["actor"] = reason, tx.actor
        (contact_id,) = tx.execute(INSERT_CONTACT_AND_EVENT, params).fetchone()
    else:
        (contact_id,) = tx.execute(INSERT_CONTACT, params).fetchone()
        _event(tx, contact_id, reason, None, operator_id, at)
    assigned_at = now if operator_id is not None else None
    return ContactRecord(
        contact_id, lead_id, source_id, operator_id, ContactStatus.OPEN, message, now, assigned_at, None, offered_until
    )


def get_contact(tx: Tx, contact_id: int) -> ContactRecord | None:
    return _contact(tx.execute(GET_CONTACT, {"id": contact_id}).fetchone())


def lock_contact(tx: Tx, contact_id: int) -> ContactRecord | None:
    """The contact as it is now, its row locked until the transaction ends (PostgreSQL); None if unknown.

    SQLite: the write lock already serialises writers.
    """
    return _contact(tx.execute(LOCK_CONTACT if tx.row_locks else GET_CONTACT, {"id": contact_id}).fetchone())


def close_contact(tx: Tx, contact_id: int, now: datetime) -> ContactRecord | None:
    """Close the contact if it is open, and record it; the contact as closed, or None if it was not open."""
    at = tx.stored(now)
    contact = _contact(tx.execute(CLOSE_CONTACT, {"id": contact_id, "closed_at": at}).fetchone())
    if contact is not None:
        _event(tx, contact.id, EventReason.CLOSED, contact.operator_id, None, at)
    return contact


def move_contact(
    tx: Tx,
    contact_id: int,
    *,
    previous: int | None,
    operator_id: int,
    now: datetime,
    offered_until: datetime | None = None,
    accepted: bool = False,
) -> bool:
    """Give the open contact to ``operator_id`` if it is still with ``previous``; False if it was not.

    Routing's move may make it an offer (``offered_until``); a person's counts as taken (``accepted``).
    """
    params = {
        "id": contact_id,
        "operator_id": operator_id,
        "assigned_at": tx.stored(now),
        "previous": previous,
        "offered_until": tx.stored(offered_until) if offered_until is not None else None,
        "accepted_at": tx.stored(now) if accepted else None,
    }
    return tx.execute(MOVE_CONTACT, params).rowcount == 1


def reopen_contact(tx: Tx, contact_id: int) -> bool:
    """Open the contact again, without an operator, if it is closed; False if it was not."""
    return tx.execute(REOPEN_CONTACT, {"id": contact_id}).rowcount == 1


def oldest_waiting(tx: Tx, source_id: int, limit: int) -> list[int]:
    """The ids of the source's oldest waiting contacts, at most ``limit``, from the waiting-queue index.

    PostgreSQL: their rows are locked, and rows a concurrent drain holds are skipped.
    """
    statement = OLDEST_WAITING_LOCKED if tx.row_locks else OLDEST_WAITING
    return [row[0] for row in tx.execute(statement, {"source_id": source_id, "limit": limit})]


def assign_waiting(tx: Tx, assignments: list[Assignment]) -> int:
    """Give waiting contacts their operators, in as few round trips as the driver manages; how many changed."""
    rows = [
        {
            "id": a.contact_id,
            "operator_id": a.operator_id,
            "assigned_at": tx.stored(a.assigned_at),
            "offered_until": tx.stored(a.offered_until) if a.offered_until is not None else None,
        }
        for a in assignments
    ]
    return tx.execute_many(ASSIGN_WAITING, rows).rowcount


def _event(
    tx: Tx, contact_id: int, reason: str, from_operator_id: int | None, to_operator_id: int | None, at: Any
) -> None:
    params = {
        "contact_id": contact_id,
        "reason": reason,
        "from_operator_id": from_operator_id,
        "to_operator_id": to_operator_id,
        "created_at": at,
        "actor": tx.actor,
    }
    tx.execute(INSERT_EVENT, params)


def record_event(
    tx: Tx, contact_id: int, reason: str, from_operator_id: int | None, to_operator_id: int | None, now: datetime
) -> None:
    """Add one event to the contact's history, naming the unit of work's actor."""
    _event(tx, contact_id, reason, from_operator_id, to_operator_id, tx.stored(now))


def record_assignments(tx: Tx, reason: str, assignments: list[Assignment]) -> None:
    """Add one event per assignment (a contact given its first operator)."""
    rows = [
        {
            "contact_id": a.contact_id,
            "reason": reason,
            "from_operator_id": None,
            "to_operator_id": a.operator_id,
            "created_at": tx.stored(a.assigned_at),
            "actor": tx.actor,
        }
        for a in assignments
    ]
    tx.execute_many(INSERT_EVENT, rows)


# --- idempotency keys (leadcrm/idempotency.py) ----------------------------------------

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


def forget_expired_key(tx: Tx, caller: str, key: str, before: datetime) -> None:
    """Delete the caller's key if it was taken before ``before``."""
    tx.execute(FORGET_EXPIRED_KEY, {"caller": caller, "key": key, "before": tx.stored(before)})


def forget_expired_keys(tx: Tx, before: datetime) -> int:
    """Delete every key taken before ``before``; returns how many."""
    return tx.execute(FORGET_EXPIRED_KEYS, {"before": tx.stored(before)}).rowcount


def claim_key(tx: Tx, caller: str, key: str, request_hash: str, now: datetime) -> bool:
    """Take the caller's key for a request; False (nothing stored) if it is taken already."""
    params = {"caller": caller, "key": key, "request_hash": request_hash, "created_at": tx.stored(now)}
    return tx.execute(CLAIM_KEY, params).fetchone() is not None


def stored_key(tx: Tx, caller: str, key: str) -> StoredKey | None:
    row = tx.execute(GET_KEY, {"caller": caller, "key": key}).fetchone()
    return StoredKey(*row) if row else None


def remember_answer(tx: Tx, caller: str, key: str, *, status_code: int, body: str, location: str | None) -> None:
    """Store the answer the request that took the caller's key got."""
    params = {"caller": caller, "key": key, "status_code": status_code, "body": body, "location": location}
    tx.execute(REMEMBER_ANSWER, params)


# --- drain requests (the worker continues long drains) --------------------------------

# Asked again: the newer time wins, so a worker's conditional delete of the older request misses.
REQUEST_DRAIN = Sql(
    "INSERT INTO drain_requests (source_id, requested_at) VALUES (:source_id, :requested_at) "
    "ON CONFLICT (source_id) DO UPDATE SET requested_at = excluded.requested_at"
)
DRAIN_REQUESTS = Sql("SELECT source_id, requested_at FROM drain_requests ORDER BY requested_at, source_id")
FORGET_DRAIN_REQUEST = Sql("DELETE FROM drain_requests WHERE source_id = :source_id AND requested_at = :requested_at")


@dataclass(frozen=True, slots=True)
class DrainRequestRecord:
    source_id: int
    requested_at: Any  # as stored: compared back, never shown


def request_drain(tx: Tx, source_ids: Iterable[int], now: datetime) -> None:
    """Ask the worker to drain these sources' queues further (written last in the transaction: its own rows)."""
    rows = [{"source_id": source_id, "requested_at": tx.stored(now)} for source_id in sorted(set(source_ids))]
    if rows:
        tx.execute_many(REQUEST_DRAIN, rows)


def drain_requests(tx: Tx) -> list[DrainRequestRecord]:
    """The drains asked for, oldest first."""
    return [DrainRequestRecord(row[0], row[1]) for row in tx.execute(DRAIN_REQUESTS, {})]


def forget_drain_request(tx: Tx, request: DrainRequestRecord) -> bool:
    """Delete the request if nobody asked again since it was read; False if someone did (it stays)."""
    params = {"source_id": request.source_id, "requested_at": request.requested_at}
    return tx.execute(FORGET_DRAIN_REQUEST, params).rowcount == 1


# --- shifts (leadcrm/schedules.py) -----------------------------------------------------

DUE_SHIFTS = Sql("SELECT id FROM operators WHERE schedule_due_at <= :now ORDER BY schedule_due_at, id LIMIT :limit")
DUE_SHIFTS_LOCKED = Sql(DUE_SHIFTS.text + " FOR UPDATE SKIP LOCKED")
SET_SHIFT = Sql(
    "UPDATE operators SET shift_from = :shift_from, shift_until = :shift_until, schedule_due_at = :due_at "
    "WHERE id = :id"
)
NEXT_SHIFT_DUE = Sql("SELECT min(schedule_due_at) FROM operators WHERE schedule_due_at IS NOT NULL")


def _stored_or_none(tx: Tx, value: datetime | None) -> Any:
    return tx.stored(value) if value is not None else None


def due_shifts(tx: Tx, now: datetime, limit: int) -> list[int]:
    """Operators whose stretch on shift the worker must recompute now, at most ``limit``, oldest due first.

    PostgreSQL: their rows are locked, and rows another worker holds are skipped.
    """
    statement = DUE_SHIFTS_LOCKED if tx.row_locks else DUE_SHIFTS
    return [row[0] for row in tx.execute(statement, {"now": tx.stored(now), "limit": limit})]


def set_shift(
    tx: Tx, operator_id: int, shift_from: datetime | None, shift_until: datetime | None, due_at: datetime | None
) -> bool:
    """Store the operator's stretch on shift and when to look again; False if there is no such operator."""
    params = {
        "id": operator_id,
        "shift_from": _stored_or_none(tx, shift_from),
        "shift_until": _stored_or_none(tx, shift_until),
        "due_at": _stored_or_none(tx, due_at),
    }
    return tx.execute(SET_SHIFT, params).rowcount == 1


def next_shift_due(tx: Tx) -> datetime | None:
    """The earliest moment the worker must look at a shift (the front of ix_operators_schedule_due_at)."""
    return from_stored_time(tx.execute(NEXT_SHIFT_DUE, {}).fetchone()[0])


# --- offers ---------------------------------------------------------------------------

DUE_OFFERS = Sql(
    "SELECT id FROM contacts WHERE offered_until IS NOT NULL AND offered_until <= :now "
    "ORDER BY offered_until, id LIMIT :limit"
)
DUE_OFFERS_LOCKED = Sql(DUE_OFFERS.text + " FOR UPDATE SKIP LOCKED")
NEXT_OFFER_DUE = Sql("SELECT min(offered_until) FROM contacts WHERE offered_until IS NOT NULL")
# Taken back only as it was read: the same operator, the same deadline, still open.
TAKE_BACK_OFFER = Sql(
    "UPDATE contacts SET operator_id = NULL, assigned_at = NULL, offered_until = NULL "
    "WHERE id = :id AND status = 'open' AND operator_id = :operator_id AND offered_until = :offered_until"
)
# Taken only by its operator, before the deadline.
ACCEPT_OFFER = Sql(
    "UPDATE contacts SET accepted_at = :now, offered_until = NULL "
    "WHERE id = :id AND status = 'open' AND operator_id = :operator_id AND offered_until > :now"
)
# A supervisor's choice of the operator it is offered to: taken, whatever the deadline (the worker has
# not taken it back yet, or it would no longer be this operator's).
TAKE_OFFER_BY_HAND = Sql(
    "UPDATE contacts SET accepted_at = :now, offered_until = NULL "
    "WHERE id = :id AND status = 'open' AND operator_id = :operator_id AND offered_until IS NOT NULL"
)
COUNT_MISSED_OFFER = Sql(
    "UPDATE source_operators SET missed_offers = missed_offers + 1 "
    "WHERE source_id = :source_id AND operator_id = :operator_id RETURNING missed_offers"
)
RESET_MISSED_OFFERS = Sql(
    "UPDATE source_operators SET missed_offers = 0 "
    "WHERE source_id = :source_id AND operator_id = :operator_id AND missed_offers > 0"
)


def due_offers(tx: Tx, now: datetime, limit: int) -> list[int]:
    """Contacts whose offer's deadline has passed, at most ``limit``, oldest deadline first.

    PostgreSQL: their rows are locked, and rows another worker (or an accept) holds are skipped.
    """
    statement = DUE_OFFERS_LOCKED if tx.row_locks else DUE_OFFERS
    return [row[0] for row in tx.execute(statement, {"now": tx.stored(now), "limit": limit})]


def next_offer_due(tx: Tx) -> datetime | None:
    """The earliest deadline of an offer not yet taken (the front of ix_contacts_offered_until)."""
    return from_stored_time(tx.execute(NEXT_OFFER_DUE, {}).fetchone()[0])


def take_back_offer(tx: Tx, contact: ContactRecord) -> bool:
    """Take the offered contact back from its operator, as read (same operator, same deadline); False if it changed."""
    assert contact.offered_until is not None
    params = {"id": contact.id, "operator_id": contact.operator_id, "offered_until": tx.stored(contact.offered_until)}
    return tx.execute(TAKE_BACK_OFFER, params).rowcount == 1


def accept_offer(tx: Tx, contact_id: int, operator_id: int, now: datetime) -> bool:
    """The operator takes its offered contact before the deadline; False if it is not (or no longer) its offer."""
    params = {"id": contact_id, "operator_id": operator_id, "now": tx.stored(now)}
    return tx.execute(ACCEPT_OFFER, params).rowcount == 1


def take_offer_by_hand(tx: Tx, contact_id: int, operator_id: int, now: datetime) -> bool:
    """A supervisor assigns the offered contact to the operator it is offered to: taken, even past its deadline."""
    params = {"id": contact_id, "operator_id": operator_id, "now": tx.stored(now)}
    return tx.execute(TAKE_OFFER_BY_HAND, params).rowcount == 1


def count_missed_offer(tx: Tx, source_id: int, operator_id: int) -> int:
    """One more of the source's offers the operator let pass; how many in a row now (0 without a row)."""
    row = tx.execute(COUNT_MISSED_OFFER, {"source_id": source_id, "operator_id": operator_id}).fetchone()
    return row[0] if row else 0


def reset_missed_offers(tx: Tx, source_id: int, operator_id: int) -> None:
    """The operator took one of the source's offers: its misses in a row start again from 0."""
    tx.execute(RESET_MISSED_OFFERS, {"source_id": source_id, "operator_id": operator_id})


# --- the workers' heartbeat -----------------------------------------------------------

LAST_BEAT = Sql("SELECT max(beat_at) FROM worker_beats")


def last_beat(tx: Tx) -> datetime | None:
    """The latest heartbeat of any worker (None: none): one prebuilt statement, for ``/healthz``."""
    return from_stored_time(tx.execute(LAST_BEAT, {}).fetchone()[0])


# --- events out (leadcrm/outbox.py) and their delivery (leadcrm/webhooks.py) ----------

INSERT_OUT_EVENT = Sql(
    "INSERT INTO events (type, subject, actor, created_at, data) VALUES (:type, :subject, :actor, :created_at, :data)"
)
CONTACT_SNAPSHOT = Sql(
    f"SELECT {', '.join('c.' + c.strip() for c in CONTACT_COLUMNS.split(','))}, "
    f"{', '.join('l.' + c.strip() for c in LEAD_COLUMNS.split(','))}, "
    f"{', '.join('o.' + c.strip() for c in OPERATOR_COLUMNS.split(','))} "
    "FROM contacts c JOIN leads l ON l.id = c.lead_id LEFT JOIN operators o ON o.id = c.operator_id WHERE c.id = :id"
)
_CONTACT_WIDTH = len(CONTACT_COLUMNS.split(","))
_LEAD_WIDTH = len(LEAD_COLUMNS.split(","))


@dataclass(frozen=True, slots=True)
class OutEvent:
    """An event to write: its type, what it is about (``contact:12``) and its data, as JSON text."""

    type: str
    subject: str
    data: str


def write_events(tx: Tx, events: list[OutEvent], now: datetime) -> None:
    """Add events to the outbox, in this order, naming the unit of work's actor (or ``system``)."""
    at = tx.stored(now)
    actor = tx.actor or "system"
    rows = [{"type": e.type, "subject": e.subject, "actor": actor, "created_at": at, "data": e.data} for e in events]
    if len(rows) == 1:
        tx.execute(INSERT_OUT_EVENT, rows[0])
    elif rows:
        tx.execute_many(INSERT_OUT_EVENT, rows)


def contact_snapshot(tx: Tx, contact_id: int) -> tuple[ContactRecord, LeadRecord, OperatorRecord | None] | None:
    """The contact as it is now in this transaction, with its lead and its operator (None: it waits)."""
    row = tx.execute(CONTACT_SNAPSHOT, {"id": contact_id}).fetchone()
    if row is None:
        return None
    contact = _contact(row[:_CONTACT_WIDTH])
    assert contact is not None
    lead_row = row[_CONTACT_WIDTH : _CONTACT_WIDTH + _LEAD_WIDTH]
    lead = LeadRecord(lead_row[0], lead_row[1], lead_row[2], lead_row[3], lead_row[4], from_stored_time(lead_row[5]))
    operator_row = row[_CONTACT_WIDTH + _LEAD_WIDTH :]
    return contact, lead, _operator(operator_row) if operator_row[0] is not None else None


# The sequencer: its row (written the first time), locked so that sequencers take turns; then the
# committed events still without a position, oldest id first, numbered after the last position.
ENSURE_SEQUENCE = Sql("INSERT INTO event_sequence (id, last_position) VALUES (1, 0) ON CONFLICT (id) DO NOTHING")
LAST_POSITION = Sql("SELECT last_position FROM event_sequence WHERE id = 1")
LOCK_LAST_POSITION = Sql(LAST_POSITION.text + " FOR UPDATE")
UNSEQUENCED = Sql("SELECT id FROM events WHERE position IS NULL ORDER BY id LIMIT :limit")
ANY_UNSEQUENCED = Sql("SELECT 1 FROM events WHERE position IS NULL LIMIT 1")
SET_POSITION = Sql("UPDATE events SET position = :position WHERE id = :id AND position IS NULL")
SET_LAST_POSITION = Sql(
    "UPDATE event_sequence SET last_position = :position WHERE id = 1 AND last_position = :previous"
)


def sequence_events(tx: Tx, limit: int) -> int:
    """Number the committed events without a position, in id order, after the last position given;
    how many were numbered. Sequencers take turns on the sequence row's lock (PostgreSQL) or the write
    lock (SQLite); the events are read after the lock, so a turn sees every event committed before it."""
    last_row = tx.execute(LOCK_LAST_POSITION if tx.row_locks else LAST_POSITION, {}).fetchone()
    if last_row is None:
        tx.execute(ENSURE_SEQUENCE, {})
        last_row = tx.execute(LOCK_LAST_POSITION if tx.row_locks else LAST_POSITION, {}).fetchone()
    last = last_row[0]
    ids = [row[0] for row in tx.execute(UNSEQUENCED, {"limit": limit})]
    if not ids:
        return 0
    rows = [{"id": event_id, "position": last + n} for n, event_id in enumerate(ids, start=1)]
    if tx.execute_many(SET_POSITION, rows).rowcount != len(rows):
        raise RuntimeError("an event was numbered by another sequencer under the sequence lock")
    if tx.execute(SET_LAST_POSITION, {"position": last + len(ids), "previous": last}).rowcount != 1:
        raise RuntimeError("the sequence moved under its lock")
    return len(ids)


def any_unsequenced(tx: Tx) -> bool:
    """Is an event waiting for its position (the front of ix_events_unsequenced)?"""
    return tx.execute(ANY_UNSEQUENCED, {}).fetchone() is not None


def last_position(tx: Tx) -> int:
    """The last position given (0 before the first)."""
    row = tx.execute(LAST_POSITION, {}).fetchone()
    return row[0] if row else 0


# The stream: a webhook's numbered events after its cursor (``sent_to``), of the types it subscribed
# to, in position order, sent by the one worker that holds the stream's lease. A delivered event
# leaves no row; rows (webhook_deliveries) are only for what failed and what queues behind it.
# The types, as many placeholders as there are event types (a webhook's list padded with its first).
_TYPE_SLOTS = tuple(f"type{n}" for n in range(len(EventType)))
STREAMS_DUE = Sql(
    "SELECT id FROM webhooks WHERE enabled AND sent_to < :last "
    "AND (stream_leased_until IS NULL OR stream_leased_until < :now) "
    "AND (stream_due_at IS NULL OR stream_due_at <= :now) ORDER BY id"
)
# When the next stream is due: now if one waits with no lease or pause, else the lease's or pause's end.
NEXT_STREAM_DUE = Sql(
    "SELECT min(CASE WHEN stream_leased_until IS NULL THEN coalesce(stream_due_at, :now) "
    "WHEN stream_due_at IS NULL OR stream_leased_until > stream_due_at THEN stream_leased_until "
    "ELSE stream_due_at END) FROM webhooks WHERE enabled AND sent_to < :last"
)
LEASE_STREAM = Sql(
    "UPDATE webhooks SET stream_leased_by = :worker, stream_leased_until = :until WHERE id = :id AND enabled "
    "AND sent_to < :last AND (stream_leased_until IS NULL OR stream_leased_until < :now) "
    "AND (stream_due_at IS NULL OR stream_due_at <= :now)"
)
STREAM_OF = Sql("SELECT url, secret, events, sent_to, stream_failures FROM webhooks WHERE id = :id")
STREAM_EVENTS = Sql(
    "SELECT id, position, type, subject, actor, created_at, data FROM events WHERE position > :after "
    f"AND position <= :last AND type IN ({', '.join(':' + s for s in _TYPE_SLOTS)}) ORDER BY position LIMIT :limit"
)
STREAM_BACKLOG = Sql(
    f"SELECT count(*) FROM events WHERE position > :after AND type IN ({', '.join(':' + s for s in _TYPE_SLOTS)})"
)
# Subjects with a delivery still to send: their events in the stream queue behind it.
OPEN_LINES = Sql("SELECT DISTINCT subject FROM webhook_deliveries WHERE webhook_id = :webhook_id AND state = 'pending'")
STREAM_DONE = Sql(
    "UPDATE webhooks SET sent_to = :to, stream_leased_by = NULL, stream_leased_until = NULL, "
    "stream_due_at = :due_at, stream_failures = :failures "
    "WHERE id = :id AND stream_leased_by = :worker AND stream_leased_until = :until AND sent_to = :after"
)
QUEUE_DELIVERY = Sql(
    "INSERT INTO webhook_deliveries (webhook_id, event_id, position, subject, state, attempts, next_attempt_at, "
    "first_attempt_at) VALUES (:webhook_id, :event_id, :position, :subject, 'pending', :attempts, :next_attempt_at, "
    ":first_attempt_at) ON CONFLICT (webhook_id, event_id) DO NOTHING"
)
# Deliveries queued without a due time after position ``after`` with nothing of their subject pending
# before them (the one they queued behind was delivered meanwhile): due now.
HEADS_DUE = Sql(
    "UPDATE webhook_deliveries SET next_attempt_at = :now WHERE webhook_id = :webhook_id AND state = 'pending' "
    "AND next_attempt_at IS NULL AND position > :after AND NOT EXISTS (SELECT 1 FROM webhook_deliveries o "
    "WHERE o.webhook_id = webhook_deliveries.webhook_id AND o.subject = webhook_deliveries.subject "
    "AND o.state = 'pending' AND o.position < webhook_deliveries.position)"
)
# The next of a subject's line, once the one before it is delivered or given up: due now.
NEXT_IN_LINE = Sql(
    "UPDATE webhook_deliveries SET next_attempt_at = :now WHERE id = (SELECT id FROM webhook_deliveries "
    "WHERE webhook_id = :webhook_id AND subject = :subject AND state = 'pending' AND next_attempt_at IS NULL "
    "ORDER BY position LIMIT 1)"
)


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One event of a stream batch, as the sender needs it."""

    event_id: int
    position: int
    event_type: str
    subject: str
    actor: str | None
    created_at: datetime
    data: str


@dataclass(frozen=True, slots=True)
class StreamBatch:
    """The events a worker leased from a webhook's stream: after ``after``, covering up to ``to``.

    ``blocked``: subjects with a delivery still to send when leased; their
    events are not sent but queued behind it. ``failures``: batches in a row
    that got failures and no success (the pause backs off with it).
    """

    webhook_id: int
    url: str
    secret: str
    after: int
    to: int
    held_until: datetime
    failures: int
    events: list[StreamEvent]
    blocked: frozenset[str]


def _types(subscribed: list[str]) -> dict[str, str]:
    padded = (subscribed or [""]) + [subscribed[0] if subscribed else ""] * (len(_TYPE_SLOTS) - len(subscribed))
    return dict(zip(_TYPE_SLOTS, padded, strict=True))


def streams_due(tx: Tx, now: datetime) -> list[int]:
    """Enabled webhooks with events after their cursor, not leased and not paused."""
    return [row[0] for row in tx.execute(STREAMS_DUE, {"last": last_position(tx), "now": tx.stored(now)})]


def next_stream_due(tx: Tx, now: datetime) -> datetime | None:
    row = tx.execute(NEXT_STREAM_DUE, {"last": last_position(tx), "now": tx.stored(now)}).fetchone()
    return from_stored_time(row[0])


def lease_stream(
    tx: Tx, webhook_id: int, worker: str, now: datetime, until: datetime, limit: int
) -> StreamBatch | None:
    """Lease the webhook's stream to ``worker`` until ``until`` and read its next ``limit`` events; None
    if it is not due (another worker holds it, it is paused or off, or nothing is after its cursor).

    The lease is one update of the webhook's row (locked first, as in every
    path), so two workers never hold one stream. The batch covers the events
    read; when fewer than ``limit`` came, it covers up to the last position.
    """
    last = last_position(tx)
    params = {"id": webhook_id, "worker": worker, "until": tx.stored(until), "now": tx.stored(now), "last": last}
    if tx.execute(LEASE_STREAM, params).rowcount != 1:
        return None
    url, secret, subscribed, after, failures = tx.execute(STREAM_OF, {"id": webhook_id}).fetchone()
    rows = tx.execute(STREAM_EVENTS, {"after": after, "last": last, "limit": limit, **_types(json.loads(subscribed))})
    events = [StreamEvent(r[0], r[1], r[2], r[3], r[4], from_stored_time(r[5]), r[6]) for r in rows]
    covered = events[-1].position if len(events) == limit else last
    subjects = {e.subject for e in events}
    lines = {row[0] for row in tx.execute(OPEN_LINES, {"webhook_id": webhook_id})} if subjects else set()
    return StreamBatch(webhook_id, url, secret, after, covered, until, failures, events, frozenset(lines & subjects))


def stream_done(tx: Tx, batch: StreamBatch, worker: str, to: int, paused_until: datetime | None, failures: int) -> bool:
    """Move the stream's cursor to ``to`` and give its lease back (paused until ``paused_until``, if set);
    False if ``worker`` no longer held it (it ran out and another worker took the stream)."""
    params = {
        "id": batch.webhook_id,
        "worker": worker,
        "until": tx.stored(batch.held_until),
        "after": batch.after,
        "to": to,
        "due_at": tx.stored(paused_until) if paused_until is not None else None,
        "failures": failures,
    }
    return tx.execute(STREAM_DONE, params).rowcount == 1


def queue_from_stream(
    tx: Tx, batch: StreamBatch, rows: list[tuple[StreamEvent, datetime | None, datetime | None]], now: datetime
) -> None:
    """Queue these stream events as deliveries: (event, when it first failed or None, when to try again
    or None: behind an earlier one of its subject). Those queued behind a delivery that went meanwhile
    are due now. The caller holds the stream's lease and the webhook's row lock."""
    if not rows:
        return
    params = [
        {
            "webhook_id": batch.webhook_id,
            "event_id": e.event_id,
            "position": e.position,
            "subject": e.subject,
            "attempts": 1 if failed_at is not None else 0,
            "first_attempt_at": tx.stored(failed_at) if failed_at is not None else None,
            "next_attempt_at": tx.stored(retry_at) if retry_at is not None else None,
        }
        for e, failed_at, retry_at in rows
    ]
    tx.execute_many(QUEUE_DELIVERY, params)
    tx.execute(HEADS_DUE, {"webhook_id": batch.webhook_id, "after": batch.after, "now": tx.stored(now)})


def stream_backlog(tx: Tx, after: int, subscribed: list[str]) -> int:
    """Numbered events after position ``after`` of these types: what the stream has still to send."""
    return int(tx.execute(STREAM_BACKLOG, {"after": after, **_types(subscribed)}).fetchone()[0])


def next_in_line(tx: Tx, webhook_id: int, subject: str, now: datetime) -> None:
    """Make the next delivery of the subject's line due now (the one before it is done)."""
    tx.execute(NEXT_IN_LINE, {"webhook_id": webhook_id, "subject": subject, "now": tx.stored(now)})


# Claims: a webhook's due deliveries (only the head of a subject's line has a due time) that nobody
# holds, leased to this worker for a while.
DUE_DELIVERIES = Sql(
    "SELECT d.id FROM webhook_deliveries d WHERE d.webhook_id = :webhook_id AND d.state = 'pending' "
    "AND d.next_attempt_at <= :now AND (d.leased_until IS NULL OR d.leased_until < :now) "
    "ORDER BY d.position LIMIT :limit"
)
DUE_DELIVERIES_LOCKED = Sql(DUE_DELIVERIES.text + " FOR UPDATE OF d SKIP LOCKED")
WEBHOOKS_WITH_DUE = Sql(
    "SELECT w.id FROM webhooks w WHERE w.enabled AND EXISTS (SELECT 1 FROM webhook_deliveries d "
    "WHERE d.webhook_id = w.id AND d.state = 'pending' AND d.next_attempt_at <= :now "
    "AND (d.leased_until IS NULL OR d.leased_until < :now)) ORDER BY w.id"
)
NEXT_DELIVERY_DUE = Sql(
    "SELECT min(CASE WHEN d.leased_until IS NOT NULL AND d.leased_until > d.next_attempt_at "
    "THEN d.leased_until ELSE d.next_attempt_at END) FROM webhook_deliveries d "
    "JOIN webhooks w ON w.id = d.webhook_id WHERE w.enabled AND d.state = 'pending' "
    "AND d.next_attempt_at IS NOT NULL"
)
LEASE_DELIVERY = Sql(
    "UPDATE webhook_deliveries SET leased_by = :worker, leased_until = :until "
    "WHERE id = :id AND state = 'pending' AND (leased_until IS NULL OR leased_until < :now)"
)
# What one lease took, in line order (``until`` is this lease's own moment).
LEASED_JOBS = Sql(
    "SELECT d.id, d.attempts, d.first_attempt_at, e.id, e.type, e.actor, e.created_at, e.data, w.url, w.secret, "
    "d.subject "
    "FROM webhook_deliveries d JOIN events e ON e.id = d.event_id JOIN webhooks w ON w.id = d.webhook_id "
    "WHERE d.webhook_id = :webhook_id AND d.state = 'pending' AND d.leased_by = :worker "
    "AND d.leased_until = :until ORDER BY d.position"
)


@dataclass(frozen=True, slots=True)
class DeliveryJob:
    """One delivery leased to a worker: what to send where, and the attempts so far."""

    delivery_id: int
    attempts: int
    first_attempt_at: datetime | None
    event_id: int
    event_type: str
    actor: str | None
    created_at: datetime
    data: str
    url: str
    secret: str
    subject: str


def webhooks_with_due(tx: Tx, now: datetime) -> list[int]:
    """Enabled webhooks with a delivery due now that nobody holds."""
    return [row[0] for row in tx.execute(WEBHOOKS_WITH_DUE, {"now": tx.stored(now)})]


def next_delivery_due(tx: Tx) -> datetime | None:
    """The earliest moment a pending delivery of an enabled webhook is due (or its lease runs out)."""
    return from_stored_time(tx.execute(NEXT_DELIVERY_DUE, {}).fetchone()[0])


def lease_deliveries(
    tx: Tx, webhook_id: int, worker: str, now: datetime, until: datetime, limit: int
) -> list[DeliveryJob]:
    """Lease the webhook's due deliveries that head their subjects' lines to ``worker`` until ``until``."""
    statement = DUE_DELIVERIES_LOCKED if tx.row_locks else DUE_DELIVERIES
    at, held_until = tx.stored(now), tx.stored(until)
    ids = [row[0] for row in tx.execute(statement, {"webhook_id": webhook_id, "now": at, "limit": limit})]
    if not ids:
        return []
    # Locked as read (PostgreSQL) or under the write lock (SQLite): each update finds its row free.
    tx.execute_many(LEASE_DELIVERY, [{"id": i, "worker": worker, "until": held_until, "now": at} for i in ids])
    params = {"webhook_id": webhook_id, "worker": worker, "until": held_until}
    return [
        DeliveryJob(
            row[0],
            row[1],
            from_stored_time(row[2]),
            row[3],
            row[4],
            row[5],
            from_stored_time(row[6]),
            row[7],
            row[8],
            row[9],
            row[10],
        )
        for row in tx.execute(LEASED_JOBS, params)
    ]


# Results, written only by the worker that holds the lease.
DELIVERED = Sql(
    "UPDATE webhook_deliveries SET state = 'delivered', delivered_at = :now, attempts = attempts + 1, "
    "first_attempt_at = coalesce(first_attempt_at, :now), leased_by = NULL, leased_until = NULL "
    "WHERE id = :id AND state = 'pending' AND leased_by = :worker"
)
RETRY_LATER = Sql(
    "UPDATE webhook_deliveries SET state = :state, next_attempt_at = :next_attempt_at, attempts = attempts + 1, "
    "first_attempt_at = coalesce(first_attempt_at, :now), leased_by = NULL, leased_until = NULL "
    "WHERE id = :id AND state = 'pending' AND leased_by = :worker"
)
# A 2xx: the endpoint is not failing, and its stream, if paused for failures, goes on at once.
WEBHOOK_SUCCEEDED = Sql(
    "UPDATE webhooks SET last_success_at = :now, failing_since = NULL, stream_due_at = NULL, stream_failures = 0, "
    "delivered_count = delivered_count + :delivered WHERE id = :id"
)
WEBHOOK_FAILED = Sql("UPDATE webhooks SET failing_since = coalesce(failing_since, :now) WHERE id = :id")
# Failing since before the cutoff with no success since: turned off.
DISABLE_FAILING = Sql(
    "UPDATE webhooks SET enabled = FALSE, disabled_reason = 'failing', disabled_at = :now "
    "WHERE id = :id AND enabled AND failing_since <= :cutoff"
)
INSERT_ATTEMPT = Sql(
    "INSERT INTO webhook_attempts (webhook_id, event_id, event_type, at, status_code, duration_ms, error) "
    "VALUES (:webhook_id, :event_id, :event_type, :at, :status_code, :duration_ms, :error)"
)
# The log keeps the newest WEBHOOK_ATTEMPTS_KEPT attempts per webhook.
PRUNE_ATTEMPTS = Sql(
    "DELETE FROM webhook_attempts WHERE webhook_id = :webhook_id AND id <= "
    "(SELECT id FROM webhook_attempts WHERE webhook_id = :webhook_id ORDER BY id DESC LIMIT 1 OFFSET :keep)"
)
LOCK_WEBHOOK = Sql("SELECT id FROM webhooks WHERE id = :id FOR UPDATE")


def lock_webhook(tx: Tx, webhook_id: int) -> None:
    """Lock the webhook's row (PostgreSQL): webhook rows before their deliveries, in every path."""
    if tx.row_locks:
        tx.execute(LOCK_WEBHOOK, {"id": webhook_id})


def delivered(tx: Tx, delivery_id: int, worker: str, now: datetime) -> bool:
    """The delivery got a 2xx; False if ``worker`` no longer holds it (its lease ran out and it was taken)."""
    return tx.execute(DELIVERED, {"id": delivery_id, "worker": worker, "now": tx.stored(now)}).rowcount == 1


def next_in_lines(tx: Tx, webhook_id: int, subjects: list[str], now: datetime) -> None:
    """``next_in_line`` for each of these subjects (one delivery of each was just done)."""
    at = tx.stored(now)
    tx.execute_many(NEXT_IN_LINE, [{"webhook_id": webhook_id, "subject": s, "now": at} for s in subjects])


def retry_later(tx: Tx, delivery_id: int, worker: str, now: datetime, next_attempt_at: datetime, give_up: bool) -> bool:
    """The delivery failed: due again at ``next_attempt_at``, or given up (``failed``); False if not held."""
    params = {
        "id": delivery_id,
        "worker": worker,
        "now": tx.stored(now),
        "next_attempt_at": tx.stored(next_attempt_at),
        "state": "failed" if give_up else "pending",
    }
    return tx.execute(RETRY_LATER, params).rowcount == 1


def webhook_succeeded(tx: Tx, webhook_id: int, now: datetime, delivered: int) -> None:
    """Note ``delivered`` events answered with a 2xx (none: a ping): no longer failing, the stream unpaused."""
    tx.execute(WEBHOOK_SUCCEEDED, {"id": webhook_id, "now": tx.stored(now), "delivered": delivered})


def webhook_failed(tx: Tx, webhook_id: int, now: datetime, cutoff: datetime) -> bool:
    """Note a failure; turn the webhook off if it has failed since before ``cutoff``. Whether it was turned off."""
    tx.execute(WEBHOOK_FAILED, {"id": webhook_id, "now": tx.stored(now)})
    params = {"id": webhook_id, "now": tx.stored(now), "cutoff": tx.stored(cutoff)}
    return tx.execute(DISABLE_FAILING, params).rowcount == 1


def log_attempt(
    tx: Tx,
    webhook_id: int,
    event_id: int | None,
    event_type: str,
    at: datetime,
    status_code: int | None,
    duration_ms: int,
    error: str | None,
) -> None:
    log_attempts(tx, webhook_id, [(event_id, event_type, at, status_code, duration_ms, error)])


def log_attempts(
    tx: Tx, webhook_id: int, attempts: list[tuple[int | None, str, datetime, int | None, int, str | None]]
) -> None:
    """Log several attempts at once: (event id, event type, when, status code, milliseconds, error) each."""
    rows = [
        {
            "webhook_id": webhook_id,
            "event_id": event_id,
            "event_type": event_type,
            "at": tx.stored(at),
            "status_code": status_code,
            "duration_ms": duration_ms,
            "error": error,
        }
        for event_id, event_type, at, status_code, duration_ms, error in attempts
    ]
    if rows:
        tx.execute_many(INSERT_ATTEMPT, rows)


def prune_attempts(tx: Tx, webhook_id: int, keep: int) -> None:
    tx.execute(PRUNE_ATTEMPTS, {"webhook_id": webhook_id, "keep": keep})


# Forgetting: numbered events older than the cutoff, a batch at a time, with their deliveries.
OLD_EVENTS = Sql("SELECT id FROM events WHERE created_at < :before AND position IS NOT NULL ORDER BY id LIMIT :limit")
FORGET_DELIVERIES_OF = Sql("DELETE FROM webhook_deliveries WHERE event_id = :id")
FORGET_EVENT = Sql("DELETE FROM events WHERE id = :id")
# The lines that lose pending deliveries with the old events (a superset: the events up to the limit are among these).
LINES_OF_OLD_EVENTS = Sql(
    "SELECT DISTINCT d.webhook_id, d.subject FROM webhook_deliveries d JOIN events e ON e.id = d.event_id "
    "WHERE e.created_at < :before AND e.position IS NOT NULL AND d.state = 'pending' ORDER BY d.webhook_id, d.subject"
)
LINE_HAS_HEAD = Sql(
    "SELECT 1 FROM webhook_deliveries WHERE webhook_id = :webhook_id AND subject = :subject "
    "AND state = 'pending' AND next_attempt_at IS NOT NULL LIMIT 1"
)


def forget_events(tx: Tx, before: datetime, limit: int, now: datetime) -> int:
    """Delete up to ``limit`` numbered events created before ``before``, and their deliveries; how many.

    A pending delivery forgotten at the head of its subject's line would leave
    the rest of the line waiting for ever: the next one of each line that lost
    its head is made due. The webhooks concerned are locked first (in id order).
    """
    rows = [{"id": row[0]} for row in tx.execute(OLD_EVENTS, {"before": tx.stored(before), "limit": limit})]
    if not rows:
        return 0
    lines = [(row[0], row[1]) for row in tx.execute(LINES_OF_OLD_EVENTS, {"before": tx.stored(before)})]
    for webhook_id in sorted({webhook_id for webhook_id, _ in lines}):
        lock_webhook(tx, webhook_id)
    tx.execute_many(FORGET_DELIVERIES_OF, rows)
    forgotten = int(tx.execute_many(FORGET_EVENT, rows).rowcount)
    for webhook_id, subject in lines:
        if tx.execute(LINE_HAS_HEAD, {"webhook_id": webhook_id, "subject": subject}).fetchone() is None:
            next_in_line(tx, webhook_id, subject, now)
    return forgotten


RELEASE_LEASE = Sql(
    "UPDATE webhook_deliveries SET leased_by = NULL, leased_until = NULL "
    "WHERE id = :id AND leased_by = :worker AND state = 'pending'"
)


def release_leases(tx: Tx, worker: str, delivery_ids: list[int]) -> None:
    if delivery_ids:
        tx.execute_many(RELEASE_LEASE, [{"id": i, "worker": worker} for i in delivery_ids])
