"""The operator's inbox: its own open contacts, oldest first, live; and its presence switch."""

import hashlib
from datetime import datetime, time

from flask import Blueprint, Response, redirect, request, url_for
from flask.typing import ResponseReturnValue
from flask_babel import gettext as _
from werkzeug.exceptions import Forbidden

from leadcrm import operators, queries
from leadcrm.auth import allow, own_operator_id
from leadcrm.database import begin_write
from leadcrm.errors import InvalidInput
from leadcrm.extensions import db
from leadcrm.models import Contact, Operator, utcnow
from leadcrm.vocabulary import Presence, Role
from leadcrm.web.ages import format_age
from leadcrm.web.rendering import changed, is_htmx, local_target, render

bp = Blueprint("inbox", __name__, url_prefix="/inbox")


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
    open_contacts, closed_today = queries.inbox_of(db.session(), operator_id, since=_start_of_today(now))
    version = _version(operator, open_contacts, closed_today, now)
    if is_htmx() and request.method == "GET" and request.args.get("v") == version:
        # The poll of an inbox that shows exactly this already: nothing to send (htmx swaps nothing on a
        # 204). Most polls end here, without the names' queries and the template.
        return Response(status=204, headers={"Vary": "HX-Request"})
    return render(
        "inbox/index.html",
        block="inbox",
        status=status,
        operator=operator,
        open_contacts=open_contacts,
        closed_today=closed_today,
        now=now,
        version=version,
        **queries.names_for(db.session(), open_contacts + closed_today),
    )


def _version(operator: Operator, open_contacts: list[Contact], closed_today: list[Contact], now: datetime) -> str:
    """What the inbox shows, in short: presence, the contacts and the ages as they read now ("12 minutes"
    changes once a minute, "40 seconds" every second). The poll sends back the version it shows."""
    shown = (
        operator.presence,
        [(c.id, c.operator_id, format_age(now - (c.assigned_at or c.created_at))) for c in open_contacts],
        [c.id for c in closed_today],
    )
    return hashlib.blake2s(repr(shown).encode(), digest_size=8).hexdigest()


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
