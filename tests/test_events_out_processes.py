"""Events out across real processes: two gunicorn servers registering at once, two workers delivering.

Every committed event reaches each endpoint exactly once (no crash here, so
at-least-once is exactly once), per contact in order, signed; the feed read
on the other server while registrations go on lists every committed event
exactly once, in commit order.
"""

import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from standardwebhooks.webhooks import Webhook as Verifier

from tests.backends import PostgresBackend, SqliteBackend
from tests.receiver import Receiver
from tests.servers import api_session, create_token, gunicorn, worker

pytestmark = pytest.mark.slow

ENV = {"LEADCRM_WEBHOOKS_ALLOW_PRIVATE": "1", "LEADCRM_EVENTS_POLL": "0.1"}
WORKER_ENV = ENV | {"LEADCRM_WORKER_TICK": "0.5", "LEADCRM_WEBHOOK_RETRY_BASE": "0.2", "LEADCRM_WEBHOOK_RETRY_MAX": "1"}
CONTACTS = 120


def test_two_servers_and_two_workers_deliver_every_event_once_per_endpoint_and_the_feed_misses_none(
    backend: SqliteBackend | PostgresBackend, tmp_path: Path
) -> None:
    if backend.name != "postgresql":
        pytest.skip("several servers and workers at once on one database: PostgreSQL")
    url = backend.empty_url(tmp_path, "events_out")
    flaky, steady = Receiver().start(), Receiver().start()
    flaky.status = 503  # fails at first: its deliveries are retried while the other's flow
    with (
        gunicorn(url, tmp_path, workers=2, name="one", env=ENV) as one,
        gunicorn(url, tmp_path, workers=2, name="two", env=ENV) as two,
        worker(url, tmp_path, name="worker-1", env=WORKER_ENV) as first_worker,
        worker(url, tmp_path, name="worker-2", env=WORKER_ENV) as second_worker,
    ):
        api = api_session(create_token(url))
        anna = api.post(f"{one}/api/v1/operators/", json={"name": "Anna", "max_active_leads": 1000}).json()
        boris = api.post(f"{one}/api/v1/operators/", json={"name": "Boris", "max_active_leads": 1000}).json()
        bot = api.post(f"{one}/api/v1/sources/", json={"name": "bot"}).json()
        weights = [{"operator_id": anna["id"], "weight": 10}, {"operator_id": boris["id"], "weight": 30}]
        assert api.post(f"{one}/api/v1/sources/{bot['id']}/config", json=weights).status_code == 200
        types = ["contact.registered", "contact.assigned", "contact.closed"]
        hooks = [
            api.post(f"{one}/api/v1/webhooks/", json={"url": r.url, "events": types}).json() for r in (flaky, steady)
        ]

        # The feed, followed on the second server while both servers register.
        followed: list[dict[str, Any]] = []
        done = threading.Event()

        def follow() -> None:
            reader, after = api_session(api.headers["Authorization"].split()[1]), "0"
            while True:
                finished = done.is_set()
                page = reader.get(f"{two}/api/v1/events?after={after}&limit=50", timeout=30).json()
                followed.extend(page["events"])
                after = page["next"]
                if finished and not page["has_more"]:
                    return
                if not page["has_more"]:
                    time.sleep(0.05)

        reader = threading.Thread(target=follow)
        reader.start()

        def register(n: int) -> int:
            base = (one, two)[n % 2]
            session = requests.Session()
            session.headers["Authorization"] = api.headers["Authorization"]
            answer = session.post(
                f"{base}/api/v1/contacts/register",
                json={"source_id": bot["id"], "phone": f"+7900777{n:04d}"},
                timeout=30,
            )
            assert answer.status_code == 201, answer.text
            contact_id = answer.json()["contact"]["id"]
            if n % 3 == 0:
                closed = session.post(f"{(two, one)[n % 2]}/api/v1/contacts/{contact_id}/close", timeout=30)
                assert closed.status_code == 200, closed.text
            return contact_id

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=8) as pool:
            contact_ids = list(pool.map(register, range(CONTACTS)))
        took = time.monotonic() - started
        flaky.status = 204  # back: everything it missed arrives
        expected = CONTACTS * 2 + CONTACTS // 3

        def settled() -> bool:
            return len(steady.ok()) >= expected and len(flaky.ok()) >= expected

        deadline = time.monotonic() + 60
        while not settled():
            assert time.monotonic() < deadline, (len(steady.ok()), len(flaky.ok()), expected)
            time.sleep(0.1)
        time.sleep(1.5)  # anything sent twice would arrive by now
        # Wait until the last feed page is numbered, then stop following.
        deadline = time.monotonic() + 30
        while len([e for e in followed if e["type"] != "source.weights_changed"]) < expected:
            assert time.monotonic() < deadline, len(followed)
            time.sleep(0.1)
        done.set()
        reader.join(30)
        logs = first_worker.log() + second_worker.log()

    engine = sa.create_engine(url)
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT id, position, type FROM events ORDER BY position")).all()
        positions = {f"evt_{row.id}": row.position for row in stored}
    engine.dispose()
    flaky.stop()
    steady.stop()

    assert all(p is not None for p in positions.values())
    contact_events = [i for i, row in zip(positions, stored, strict=True) if row.type in types]
    assert len(contact_events) == expected
    for receiver, hook in zip((flaky, steady), hooks, strict=True):
        bodies = [Verifier(hook["secret"]).verify(r.body, r.headers) for r in receiver.ok()]
        ids = [b["id"] for b in bodies]
        assert len(ids) == len(set(ids)), "an event delivered twice after a 2xx"
        assert sorted(ids) == sorted(contact_events)
        per_contact: dict[int, list[int]] = defaultdict(list)
        for b in bodies:
            per_contact[b["data"]["contact"]["id"]].append(positions[b["id"]])
        assert all(p == sorted(p) for p in per_contact.values()), "a contact's events out of order"
        assert set(per_contact) == set(contact_ids)
    assert any(r.answered == 503 for r in flaky.all())
    # The feed: every committed event once, in commit order.
    feed_ids = [e["id"] for e in followed]
    assert len(feed_ids) == len(set(feed_ids)) == len(positions)
    assert [positions[i] for i in feed_ids] == sorted(positions.values())
    # Both workers delivered (neither sat idle while the other did everything), and nothing was logged wrong.
    assert "delivered" in logs
    print(f"{CONTACTS} registrations on two servers in {took:.1f} s; {expected} events to each of two endpoints")
