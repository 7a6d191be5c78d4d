"""Webhooks: endpoints that receive events, signed (Standard Webhooks); their deliveries and log."""

import json
from typing import Any

from flask import current_app, url_for

from leadcrm import outbox, webhooks
from leadcrm.api import bp
from leadcrm.api.http import Response, dump, json_body, parse, query_args
from leadcrm.api.openapi import Answer, created, operation
from leadcrm.api.schemas import (
    PingOut,
    WebhookAttemptOut,
    WebhookCreate,
    WebhookCreatedOut,
    WebhookDeliveryArgs,
    WebhookDeliveryOut,
    WebhookOut,
    WebhookUpdate,
)
from leadcrm.auth import allow
from leadcrm.database import begin_write
from leadcrm.errors import Message, NotFound
from leadcrm.extensions import db
from leadcrm.models import Webhook, WebhookDelivery
from leadcrm.outbox import public_id
from leadcrm.vocabulary import Role


def _allow_private() -> bool:
    return bool(current_app.config["LEADCRM_WEBHOOKS_ALLOW_PRIVATE"])


def webhook_json(webhook: Webhook, *, secret: bool = False) -> dict[str, Any]:
    counts = webhooks.queue_counts(db.session(), [webhook.id])[webhook.id]
    fields = {
        "id": webhook.id,
        "url": webhook.url,
        "description": webhook.description,
        "events": json.loads(webhook.events),
        "enabled": webhook.enabled,
        "disabled_reason": webhook.disabled_reason,
        "disabled_at": webhook.disabled_at,
        "failing_since": webhook.failing_since,
        "last_success_at": webhook.last_success_at,
        "created_at": webhook.created_at,
        "pending": counts.pending,
        "failed": counts.failed,
        "delivered": counts.delivered,
    }
    if secret:
        return dump(WebhookCreatedOut, fields | {"secret": webhook.secret})
    return dump(WebhookOut, fields)


def _delivery_json(row: WebhookDelivery, event_type: str) -> dict[str, Any]:
    return dump(
        WebhookDeliveryOut,
        {
            "id": row.id,
            "event_id": public_id(row.event_id),
            "event_type": event_type,
            "state": row.state,
            "attempts": row.attempts,
            "next_attempt_at": row.next_attempt_at,
            "delivered_at": row.delivered_at,
        },
    )


@bp.post("/webhooks/")
@allow(Role.SUPERVISOR)
@operation("createWebhook", created(WebhookCreatedOut, "Webhook"), body=WebhookCreate)
def create_webhook() -> Response:
    """Add an endpoint; the answer holds its signing secret, shown this once.

    It receives the chosen events that happen from now on, as POSTs signed as Standard Webhooks says.
    Only http(s) URLs; by default none that is or resolves to a loopback, link-local or private address.
    """
    body = parse(WebhookCreate, json_body())
    begin_write(db.session)
    webhook = webhooks.create_webhook(
        db.session(), url=body.url, events=body.events, description=body.description, allow_private=_allow_private()
    )
    db.session.commit()
    return webhook_json(webhook, secret=True), 201, {"Location": url_for("api.get_webhook", webhook_id=webhook.id)}


@bp.get("/webhooks/")
@allow(Role.SUPERVISOR)
@operation("listWebhooks", Answer("Every endpoint, by id.", list[WebhookOut]))
def list_webhooks() -> Response:
    """List the endpoints, with how many deliveries wait, were given up and were delivered."""
    return [webhook_json(w) for w in webhooks.list_webhooks(db.session())]


@bp.get("/webhooks/<id:webhook_id>")
@allow(Role.SUPERVISOR)
@operation("getWebhook", Answer("The endpoint.", WebhookOut), errors=(404,))
def get_webhook(webhook_id: int) -> Response:
    """Get an endpoint (its secret is not shown again)."""
    return webhook_json(webhooks.get_webhook(db.session(), webhook_id))


@bp.patch("/webhooks/<id:webhook_id>")
@allow(Role.SUPERVISOR)
@operation("updateWebhook", Answer("The changed endpoint.", WebhookOut), body=WebhookUpdate, errors=(404,))
def update_webhook(webhook_id: int) -> Response:
    """Change an endpoint's URL, events or description, or turn it off or on.

    Turned on again (after a supervisor or its failures turned it off), it resumes from the first event
    not delivered.
    """
    webhooks.get_webhook(db.session(), webhook_id)
    body = parse(WebhookUpdate, json_body())
    sent = body.model_fields_set
    begin_write(db.session)
    webhook = webhooks.update_webhook(
        db.session(),
        webhook_id,
        url=body.url if "url" in sent else None,
        events=body.events if "events" in sent else None,
        description=(body.description or "") if "description" in sent else None,
        enabled=body.enabled if "enabled" in sent else None,
        allow_private=_allow_private(),
    )
    db.session.commit()
    return webhook_json(webhook)


@bp.delete("/webhooks/<id:webhook_id>")
@allow(Role.SUPERVISOR)
@operation("deleteWebhook", Answer("Deleted.", None, status=204), errors=(404,))
def delete_webhook(webhook_id: int) -> Response:
    """Delete an endpoint, with its queue and its log."""
    webhooks.get_webhook(db.session(), webhook_id)
    begin_write(db.session)
    webhooks.delete_webhook(db.session(), webhook_id)
    db.session.commit()
    return "", 204


@bp.post("/webhooks/<id:webhook_id>/test")
@allow(Role.SUPERVISOR)
@operation("testWebhook", Answer("What the endpoint answered.", PingOut), errors=(404,))
def test_webhook(webhook_id: int) -> Response:
    """Send a signed ping (type "ping", not an event) to the endpoint now and say what it answered.

    Sent outside any transaction (at most 10 seconds); logged in the endpoint's delivery log.
    """
    outcome = webhooks.ping(db.session(), webhook_id, allow_private=_allow_private())
    return dump(
        PingOut,
        {
            "ok": outcome.ok,
            "status_code": outcome.status_code,
            "duration_ms": outcome.duration_ms,
            "error": outcome.error,
        },
    )


@bp.get("/webhooks/<id:webhook_id>/attempts")
@allow(Role.SUPERVISOR)
@operation("listWebhookAttempts", Answer("The delivery log, newest first.", list[WebhookAttemptOut]), errors=(404,))
def list_webhook_attempts(webhook_id: int) -> Response:
    """The endpoint's delivery log: the last 1,000 attempts (event, status code, time taken, error)."""
    webhooks.get_webhook(db.session(), webhook_id)
    return [
        dump(
            WebhookAttemptOut,
            {
                "id": a.id,
                "event_id": public_id(a.event_id) if a.event_id is not None else None,
                "event_type": a.event_type,
                "at": a.at,
                "status_code": a.status_code,
                "duration_ms": a.duration_ms,
                "error": a.error,
            },
        )
        for a in webhooks.attempts(db.session(), webhook_id)
    ]


@bp.get("/webhooks/<id:webhook_id>/deliveries")
@allow(Role.SUPERVISOR)
@operation(
    "listWebhookDeliveries",
    Answer("The endpoint's deliveries, newest event first.", list[WebhookDeliveryOut]),
    query=WebhookDeliveryArgs,
    errors=(404,),
)
def list_webhook_deliveries(webhook_id: int) -> Response:
    """The endpoint's deliveries (of the events kept): pending, delivered or failed (given up)."""
    webhooks.get_webhook(db.session(), webhook_id)
    args = query_args(WebhookDeliveryArgs)
    rows = webhooks.deliveries(db.session(), webhook_id, state=args.state, limit=args.limit)
    return [_delivery_json(d, t) for d, t in rows]


@bp.post("/webhooks/<id:webhook_id>/deliveries/<id:delivery_id>/redeliver")
@allow(Role.SUPERVISOR)
@operation("redeliverWebhookDelivery", Answer("The delivery, due again.", WebhookDeliveryOut), errors=(404, 409))
def redeliver(webhook_id: int, delivery_id: int) -> Response:
    """Send a delivery again (delivered, failed or pending), with a new retry window."""
    webhooks.get_webhook(db.session(), webhook_id)
    begin_write(db.session)
    row = webhooks.redeliver(db.session(), webhook_id, delivery_id)
    event_type = webhooks.event_type_of(db.session(), row.event_id)
    db.session.commit()
    return _delivery_json(row, event_type)


@bp.post("/webhooks/<id:webhook_id>/events/<event_id>/redeliver")
@allow(Role.SUPERVISOR)
@operation("redeliverWebhookEvent", Answer("The event's delivery, due again.", WebhookDeliveryOut), errors=(404, 409))
def redeliver_event(webhook_id: int, event_id: str) -> Response:
    """Send an event again that the endpoint's stream already sent (by its id, ``evt_...``, as the log
    shows it): events delivered at the first try have no delivery to redeliver until this makes one.
    409 for an event not sent yet (it goes in order with the others) or of a type not subscribed."""
    webhooks.get_webhook(db.session(), webhook_id)
    number = outbox.event_number(event_id)
    if number is None:
        raise NotFound(Message("No event %(id)s is kept.", id=event_id))
    begin_write(db.session)
    row = webhooks.redeliver_event(db.session(), webhook_id, number)
    event_type = webhooks.event_type_of(db.session(), row.event_id)
    db.session.commit()
    return _delivery_json(row, event_type)
