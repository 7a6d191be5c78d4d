"""Login, logout, and one's own account: a new password, logging out everywhere."""

from urllib.parse import urlsplit

from flask import Blueprint, current_app, redirect, request, session, url_for
from flask.typing import ResponseReturnValue
from flask_babel import lazy_gettext as _l
from flask_login import current_user, login_user, logout_user
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as BaseResponse

from leadcrm import accounts, operators
from leadcrm.auth import access_of, allow, public
from leadcrm.database import begin_write
from leadcrm.errors import DomainError
from leadcrm.extensions import db
from leadcrm.i18n import translate_fields
from leadcrm.models import User
from leadcrm.storage import act_as
from leadcrm.vocabulary import Presence, Role
from leadcrm.web.forms import LoginForm, OwnPasswordForm, errors_of, required
from leadcrm.web.rendering import local_target, render

bp = Blueprint("auth", __name__)

# A browser that logged in before: skips the account-wide slowdown of the login throttle (accounts.DeviceCookie).
DEVICE_COOKIE = "leadcrm_device"


HOME_BY_ROLE: dict[str, str] = {Role.INTAKE: "intake.index", Role.OPERATOR: "inbox.index"}


def home_for(user: User) -> str:
    """Where a user lands after the login and where the brand link goes: the page of its work."""
    return url_for(HOME_BY_ROLE.get(user.role, "load.index"))


def after_login(user: User, target: str | None) -> str:
    """Where the login sends ``user``: ``target`` if it is a page of this site its role may open, else its home.

    An operator user that opened the site's address (the load table, not its) lands on its inbox, not on
    a 403 page; a page it may open (its contact, its account) is still where it goes back to.
    """
    home = home_for(user)
    path = local_target(target, home)
    try:
        endpoint, _args = current_app.url_map.bind_to_environ(request.environ).match(urlsplit(path).path, method="GET")
    except HTTPException:
        return path  # no such page (or one that moved): routing answers as it would
    access = access_of(current_app, str(endpoint))
    if access is None or not (access.public or user.role in access.roles):
        return home
    return path


def _secret_key() -> str | bytes:
    key = current_app.secret_key
    if key is None:
        raise RuntimeError("no SECRET_KEY (create_app always sets one)")
    return key


def _device() -> accounts.DeviceCookie:
    return accounts.DeviceCookie(request.cookies.get(DEVICE_COOKIE, ""), _secret_key())


def _remember_device(response: BaseResponse, user: User) -> BaseResponse:
    """Give this browser a new device cookie for ``user``, who has just proved their password here."""
    response.set_cookie(
        DEVICE_COOKIE,
        accounts.issue_device_cookie(_secret_key(), user),
        max_age=int(accounts.DEVICE_COOKIE_MAX_AGE.total_seconds()),
        httponly=True,
        samesite="Lax",
        # Secure as the session cookie is: by the config, or whenever the request came over HTTPS.
        secure=current_app.session_interface.get_cookie_secure(current_app),
    )
    return response


@bp.route("/login", methods=["GET", "POST"])
@public
def login() -> ResponseReturnValue:
    """Log in. authenticate() runs its own transactions, so that the password is hashed with no lock held;
    a throttled attempt raises LoginThrottled, which is answered 429 with Retry-After (leadcrm.web.errors)."""
    if current_user.is_authenticated:
        return redirect(after_login(current_user, request.args.get("next")))
    db.session.commit()  # ends the read of the cookie's session: authenticate() runs its own transactions
    form = LoginForm()
    if not form.validate_on_submit():
        return render("auth/login.html", form=form, status=422 if form.is_submitted() else 200)
    # The login session is opened in the write transaction that checks the password: a new password
    # committed a moment later ends it.
    user = accounts.authenticate(
        db.session(),
        required(form.username),
        required(form.password),
        request.remote_addr or "-",
        device=_device(),
        open_session=current_app.permanent_session_lifetime,
    )
    if user is None:
        form.form_errors.append(_l("Wrong username or password."))
        return render("auth/login.html", form=form, status=401)
    # A fresh session: nothing from before the login carries over.
    session.clear()
    login_user(user)
    return _remember_device(redirect(after_login(user, request.args.get("next"))), user)


class _Leaving:
    """A linked operator user that logs out is set away, in the write transaction that ends its session:
    no new contact goes to someone who has left. Read before the write begins; the history names the user."""

    def __init__(self) -> None:
        linked = current_user.is_authenticated and current_user.role == Role.OPERATOR
        self.operator_id: int | None = current_user.operator_id if linked else None
        self.actor = accounts.actor_name(user=current_user) if linked else None

    def go_away(self) -> None:
        if self.operator_id is not None:
            act_as(db.session(), self.actor)
            operators.set_presence(db.session(), self.operator_id, Presence.AWAY)


def _end_this_session() -> None:
    secret = session.get("_user_id")
    if secret:
        leaving = _Leaving()
        begin_write(db.session)
        accounts.end_session(db.session(), secret)
        leaving.go_away()
        db.session.commit()
    logout_user()
    session.clear()


@bp.post("/logout")
@public
def logout() -> ResponseReturnValue:
    """End this login session: its cookie, and every copy of it, opens nothing any more."""
    _end_this_session()
    return redirect(url_for(".login"))


@bp.post("/account/logout-everywhere")
@allow(Role.SUPERVISOR, Role.INTAKE, Role.OPERATOR)
def logout_everywhere() -> ResponseReturnValue:
    """End every login session of the current user, this one included (a lost phone, a shared computer)."""
    leaving = _Leaving()
    user_id = current_user.id
    begin_write(db.session)
    accounts.end_sessions(db.session(), user_id)
    leaving.go_away()
    db.session.commit()
    logout_user()
    session.clear()
    return redirect(url_for(".login"))


@bp.route("/account", methods=["GET", "POST"])
@allow(Role.SUPERVISOR, Role.INTAKE, Role.OPERATOR)
def account() -> ResponseReturnValue:
    """Anyone logged in changes their own password, proving the current one first.

    Both passwords are hashed with no lock held: authenticate() runs its own transactions,
    and the write is declared after the new hash is made."""
    form = OwnPasswordForm()
    if not form.validate_on_submit():
        return render("auth/account.html", form=form, status=422 if form.is_submitted() else 200)
    try:
        accounts.validate_password(required(form.new_password))
    except DomainError as exc:
        errors_of(form.new_password).extend(translate_fields(exc.fields).values())
        return render("auth/account.html", form=form, status=422)
    # The current password is checked like a login: failures count towards the throttle (a 429 when throttled).
    user = accounts.authenticate(
        db.session(),
        current_user.username,
        required(form.current_password),
        request.remote_addr or "-",
        device=_device(),
    )
    if user is None:
        errors_of(form.current_password).append(_l("This is not your current password."))
        return render("auth/account.html", form=form, status=422)
    new_hash = accounts.hash_password(required(form.new_password))
    begin_write(db.session)
    accounts.set_password_hash(db.session(), user, new_hash, keep_session=session.get("_user_id"))
    db.session.commit()
    # This session goes on with the new password; the others have ended. The devices that knew the old
    # password are new browsers again, but this one.
    response = render("auth/account.html", form=OwnPasswordForm(formdata=None), changed=True)
    return _remember_device(response, user)
