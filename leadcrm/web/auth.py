"""Login, logout, and changing one's own password."""

from flask import Blueprint, redirect, request, session, url_for
from flask.typing import ResponseReturnValue
from flask_babel import lazy_gettext as _l
from flask_login import current_user, login_user, logout_user

from leadcrm import accounts
from leadcrm.auth import allow, public
from leadcrm.errors import DomainError
from leadcrm.extensions import db
from leadcrm.models import INTAKE, SUPERVISOR, User
from leadcrm.web.forms import LoginForm, OwnPasswordForm
from leadcrm.web.rendering import local_target, render

bp = Blueprint("auth", __name__)


def home_for(user: User) -> str:
    return url_for("intake.index" if user.role == INTAKE else "load.index")


@bp.route("/login", methods=["GET", "POST"])
@public
def login() -> ResponseReturnValue:
    if current_user.is_authenticated:
        return redirect(local_target(request.args.get("next"), home_for(current_user)))
    form = LoginForm()
    if not form.validate_on_submit():
        return render("auth/login.html", form=form, status=422 if form.is_submitted() else 200)
    try:
        user = accounts.authenticate(db.session, form.username.data, form.password.data, request.remote_addr or "-")
    except accounts.LoginThrottled as exc:
        form.form_errors.append(exc.message)
        response = render("auth/login.html", form=form, status=429)
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
    db.session.commit()  # keeps the recorded failure, or forgets the old ones
    if user is None:
        form.form_errors.append(_l("Wrong username or password."))
        return render("auth/login.html", form=form, status=401)
    # A fresh session: nothing from before the login carries over.
    session.clear()
    login_user(user)
    return redirect(local_target(request.args.get("next"), home_for(user)))


@bp.post("/logout")
@public
def logout() -> ResponseReturnValue:
    logout_user()
    session.clear()
    return redirect(url_for(".login"))


@bp.route("/account", methods=["GET", "POST"])
@allow(SUPERVISOR, INTAKE)
def account() -> ResponseReturnValue:
    """Anyone logged in changes their own password, proving the current one first."""
    form = OwnPasswordForm()
    if not form.validate_on_submit():
        return render("auth/account.html", form=form, status=422 if form.is_submitted() else 200)
    try:
        # The current password is checked like a login: failures count towards the throttle.
        user = accounts.authenticate(
            db.session, current_user.username, form.current_password.data, request.remote_addr or "-"
        )
    except accounts.LoginThrottled as exc:
        form.current_password.errors.append(exc.message)
        return render("auth/account.html", form=form, status=429)
    if user is None:
        db.session.commit()  # keep the recorded failure
        form.current_password.errors.append(_l("This is not your current password."))
        return render("auth/account.html", form=form, status=422)
    try:
        accounts.set_password(db.session, user, form.new_password.data)
    except DomainError as exc:
        form.new_password.errors.extend(exc.fields.values())
        return render("auth/account.html", form=form, status=422)
    db.session.commit()
    login_user(user)  # this session goes on with the new password; the others end
    return render("auth/account.html", form=OwnPasswordForm(formdata=None), changed=True)
