"""The data model: operators, sources and their weights, leads and contacts.

Plain SQLAlchemy (no Flask): ``leadcrm.extensions`` hands ``Base`` to
Flask-SQLAlchemy, and the engine can run on a bare SQLAlchemy session.
"""

from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any, Optional, overload

import sqlalchemy as sa
import sqlalchemy.orm as so

from leadcrm.identity import email_key
from leadcrm.vocabulary import (
    ABSENCE_NOTE_MAX,
    DESCRIPTION_MAX,
    EMAIL_MAX,
    EXTERNAL_ID_MAX,
    IDEMPOTENCY_KEY_MAX,
    NAME_MAX,
    OFFER_MISSES_DEFAULT,
    PHONE_MAX,
    TIMEZONE_MAX,
    URL_MAX,
    USERNAME_MAX,
    AwayReason,
    ContactStatus,
    DeliveryState,
    EventReason,
    EventType,
    OperatorChange,
    Presence,
    Role,
    Strategy,
    TokenScope,
    WebhookDisabled,
)


def one_of(column: str, values: type[StrEnum]) -> str:
    """A CHECK constraint's SQL: ``column IN ('a', 'b')``, in the enumeration's order (as the migrations wrote it)."""
    quoted = ", ".join(f"'{value}'" for value in values)
    return f"{column} IN ({quoted})"


def utcnow() -> datetime:
    return datetime.now(UTC)


def offer_deadline(offer_timeout_seconds: int | None, now: datetime) -> datetime | None:
    """When a contact routed ``now`` must be taken by its operator; None when its source makes no offers."""
    return now + timedelta(seconds=offer_timeout_seconds) if offer_timeout_seconds else None


class Base(so.DeclarativeBase):
    # Named constraints, so that later migrations can alter them on SQLite too.
    metadata = sa.MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


def as_utc(value: datetime) -> datetime:
    """A timestamp on its way into a column: aware, in UTC. A naive one is refused (its zone is a guess)."""
    if value.tzinfo is None:
        raise ValueError("naive datetime given; use leadcrm.models.utcnow()")
    return value.astimezone(UTC)


@overload
def from_stored_time(value: datetime | str) -> datetime: ...
@overload
def from_stored_time(value: None) -> None: ...
def from_stored_time(value: datetime | str | None) -> datetime | None:
    """A timestamp as a column gives it back, made aware UTC.

    SQLite keeps no zone (the text SQLAlchemy wrote, or a naive datetime once
    SQLAlchemy parsed it); PostgreSQL's timestamptz comes back aware.
    """
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python.

    SQLite keeps no zone, PostgreSQL does; this makes both read back the same.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Optional[datetime], dialect: Any) -> Optional[datetime]:
        return as_utc(value) if value is not None else None

    def process_result_value(self, value: Optional[datetime], dialect: Any) -> Optional[datetime]:
        return from_stored_time(value)


class Operator(Base):
    __tablename__ = "operators"
    __table_args__ = (
        sa.CheckConstraint("max_active_leads >= 0", name="max_active_leads_not_negative"),
        sa.CheckConstraint("active_leads >= 0", name="active_leads_not_negative"),
        sa.CheckConstraint(one_of("presence", Presence), name="presence_known"),
        sa.CheckConstraint("idle_away_minutes > 0", name="idle_away_minutes_positive"),
        sa.CheckConstraint(one_of("away_reason", AwayReason), name="away_reason_known"),
        # The worker's next look at the operator's shift (leadcrm.schedules): the front of this index.
        sa.Index(
            "ix_operators_schedule_due_at",
            "schedule_due_at",
            sqlite_where=sa.text("schedule_due_at IS NOT NULL"),
            postgresql_where=sa.text("schedule_due_at IS NOT NULL"),
        ),
    )

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    name: so.Mapped[str] = so.mapped_column(sa.String(NAME_MAX), unique=True)
    is_active: so.Mapped[bool] = so.mapped_column(default=True)
    max_active_leads: so.Mapped[int]
    # The operator's load: how many open contacts it holds. Kept in step with
    # the contacts table by the distribution engine, in the same transaction,
    # so reading it never scans history.
    active_leads: so.Mapped[int] = so.mapped_column(default=0, server_default="0")
    # Set by the operator (the nav bar's switch) or a supervisor: away keeps its contacts and gets no new ones.
    presence: so.Mapped[str] = so.mapped_column(
        sa.String(20), default=Presence.AVAILABLE, server_default=Presence.AVAILABLE.value
    )
    # "Away after N minutes without the inbox open" (NULL: off). Decided at the claim from
    # last_seen_at, so it holds with no background process.
    idle_away_minutes: so.Mapped[Optional[int]]
    # The last sign of life of the operator's user: its inbox open (written at most every LAST_SEEN_EVERY s).
    last_seen_at: so.Mapped[Optional[datetime]] = so.mapped_column(UTCDateTime)
    # Set with presence away by the engine (not by a person): why. Cleared when presence changes again.
    away_reason: so.Mapped[Optional[str]] = so.mapped_column(sa.String(20))
    # The schedule's time zone (IANA name); NULL: the organisation's.
    timezone: so.Mapped[Optional[str]] = so.mapped_column(sa.String(TIMEZONE_MAX))
    # The operator's current or next stretch on shift, from its working hours minus its absences
    # (leadcrm.schedules): on shift while shift_from <= now < shift_until, NULL being open-ended
    # (both NULL: no hours and no absence, always on shift). The claims check it.
    shift_from: so.Mapped[Optional[datetime]] = so.mapped_column(UTCDateTime)
    shift_until: so.Mapped[Optional[datetime]] = so.mapped_column(UTCDateTime)
    # When the worker next recomputes the stretch (its start: drain the queues; its end: the next one).
    schedule_due_at: so.Mapped[Optional[datetime]] = so.mapped_column(UTCDateTime)
    created_at: so.Mapped[datetime] = so.mapped_column(UTCDateTime, default=utcnow)

    def __repr__(self) -> str:
        return f"<Operator {self.id} {self.name!r} {self.active_leads}/{self.max_active_leads} {self.presence}>"


class OperatorEvent(Base):
    """One change of an operator's presence, activity, limit or idle setting, and who made it: its history."""

    __tablename__ = "operator_events"
    __table_args__ = (
        sa.CheckConstraint(one_of("field", OperatorChange), name="field_known"),
        sa.Index("ix_operator_events_operator_id_id", "operator_id", "id"),
    )

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    operator_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey("operators.id", ondelete="CASCADE"))
    field: so.Mapped[str] = so.mapped_column(sa.String(20))
    # The new value as text ("away", "false", "12"); NULL for an idle setting turned off.
    value: so.Mapped[Optional[str]] = so.mapped_column(sa.String(20))
    # "user:olga", "token:crm (#2)"; NULL when nobody is named (the shell).
    actor: so.Mapped[Optional[str]] = so.mapped_column(sa.String(NAME_MAX))
    created_at: so.Mapped[datetime] = so.mapped_column(UTCDateTime, default=utcnow)


class Source(Base):
    __tablename__ = "sources"
    __table_args__ = (
        sa.CheckConstraint(one_of("strategy", Strategy), name="strategy_known"),
        sa.CheckConstraint("offer_timeout_seconds > 0", name="offer_timeout_positive"),
        sa.CheckConstraint("offer_misses_away > 0", name="offer_misses_away_positive"),
    )

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    name: so.Mapped[str] = so.mapped_column(sa.String(NAME_MAX), unique=True)
    strategy: so.Mapped[str] = so.mapped_column(sa.String(20), default=Strategy.RANDOM)
    # Returning leads go back to the operator of their latest contact through
    # this source, while that operator serves it and has room.
    sticky: so.Mapped[bool] = so.mapped_column(default=False, server_default=sa.false())
    # Offers: a contact routed to an operator must be taken (accepted) within this many seconds,
    # or it is routed again (NULL: off, a routed contact is simply the operator's).
    offer_timeout_seconds: so.Mapped[Optional[int]]
    # After this many of the source's offers in a row let pass, the operator is set away.
    offer_misses_away: so.Mapped[int] = so.mapped_column(
        default=OFFER_MISSES_DEFAULT, server_default=str(OFFER_MISSES_DEFAULT)
    )
    created_at: so.Mapped[datetime] = so.mapped_column(UTCDateTime, default=utcnow)

    def offer_deadline(self, now: datetime) -> datetime | None:
        return offer_deadline(self.offer_timeout_seconds, now)

    def __repr__(self) -> str:
        return f"<Source {self.id} {self.name!r} {self.strategy}>"


class SourceOperator(Base):
    """One operator's weight for one source, and how many contacts it got from it.

    A row with weight 0 means the operator does not serve the source; the row
    is kept so that ``assigned_total`` (the source's history, which the
    deterministic strategy balances against) survives a weight set to 0 and back.
    """

    __tablename__ = "source_operators"
    __table_args__ = (
        sa.CheckConstraint("weight >= 0", name="weight_not_negative"),
        sa.CheckConstraint("assigned_total >= 0", name="assigned_total_not_negative"),
    )

    source_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey("sources.id", ondelete="CASCADE"), primary_key=True)
    operator_id: so.Mapped[int] = so.mapped_column(
        sa.ForeignKey("operators.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    weight: so.Mapped[int] = so.mapped_column(default=0)
    assigned_total: so.Mapped[int] = so.mapped_column(default=0, server_default="0")
    # The source's offers the operator let pass since it last took one (reset by taking one).
    missed_offers: so.Mapped[int] = so.mapped_column(default=0, server_default="0")


class Lead(Base):
    """An end customer. Any one of its identifiers finds it."""

    __tablename__ = "leads"

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    external_id: so.Mapped[Optional[str]] = so.mapped_column(sa.String(EXTERNAL_ID_MAX), unique=True)
    phone: so.Mapped[Optional[str]] = so.mapped_column(sa.String(PHONE_MAX), unique=True)
    # As typed (email-validator's normalised form), for display; matched by email_key.
    email: so.Mapped[Optional[str]] = so.mapped_column(sa.String(EMAIL_MAX))
    # The address in lower case (leadcrm.identity.email_key): what finds the lead
    # and keeps addresses unique whatever their case. NULL on a lead whose
    # address an older lead's differs from only in case, stored before 0008
    # (leads.email_duplicates reports them): new registrations find the older one.
    email_key: so.Mapped[Optional[str]] = so.mapped_column(sa.String(EMAIL_MAX), unique=True)
    name: so.Mapped[Optional[str]] = so.mapped_column(sa.String(NAME_MAX))
    created_at: so.Mapped[datetime] = so.mapped_column(UTCDateTime, default=utcnow)

    @so.validates("email")
    def _keep_email_key(self, _key: str, email: Optional[str]) -> Optional[str]:
        # Leads made through the ORM (tests, scripts) are found by their address too.
        self.email_key = email_key(email) if email is not None else None
        return email

    def __repr__(self) -> str:
        return f"<Lead {self.id} {self.external_id or self.phone or self.email}>"


# The waiting queue: open contacts without an operator (ix_contacts_waiting's condition).
WAITING = f"operator_id IS NULL AND status = '{ContactStatus.OPEN}'"
CLOSED = f"status = '{ContactStatus.CLOSED}'"


class Contact(Base):
    """One appeal of a lead through a source; open until someone closes it."""

    __tablename__ = "contacts"
    __table_args__ = (
        sa.CheckConstraint(one_of("status", ContactStatus), name="status_known"),
        # Open contacts per operator (load checks), and the waiting queue
        # (operator_id IS NULL AND status = 'open').
        sa.Index("ix_contacts_operator_status", "operator_id", "status"),
        sa.Index("ix_contacts_source_status", "source_id", "status"),
        # The waiting queue in order: a source's oldest waiting contact is one
        # index lookup, however long the queue (partial: waiting contacts only).
        sa.Index(
            "ix_contacts_waiting",
            "source_id",
            "created_at",
            "id",
            sqlite_where=sa.text(WAITING),
            postgresql_where=sa.text(WAITING),
        ),
        # An operator's inbox polls its contacts closed today: a range of this
        # partial index, however many it closed before (open contacts are not in it,
        # so registering costs nothing more).
        sa.Index(
            "ix_contacts_closed_by_operator",
            "operator_id",
            "closed_at",
            sqlite_where=sa.text(CLOSED),
            postgresql_where=sa.text(CLOSED),
        ),
        # Offers waiting to be taken, by deadline: the worker reads the front (partial: offers only).
        sa.Index(
            "ix_contacts_offered_until",
            "offered_until",
            sqlite_where=sa.text("offered_until IS NOT NULL"),
            postgresql_where=sa.text("offered_until IS NOT NULL"),
        ),
    )

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    lead_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey("leads.id"), index=True)
    source_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey("sources.id"))
    operator_id: so.Mapped[Optional[int]] = so.mapped_column(sa.ForeignKey("operators.id"))
    status: so.Mapped[str] = so.mapped_column(sa.String(10), default=ContactStatus.OPEN)
    message: so.Mapped[Optional[str]] = so.mapped_column(sa.Text)
    created_at: so.Mapped[datetime] = so.mapped_column(UTCDateTime, default=utcnow)
    assigned_at: so.Mapped[Optional[datetime]] = so.mapped_column(UTCDateTime)
    closed_at: so.Mapped[Optional[datetime]] = so.mapped_column(UTCDateTime)
    # An offer (its source has offer_timeout_seconds): its operator must take it before this
    # time, or the worker routes it again. NULL: not an offer, or taken (accepted_at says when).
    offered_until: so.Mapped[Optional[datetime]] = so.mapped_column(UTCDateTime)
    accepted_at: so.Mapped[Optional[datetime]] = so.mapped_column(UTCDateTime)

    def __repr__(self) -> str:
        return f"<Contact {self.id} lead={self.lead_id} op={self.operator_id} {self.status}>"


class ContactEvent(Base):
    """One change of a contact's assignment, and why: its history.

    ``registered``: stored, with its first operator (or none: it waits);
    ``queue``: a waiting contact got an operator when capacity appeared;
    ``closed``: closed, its operator's slot given back (the contact keeps who
    handled it). ``actor`` names the user or token that made the change, once
    accounts exist.
    """

    __tablename__ = "contact_events"
    __table_args__ = (sa.CheckConstraint(one_of("reason", EventReason), name="reason_known"),)

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    contact_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey("contacts.id"), index=True)
    reason: so.Mapped[str] = so.mapped_column(sa.String(20))
    from_operator_id: so.Mapped[Optional[int]] = so.mapped_column(sa.ForeignKey("operators.id"))
    to_operator_id: so.Mapped[Optional[int]] = so.mapped_column(sa.ForeignKey("operators.id"))
    actor: so.Mapped[Optional[str]] = so.mapped_column(sa.String(NAME_MAX))
    created_at: so.Mapped[datetime] = so.mapped_column(UTCDateTime, default=utcnow)


CALLER_MAX = 40


class IdempotencyKey(Base):
    """A register request's ``Idempotency-Key`` and the answer it got, kept 24 hours.

    The row is taken before the registration runs and filled in the same
    transaction, so a retry that arrives while the first attempt is still
    running waits for it (PostgreSQL) or queues behind it (SQLite).
    """

    __tablename__ = "idempotency_keys"

    # Keys are the caller's own (``token:3``, ``user:7``): one integration can
    # neither replay nor probe another's.
    caller: so.Mapped[str] = so.mapped_column(sa.String(CALLER_MAX), primary_key=True)
    key: so.Mapped[str] = so.mapped_column(sa.String(IDEMPOTENCY_KEY_MAX), primary_key=True)
    request_hash: so.Mapped[str] = so.mapped_column(sa.String(64))
    status_code: so.Mapped[Optional[int]]
    response_body: so.Mapped[Optional[str]] = so.mapped_column(sa.Text)
    location: so.Mapped[Optional[str]] = so.mapped_column(sa.String(200))
    created_at: so.Mapped[datetime] = so.mapped_column(UTCDateTime, default=utcnow, index=True)


# Where a loaded User keeps the secret of its login session (not a column).
LOGIN_SECRET = "_leadcrm_login_secret"


class User(Base):
    """A person who logs in: a supervisor (everything), intake staff, or an operator (its own inbox)."""

    __tablename__ = "users"
    __table_args__ = (
        sa.CheckConstraint(one_of("role", Role), name="role_known"),
        # Only an operator user is linked to an operator (and may be unlinked for a while).
        sa.CheckConstraint(f"operator_id IS NULL OR role = '{Role.OPERATOR}'", name="operator_only_for_operators"),
    )

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    username: so.Mapped[str] = so.mapped_column(sa.String(USERNAME_MAX), unique=True)
    # werkzeug's scrypt hash; never the password itself.
    password_hash: so.Mapped[str] = so.mapped_column(sa.String(256))
    role: so.Mapped[str] = so.mapped_column(sa.String(20))
    is_active: so.Mapped[bool] = so.mapped_column(default=True, server_default=sa.true())
    # The operator an operator user works as: one user per operator at most.
    operator_id: so.Mapped[Optional[int]] = so.mapped_column(
        sa.ForeignKey("operators.id", ondelete="SET NULL"), unique=True
    )
    created_at: so.Mapped[datetime] = so.mapped_column(UTCDateTime, default=utcnow)

    operator: so.Mapped[Optional[Operator]] = so.relationship()

    # What Flask-Login asks of a user object (``is_active`` is the column):
    # a loaded user is a logged-in one, never the anonymous user.
    is_authenticated = True
    is_anonymous = False

    def get_id(self) -> str:
        # What Flask-Login keeps in the session cookie: the secret of the login
        # session this user came through (set by accounts.start_session and
        # accounts.user_of_session), never anything derived from the user.
        secret = getattr(self, LOGIN_SECRET, None)
        if not secret:
            raise RuntimeError("no login session: start one with accounts.start_session()")
        return secret

    def __repr__(self) -> str:
        return f"<User {self.id} {self.username!r} {self.role}>"


class ApiToken(Base):
    """A named credential for an integration. Only the SHA-256 of the secret is kept."""

    __tablename__ = "api_tokens"
    __table_args__ = (sa.CheckConstraint(one_of("scope", TokenScope), name="scope_known"),)

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    name: so.Mapped[str] = so.mapped_column(sa.String(NAME_MAX))
    scope: so.Mapped[str] = so.mapped_column(sa.String(20))
    token_hash: so.Mapped[str] = so.mapped_column(sa.String(64), unique=True)
    # The first characters of the secret, shown so a token can be recognised.
    prefix: so.Mapped[str] = so.mapped_column(sa.String(16))
    created_by_id: so.Mapped[Optional[int]] = so.mapped_column(sa.ForeignKey("users.id"))
    created_at: so.Mapped[datetime] = so.mapped_column(UTCDateTime, default=utcnow)
    last_used_at: so.Mapped[Optional[datetime]] = so.mapped_column(UTCDateTime)
    revoked_at: so.Mapped[Optional[datetime]] = so.mapped_column(UTCDateTime)

    created_by: so.Mapped[Optional[User]] = so.relationship()

    def __repr__(self) -> str:
        return f"<ApiToken {self.id} {self.name!r} {self.scope}>"


class LoginFailure(Base):
    """One failed login, counted against an account and an address to throttle guessing."""

    __tablename__ = "login_failures"

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    # "pair:<hash of name and ip>", "addr:<ip>", "user:<name>" or "dev:<hash of a device cookie>".
    key: so.Mapped[str] = so.mapped_column(sa.String(USERNAME_MAX + 10))
    created_at: so.Mapped[datetime] = so.mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (sa.Index("ix_login_failures_key_created_at", "key", "created_at"),)


class LoginSession(Base):
    """One logged-in browser. Its cookie holds a random secret; only the secret's SHA-256 is kept.

    Logging out deletes the row, so a copy of the cookie is worthless afterwards.
    """

    __tablename__ = "login_sessions"

    id_hash: so.Mapped[str] = so.mapped_column(sa.String(64), primary_key=True)
    user_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: so.Mapped[datetime] = so.mapped_column(UTCDateTime, default=utcnow)


class OperatorHours(Base):
    """One interval of an operator's weekly working hours, in its schedule's time zone.

    Minutes since midnight: ``starts`` 0-1439, ``ends`` 1-1440 (1440 is the
    midnight that ends the day); ``ends`` before ``starts`` crosses midnight
    (22:00-06:00 ends the next day).
    """

    __tablename__ = "operator_hours"
    __table_args__ = (
        sa.CheckConstraint("weekday BETWEEN 1 AND 7", name="weekday_iso"),
        sa.CheckConstraint("starts BETWEEN 0 AND 1439 AND ends BETWEEN 1 AND 1440", name="minutes_of_day"),
        sa.CheckConstraint("starts <> ends", name="not_empty"),
    )

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    operator_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey("operators.id", ondelete="CASCADE"), index=True)
    weekday: so.Mapped[int]  # ISO: 1 is Monday
    starts: so.Mapped[int]
    ends: so.Mapped[int]


class OperatorAbsence(Base):
    """Days an operator is away (holiday, sick leave): from the start of ``starts_on`` to the end of ``ends_on``."""

    __tablename__ = "operator_absences"
    __table_args__ = (sa.CheckConstraint("ends_on >= starts_on", name="ends_after_start"),)

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    operator_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey("operators.id", ondelete="CASCADE"), index=True)
    starts_on: so.Mapped[date]
    ends_on: so.Mapped[date]
    note: so.Mapped[Optional[str]] = so.mapped_column(sa.String(ABSENCE_NOTE_MAX))


class Setting(Base):
    """One setting of the organisation (the time zone), changed on the settings page."""

    __tablename__ = "settings"

    key: so.Mapped[str] = so.mapped_column(sa.String(64), primary_key=True)
    value: so.Mapped[str] = so.mapped_column(sa.String(200))


class WorkerBeat(Base):
    """A running worker's heartbeat (``flask leadcrm worker``), one row per process."""

    __tablename__ = "worker_beats"

    name: so.Mapped[str] = so.mapped_column(sa.String(200), primary_key=True)  # host:pid
    started_at: so.Mapped[datetime] = so.mapped_column(UTCDateTime)
    beat_at: so.Mapped[datetime] = so.mapped_column(UTCDateTime)


class DrainRequest(Base):
    """A source whose waiting queue must be drained further by the worker.

    Written by a drain that used its whole batch (more may wait behind it) and
    by a shift that starts; deleted by the worker's drain that finds nothing
    more to assign, if nobody asked again meanwhile (``requested_at`` unchanged).
    """

    __tablename__ = "drain_requests"

    source_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey("sources.id", ondelete="CASCADE"), primary_key=True)
    requested_at: so.Mapped[datetime] = so.mapped_column(UTCDateTime)


# A 64-bit id that SQLite still treats as its rowid (an INTEGER PRIMARY KEY): events outlive int32.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class Event(Base):
    """An event out: written by the domain in the same transaction as the change it describes.

    ``data`` is the JSON of what changed as it was then (the contact with its
    lead and operator, as the API shows them). ``position`` is the commit
    order: NULL until the worker's sequencer numbers the committed events
    (``outbox.sequence``); the feed and the webhooks read only numbered ones,
    so a slow transaction's event, whose id is lower than ones committed
    before it, is never passed over. ``subject`` (``contact:12``) orders
    deliveries: one subject's events reach each webhook in order.
    """

    __tablename__ = "events"
    __table_args__ = (
        sa.CheckConstraint(one_of("type", EventType), name="type_known"),
        # The sequencer's front: the committed events still without a position.
        sa.Index(
            "ix_events_unsequenced",
            "id",
            sqlite_where=sa.text("position IS NULL"),
            postgresql_where=sa.text("position IS NULL"),
        ),
    )

    id: so.Mapped[int] = so.mapped_column(BigId, primary_key=True)
    position: so.Mapped[Optional[int]] = so.mapped_column(sa.BigInteger, unique=True)
    type: so.Mapped[str] = so.mapped_column(sa.String(40))
    subject: so.Mapped[str] = so.mapped_column(sa.String(40))
    actor: so.Mapped[Optional[str]] = so.mapped_column(sa.String(NAME_MAX))
    created_at: so.Mapped[datetime] = so.mapped_column(UTCDateTime, index=True)
    data: so.Mapped[str] = so.mapped_column(sa.Text)


class EventSequence(Base):
    """One row: the last position the sequencer gave; its row lock makes sequencers take turns."""

    __tablename__ = "event_sequence"
    __table_args__ = (sa.CheckConstraint("id = 1", name="one_row"),)

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    last_position: so.Mapped[int] = so.mapped_column(sa.BigInteger)


class Webhook(Base):
    """An endpoint that gets the events it subscribed to, signed (Standard Webhooks).

    Its stream: the numbered events after ``sent_to`` that it subscribed to,
    sent in position order by the one worker holding the stream's lease
    (``stream_leased_by``/``stream_leased_until``); the cursor moves past
    each batch once its outcomes are written. A delivered event leaves no row;
    one that failed becomes a delivery (``webhook_deliveries``) retried on its
    own, and its subject's later events queue behind it there. A new endpoint
    starts at the last position, so it gets what happens from then on.

    A stream batch with failures and no success pauses the stream until
    ``stream_due_at`` (backing off with ``stream_failures``); any success
    resumes it. Off (``enabled`` false) it is sent nothing; on again, it
    resumes from the first event not delivered. ``failing_since``: the first
    failure since the last success; failing for the whole retry window, it is
    turned off (``failing``). ``delivered_count``: events it answered 2xx to.
    """

    __tablename__ = "webhooks"
    __table_args__ = (sa.CheckConstraint(one_of("disabled_reason", WebhookDisabled), name="disabled_reason_known"),)

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    url: so.Mapped[str] = so.mapped_column(sa.String(URL_MAX))
    description: so.Mapped[Optional[str]] = so.mapped_column(sa.String(DESCRIPTION_MAX))
    # The subscribed event types, as a JSON list.
    events: so.Mapped[str] = so.mapped_column(sa.Text)
    secret: so.Mapped[str] = so.mapped_column(sa.String(100))
    enabled: so.Mapped[bool] = so.mapped_column(default=True)
    disabled_reason: so.Mapped[Optional[str]] = so.mapped_column(sa.String(20))
    disabled_at: so.Mapped[Optional[datetime]] = so.mapped_column(UTCDateTime)
    failing_since: so.Mapped[Optional[datetime]] = so.mapped_column(UTCDateTime)
    last_success_at: so.Mapped[Optional[datetime]] = so.mapped_column(UTCDateTime)
    sent_to: so.Mapped[int] = so.mapped_column(sa.BigInteger)
    stream_leased_by: so.Mapped[Optional[str]] = so.mapped_column(sa.String(200))
    stream_leased_until: so.Mapped[Optional[datetime]] = so.mapped_column(UTCDateTime)
    stream_due_at: so.Mapped[Optional[datetime]] = so.mapped_column(UTCDateTime)
    stream_failures: so.Mapped[int] = so.mapped_column(default=0, server_default="0")
    delivered_count: so.Mapped[int] = so.mapped_column(sa.BigInteger, default=0, server_default="0")
    created_at: so.Mapped[datetime] = so.mapped_column(UTCDateTime, default=utcnow)


class WebhookDelivery(Base):
    """One event to send to one webhook off its stream, until a 2xx answer (or given up after the
    retry window): one that failed from the stream, one queued behind such a one of its subject, or
    one sent again by hand (redeliver).

    ``leased_by``/``leased_until``: the worker sending it now; a worker killed
    mid-send leaves a lease that runs out, and another sends it again (at
    least once). One subject's deliveries go one at a time, in position order.
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        sa.CheckConstraint(one_of("state", DeliveryState), name="state_known"),
        sa.UniqueConstraint("webhook_id", "event_id", name="uq_webhook_deliveries_webhook_id_event_id"),
        # What is still to send, per webhook in order; and per subject, the head of its line.
        sa.Index(
            "ix_webhook_deliveries_pending",
            "webhook_id",
            "next_attempt_at",
            sqlite_where=sa.text("state = 'pending'"),
            postgresql_where=sa.text("state = 'pending'"),
        ),
        sa.Index(
            "ix_webhook_deliveries_subject",
            "webhook_id",
            "subject",
            "position",
            sqlite_where=sa.text("state = 'pending'"),
            postgresql_where=sa.text("state = 'pending'"),
        ),
        sa.Index("ix_webhook_deliveries_event_id", "event_id"),
    )

    id: so.Mapped[int] = so.mapped_column(BigId, primary_key=True)
    webhook_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey("webhooks.id", ondelete="CASCADE"))
    event_id: so.Mapped[int] = so.mapped_column(sa.BigInteger, sa.ForeignKey("events.id", ondelete="CASCADE"))
    position: so.Mapped[int] = so.mapped_column(sa.BigInteger)
    subject: so.Mapped[str] = so.mapped_column(sa.String(40))
    state: so.Mapped[str] = so.mapped_column(sa.String(20), default=DeliveryState.PENDING)
    attempts: so.Mapped[int] = so.mapped_column(default=0)
    # NULL behind a pending delivery of the same subject: due when the one before it is done.
    next_attempt_at: so.Mapped[Optional[datetime]] = so.mapped_column(UTCDateTime)
    first_attempt_at: so.Mapped[Optional[datetime]] = so.mapped_column(UTCDateTime)
    leased_by: so.Mapped[Optional[str]] = so.mapped_column(sa.String(200))
    leased_until: so.Mapped[Optional[datetime]] = so.mapped_column(UTCDateTime)
    delivered_at: so.Mapped[Optional[datetime]] = so.mapped_column(UTCDateTime)


class WebhookAttempt(Base):
    """One try at sending (a delivery or a test ping): the delivery log, the last few per webhook."""

    __tablename__ = "webhook_attempts"

    id: so.Mapped[int] = so.mapped_column(BigId, primary_key=True)
    webhook_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey("webhooks.id", ondelete="CASCADE"), index=True)
    # The event (NULL for a ping); not a foreign key: the log outlives the events it names.
    event_id: so.Mapped[Optional[int]] = so.mapped_column(sa.BigInteger)
    event_type: so.Mapped[str] = so.mapped_column(sa.String(40))
    at: so.Mapped[datetime] = so.mapped_column(UTCDateTime)
    status_code: so.Mapped[Optional[int]]
    duration_ms: so.Mapped[int]
    error: so.Mapped[Optional[str]] = so.mapped_column(sa.String(500))
