"""Users page (supervisors): create accounts, change a role or password, link an operator user, deactivate."""

from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, redirect, request, session, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user
from flask_wtf import FlaskForm
from wtforms import SelectField

from leadcrm import accounts
from leadcrm import operators as operators_domain
from leadcrm.auth import allow
from leadcrm.database import begin_write
from leadcrm.errors import DomainError
from leadcrm.extensions import db
from leadcrm.models import User
from leadcrm.vocabulary import Role
from leadcrm.web.forms import (
    OperatorLinkForm,
    PasswordForm,
    RoleForm,
    UserForm,
    choose_operators,
    required,
    show_domain_error,
)
from leadcrm.web.rendering import render

bp = Blueprint("users", __name__, url_prefix="/users")


def _operators() -> tuple[list[tuple[int, str]], dict[int, str]]:
    """Every operator as (id, name) by name, and the username linked to each operator that has one."""
    operators = [(op.id, op.name) for op in db.session.scalars(operators_domain.list_operators_query())]
    operators.sort(key=lambda op: op[1].casefold())
    linked = {user.operator_id: user.username for user in accounts.list_users(db.session()) if user.operator_id}
    return operators, linked


def _offer_operators(field: SelectField, user_id: int | None = None) -> None:
    """Fill an operator select: operators linked to a user (other than ``user_id``'s) are disabled."""
    operators, linked = _operators()
    own = accounts.get_user(db.session(), user_id).username if user_id is not None else None
    choose_operators(field, operators, {op_id for op_id, username in linked.items() if username != own})


def _page(form: UserForm | None = None, status: int = 200, **row: Any) -> Response:
    """The page; ``row`` (row_for, row_form) puts a failed row form back with its errors."""
    if form is None:
        form = UserForm(formdata=None)
        _offer_operators(form.operator_id)
    operators, linked = _operators()
    return render(
        "users/index.html",
        status=status,
        form=form,
        users=accounts.list_users(db.session()),
        operators=operators,
        linked=linked,
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
    _offer_operators(form.operator_id)
    if form.validate():
        try:
            begin_write(db.session)
            accounts.create_user(
                db.session(),
                username=required(form.username),
                password=required(form.password),
                role=form.role.data,
                operator_id=form.operator_id.data,
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
    """A new role; becoming an operator user takes ``operator_id`` (leaving that role unlinks the operator)."""
    form = RoleForm()
    _offer_operators(form.operator_id, user_id)
    return _row_change(
        user_id,
        form,
        lambda user: accounts.update_user(db.session(), user, role=form.role.data, operator_id=form.operator_id.data),
    )


@bp.post("/<id:user_id>/operator")
@allow(Role.SUPERVISOR)
def set_operator(user_id: int) -> ResponseReturnValue:
    """Link an operator user to the operator it works as; empty ``operator_id`` unlinks.

    The operator and its contacts stay as they are either way."""
    form = OperatorLinkForm()
    _offer_operators(form.operator_id, user_id)
    return _row_change(user_id, form, lambda user: accounts.link_operator(db.session(), user, form.operator_id.data))


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
