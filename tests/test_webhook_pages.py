"""The Webhooks pages: a supervisor adds an endpoint in a form, sees its secret once, turns it off and
on, sends a test, redelivers, deletes; errors stand next to their fields and keep what was typed."""

import re
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from leadcrm import create_app
from leadcrm.extensions import db
from leadcrm.models import Event, Webhook, WebhookAttempt, WebhookDelivery, utcnow
from leadcrm.vocabulary import Role
from tests.helpers import add_user, csrf_token_of, login_client
from tests.receiver import Receiver


@pytest.fixture
def page_app(database_url: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Flask]:
    monkeypatch.setenv("LEADCRM_INSTANCE_PATH", str(tmp_path / "instance"))
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": database_url, "LEADCRM_WEBHOOKS_ALLOW_PRIVATE": True})
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def browser(page_app: Flask) -> FlaskClient:
    with page_app.app_context():
        return login_client(page_app, add_user("olga", Role.SUPERVISOR))


def form_post(client: FlaskClient, url: str, data: dict[str, Any], page: str = "/webhooks/") -> Any:
    token = csrf_token_of(client.get(page).get_data(as_text=True))
    return client.post(url, data={"csrf_token": token, **data})


def test_a_webhook_is_added_in_the_form_and_its_secret_shown_once(page_app: Flask, browser: FlaskClient) -> None:
    empty = browser.get("/webhooks/").get_data(as_text=True)
    assert "No webhooks yet." in empty and 'name="events"' in empty
    answer = form_post(
        browser,
        "/webhooks/",
        {
            "url": "https://crm.example.com/hooks",
            "description": "Sales CRM",
            "events": ["contact.registered", "contact.closed"],
        },
    )
    page = answer.get_data(as_text=True)
    assert answer.status_code == 200 and answer.headers["Cache-Control"] == "no-store"
    secret = re.search(r'id="new-webhook-secret"[^>]*value="(whsec_[^"]+)"', page)
    assert secret, page
    with page_app.app_context():
        (hook,) = db.session.scalars(sa.select(Webhook)).all()
        assert hook.secret == secret.group(1) and hook.description == "Sales CRM"
    again = browser.get("/webhooks/").get_data(as_text=True)
    assert secret.group(1) not in again and "Sales CRM" in again
    assert secret.group(1) not in browser.get(f"/webhooks/{hook.id}").get_data(as_text=True)


def test_errors_stand_next_to_their_fields_and_keep_what_was_typed(browser: FlaskClient) -> None:
    answer = form_post(browser, "/webhooks/", {"url": "ftp://crm.example.com/x", "description": "Мой CRM"})
    page = answer.get_data(as_text=True)
    assert answer.status_code == 422
    assert 'value="ftp://crm.example.com/x"' in page and 'value="Мой CRM"' in page
    assert 'id="url-error"' in page and 'id="events-error"' in page
    assert "Choose at least one event type." in page
    kept = form_post(browser, "/webhooks/", {"url": "", "events": ["contact.closed"]})
    assert kept.status_code == 422 and 'value="contact.closed" checked' in kept.get_data(as_text=True)


def test_the_webhook_page_turns_it_off_and_on_tests_it_redelivers_and_deletes_it(
    page_app: Flask, browser: FlaskClient
) -> None:
    receiver = Receiver().start()
    try:
        form_post(browser, "/webhooks/", {"url": receiver.url, "events": ["contact.closed"]})
        with page_app.app_context():
            hook_id = db.session.scalars(sa.select(Webhook.id)).one()
        page = f"/webhooks/{hook_id}"
        off = form_post(browser, f"{page}/off", {}, page)
        assert off.status_code == 302
        shown = browser.get(off.headers["Location"]).get_data(as_text=True)
        assert "Turned off" in shown and "Turn on" in shown
        on = browser.get(form_post(browser, f"{page}/on", {}, page).headers["Location"]).get_data(as_text=True)
        assert "Turned on" in on and "Turn off" in on

        tested = form_post(browser, f"{page}/test", {}, page)
        assert tested.status_code == 200 and "the endpoint answered 204" in tested.get_data(as_text=True)
        assert [r.json["type"] for r in receiver.ok()] == ["ping"]
        assert "ping" in browser.get(page).get_data(as_text=True)  # in the delivery log
        receiver.stop()
        failed = form_post(browser, f"{page}/test", {}, page).get_data(as_text=True)
        assert "Test failed" in failed

        saved = form_post(
            browser,
            page,
            {"url": receiver.url, "description": "Склад", "events": ["contact.closed", "operator.updated"]},
            page,
        )
        assert saved.status_code == 302 and "done=saved" in saved.headers["Location"]
        assert "Склад" in browser.get(page).get_data(as_text=True)
        bad = form_post(browser, page, {"url": "http://", "events": ["contact.closed"]}, page)
        assert bad.status_code == 422 and 'id="url-error"' in bad.get_data(as_text=True)

        assert browser.get("/webhooks/999999").status_code == 404
        gone = form_post(browser, f"{page}/delete", {}, page)
        assert gone.status_code == 302
        with page_app.app_context():
            assert db.session.scalar(sa.select(sa.func.count()).select_from(Webhook)) == 0
            assert db.session.scalar(sa.select(sa.func.count()).select_from(WebhookDelivery)) == 0
    finally:
        receiver.stop()


def test_an_event_the_stream_delivered_is_sent_again_from_the_log(page_app: Flask, browser: FlaskClient) -> None:
    form_post(browser, "/webhooks/", {"url": "https://crm.example.com/hooks", "events": ["contact.closed"]})
    with page_app.app_context():
        hook = db.session.scalars(sa.select(Webhook)).one()
        at = utcnow()
        sent = Event(position=1, type="contact.closed", subject="contact:7", actor="worker", created_at=at, data="{}")
        later = Event(position=2, type="contact.closed", subject="contact:8", actor="worker", created_at=at, data="{}")
        db.session.add_all([sent, later])
        db.session.flush()
        hook.sent_to = 1  # the stream delivered the first (logged), not the second yet
        db.session.add(
            WebhookAttempt(
                webhook_id=hook.id, event_id=sent.id, event_type=sent.type, at=at, status_code=204, duration_ms=5
            )
        )
        db.session.commit()
        hook_id, sent_id, later_id = hook.id, sent.id, later.id
    page = f"/webhooks/{hook_id}"
    shown = browser.get(page).get_data(as_text=True)
    action = f"/webhooks/{hook_id}/events/{sent_id}/redeliver"
    assert f'action="{action}"' in shown and "Send again" in shown
    again = form_post(browser, action, {}, page)
    assert again.status_code == 302 and "done=redelivered" in again.headers["Location"]
    with page_app.app_context():
        (row,) = db.session.scalars(sa.select(WebhookDelivery)).all()
        assert (row.event_id, row.state, row.attempts, row.subject) == (sent_id, "pending", 0, "contact:7")
        assert row.next_attempt_at is not None
    assert "Queued again" in browser.get(again.headers["Location"]).get_data(as_text=True)
    not_yet = form_post(browser, f"/webhooks/{hook_id}/events/{later_id}/redeliver", {}, page)
    assert not_yet.status_code == 409 and "not sent yet" in not_yet.get_data(as_text=True)
    assert form_post(browser, f"/webhooks/{hook_id}/events/999999/redeliver", {}, page).status_code == 404
