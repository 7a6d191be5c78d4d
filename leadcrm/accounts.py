"""Accounts: users and their roles, API tokens, and throttled login.

Passwords are kept as werkzeug scrypt hashes. API tokens are random secrets
shown once; only their SHA-256 is stored (a token has 256 bits of entropy, so
a fast hash is enough and lookups stay a single indexed read).
"""

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from flask_babel import lazy_gettext as _l
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from leadcrm.database import unique_or
from leadcrm.errors import Conflict, DomainError, InvalidInput, NotFound
from leadcrm.models import (
    PASSWORD_MAX,
    ROLES,
    SCOPES,
    SUPERVISOR,
    USERNAME_MAX,
    ApiToken,
    LoginFailure,
    User,
    utcnow,
)

PASSWORD_MIN = 10
USERNAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._@-]*")
TOKEN_PREFIX = "lcrm_"
# Failed logins are counted over this window, per account and per address.
THROTTLE_WINDOW = timedelta(minutes=15)
MAX_FAILURES_PER_ACCOUNT = 5
MAX_FAILURES_PER_ADDRESS = 20
# A token's last use is written at most this often, so reads stay reads.
LAST_USED_PRECISION = timedelta(minutes=1)
# Checked against when the username is unknown, so both cases take as long.
_DUMMY_HASH = generate_password_hash("leadcrm: no such user")


class LoginThrottled(DomainError):
    code = "too_many_attempts"

    def __init__(self, message: object, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


# Users


def normalise_username(username: str) -> str:
    return username.strip().lower()


def validate_username(username: str) -> str:
    name = normalise_username(username)
    if not name or len(name) > USERNAME_MAX or not USERNAME_PATTERN.fullmatch(name):
        raise InvalidInput(
            _l("Use 1 to %(max)s lowercase letters, digits and . _ @ -", max=USERNAME_MAX),
            {"username": _l("Not a valid username.")},
        )
    return name


def validate_password(password: str) -> str:
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        message = _l("Use %(min)s to %(max)s characters.", min=PASSWORD_MIN, max=PASSWORD_MAX)
        raise InvalidInput(message, {"password": message})
    return password


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidInput(_l("Unknown role."), {"role": _l("Unknown role.")})
    return role


def get_user(session: Session, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(_l("No user with id %(id)s.", id=user_id))
    return user


def find_user(session: Session, username: str) -> User | None:
    return session.scalar(sa.select(User).where(User.username == normalise_username(username)))


def list_users(session: Session) -> list[User]:
    return list(session.scalars(sa.select(User).order_by(User.username)))


def create_user(session: Session, *, username: str, password: str, role: str) -> User:
    user = User(
        username=validate_username(username),
        password_hash=generate_password_hash(validate_password(password)),
        role=_check_role(role),
    )
    taken = Conflict(_l("The username is taken."), {"username": _l("The username is taken.")})
    with unique_or(session, taken):
        session.add(user)
    return user


def set_password(session: Session, user: User, password: str) -> None:
    """Change the password; the user's other sessions end (their stamp no longer matches)."""
    user.password_hash = generate_password_hash(validate_password(password))
    session.flush()


def update_user(session: Session, user: User, *, role: str | None = None, is_active: bool | None = None) -> User:
    """Change role or active flag. The last active supervisor can be neither demoted nor deactivated."""
    if role is not None:
        _check_role(role)
    loses_supervisor = (
        user.role == SUPERVISOR and user.is_active and (role not in (None, SUPERVISOR) or is_active is False)
    )
    if loses_supervisor:
        # Lock the active supervisors' rows: two supervisors demoting each other at once cannot both win.
        ids = session.scalars(
            sa.select(User.id).where(User.role == SUPERVISOR, User.is_active.is_(True)).with_for_update()
        ).all()
        if set(ids) <= {user.id}:
            raise Conflict(
                _l("%(name)s is the last active supervisor; make someone else a supervisor first.", name=user.username)
            )
    if role is not None:
        user.role = role
    if is_active is not None:
        user.is_active = is_active
    session.flush()
    return user


def ensure_admin(session: Session, password: str | None) -> str | None:
    """On a database without users, create supervisor ``admin``.

    Uses ``password`` if given, else a random one. Returns the password when
    one was generated (to be shown once), None otherwise.
    """
    if session.scalar(sa.select(sa.func.count()).select_from(User)):
        return None
    generated = None if password else secrets.token_urlsafe(12)
    try:
        create_user(session, username="admin", password=password or generated, role=SUPERVISOR)  # type: ignore[arg-type]
    except Conflict:
        return None  # another server created it at the same moment
    return generated


# Login and its throttle


def authenticate(
    session: Session, username: str, password: str, address: str, now: datetime | None = None
) -> User | None:
    """The active user with this username and password, or None.

    Raises LoginThrottled while the account or the address has too many recent
    failures; each failure is recorded (commit it even though login failed).
    """
    now = now or utcnow()
    name = normalise_username(username)[:USERNAME_MAX]
    keys = {f"user:{name}": MAX_FAILURES_PER_ACCOUNT, f"addr:{address[:64]}": MAX_FAILURES_PER_ADDRESS}
    since = now - THROTTLE_WINDOW
    session.execute(sa.delete(LoginFailure).where(LoginFailure.created_at < since))
    for key, limit in keys.items():
        times = session.scalars(
            sa.select(LoginFailure.created_at)
            .where(LoginFailure.key == key, LoginFailure.created_at >= since)
            .order_by(LoginFailure.created_at.desc())
            .limit(limit)
        ).all()
        if len(times) >= limit:
            retry = int((times[-1] + THROTTLE_WINDOW - now).total_seconds()) + 1
            raise LoginThrottled(
                _l("Too many failed attempts. Try again in %(minutes)s min.", minutes=-(-retry // 60)), retry
            )
    user = find_user(session, name)
    valid = check_password_hash(user.password_hash if user else _DUMMY_HASH, password[:PASSWORD_MAX])
    if user is not None and valid and user.is_active:
        session.execute(sa.delete(LoginFailure).where(LoginFailure.key == f"user:{name}"))
        return user
    session.add_all(LoginFailure(key=key, created_at=now) for key in keys)
    session.flush()
    return None


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
    if scope not in SCOPES:
        raise InvalidInput(_l("Unknown scope."), {"scope": _l("Unknown scope.")})
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(name=name, scope=scope, token_hash=_hash(secret), prefix=secret[:12], created_by=created_by)
    session.add(token)
    session.flush()
    return NewToken(token, secret)


def revoke_token(session: Session, token_id: int) -> ApiToken:
    token = session.get(ApiToken, token_id)
    if token is None:
        raise NotFound(_l("No token with id %(id)s.", id=token_id))
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        session.flush()
    return token


def token_by_secret(session: Session, secret: str) -> ApiToken | None:
    """The live token with this secret, or None (unknown or revoked)."""
    if not secret.startswith(TOKEN_PREFIX) or len(secret) > 100:
        return None
    return session.scalar(
        sa.select(ApiToken).where(ApiToken.token_hash == _hash(secret), ApiToken.revoked_at.is_(None))
    )


def last_used_is_stale(token: ApiToken, now: datetime) -> bool:
    return token.last_used_at is None or now - token.last_used_at >= LAST_USED_PRECISION


def mark_used(connection: sa.Connection, token_id: int, now: datetime) -> None:
    """Write the token's last use, in a transaction of its own on ``connection``.

    A row another transaction holds is skipped (PostgreSQL), not waited for:
    that one records a use too.
    """
    free = sa.select(ApiToken.id).where(ApiToken.id == token_id).with_for_update(skip_locked=True)
    with connection.begin():
        connection.execute(sa.update(ApiToken).where(ApiToken.id.in_(free.scalar_subquery())).values(last_used_at=now))


def actor_name(user: User | None = None, token: ApiToken | None = None) -> str | None:
    """How the history names who made a change."""
    if token is not None:
        return f"token:{token.name} (#{token.id})"
    if user is not None:
        return f"user:{user.username}"
    return None
