"""Accounts: users and their roles, API tokens, and throttled login.

Passwords are kept as werkzeug scrypt hashes. API tokens are random secrets
shown once; only their SHA-256 is stored (a token has 256 bits of entropy, so
a fast hash is enough and lookups stay a single indexed read).
"""

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import sqlalchemy as sa
from itsdangerous import BadData, URLSafeSerializer
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from leadcrm import storage
from leadcrm.database import begin_write, unique_or
from leadcrm.errors import Conflict, DomainError, InvalidInput, Message, NotFound, Text
from leadcrm.models import LOGIN_SECRET, ApiToken, LoginFailure, LoginSession, Operator, User, utcnow
from leadcrm.storage import TokenRecord, Tx
from leadcrm.vocabulary import PASSWORD_MAX, PASSWORD_MIN, USERNAME_MAX, Role, TokenScope

USERNAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._@-]*")
TOKEN_PREFIX = "lcrm_"
# Failed logins are counted over this window. An account from one address, and
# an address across accounts, are refused after this many failures until the
# oldest of them leaves the window.
THROTTLE_WINDOW = timedelta(minutes=15)
MAX_FAILURES_PER_ACCOUNT_AND_ADDRESS = 5
MAX_FAILURES_PER_ADDRESS = 20
# An account failing from many addresses is slowed down for every browser it
# has never logged in from: from this many failures in the window on, each
# attempt waits 1, 2, 4, ... seconds (at most ACCOUNT_DELAY_MAX) after the
# account's latest failure.
ACCOUNT_SLOWDOWN_AFTER = 10
ACCOUNT_DELAY_MAX = timedelta(seconds=30)
# A browser that logged in to an account before carries a device cookie for it
# (OWASP's device cookies): it skips that slowdown, so attackers failing from
# many addresses cannot keep the account's users out. Its failures count
# against the device instead (and against its address, as any attempt's do).
MAX_FAILURES_PER_DEVICE = 5
DEVICE_COOKIE_MAX_AGE = timedelta(days=365)
_DEVICE_COOKIE_MAX_LENGTH = 500
# A token's last use is written at most this often, so reads stay reads.
LAST_USED_PRECISION = timedelta(minutes=1)
# Checked against when the username is unknown, so both cases take as long.
_DUMMY_HASH = generate_password_hash("leadcrm: no such user")


class LoginThrottled(DomainError):
    code = "too_many_attempts"

    def __init__(self, message: Text, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


# Users


def normalise_username(username: str) -> str:
    return username.strip().lower()


def validate_username(username: str) -> str:
    name = normalise_username(username)
    if not name or len(name) > USERNAME_MAX or not USERNAME_PATTERN.fullmatch(name):
        raise InvalidInput(
            Message("Use 1 to %(max)s lowercase letters, digits and . _ @ -", max=USERNAME_MAX),
            {"username": Message("Not a valid username.")},
        )
    return name


def validate_password(password: str) -> str:
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        message = Message("Use %(min)s to %(max)s characters.", min=PASSWORD_MIN, max=PASSWORD_MAX)
        raise InvalidInput(message, {"password": message})
    return password


def _check_role(role: str) -> str:
    if role not in tuple(Role):
        raise InvalidInput(Message("Unknown role."), {"role": Message("Unknown role.")})
    return role


def get_user(session: Session, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(Message("No user with id %(id)s.", id=user_id))
    return user


def find_user(session: Session, username: str) -> User | None:
    return session.scalar(sa.select(User).where(User.username == normalise_username(username)))


def list_users(session: Session) -> list[User]:
    return list(session.scalars(sa.select(User).order_by(User.username)))


def create_user(session: Session, *, username: str, password: str, role: str, operator_id: int | None = None) -> User:
    """Add a user. An operator user is linked to its operator (``operator_id``), and only an operator user is."""
    user = User(
        username=validate_username(username),
        password_hash=generate_password_hash(validate_password(password)),
        role=_check_role(role),
    )
    _check_link(session, role, operator_id)
    taken = Conflict(Message("The username is taken."), {"username": Message("The username is taken.")})
    with unique_or(session, taken):
        session.add(user)
    if operator_id is not None:
        _link(session, user, operator_id)
    return user


def _check_link(session: Session, role: str, operator_id: int | None) -> None:
    """An operator user needs its operator; the other roles have none."""
    if role == Role.OPERATOR and operator_id is None:
        message = Message("Choose the operator this user works as.")
        raise InvalidInput(message, {"operator_id": message})
    if role != Role.OPERATOR and operator_id is not None:
        message = Message("Only an operator user is linked to an operator.")
        raise InvalidInput(message, {"operator_id": message})
    if operator_id is not None and session.get(Operator, operator_id) is None:
        message = Message("No operator with id %(id)s.", id=operator_id)
        raise InvalidInput(message, {"operator_id": message})


def _link(session: Session, user: User, operator_id: int | None) -> None:
    """Link ``user`` to the operator (None: unlink); an operator has one user at most."""
    taken = Conflict(
        Message("This operator already has a user; unlink it first."),
        {"operator_id": Message("This operator already has a user.")},
    )
    with unique_or(session, taken):
        user.operator_id = operator_id


def link_operator(session: Session, user: User, operator_id: int | None) -> User:
    """Link an operator user to an operator, or unlink it (None). The operator and its contacts stay as they are."""
    if operator_id is not None:
        _check_link(session, user.role, operator_id)
    _link(session, user, operator_id)
    return user


def set_password(session: Session, user: User, password: str, keep_session: str | None = None) -> None:
    """Change the password; every session of the user ends but ``keep_session`` (the secret of the one asking)."""
    set_password_hash(session, user, hash_password(password), keep_session)


def set_password_hash(session: Session, user: User, password_hash: str, keep_session: str | None = None) -> None:
    """Store a hash made by hash_password(); like set_password() without hashing (hash before taking a lock)."""
    user.password_hash = password_hash
    end_sessions(session, user.id, keep=keep_session)
    session.flush()


def update_user(
    session: Session,
    user: User,
    *,
    role: str | None = None,
    is_active: bool | None = None,
    operator_id: int | None = None,
) -> User:
    """Change role or active flag. The last active supervisor can be neither demoted nor deactivated.

    Becoming an operator user takes its operator (``operator_id``); leaving the role unlinks it.
    Deactivating an operator user leaves its operator and contacts as they are."""
    if role is not None:
        _check_role(role)
    loses_supervisor = (
        user.role == Role.SUPERVISOR and user.is_active and (role not in (None, Role.SUPERVISOR) or is_active is False)
    )
    if loses_supervisor:
        # Lock the active supervisors' rows: two supervisors demoting each other at once cannot both win.
        ids = session.scalars(
            sa.select(User.id).where(User.role == Role.SUPERVISOR, User.is_active.is_(True)).with_for_update()
        ).all()
        if set(ids) <= {user.id}:
            raise Conflict(
                Message(
                    "%(name)s is the last active supervisor; make someone else a supervisor first.", name=user.username
                )
            )
    if role is not None and role != user.role:
        if role == Role.OPERATOR:
            # A user becomes an operator user with its operator: link_operator() next, or the Users page's form.
            _check_link(session, role, operator_id)
        user.role = role
        if role != Role.OPERATOR:
            user.operator_id = None  # unlinked: the operator and its contacts stay as they are
        elif operator_id is not None:
            _link(session, user, operator_id)
    if is_active is not None:
        user.is_active = is_active
        if not is_active:
            end_sessions(session, user.id)
    session.flush()
    return user


def has_users(session: Session) -> bool:
    return session.scalar(sa.select(sa.exists().select_from(User))) or False


def ensure_admin(session: Session, password: str | None) -> str | None:
    """On a database without users, create supervisor ``admin``.

    Uses ``password`` if given, else a random one. Returns the password when
    one was generated (to be shown once), None otherwise.
    """
    if session.scalar(sa.select(sa.func.count()).select_from(User)):
        return None
    generated: str | None = None
    if not password:
        password = generated = secrets.token_urlsafe(12)
    try:
        create_user(session, username="admin", password=password, role=Role.SUPERVISOR)
    except Conflict:
        return None  # another server created it at the same moment
    return generated


# Login and its throttle


def hash_password(password: str) -> str:
    """The stored form of a new password (validated first). Slow on purpose: call it with no lock held."""
    return generate_password_hash(validate_password(password))


def _throttled(wait: timedelta, message: Text | None = None) -> LoginThrottled:
    retry = max(1, int(wait.total_seconds()) + 1)
    if message is None:
        message = Message("Too many failed attempts. Try again in %(minutes)s min.", minutes=-(-retry // 60))
    return LoginThrottled(message, retry)


@dataclass(frozen=True)
class DeviceCookie:
    """The device cookie a login attempt came with (empty: none), and the key that signs such cookies."""

    value: str
    secret_key: str | bytes


def _device_serializer(secret_key: str | bytes) -> URLSafeSerializer:
    return URLSafeSerializer(
        secret_key,
        salt="leadcrm.device",
        signer_kwargs={"key_derivation": "hmac", "digest_method": hashlib.sha256},
    )


def _password_salt(user: User) -> str:
    # The signature covers the password hash without the cookie showing it: a new password ends the devices.
    return f"leadcrm.device\n{user.password_hash}"


def issue_device_cookie(secret_key: str | bytes, user: User, now: datetime | None = None) -> str:
    """A device cookie for a browser that has just proved ``user``'s password (see DeviceCookie).

    Signed with ``secret_key``; names the user (id and username), when it was
    issued and a random nonce (each browser's own), and is valid only while
    the user keeps this password and for DEVICE_COOKIE_MAX_AGE.
    """
    issued = int((now or utcnow()).timestamp())
    payload = [user.id, user.username, issued, secrets.token_urlsafe(9)]
    return _device_serializer(secret_key).dumps(payload, salt=_password_salt(user))


def _device_key(device: DeviceCookie | None, user: User | None, now: datetime) -> str | None:
    """The throttle key of ``device`` if it is a valid device cookie for ``user``, else None."""
    if device is None or user is None or not device.value or len(device.value) > _DEVICE_COOKIE_MAX_LENGTH:
        return None
    try:
        payload = _device_serializer(device.secret_key).loads(device.value, salt=_password_salt(user))
    except BadData:
        return None
    if not (isinstance(payload, list) and len(payload) == 4 and isinstance(payload[2], int)):
        return None
    user_id, username, issued, _ = payload
    age = now - datetime.fromtimestamp(issued, UTC)
    if user_id != user.id or username != user.username or age > DEVICE_COOKIE_MAX_AGE:
        return None
    return "dev:" + hashlib.sha256(device.value.encode()).hexdigest()[:40]


class ThrottleKeys(NamedTuple):
    """The keys a login attempt counts against; ``device`` only with a valid device cookie for the account."""

    pair: str  # the account from this address
    address: str
    account: str
    device: str | None

    def counted(self) -> tuple[str, ...]:
        """The keys a failure of this attempt is recorded under: a known device's, not the account's."""
        if self.device is not None:
            return self.pair, self.address, self.device
        return self.pair, self.address, self.account


def _throttle_keys(name: str, address: str, device: str | None = None) -> ThrottleKeys:
    address = address[:64]
    # Hashed: a username and an address together may be longer than the key column.
    pair = hashlib.sha256(f"{name}\n{address}".encode()).hexdigest()[:40]
    return ThrottleKeys(f"pair:{pair}", f"addr:{address}", f"user:{name}", device)


def _check_throttle(session: Session, keys: ThrottleKeys, now: datetime) -> None:
    """Raise LoginThrottled if an attempt with these keys may not be checked now."""
    since = now - THROTTLE_WINDOW
    limits = [(keys.pair, MAX_FAILURES_PER_ACCOUNT_AND_ADDRESS), (keys.address, MAX_FAILURES_PER_ADDRESS)]
    if keys.device is not None:
        limits.append((keys.device, MAX_FAILURES_PER_DEVICE))
    for key, limit in limits:
        times = session.scalars(
            sa.select(LoginFailure.created_at)
            .where(LoginFailure.key == key, LoginFailure.created_at >= since)
            .order_by(LoginFailure.created_at.desc())
            .limit(limit)
        ).all()
        if len(times) >= limit:
            raise _throttled(times[-1] + THROTTLE_WINDOW - now)
    if keys.device is not None:
        return  # a browser that logged in to this account before is not slowed down with the rest
    count, latest = session.execute(
        sa.select(sa.func.count(), sa.func.max(LoginFailure.created_at)).where(
            LoginFailure.key == keys.account, LoginFailure.created_at >= since
        )
    ).one()
    if count >= ACCOUNT_SLOWDOWN_AFTER:
        delay = timedelta(seconds=min(2 ** (count - ACCOUNT_SLOWDOWN_AFTER), ACCOUNT_DELAY_MAX.total_seconds()))
        if now < latest + delay:
            wait = latest + delay - now
            raise _throttled(
                wait,
                Message(
                    "Many failed attempts for this account: try again in %(seconds)s s.",
                    seconds=max(1, int(wait.total_seconds()) + 1),
                ),
            )


def _lock_throttle_keys(session: Session, keys: tuple[str | None, ...]) -> None:
    """Serialise attempts that count against the same keys, so that their recount is exact.

    SQLite's write transaction already holds the only write lock; PostgreSQL
    takes a transaction-scoped advisory lock per key, in one global order.
    """
    if session.get_bind().dialect.name != "postgresql":
        return
    lock_ids = sorted(
        {int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True) for key in keys if key}
    )
    for lock_id in lock_ids:
        session.execute(sa.select(sa.func.pg_advisory_xact_lock(lock_id)))


def authenticate(
    session: Session,
    username: str,
    password: str,
    address: str,
    now: datetime | None = None,
    *,
    device: DeviceCookie | None = None,
    open_session: timedelta | None = None,
) -> User | None:
    """The active user with this username and password, or None; commits what it records.

    Raises LoginThrottled while this account from this address, or this
    address, has too many recent failures, or while the account as a whole is
    being slowed down. An attempt with a valid ``device`` cookie for this
    account (issue_device_cookie) is not slowed down with the account; its
    device has a limit of its own instead, and its failures count against
    the device, not the account, while its success leaves the account's count
    to the attack it may be under.

    Runs its own transactions, so call it with none open: a read transaction
    (the user and the throttle's counts), the password hash with no
    transaction and no lock, then a short write transaction that recounts
    under the throttle's locks and records the failure or clears the
    account's count. Concurrent attempts are counted exactly.

    With ``open_session`` (its maximum age), a successful login also opens its
    login session in that write transaction (see start_session), so a new
    password, a deactivation or "log out everywhere" committed after the check
    ends it too: none can fall between the check and the session.
    """
    if session.in_transaction():
        raise RuntimeError("authenticate() runs its own transactions: call it with none open")
    now = now or utcnow()
    name = normalise_username(username)[:USERNAME_MAX]
    try:
        user = find_user(session, name)
        keys = _throttle_keys(name, address, _device_key(device, user, now))
        _check_throttle(session, keys, now)  # refused at once: no hash
        checked_hash = user.password_hash if user else _DUMMY_HASH
    finally:
        session.commit()  # no lock (and no snapshot) kept while hashing
    valid = check_password_hash(checked_hash, password[:PASSWORD_MAX])
    begin_write(session)
    try:
        _lock_throttle_keys(session, keys)
        _check_throttle(session, keys, now)  # others may have failed while this one hashed
        _forget_older(session, LoginFailure.id, LoginFailure.created_at, now - THROTTLE_WINDOW)
        user = find_user(session, name)
        if user is not None and user.is_active and valid and user.password_hash == checked_hash:
            # A known device clears its own count, not the account's: the real user logging in on their
            # own browser must not hand an attack on the account a fresh run of quick guesses.
            cleared = (keys.pair, keys.device if keys.device is not None else keys.account)
            # Rows of these keys are ours under the locks; a locked one is old and being forgotten by another.
            counted = sa.select(LoginFailure.id).where(LoginFailure.key.in_(cleared)).with_for_update(skip_locked=True)
            session.execute(sa.delete(LoginFailure).where(LoginFailure.id.in_(counted.scalar_subquery())))
            if open_session is not None:
                start_session(session, user, open_session, now)
        else:
            user = None
            session.add_all(LoginFailure(key=key, created_at=now) for key in keys.counted())
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return user


# Login sessions


def _forget_older(
    session: Session, key: sa.orm.InstrumentedAttribute, created_at: sa.orm.InstrumentedAttribute, before: datetime
) -> None:
    """Delete rows created before ``before``, lazily: a bounded batch, skipping rows another transaction
    holds (it is deleting them, or counting them under its own locks)."""
    table = key.class_
    stale = sa.select(key).where(created_at < before).limit(100).with_for_update(skip_locked=True)
    session.execute(sa.delete(table).where(key.in_(stale.scalar_subquery())))


def start_session(session: Session, user: User, max_age: timedelta, now: datetime | None = None) -> str:
    """Open a login session for ``user`` and return its secret, for the cookie (also kept on ``user``).

    Sessions older than ``max_age`` are deleted here, lazily (user_of_session refuses them already).
    """
    now = now or utcnow()
    _forget_older(session, LoginSession.id_hash, LoginSession.created_at, now - max_age)
    secret = secrets.token_urlsafe(32)
    session.add(LoginSession(id_hash=_hash(secret), user_id=user.id, created_at=now))
    session.flush()
    setattr(user, LOGIN_SECRET, secret)
    return secret


def user_of_session(session: Session, secret: str, max_age: timedelta, now: datetime | None = None) -> User | None:
    """The active user of the login session with this secret, if it is open and younger than ``max_age``.

    One indexed read: the session row by its hash, joined to its user.
    """
    if not secret or len(secret) > 100:
        return None
    now = now or utcnow()
    user = session.scalar(
        sa.select(User)
        .join(LoginSession, LoginSession.user_id == User.id)
        .where(
            LoginSession.id_hash == _hash(secret),
            LoginSession.created_at >= now - max_age,
            User.is_active.is_(True),
        )
    )
    if user is not None:
        setattr(user, LOGIN_SECRET, secret)
    return user


def end_session(session: Session, secret: str) -> None:
    """Log out: the session's cookie opens nothing any more, wherever a copy of it is."""
    session.execute(sa.delete(LoginSession).where(LoginSession.id_hash == _hash(secret)))


def end_sessions(session: Session, user_id: int, keep: str | None = None) -> None:
    """End every login session of the user, except the one with secret ``keep``."""
    ended = sa.delete(LoginSession).where(LoginSession.user_id == user_id)
    if keep:
        ended = ended.where(LoginSession.id_hash != _hash(keep))
    session.execute(ended)


# API tokens


@dataclass(frozen=True)
class NewToken:
    token: ApiToken
    secret: str  # shown to the supervisor once, never stored


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def list_tokens(session: Session) -> list[ApiToken]:
    return list(session.scalars(sa.select(ApiToken).order_by(ApiToken.revoked_at.is_not(None), ApiToken.id.desc())))


def create_token(session: Session, *, name: str, scope: str, created_by: User | None) -> NewToken:
    if scope not in tuple(TokenScope):
        raise InvalidInput(Message("Unknown scope."), {"scope": Message("Unknown scope.")})
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(name=name, scope=scope, token_hash=_hash(secret), prefix=secret[:12], created_by=created_by)
    session.add(token)
    session.flush()
    return NewToken(token, secret)


def revoke_token(session: Session, token_id: int) -> ApiToken:
    token = session.get(ApiToken, token_id)
    if token is None:
        raise NotFound(Message("No token with id %(id)s.", id=token_id))
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        session.flush()
    return token


def token_by_secret(tx: Tx, secret: str) -> TokenRecord | None:
    """The live token with this secret, or None (unknown or revoked).

    Every API request asks this: one prebuilt statement in the caller's
    unit of work (the ORM's select and object cost a registration 1 ms).
    """
    if not secret.startswith(TOKEN_PREFIX) or len(secret) > 100:
        return None
    return storage.token_by_hash(tx, _hash(secret))


def last_used_is_stale(token: TokenRecord, now: datetime) -> bool:
    return token.last_used_at is None or now - token.last_used_at >= LAST_USED_PRECISION


def mark_used(connection: sa.Connection, token_id: int, now: datetime) -> None:
    """Write the token's last use, in a transaction of its own on ``connection``.

    A row another transaction holds is skipped (PostgreSQL), not waited for:
    that one records a use too.
    """
    free = sa.select(ApiToken.id).where(ApiToken.id == token_id).with_for_update(skip_locked=True)
    with connection.begin():
        connection.execute(sa.update(ApiToken).where(ApiToken.id.in_(free.scalar_subquery())).values(last_used_at=now))


def actor_name(user: User | None = None, token: TokenRecord | ApiToken | None = None) -> str | None:
    """How the history names who made a change."""
    if token is not None:
        return f"token:{token.name} (#{token.id})"
    if user is not None:
        return f"user:{user.username}"
    return None
