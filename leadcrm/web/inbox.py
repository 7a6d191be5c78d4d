"""The operator's inbox: its own open contacts, oldest first, live; and its presence switch."""

from datetime import datetime, time

import sqlalchemy as sa
from flask import Blueprint, Response, redirect, request, url_for
from flask.typing import ResponseReturnValue
from flask_babel import gettext as _
from werkzeug.exceptions import Forbidden

from leadcrm import operators, queries
from leadcrm.auth import allow, own_operator_id
from leadcrm.database import begin_write
from leadcrm.errors import InvalidInput
from leadcrm.extensions import db
from leadcrm.models import CLOSED, Contact, Operator, utcnow
from leadcrm.vocabulary import ContactStatus, Presence, Role
from leadcrm.web.rendering import changed, is_htmx, local_target, render

bp = Blueprint("inbox", __name__, url_prefix="/inbox")

# The closed-today list ends here: older closed contacts are on the contacts' own pages.
CLOSED_TODAY_MAX = 100


def _start_of_today(now: datetime) -> datetime:
    # The UTC day: the servers keep UTC and the operators of one desk share it closely enough.
    return datetime.combine(now.date(), time.min, tzinfo=now.tzinfo)


def inbox_page(status: int = 200) -> Response:
    """The inbox of the logged-in operator user: the whole page, or its live section for htmx."""
    operator_id = own_operator_id()
    if operator_id is None:
        return render("inbox/index.html", block="inbox", status=status, operator=None, open_contacts=[])
    operator = db.session.get(Operator, operator_id)
    if operator is None:  # cannot happen: the link is a foreign key
        raise RuntimeError(f"operator user linked to a missing operator {operator_id}")
    now = utcnow()
    # Each look at the inbox is the operator's sign of life (written at most every LAST_SEEN_EVERY seconds).
    if operators.sign_of_life_due(operator, now):
        begin_write(db.session)
        operators.note_seen(db.session(), operator_id)
        db.session.commit()
        operator = db.session.get_one(Operator, operator_id)
    open_contacts = list(
        db.session.scalars(
            sa.select(Contact)
            .where(Contact.operator_id == operator_id, Contact.status == ContactStatus.OPEN)
            .order_by(Contact.assigned_at, Contact.id)
        )
    )
    closed_today = list(
        db.session.scalars(
            sa.select(Contact)
            .where(
                Contact.operator_id == operator_id,
                # Spelled as the partial index ix_contacts_closed_by_operator is, so both databases use it.
                sa.text(CLOSED),
                Contact.closed_at >= _start_of_today(now),
            )
            .order_by(Contact.closed_at.desc(), Contact.id.desc())
            .limit(CLOSED_TODAY_MAX)
        )
    )
    return render(
        "inbox/index.html",
        block="inbox",
        status=status,
        operator=operator,
        open_contacts=open_contacts,
        closed_today=closed_today,
        now=utcnow(),
        **queries.names_for(db.session(), open_contacts + closed_today),
    )


def wants_inbox() -> bool:
    """Did an htmx request come from the inbox (its forms send ``next`` = the inbox)?"""
    return is_htmx() and request.form.get("next") == url_for("inbox.index")


@bp.get("/")
@allow(Role.OPERATOR)
def index() -> ResponseReturnValue:
    return inbox_page()


@bp.post("/presence")
@allow(Role.OPERATOR)
def presence() -> ResponseReturnValue:
    """The operator user sets its own operator available or away (the nav switch, the inbox banner)."""
    operator_id = own_operator_id()
    if operator_id is None:
        raise Forbidden(_("Your account is not linked to an operator; ask a supervisor."))
    value = request.form.get("presence", "")
    if value not in tuple(Presence):
        message = _("Presence is either available or away.")
        raise InvalidInput(message, {"presence": message})
    begin_write(db.session)
    operators.set_presence(db.session(), operator_id, value)
    if value == Presence.AVAILABLE:
        # Saying "I am here" is a sign of life too: an idle operator is at work again at once.
        operators.note_seen(db.session(), operator_id)
    db.session.commit()
    if is_htmx():
        # The switch, showing the new state; the inbox and the load table refresh on the event.
        return changed(render("base.html", block="presence_switch"), "operators-changed")
    return redirect(local_target(request.form.get("next"), url_for(".index")))
