"""Who may do what: login sessions, API tokens, roles, CSRF and the headers every response carries.

Every view declares who may call it, with ``@allow(...)`` or ``@public``. One
``before_request`` hook checks the declaration before the view runs; a view
without one is refused (and tests/test_access.py fails), so forgetting the
check cannot open a hole.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import sqlalchemy as sa
from flask import Flask, Response, current_app, g, request, url_for
from flask.sessions import SecureCookieSessionInterface
from flask_babel import lazy_gettext as _l
from flask_login import current_user
from werkzeug.exceptions import Forbidden, Unauthorized
from werkzeug.middleware.proxy_fix import ProxyFix

from leadcrm import accounts, queries
from leadcrm.database import NO_WAIT, WRITE_OPTION
from leadcrm.extensions import csrf, db, login_manager
from leadcrm.models import Contact, User, utcnow
from leadcrm.storage import TokenRecord, Tx, act_as
from leadcrm.units import request_unit, runs_on_driver_connection
from leadcrm.vocabulary import Role, TokenScope

F = TypeVar("F", bound=Callable[..., Any])
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")

# Our own scripts and styles only: no inline script or style, no eval, no framing.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}


@dataclass(frozen=True)
class Access:
    """Who may call a view: logged-in users with one of ``roles``; on the API, also tokens.

    A ``full`` token may call every API endpoint; a ``register`` token only
    those declared with ``register_token=True``.
    """

    roles: tuple[str, ...] = ()
    register_token: bool = False
    public: bool = False


ACCESS = "leadcrm_access"
PUBLIC_ENDPOINTS = {"static"}  # registered by Flask itself


def allow(*roles: str, register_token: bool = False) -> Callable[[F], F]:
    def declare(view: F) -> F:
        setattr(view, ACCESS, Access(roles=roles, register_token=register_token))
        return view

    return declare


def public(view: F) -> F:
    """Open to anyone: the login page, /healthz, the language switch."""
    setattr(view, ACCESS, Access(public=True))
    return view


def access_of(app: Flask, endpoint: str) -> Access | None:
    if endpoint in PUBLIC_ENDPOINTS:
        return Access(public=True)
    return getattr(app.view_functions[endpoint], ACCESS, None)


def can(role_needed: str) -> bool:
    """For templates: may the current user do what ``role_needed`` may? (Supervisors may do what intake
    staff may; an operator user's inbox is its own.)"""
    if not current_user.is_authenticated:
        return False
    if role_needed == Role.OPERATOR:
        return bool(current_user.role == Role.OPERATOR)
    return bool(current_user.role == Role.SUPERVISOR or current_user.role == role_needed)


def operator_user() -> bool:
    """Is the caller a logged-in operator user (whose rights end at its own operator)? Never for a token."""
    return g.get("leadcrm_token") is None and current_user.is_authenticated and current_user.role == Role.OPERATOR


def own_operator_id() -> int | None:
    """The operator the logged-in operator user works as; None for anyone else, or an unlinked operator user."""
    return current_user.operator_id if operator_user() else None


def check_own_contact(operator_id: int | None) -> None:
    """An operator user may only reach its own contacts (``operator_id``: the contact's operator); others may."""
    if operator_user() and (operator_id is None or operator_id != own_operator_id()):
        raise Forbidden(_l("This contact is not yours: an operator sees only its own contacts."))


def check_own_operator(operator_id: int) -> None:
    """An operator user may only reach its own operator; others may."""
    if operator_user() and operator_id != own_operator_id():
        raise Forbidden(_l("An operator user may only see and change its own operator."))


def check_own_lead(lead_id: int) -> None:
    """An operator user may only reach the leads of its own contacts (at least one assigned to it); others may."""
    if not operator_user():
        return
    own = own_operator_id()
    if own is None or not queries.operator_holds_lead(db.session(), own, lead_id):
        raise Forbidden(_l("None of this lead's contacts is yours: an operator sees only the leads of its contacts."))


def others_summary_ids(contacts: Sequence[Contact]) -> set[int]:
    """Which of ``contacts`` the caller sees as a summary line only: for an operator user, the contacts
    that are not its own (no message, no link); for anyone else, none."""
    if not operator_user():
        return set()
    own = own_operator_id()
    return {c.id for c in contacts if own is None or c.operator_id != own}


class SessionInterface(SecureCookieSessionInterface):
    """The session cookie is Secure whenever the request came over HTTPS (or the config says so)."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"]) or request.is_secure


@login_manager.user_loader
def load_user(cookie_id: str) -> User | None:
    """The user of a login cookie, while its login session is open (not logged out, not expired, user active)."""
    return accounts.user_of_session(db.session(), cookie_id, current_app.permanent_session_lifetime)


# The API's answer to an unknown caller names the scheme it takes (RFC 6750).
BEARER_CHALLENGE = 'Bearer realm="leadcrm"'


class LoginRequired(Unauthorized):
    """Who is asking is not known: a page sends the browser to the login form, the API answers 401.

    ``login_url`` is where a page goes (back here after the login, for a GET);
    the API's answer carries the Bearer challenge instead.
    """

    def __init__(self, description: Any, login_url: str) -> None:
        super().__init__(description)
        self.login_url = login_url

    def get_headers(self, environ: Any = None, scope: Any = None) -> list[tuple[str, str]]:
        return [*super().get_headers(environ, scope), ("WWW-Authenticate", BEARER_CHALLENGE)]


def _login_required(message: str) -> LoginRequired:
    target = url_for("auth.login", next=request.full_path.rstrip("?") if request.method == "GET" else None)
    return LoginRequired(message, target)


def check_access() -> None:
    """Authenticate the request and check the view's declaration; raises LoginRequired or Forbidden when refused."""
    if request.endpoint is None:
        return  # no such URL: routing answers 404 or 405
    access = access_of(current_app, request.endpoint)
    if access is None:
        current_app.logger.error("view %s declares no access rule; refused", request.endpoint)
        raise Forbidden(_l("This page is not available."))
    api = request.blueprint == "api"
    header = request.headers.get("Authorization") if api else None
    if header is not None and not access.public:
        _check_token(header, access)  # ends its read transaction; a token is not a browser: no CSRF check
        return
    if not access.public:
        if not current_user.is_authenticated:
            raise _login_required("Log in or send Authorization: Bearer <token>.")
        if current_user.role not in access.roles:
            raise Forbidden(_l("Your role (%(role)s) may not do this.", role=current_user.role))
        act_as(db.session(), accounts.actor_name(user=current_user))
    if request.method not in SAFE_METHODS:
        # Browser sessions (the login form included) must carry the CSRF token.
        csrf.protect()
    # End the read transaction of the checks: a view that writes declares its write transaction.
    db.session.commit()


def _check_token(header: str, access: Access) -> None:
    scheme, _, secret = header.partition(" ")
    # Read where the view works: on its own driver connection (the registration; on PostgreSQL the
    # read then begins the write's transaction), else in the session's transaction.
    unit = request_unit() if runs_on_driver_connection() else Tx.of(db.session())
    token = accounts.token_by_secret(unit, secret.strip()) if scheme.lower() == "bearer" else None
    if token is None:
        raise _login_required("The token is unknown or revoked; send Authorization: Bearer <token>.")
    if token.scope != TokenScope.FULL and not access.register_token:
        raise Forbidden(f"A token with scope {token.scope!r} may not call this endpoint.")
    unit.actor = accounts.actor_name(token=token)
    act_as(db.session(), unit.actor)
    g.leadcrm_token = token
    _note_token_use(token)


def _note_token_use(token: TokenRecord) -> None:
    """Write the token's last use (at most once a minute) in a transaction of its own.

    It is bookkeeping and never makes the request wait: it tries the write
    lock once (SQLite) and skips a row another request is writing
    (PostgreSQL); if the database is busy, the next request writes it.
    """
    now = utcnow()
    db.session.commit()
    if not accounts.last_used_is_stale(token, now):
        return
    try:
        with db.engine.connect() as connection:
            accounts.mark_used(connection.execution_options(**{WRITE_OPTION: NO_WAIT}), token.id, now)
    except sa.exc.OperationalError as exc:
        current_app.logger.warning("skipped recording the use of token %s: %s", token.id, exc.orig)
        return
    g.leadcrm_token = replace(token, last_used_at=now)  # as stored


def current_caller() -> str:
    """Who is calling, as a stable key: ``token:<id>`` or ``user:<id>`` (call only after the access check)."""
    token = g.get("leadcrm_token")
    if token is not None:
        return f"token:{token.id}"
    return f"user:{current_user.id}"


def caller_may(endpoint: str) -> bool:
    """May the current caller (token or logged-in user) call ``endpoint``, as the access check would decide?"""
    access = access_of(current_app, endpoint)
    if access is None:
        return False
    if access.public:
        return True
    token = g.get("leadcrm_token")
    if token is not None:
        return token.scope == TokenScope.FULL or access.register_token
    return current_user.is_authenticated and current_user.role in access.roles


def add_security_headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.is_secure:
        response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    if request.endpoint != "static":
        # Pages and answers hold customers' data: no copy in any cache, back button included.
        response.headers.setdefault("Cache-Control", "no-store")
    return response


def init_auth(app: Flask) -> None:
    """Install login sessions, the access check and the security headers on ``app``.

    Call it before any other ``before_request`` hook that touches the database.
    """
    if app.config["LEADCRM_PROXY_COUNT"]:
        # Behind N reverse proxies: trust their X-Forwarded-For/-Proto (client address, HTTPS).
        count = app.config["LEADCRM_PROXY_COUNT"]
        # Not X-Forwarded-Host: the proxy passes the Host itself (deploy/nginx.conf).
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=count, x_proto=count)  # type: ignore[method-assign]  # typed a method; Flask documents this wrap
    app.session_interface = SessionInterface()
    # CSRF is checked by check_access, which knows whether a request came with a token.
    app.config["WTF_CSRF_CHECK_DEFAULT"] = False
    login_manager.init_app(app)
    app.before_request(check_access)
    app.after_request(add_security_headers)

    @app.context_processor
    def roles() -> dict[str, object]:
        return {"can": can}
