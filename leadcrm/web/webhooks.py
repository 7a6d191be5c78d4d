"""Webhooks page (supervisors): endpoints, their secret once, on/off, a test ping, the delivery log."""

from typing import Any

from flask import Blueprint, Response, current_app, redirect, request, url_for
from flask.typing import ResponseReturnValue
from flask_babel import gettext as _

from leadcrm import webhooks
from leadcrm.auth import allow
from leadcrm.database import begin_write
from leadcrm.errors import DomainError
from leadcrm.extensions import db
from leadcrm.models import Webhook
from leadcrm.outbox import public_id
from leadcrm.vocabulary import DeliveryState, Role
from leadcrm.web.forms import WebhookForm, required, show_domain_error
from leadcrm.web.rendering import render

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")

# The detail page's log shows this many of the attempts kept (the API lists all of them).
LOG_SHOWN = 100


def _allow_private() -> bool:
    return bool(current_app.config["LEADCRM_WEBHOOKS_ALLOW_PRIVATE"])


def _notices() -> dict[str, str]:
    # What a redirect after an action says; the URL carries only the key, never text.
    return {
        "saved": _("Saved."),
        "on": _("Turned on: it resumes from the first event not delivered."),
        "off": _("Turned off: nothing more is sent until it is turned on."),
        "redelivered": _("Queued again: it is sent within seconds."),
    }


def _validate(form: WebhookForm) -> bool:
    """The form's own checks and the URL's (http(s), not private), so that every error shows at once."""
    valid = form.validate()
    if form.url.data and not form.url.errors:
        try:
            webhooks.check_url_allowed(form.url.data, _allow_private())
        except DomainError as exc:
            show_domain_error(form, exc)
            valid = False
    return valid


def _index(form: WebhookForm | None = None, status: int = 200, **context: Any) -> Response:
    form = form or WebhookForm(formdata=None, events=[])
    hooks = webhooks.list_webhooks(db.session())
    counts = webhooks.queue_counts(db.session(), [w.id for w in hooks])
    return render(
        "webhooks/index.html",
        status=status,
        form=form,
        hooks=hooks,
        counts=counts,
        subscribed=webhooks.subscribed,
        **context,
    )


@bp.get("/")
@allow(Role.SUPERVISOR)
def index() -> ResponseReturnValue:
    return _index()


@bp.post("/")
@allow(Role.SUPERVISOR)
def create() -> ResponseReturnValue:
    form = WebhookForm()
    if _validate(form):
        try:
            begin_write(db.session)
            hook = webhooks.create_webhook(
                db.session(),
                url=required(form.url),
                events=form.events.data or [],
                description=form.description.data,
                allow_private=_allow_private(),
            )
        except DomainError as exc:
            db.session.rollback()
            show_domain_error(form, exc)
        else:
            db.session.commit()
            # The secret is in this answer only: never cached.
            response = _index(new_hook=hook)
            response.headers["Cache-Control"] = "no-store"
            return response
    return _index(form, status=422)


def _show(hook: Webhook, form: WebhookForm | None = None, status: int = 200, **context: Any) -> Response:
    session = db.session()
    form = form or WebhookForm(
        formdata=None, url=hook.url, description=hook.description, events=webhooks.subscribed(hook)
    )
    notice = _notices().get(request.args.get("done", ""))
    return render(
        "webhooks/show.html",
        status=status,
        hook=hook,
        form=form,
        counts=webhooks.queue_counts(session, [hook.id])[hook.id],
        attempts=webhooks.attempts(session, hook.id, LOG_SHOWN),
        waiting=webhooks.deliveries(session, hook.id, state=DeliveryState.PENDING, limit=LOG_SHOWN),
        failed=webhooks.deliveries(session, hook.id, state=DeliveryState.FAILED, limit=LOG_SHOWN),
        public_id=public_id,
        log_shown=LOG_SHOWN,
        notice=context.pop("notice", notice),
        **context,
    )


@bp.get("/<id:webhook_id>")
@allow(Role.SUPERVISOR)
def show(webhook_id: int) -> ResponseReturnValue:
    return _show(webhooks.get_webhook(db.session(), webhook_id))


@bp.post("/<id:webhook_id>")
@allow(Role.SUPERVISOR)
def update(webhook_id: int) -> ResponseReturnValue:
    hook = webhooks.get_webhook(db.session(), webhook_id)
    form = WebhookForm()
    if _validate(form):
        try:
            begin_write(db.session)
            webhooks.update_webhook(
                db.session(),
                webhook_id,
                url=required(form.url),
                events=form.events.data or [],
                description=form.description.data or "",
                allow_private=_allow_private(),
            )
        except DomainError as exc:
            db.session.rollback()
            show_domain_error(form, exc)
        else:
            db.session.commit()
            return redirect(url_for(".show", webhook_id=webhook_id, done="saved"))
    return _show(webhooks.get_webhook(db.session(), hook.id), form, status=422)


@bp.post("/<id:webhook_id>/<any(on, off):state>")
@allow(Role.SUPERVISOR)
def turn(webhook_id: int, state: str) -> ResponseReturnValue:
    """Turn the endpoint on (it resumes from its first undelivered event) or off."""
    webhooks.get_webhook(db.session(), webhook_id)
    begin_write(db.session)
    webhooks.update_webhook(db.session(), webhook_id, enabled=state == "on", allow_private=_allow_private())
    db.session.commit()
    return redirect(url_for(".show", webhook_id=webhook_id, done=state))


@bp.post("/<id:webhook_id>/test")
@allow(Role.SUPERVISOR)
def test(webhook_id: int) -> ResponseReturnValue:
    outcome = webhooks.ping(db.session(), webhook_id, allow_private=_allow_private())
    if outcome.ok:
        notice = _(
            "Test sent: the endpoint answered %(status)s in %(ms)s ms.",
            status=outcome.status_code,
            ms=outcome.duration_ms,
        )
        return _show(webhooks.get_webhook(db.session(), webhook_id), notice=notice)
    problem = _("Test failed: %(error)s", error=outcome.error or "")
    return _show(webhooks.get_webhook(db.session(), webhook_id), problem=problem)


@bp.post("/<id:webhook_id>/deliveries/<id:delivery_id>/redeliver")
@allow(Role.SUPERVISOR)
def redeliver(webhook_id: int, delivery_id: int) -> ResponseReturnValue:
    webhooks.get_webhook(db.session(), webhook_id)
    begin_write(db.session)
    webhooks.redeliver(db.session(), webhook_id, delivery_id)
    db.session.commit()
    return redirect(url_for(".show", webhook_id=webhook_id, done="redelivered"))


@bp.post("/<id:webhook_id>/events/<id:event_id>/redeliver")
@allow(Role.SUPERVISOR)
def redeliver_event(webhook_id: int, event_id: int) -> ResponseReturnValue:
    """Send an event of the log again (one the stream delivered leaves no delivery to redeliver)."""
    webhooks.get_webhook(db.session(), webhook_id)
    begin_write(db.session)
    webhooks.redeliver_event(db.session(), webhook_id, event_id)
    db.session.commit()
    return redirect(url_for(".show", webhook_id=webhook_id, done="redelivered"))


@bp.post("/<id:webhook_id>/delete")
@allow(Role.SUPERVISOR)
def delete(webhook_id: int) -> ResponseReturnValue:
    webhooks.get_webhook(db.session(), webhook_id)
    begin_write(db.session)
    webhooks.delete_webhook(db.session(), webhook_id)
    db.session.commit()
    return redirect(url_for(".index"))
