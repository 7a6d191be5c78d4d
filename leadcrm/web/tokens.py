"""API tokens page (supervisors): create a named token with a scope, see it once, revoke it."""

from typing import Any

from flask import Blueprint, Response, redirect, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user

from leadcrm import accounts
from leadcrm.auth import allow
from leadcrm.database import begin_write
from leadcrm.errors import DomainError
from leadcrm.extensions import db
from leadcrm.vocabulary import Role
from leadcrm.web.forms import TokenForm, required, show_domain_error
from leadcrm.web.rendering import render

bp = Blueprint("tokens", __name__, url_prefix="/tokens")


def _page(form: TokenForm | None = None, status: int = 200, **context: Any) -> Response:
    form = form or TokenForm(formdata=None)
    return render("tokens/index.html", status=status, form=form, tokens=accounts.list_tokens(db.session()), **context)


@bp.get("/")
@allow(Role.SUPERVISOR)
def index() -> ResponseReturnValue:
    return _page()


@bp.post("/")
@allow(Role.SUPERVISOR)
def create() -> ResponseReturnValue:
    form = TokenForm()
    if form.validate():
        try:
            begin_write(db.session)
            new = accounts.create_token(
                db.session(), name=required(form.name), scope=form.scope.data, created_by=current_user
            )
        except DomainError as exc:
            show_domain_error(form, exc)
        else:
            db.session.commit()
            # The secret is in this answer only: never stored, never cached.
            response = _page(new_token=new)
            response.headers["Cache-Control"] = "no-store"
            return response
    return _page(form, status=422)


@bp.post("/<id:token_id>/revoke")
@allow(Role.SUPERVISOR)
def revoke(token_id: int) -> ResponseReturnValue:
    begin_write(db.session)
    accounts.revoke_token(db.session(), token_id)
    db.session.commit()
    return redirect(url_for(".index"))
