"""Users page (supervisors): create accounts, change a role or password, deactivate."""

from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, redirect, request, session, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user
from flask_wtf import FlaskForm

from leadcrm import accounts
from leadcrm.auth import allow
from leadcrm.database import begin_write
from leadcrm.errors import DomainError
from leadcrm.extensions import db
from leadcrm.models import User
from leadcrm.vocabulary import Role
from leadcrm.web.forms import PasswordForm, RoleForm, UserForm, required, show_domain_error
from leadcrm.web.rendering import render

bp = Blueprint("users", __name__, url_prefix="/users")


def _page(form: UserForm | None = None, status: int = 200, **row: Any) -> Response:
    """The page; ``row`` (row_for, row_form) puts a failed row form back with its errors."""
    return render(
        "users/index.html",
        status=status,
        form=form or UserForm(formdata=None),
        users=accounts.list_users(db.session()),
        **row,
    )


@bp.get("/")
@allow(Role.SUPERVISOR)
def index() -> ResponseReturnValue:
    return _page()


@bp.post("/")
@allow(Role.SUPERVISOR)
def create() -> ResponseReturnValue:
    form = UserForm()
    if form.validate():
        try:
            begin_write(db.session)
            accounts.create_user(
                db.session(), username=required(form.username), password=required(form.password), role=form.role.data
            )
        except DomainError as exc:
            show_domain_error(form, exc)
        else:
            db.session.commit()
            return redirect(url_for(".index"))
    return _page(form, status=422)


def _row_change(user_id: int, form: FlaskForm, change: Callable[[User], object]) -> ResponseReturnValue:
    user = accounts.get_user(db.session(), user_id)
    if form.validate():
        try:
            begin_write(db.session)
            change(user)
        except DomainError as exc:
            show_domain_error(form, exc)
        else:
            db.session.commit()
            return redirect(url_for(".index"))
    return _page(status=422, row_for=user.id, row_form=form)


@bp.post("/<id:user_id>/role")
@allow(Role.SUPERVISOR)
def set_role(user_id: int) -> ResponseReturnValue:
    form = RoleForm()
    return _row_change(user_id, form, lambda user: accounts.update_user(db.session(), user, role=form.role.data))


@bp.post("/<id:user_id>/active")
@allow(Role.SUPERVISOR)
def set_active(user_id: int) -> ResponseReturnValue:
    """``is_active`` = 1 activates, anything else deactivates (the user's sessions end at once)."""
    active = request.form.get("is_active") == "1"
    return _row_change(user_id, FlaskForm(), lambda user: accounts.update_user(db.session(), user, is_active=active))


@bp.post("/<id:user_id>/password")
@allow(Role.SUPERVISOR)
def set_password(user_id: int) -> ResponseReturnValue:
    form = PasswordForm()
    try:
        # Hashed before the write is declared, with no lock held.
        password_hash = accounts.hash_password(form.password.data or "")
    except DomainError:
        password_hash = None  # change() reports it next to the field

    def change(user: User) -> None:
        # The new password ends every session of this user; a supervisor changing their own keeps this one.
        keep = session.get("_user_id") if user.id == current_user.id else None
        if password_hash is None:
            accounts.set_password(db.session(), user, required(form.password), keep_session=keep)  # raises the error
        else:
            accounts.set_password_hash(db.session(), user, password_hash, keep_session=keep)

    return _row_change(user_id, form, change)
