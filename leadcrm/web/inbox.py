"""The operator's inbox: its own open contacts, offers to take first, live; its presence switch; Take."""

import hashlib
from datetime import datetime

from flask import Blueprint, Response, redirect, request, url_for
from flask.typing import ResponseReturnValue
from flask_babel import gettext as _
from werkzeug.exceptions import Forbidden

from leadcrm import offers, operators, queries
from leadcrm.auth import allow, check_own_contact, own_operator_id
from leadcrm.database import begin_write
from leadcrm.errors import Conflict, InvalidInput
from leadcrm.extensions import db
from leadcrm.i18n import translate
from leadcrm.models import Contact, Operator, utcnow
from leadcrm.vocabulary import Presence, Role
from leadcrm.web.ages import format_age, milliseconds_left, seconds_of
from leadcrm.web.rendering import changed, is_htmx, local_target, render
from leadcrm.web.times import start_of_today

bp = Blueprint("inbox", __name__, url_prefix="/inbox")


def inbox_page(status: int = 200, notice: str | None = None, problem: str | None = None) -> Response:
    """The inbox of the logged-in operator user: the whole page, or its live section for htmx.

    ``notice`` (what was just done) or ``problem`` (why it could not be) is said above the list, until
    the next action from the inbox."""
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
    open_contacts, closed_today = queries.inbox_of(db.session(), operator_id, since=start_of_today(now))
    version = _version(operator, open_contacts, closed_today, now)
    if is_htmx() and request.method == "GET" and request.args.get("v") == version:
        # The poll of an inbox that shows exactly this already: nothing to send (htmx swaps nothing on a
        # 204). Most polls end here, without the names' queries and the template.
        return Response(status=204, headers={"Vary": "HX-Request"})
    # After an action (Take, Close) htmx also gets the messages above the list, out of band: they live
    # outside the polled section, so that the polls leave them (and a screen reader hears them change).
    action = is_htmx() and request.method == "POST"
    return render(
        "inbox/index.html",
        block=["inbox", "inbox_messages"] if action else "inbox",
        status=status,
        out_of_band=action,
        operator=operator,
        open_contacts=open_contacts,
        closed_today=closed_today,
        now=now,
        version=version,
        notice=notice,
        problem=problem,
        milliseconds_left={c.id: milliseconds_left(c.offered_until, now) for c in open_contacts if c.offered_until},
        seconds_of=seconds_of,
        **queries.names_for(db.session(), open_contacts + closed_today),
    )


def _version(operator: Operator, open_contacts: list[Contact], closed_today: list[Contact], now: datetime) -> str:
    """What the inbox shows, in short: presence, the contacts and the ages as they read now ("12 minutes"
    changes once a minute, "40 seconds" every second). The poll sends back the version it shows."""
    shown = (
        operator.presence,
        [
            (
                c.id,
                c.operator_id,
                format_age(now - (c.assigned_at or c.created_at)),
                # An offer: its deadline (taken, taken back and offered again all change it), and whether it
                # has passed; the countdown itself runs in the browser and is not part of the version.
                c.offered_until,
                c.offered_until is not None and c.offered_until <= now,
                c.accepted_at,
            )
            for c in open_contacts
        ],
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


@bp.post("/contacts/<id:contact_id>/take")
@allow(Role.OPERATOR)
def take(contact_id: int) -> ResponseReturnValue:
    """The operator user takes a contact offered to it, before the deadline (the inbox's Take button).

    Too late, or the contact went to someone else meanwhile: the inbox says so in place (a 409 page
    without JavaScript). Someone else's contact never offered to this operator is a 403, as for Close.
    """
    operator_id = own_operator_id()
    if operator_id is None:
        raise Forbidden(_("Your account is not linked to an operator; ask a supervisor."))
    contact = db.get_or_404(Contact, contact_id)
    if contact.operator_id != operator_id and not queries.missed_offer(db.session(), contact_id, operator_id):
        check_own_contact(contact.operator_id)  # someone else's, and never this operator's offer: refused
    begin_write(db.session)
    try:
        taken = offers.accept(db.session(), contact_id, operator_id)
    except Conflict as exc:
        db.session.rollback()
        # htmx swaps only 2xx (and 422) answers: the inbox with the message, as a 200.
        return inbox_page(status=200 if is_htmx() else 409, problem=translate(exc.message))
    db.session.commit()
    if not is_htmx():
        return redirect(url_for(".index"))
    lead = queries.names_for(db.session(), [taken])["leads"][taken.lead_id]
    name = lead.name or lead.phone or lead.email or lead.external_id or _("lead #%(id)s", id=lead.id)
    # No contacts-changed event: the answer is the inbox itself, and the event would make the section
    # poll with the version it had before, replacing this answer and its notice.
    return inbox_page(notice=_("Taken: %(name)s is yours now.", name=name))
