"""Webhooks: endpoints managed through the API, deliveries by the worker to a real HTTP receiver.

The worker here is the real ``Worker`` run round by round in the test's
process (its sender threads really POST to a receiver listening on
127.0.0.1, which the tests allow with LEADCRM_WEBHOOKS_ALLOW_PRIVATE);
retries are shortened by configuration, never by faking the clock. The
refusals of private addresses run with the setting off.
"""

import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from standardwebhooks.webhooks import Webhook as Verifier

from leadcrm import create_app, delivery, webhooks
from leadcrm.database import begin_write, reads_only
from leadcrm.extensions import db
from leadcrm.models import Event, Webhook, WebhookAttempt, WebhookDelivery, utcnow
from leadcrm.vocabulary import Role, TokenScope
from leadcrm.worker import Worker
from tests.helpers import add_operator, add_source, add_token, add_user, json_of, login_client
from tests.receiver import Receiver

# Retries in tenths of a second: the first after about 0.1 s, the gaps doubling up to 0.4 s.
FAST_RETRIES = {
    "LEADCRM_WEBHOOK_RETRY_BASE": 0.1,
    "LEADCRM_WEBHOOK_RETRY_MAX": 0.4,
    "LEADCRM_WEBHOOKS_ALLOW_PRIVATE": True,
    "LEADCRM_EVENTS_POLL": 0.1,
}


@pytest.fixture
def hooks_app(database_url: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Flask]:
    """The app with webhooks allowed to 127.0.0.1 and fast retries."""
    monkeypatch.setenv("LEADCRM_INSTANCE_PATH", str(tmp_path / "instance"))
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": database_url, **FAST_RETRIES})
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def api(hooks_app: Flask) -> FlaskClient:
    with hooks_app.app_context():
        supervisor = add_user("olga", Role.SUPERVISOR)
        secret = add_token("crm", TokenScope.FULL)
        return login_client(hooks_app, supervisor, token=secret)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


class Running:
    """The real worker, run round by round in this process until a condition holds."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.worker = Worker(app, name="test-worker")

    def until(self, condition: Callable[[], bool], timeout: float = 20, what: str = "") -> float:
        started = time.monotonic()
        with self.app.app_context():
            reads_only(db.session)
            while not condition():
                if time.monotonic() - started > timeout:
                    raise AssertionError(f"not within {timeout} s: {what}")
                self.worker.round()
                self.worker.stop.wait(0.02)
            db.session.remove()
        return time.monotonic() - started

    def rounds(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        self.until(lambda: time.monotonic() > end, seconds + 5)

    def close(self) -> None:
        with self.app.app_context():
            self.worker.record_sent(wait=True)
            db.session.remove()
        self.worker.senders.shutdown(wait=True)


@pytest.fixture
def running(hooks_app: Flask) -> Iterator[Running]:
    r = Running(hooks_app)
    yield r
    r.close()


def create(api: FlaskClient, url: str, events: list[str] | None = None, **more: Any) -> dict[str, Any]:
    body = {"url": url, "events": events or ["contact.registered", "contact.assigned", "contact.closed"]} | more
    answer = api.post("/api/v1/webhooks/", json=body)
    assert answer.status_code == 201, answer.get_json()
    return json_of(answer)


def register(api: FlaskClient, source_id: int, n: int) -> dict[str, Any]:
    answer = api.post("/api/v1/contacts/register", json={"source_id": source_id, "phone": f"+7900555{n:04d}"})
    assert answer.status_code == 201, answer.get_json()
    return json_of(answer)["contact"]


def setup_source(app: Flask, limit: int = 100) -> int:
    with app.app_context():
        source = add_source("bot", {add_operator("Anna", limit=limit): 10, add_operator("Boris", limit=limit): 10})
        db.session.commit()
        return source.id


def verified(received: list[Any], secret: str) -> list[dict[str, Any]]:
    """Each body, checked against its Standard Webhooks signature (raises if one does not verify)."""
    verifier = Verifier(secret)
    return [verifier.verify(r.body, r.headers) for r in received]


def feed_events(api: FlaskClient, types: str | None = None) -> list[dict[str, Any]]:
    args: dict[str, Any] = {"limit": 1000} | ({"types": types} if types else {})
    return json_of(api.get("/api/v1/events", query_string=args))["events"]


# --- managing endpoints -----------------------------------------------------------------------


def test_an_endpoint_is_created_with_its_secret_shown_once_changed_and_deleted(api: FlaskClient) -> None:
    created = create(api, "https://crm.example.com/hooks/leadcrm", description="Sales CRM")
    assert created["secret"].startswith("whsec_") and len(created["secret"]) > 30
    assert created["enabled"] is True and created["pending"] == 0
    url = f"/api/v1/webhooks/{created['id']}"
    shown = json_of(api.get(url))
    assert "secret" not in shown and shown["description"] == "Sales CRM"
    assert shown["events"] == ["contact.registered", "contact.assigned", "contact.closed"]
    assert [w["id"] for w in json_of(api.get("/api/v1/webhooks/"))] == [created["id"]]

    changed = json_of(api.patch(url, json={"events": ["contact.closed", "operator.updated"], "enabled": False}))
    assert changed["events"] == ["contact.closed", "operator.updated"]
    assert changed["enabled"] is False and changed["disabled_reason"] == "by_hand"
    again = json_of(api.patch(url, json={"enabled": True, "description": ""}))
    assert again["enabled"] is True and again["disabled_reason"] is None and again["description"] is None

    assert api.delete(url).status_code == 204
    missing = api.get(url)
    assert missing.status_code == 404 and missing.is_json
    assert api.delete(url).status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "ftp://example.com/x", "events": ["contact.closed"]}, "url"),
        ({"url": "not a url", "events": ["contact.closed"]}, "url"),
        ({"url": "https://", "events": ["contact.closed"]}, "url"),
        ({"url": "https://example.com/" + "x" * 2000, "events": ["contact.closed"]}, "url"),
        ({"url": "https://example.com/x", "events": []}, "events"),
        ({"url": "https://example.com/x", "events": ["contact.nope"]}, "events.0"),
        ({"url": "https://example.com/x", "events": ["contact.closed"], "secret": "mine"}, "secret"),
        ({"url": "https://user:pw@example.com/x", "events": ["contact.closed"]}, "url"),
        ({"url": "https://example.com/a b", "events": ["contact.closed"]}, "url"),
        ({"url": "https://exa mple.com/x", "events": ["contact.closed"]}, "url"),
        ({"url": "https://example.com/x\r\nX-Injected: 1", "events": ["contact.closed"]}, "url"),
    ],
)
def test_bad_endpoints_are_refused_naming_the_field(api: FlaskClient, body: dict[str, Any], field: str) -> None:
    answer = api.post("/api/v1/webhooks/", json=body)
    assert answer.status_code == 422, answer.get_json()
    assert field in json_of(answer)["error"]["fields"], json_of(answer)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9/x", "http://10.1.2.3/x", "http://169.254.169.254/latest", "http://[::1]/x"]
)
def test_private_addresses_are_refused_when_the_setting_is_off(client: FlaskClient, url: str) -> None:
    answer = client.post("/api/v1/webhooks/", json={"url": url, "events": ["contact.closed"]})
    assert answer.status_code == 422 and "url" in json_of(answer)["error"]["fields"]


# --- what is sent, and to where ---------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/x",
        "http://10.0.0.1/x",
        "http://169.254.169.254/latest/meta-data",
        "http://localhost:{port}/x",
    ],
)
def test_sending_refuses_private_addresses_checked_on_what_the_name_resolves_to(receiver: Receiver, url: str) -> None:
    started = time.monotonic()
    outcome = delivery.send(url.format(port=receiver.port), "whsec_" + "A" * 32, "evt_1", "{}", allow_private=False)
    assert outcome.status_code is None and not outcome.ok
    assert "address" in (outcome.error or ""), outcome
    assert time.monotonic() - started < 2  # refused before any connection
    assert receiver.all() == []


def test_redirects_are_not_followed_and_answers_are_read_up_to_64_kib(receiver: Receiver) -> None:
    target = Receiver().start()
    try:
        receiver.status = 302
        receiver.answer_headers = {"Location": target.url}
        outcome = delivery.send(receiver.url, "whsec_" + "A" * 32, "evt_1", "{}", allow_private=True)
        assert outcome.status_code == 302 and not outcome.ok and target.all() == []
        receiver.status, receiver.answer_headers = 200, {}
        receiver.answer_body = b"x" * (10 * 1024 * 1024)
        outcome = delivery.send(receiver.url, "whsec_" + "A" * 32, "evt_2", "{}", allow_private=True)
        assert outcome.ok and outcome.error is None
    finally:
        target.stop()


def test_a_receiver_that_does_not_answer_in_time_is_a_failure(receiver: Receiver) -> None:
    receiver.delay = 3
    outcome = delivery.send(receiver.url, "whsec_" + "A" * 32, "evt_1", "{}", allow_private=True, timeout=0.5)
    assert outcome.status_code is None and "within" in (outcome.error or "")
    assert 400 <= outcome.duration_ms < 2000


def test_a_receiver_that_dribbles_its_answer_is_cut_off_at_the_timeout(receiver: Receiver) -> None:
    # Each read waits less than the timeout, but the answer never ends: the whole exchange still has
    # the timeout, or one receiver could hold its sender (and outlive the delivery's lease) for hours.
    receiver.dribble = 0.2
    started = time.monotonic()
    outcome = delivery.send(receiver.url, "whsec_" + "A" * 32, "evt_1", "{}", allow_private=True, timeout=1)
    assert time.monotonic() - started < 2.5, outcome
    assert outcome.status_code is None and "within" in (outcome.error or ""), outcome


# --- delivered by the worker --------------------------------------------------------------------


def test_every_event_arrives_once_in_order_per_contact_signed_and_as_the_feed_shows_it(
    hooks_app: Flask, api: FlaskClient, receiver: Receiver, running: Running
) -> None:
    source_id = setup_source(hooks_app, limit=2)
    hook = create(api, receiver.url, ["contact.registered", "contact.assigned", "contact.waiting", "contact.closed"])
    contacts = [register(api, source_id, n) for n in range(6)]  # 4 assigned, 2 wait
    for c in contacts[:3]:
        api.post(f"/api/v1/contacts/{c['id']}/close")  # each frees a slot: a waiting one is assigned
    running.until(lambda: len(feed_events(api)) > 0, what="numbered")
    wanted = [e for e in feed_events(api) if e["type"] != "source.weights_changed"]
    expected = len(wanted)
    assert expected == 6 * 2 + 3 + 2  # registered and assigned or waiting; 3 closed; 2 assigned from the queue
    running.until(lambda: len(receiver.ok()) >= expected, what="every event delivered")
    running.rounds(0.3)  # nothing more comes
    bodies = verified(receiver.ok(), hook["secret"])
    assert len(bodies) == expected and sorted(b["id"] for b in bodies) == sorted(e["id"] for e in wanted)
    assert {b["id"]: b for b in bodies} == {e["id"]: e for e in wanted}
    for r in receiver.ok():
        assert r.headers["webhook-id"] == r.json["id"]
        assert r.headers["Content-Type"] == "application/json"
    # Per contact, in the order the changes happened.
    order = {e["id"]: i for i, e in enumerate(wanted)}
    per_contact: dict[int, list[int]] = defaultdict(list)
    for b in bodies:
        per_contact[b["data"]["contact"]["id"]].append(order[b["id"]])
    assert all(positions == sorted(positions) for positions in per_contact.values())
    shown = json_of(api.get(f"/api/v1/webhooks/{hook['id']}"))
    assert shown["pending"] == 0 and shown["delivered"] == expected and shown["last_success_at"] is not None


def test_a_receiver_down_for_a_while_gets_everything_when_back_and_nothing_twice_after_a_2xx(
    hooks_app: Flask, api: FlaskClient, receiver: Receiver, running: Running
) -> None:
    source_id = setup_source(hooks_app)
    hook = create(api, receiver.url, ["contact.registered", "contact.closed"])
    receiver.status = 500
    first = [register(api, source_id, n) for n in range(3)]
    running.until(lambda: len(receiver.all()) >= 6, what="failed attempts answered 500")
    receiver.stop()  # not listening at all
    api.post(f"/api/v1/contacts/{first[0]['id']}/close")
    second = [register(api, source_id, n) for n in range(3, 5)]
    running.rounds(1.0)
    with hooks_app.app_context():
        log = db.session.scalars(sa.select(WebhookAttempt)).all()
        assert any(a.status_code == 500 for a in log) and any(a.status_code is None and a.error for a in log)
    shown = json_of(api.get(f"/api/v1/webhooks/{hook['id']}"))
    assert shown["failing_since"] is not None and shown["pending"] == 6 and shown["enabled"] is True
    receiver.status = 204
    receiver.start()
    running.until(lambda: len(receiver.ok()) >= 6, what="everything after the receiver came back")
    running.rounds(1.0)
    ids = [r.json["id"] for r in receiver.ok()]
    assert len(ids) == len(set(ids)) == 6  # once each after a 2xx
    assert {b["data"]["contact"]["id"] for b in verified(receiver.ok(), hook["secret"])} == {
        c["id"] for c in first + second
    }
    shown = json_of(api.get(f"/api/v1/webhooks/{hook['id']}"))
    assert shown["failing_since"] is None and shown["pending"] == 0 and shown["delivered"] == 6
    attempts = json_of(api.get(f"/api/v1/webhooks/{hook['id']}/attempts"))
    assert attempts[0]["status_code"] == 204 and any(a["status_code"] == 500 for a in attempts)
    assert all(a["duration_ms"] >= 0 and a["event_id"].startswith("evt_") for a in attempts)


def test_an_endpoint_failing_for_the_whole_window_is_turned_off_and_resumes_when_turned_on(
    hooks_app: Flask, api: FlaskClient, receiver: Receiver, running: Running
) -> None:
    hooks_app.config["LEADCRM_WEBHOOK_RETRY_FOR"] = 1.0
    running.worker = Worker(hooks_app, name="test-worker")  # reads the window at start
    source_id = setup_source(hooks_app)
    hook = create(api, receiver.url, ["contact.registered"])
    receiver.stop()
    register(api, source_id, 1)
    url = f"/api/v1/webhooks/{hook['id']}"
    running.until(lambda: json_of(api.get(url))["enabled"] is False, what="turned off after the window")
    shown = json_of(api.get(url))
    assert shown["disabled_reason"] == "failing" and shown["pending"] == 1
    register(api, source_id, 2)  # while it is off: queued when it is on again
    receiver.start()
    running.rounds(0.5)
    assert receiver.all() == []  # off: nothing is sent
    assert json_of(api.patch(url, json={"enabled": True}))["enabled"] is True
    running.until(lambda: len(receiver.ok()) >= 2, what="resumed from the first undelivered event")
    assert [r.json["data"]["contact"]["lead_id"] for r in receiver.ok()] == sorted(
        r.json["data"]["contact"]["lead_id"] for r in receiver.ok()
    )


def test_a_slow_receiver_does_not_delay_another_endpoint(
    hooks_app: Flask, api: FlaskClient, receiver: Receiver, running: Running
) -> None:
    fast = Receiver().start()
    try:
        source_id = setup_source(hooks_app)
        receiver.delay = 2.0
        create(api, receiver.url, ["contact.registered"])
        create(api, fast.url, ["contact.registered"])
        for n in range(5):
            register(api, source_id, n)
        took = running.until(lambda: len(fast.ok()) >= 5, what="the fast endpoint's deliveries")
        assert took < 2.0 and len(receiver.all()) <= 1, (took, len(receiver.all()))
    finally:
        fast.stop()


def test_redeliver_sends_a_delivered_event_again_with_the_same_id_and_a_ping_is_signed_and_logged(
    hooks_app: Flask, api: FlaskClient, receiver: Receiver, running: Running
) -> None:
    source_id = setup_source(hooks_app)
    hook = create(api, receiver.url, ["contact.registered"])
    base = f"/api/v1/webhooks/{hook['id']}"
    register(api, source_id, 1)
    running.until(lambda: json_of(api.get(base))["delivered"] == 1, what="delivered")
    # Delivered at the first try, from the stream: no delivery row, the log names the event.
    assert json_of(api.get(f"{base}/deliveries")) == []
    (logged,) = json_of(api.get(f"{base}/attempts"))
    assert logged["status_code"] == 204 and logged["event_type"] == "contact.registered"
    again = api.post(f"{base}/events/{logged['event_id']}/redeliver")
    assert again.status_code == 200 and json_of(again)["state"] == "pending", again.get_data(as_text=True)
    running.until(lambda: len(receiver.ok()) == 2, what="the redelivery")
    first, second = receiver.ok()
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == logged["event_id"]
    running.until(lambda: json_of(api.get(f"{base}/deliveries"))[0]["state"] == "delivered", what="recorded")
    (row,) = json_of(api.get(f"{base}/deliveries"))
    assert row["event_id"] == logged["event_id"] and row["attempts"] == 1
    assert json_of(api.get(base))["delivered"] == 2
    # The delivery it made is redelivered by its own id as well, and once more from the log.
    assert json_of(api.post(f"{base}/deliveries/{row['id']}/redeliver"))["state"] == "pending"
    running.until(lambda: len(receiver.ok()) == 3, what="the second redelivery")
    assert api.post(f"{base}/deliveries/999999/redeliver").status_code == 404
    for bad in ("evt_999999", "evt_0", "12", "evt_99999999999999999999", "evt_x"):
        answer = api.post(f"{base}/events/{bad}/redeliver")
        assert answer.status_code == 404 and answer.is_json, (bad, answer.status_code)

    ping = api.post(f"/api/v1/webhooks/{hook['id']}/test")
    assert ping.status_code == 200 and json_of(ping)["ok"] is True and json_of(ping)["status_code"] == 204
    (body,) = verified(receiver.ok()[3:], hook["secret"])
    assert body["type"] == "ping" and body["data"] == {"webhook_id": hook["id"]}
    assert json_of(api.get(f"/api/v1/webhooks/{hook['id']}/attempts"))[0]["event_type"] == "ping"
    receiver.stop()
    failed = json_of(api.post(f"/api/v1/webhooks/{hook['id']}/test"))
    assert failed["ok"] is False and failed["status_code"] is None and failed["error"]


def test_the_delivery_log_keeps_the_last_thousand_attempts(
    hooks_app: Flask, api: FlaskClient, receiver: Receiver
) -> None:
    hook = create(api, receiver.url)
    with hooks_app.app_context():
        from leadcrm.models import utcnow

        db.session.add_all(
            WebhookAttempt(webhook_id=hook["id"], event_id=n, event_type="contact.closed", at=utcnow(), duration_ms=1)
            for n in range(1, 1006)
        )
        db.session.commit()
    assert json_of(api.post(f"/api/v1/webhooks/{hook['id']}/test"))["ok"] is True
    log = json_of(api.get(f"/api/v1/webhooks/{hook['id']}/attempts"))
    assert len(log) == 1000 and log[0]["event_type"] == "ping" and log[-1]["event_id"] == "evt_7"


def test_an_endpoint_gets_only_what_happens_after_it_was_added_and_only_its_types(
    hooks_app: Flask, api: FlaskClient, receiver: Receiver, running: Running
) -> None:
    source_id = setup_source(hooks_app)
    register(api, source_id, 1)
    running.until(lambda: len(feed_events(api)) >= 3, what="numbered")
    create(api, receiver.url, ["contact.closed"])
    c = register(api, source_id, 2)
    api.post(f"/api/v1/contacts/{c['id']}/close")
    running.until(lambda: len(receiver.ok()) >= 1, what="the close")
    running.rounds(0.5)
    assert [r.json["type"] for r in receiver.ok()] == ["contact.closed"]
    assert receiver.ok()[0].json["data"]["contact"]["id"] == c["id"]
    with hooks_app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Webhook)) == 1
    assert json.loads(receiver.ok()[0].body)["actor"] == "token:crm (#1)"


def test_forgetting_the_head_of_a_contacts_line_lets_the_rest_of_it_go(
    hooks_app: Flask, api: FlaskClient, receiver: Receiver, running: Running
) -> None:
    """An old event forgotten while its delivery was still pending (the receiver down): the contact's
    later events, queued behind it, must not wait for ever for a delivery that no longer exists."""
    source_id = setup_source(hooks_app)
    create(api, receiver.url, ["contact.registered", "contact.closed"])
    receiver.stop()
    c = register(api, source_id, 1)
    api.post(f"/api/v1/contacts/{c['id']}/close")
    with hooks_app.app_context():

        def tried() -> bool:
            return (db.session.scalar(sa.select(sa.func.count()).select_from(WebhookAttempt)) or 0) >= 1

    running.until(tried, what="the registration's delivery tried and failed")
    with hooks_app.app_context():
        begin_write(db.session)
        db.session.execute(
            sa.update(Event).where(Event.type == "contact.registered").values(created_at=utcnow() - timedelta(days=60))
        )
        db.session.commit()
        begin_write(db.session)
        assert webhooks.forget_events(db.session(), utcnow() - timedelta(days=30), utcnow()) == 1
        db.session.commit()
    receiver.start()
    running.until(lambda: len(receiver.ok()) >= 1, what="the close, once the registration was forgotten")
    assert [r.json["type"] for r in receiver.ok()] == ["contact.closed"]


def test_a_batch_goes_over_one_kept_connection_and_one_the_receiver_closed_is_opened_again(receiver: Receiver) -> None:
    sender = delivery.Sender(receiver.url, "whsec_" + "A" * 32, allow_private=True)
    try:
        assert all(sender.send(f"evt_{n}", "{}").ok for n in range(3))
        assert len({r.port for r in receiver.all()}) == 1  # one TCP connection for the three
        receiver.stop()  # the kept connection is cut while idle
        receiver.start()
        assert sender.send("evt_3", "{}").ok  # on a new connection, sent once
        receiver.stop()
        receiver.keep_alive = False  # HTTP/1.0: the receiver closes after each answer
        receiver.start()
        assert sender.send("evt_4", "{}").ok and sender.send("evt_5", "{}").ok
    finally:
        sender.close()
    ports = [r.port for r in receiver.all()]
    assert [r.headers["webhook-id"] for r in receiver.all()] == [f"evt_{n}" for n in range(6)]
    assert len(set(ports)) == 4 and ports[3] != ports[0] and ports[4] != ports[5]


def test_a_batch_stops_at_its_send_window_and_the_rest_goes_next_once_each_in_order(
    hooks_app: Flask, api: FlaskClient, receiver: Receiver, running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(webhooks, "SEND_WINDOW", 0.25)
    source_id = setup_source(hooks_app)
    create(api, receiver.url, ["contact.registered"])
    receiver.delay = 0.2  # two sends fit the window, not six
    for n in range(6):
        register(api, source_id, n)
    running.until(lambda: len(receiver.ok()) >= 6, what="all six, over several batches")
    running.rounds(0.5)
    ports = [r.port for r in receiver.ok()]
    ids = [r.json["id"] for r in receiver.ok()]
    assert len(ids) == len(set(ids)) == 6 and ids == sorted(ids, key=lambda i: int(i.removeprefix("evt_")))
    assert len(set(ports)) >= 3  # a connection per batch: the window cut the batch at least twice


def test_bytes_a_receiver_sends_after_its_answer_do_not_fail_the_next_delivery(receiver: Receiver) -> None:
    """A receiver that writes a body after a 204 (which has none): the stray bytes are dropped with
    the connection, seen before the next request or when they garble its answer (then sent again)."""
    receiver.answer_body = b"accepted"
    sender = delivery.Sender(receiver.url, "whsec_" + "A" * 32, allow_private=True)
    try:
        outcomes = [sender.send(f"evt_{n}", "{}") for n in range(4)]
    finally:
        sender.close()
    assert [o.status_code for o in outcomes] == [204] * 4, outcomes  # each the receiver's own answer
    # At least once: a request whose answer came after stray bytes may have gone twice, never fewer.
    assert {r.headers["webhook-id"] for r in receiver.all()} == {f"evt_{n}" for n in range(4)}


# --- the stream: rows only for what failed ------------------------------------------------------


def rows(app: Flask) -> list[tuple[str, str, int]]:
    """The deliveries stored (the stream's failures and what queued behind them): (subject, state, attempts)."""
    with app.app_context():
        found = db.session.execute(
            sa.select(WebhookDelivery.subject, WebhookDelivery.state, WebhookDelivery.attempts).order_by(
                WebhookDelivery.position
            )
        )
        result = [tuple(r) for r in found]
        db.session.remove()
        return result  # type: ignore[return-value]


def test_a_failed_event_holds_back_only_its_contacts_later_events_and_the_rest_flows_without_rows(
    hooks_app: Flask, api: FlaskClient, receiver: Receiver, running: Running
) -> None:
    source_id = setup_source(hooks_app)
    hook = create(api, receiver.url, ["contact.registered", "contact.assigned", "contact.closed"])
    receiver.fail_if = lambda body: b"+79005550001" in body  # the receiver chokes on one customer
    a = register(api, source_id, 1)
    b = register(api, source_id, 2)
    running.until(lambda: len(receiver.ok()) >= 2, what="the other contact's two events")
    api.post(f"/api/v1/contacts/{a['id']}/close")
    api.post(f"/api/v1/contacts/{b['id']}/close")
    running.until(lambda: len(receiver.ok()) >= 3, what="the other contact's close")
    running.rounds(0.5)  # retries of the first contact's registration fail meanwhile
    assert {r.json["data"]["contact"]["id"] for r in receiver.ok()} == {b["id"]}
    assert [r.json["type"] for r in receiver.ok()] == ["contact.registered", "contact.assigned", "contact.closed"]
    # Only the failing contact has rows: its registration retried, its assignment and close queued behind.
    stored = rows(hooks_app)
    subject = f"contact:{a['id']}"
    assert [(s, state) for s, state, _ in stored] == [(subject, "pending")] * 3
    assert stored[0][2] >= 2 and stored[1][2] == stored[2][2] == 0
    assert json_of(api.get(f"/api/v1/webhooks/{hook['id']}"))["pending"] == 3
    tried = [r.json["type"] for r in receiver.all() if b"+79005550001" in r.body]
    assert set(tried) == {"contact.registered"}  # nothing of it went before its registration

    receiver.fail_if = None
    running.until(lambda: len(receiver.ok()) >= 6, what="the held-back contact, once it is accepted")
    running.rounds(0.3)
    held = [r.json["type"] for r in receiver.ok() if r.json["data"]["contact"]["id"] == a["id"]]
    assert held == ["contact.registered", "contact.assigned", "contact.closed"]
    assert [state for _, state, _ in rows(hooks_app)] == ["delivered"] * 3
    shown = json_of(api.get(f"/api/v1/webhooks/{hook['id']}"))
    assert shown["pending"] == 0 and shown["delivered"] == 6 and shown["failing_since"] is None


def test_a_receiver_that_fails_everything_pauses_the_stream_rather_than_retry_every_event(
    hooks_app: Flask, api: FlaskClient, receiver: Receiver, running: Running
) -> None:
    source_id = setup_source(hooks_app)
    hook = create(api, receiver.url, ["contact.registered"])
    receiver.status = 500
    contacts = [register(api, source_id, n) for n in range(40)]

    def paused_twice() -> bool:
        webhook = db.session.get_one(Webhook, hook["id"])
        db.session.refresh(webhook)
        return webhook.stream_failures >= 2

    running.until(paused_twice, what="two stream batches that failed")
    with hooks_app.app_context():
        webhook = db.session.get_one(Webhook, hook["id"])
        assert webhook.stream_due_at is not None  # kept while a batch is out again, until its outcome
        failures = webhook.stream_failures
    stored = rows(hooks_app)
    # Each paused batch tried STREAM_FAILURES_IN_A_ROW events: the other 30-odd wait in the stream.
    assert len(stored) <= webhooks.STREAM_FAILURES_IN_A_ROW * (failures + 1) < len(contacts)
    assert json_of(api.get(f"/api/v1/webhooks/{hook['id']}"))["pending"] == len(contacts)

    receiver.status = 204
    running.until(lambda: len(receiver.ok()) >= len(contacts), what="everything once the receiver is back")
    running.rounds(0.3)
    ids = [r.json["id"] for r in receiver.ok()]
    assert len(ids) == len(set(ids)) == len(contacts)
    with hooks_app.app_context():
        webhook = db.session.get_one(Webhook, hook["id"])
        assert webhook.stream_due_at is None and webhook.stream_failures == 0 and webhook.delivered_count == 40
    assert [state for _, state, _ in rows(hooks_app)] == ["delivered"] * len(stored)


def test_a_stream_lease_that_ran_out_is_taken_over_and_the_first_holder_writes_nothing(
    hooks_app: Flask, api: FlaskClient
) -> None:
    """Two workers, the first stalled past its lease: the second sends the same events again (at least
    once) and only its outcome moves the cursor; the first's late write changes nothing."""
    source_id = setup_source(hooks_app)
    hook = create(api, "https://crm.example.com/hooks", ["contact.registered"])
    for n in range(3):
        register(api, source_id, n)
    ok = delivery.Outcome(204, 3, None)
    with hooks_app.app_context():
        session = db.session()

        def write(work: Callable[[], Any]) -> Any:
            begin_write(db.session)
            result = work()
            db.session.commit()
            return result

        from leadcrm import outbox
        from leadcrm.storage import Tx

        write(lambda: outbox.sequence(Tx.of(db.session())))
        now = utcnow()
        first = write(lambda: webhooks.lease_stream(session, hook["id"], "first", now))
        assert first is not None and len(first.events) == 3 and first.after < first.to
        assert write(lambda: webhooks.lease_stream(session, hook["id"], "second", now)) is None  # held
        later = now + webhooks.LEASE_FOR + timedelta(seconds=1)
        second = write(lambda: webhooks.lease_stream(session, hook["id"], "second", later))
        assert second is not None and [e.event_id for e in second.events] == [e.event_id for e in first.events]
        late = [webhooks.StreamSent(e, ok, now) for e in first.events]
        assert write(lambda: webhooks.record_stream(session, first, "first", late, later, webhooks.Retries())) == 0
        webhook = db.session.get_one(Webhook, hook["id"])
        db.session.refresh(webhook)
        assert webhook.sent_to == first.after and webhook.stream_leased_by == "second"
        assert webhook.delivered_count == 0 and db.session.scalars(sa.select(WebhookAttempt)).all() == []
        # The second sends one and is stopped: the cursor moves past that one only.
        done = [webhooks.StreamSent(second.events[0], ok, later)]
        assert write(lambda: webhooks.record_stream(session, second, "second", done, later, webhooks.Retries())) == 1
        db.session.refresh(webhook)
        assert webhook.sent_to == second.events[0].position and webhook.stream_leased_by is None
        assert webhook.delivered_count == 1
        third = write(lambda: webhooks.lease_stream(session, hook["id"], "first", later))
        assert third is not None and [e.event_id for e in third.events] == [e.event_id for e in first.events[1:]]
        db.session.remove()
