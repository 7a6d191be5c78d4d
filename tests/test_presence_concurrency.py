"""Presence flips under load on two real servers sharing one database.

Two gunicorn instances (SQLite: both on one file; PostgreSQL: one database),
registrations flowing through both while an operator goes away and comes back
through the other: once the PATCH that sets it away has answered, no
registration on any server gives it a contact, and the load counters still
match the contacts table.
"""

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.servers import api_session, create_token, gunicorn
from tests.test_concurrency import fetch_all

pytestmark = pytest.mark.slow

ROUNDS = 8
PER_ROUND = 3  # registrations through the other server right after each away
REGISTRAR_THREADS = 3
BIG_LIMIT = 100_000


@pytest.fixture
def two_servers(backend, tmp_path: Path) -> Iterator[tuple[list[str], str]]:
    """(API base URLs of two servers on one database, a full-scope token)."""
    url = backend.empty_url(tmp_path)
    with ExitStack() as stack:
        # One after the other: the first one's master migrates the empty database.
        bases = [stack.enter_context(gunicorn(url, tmp_path, workers=2, name=f"server{i}")) for i in range(2)]
        yield [f"{base}/api/v1" for base in bases], create_token(url)


@dataclass(frozen=True)
class Registration:
    started: float
    finished: float
    status: int
    operator_id: int | None


def test_no_contact_reaches_an_operator_once_its_away_has_answered(two_servers) -> None:
    (first, second), token = two_servers
    setup = api_session(token)
    anna = setup.post(f"{first}/operators/", json={"name": "Anna", "max_active_leads": BIG_LIMIT}).json()
    boris = setup.post(f"{first}/operators/", json={"name": "Boris", "max_active_leads": BIG_LIMIT}).json()
    source = setup.post(f"{first}/sources/", json={"name": "telegram_bot"}).json()
    weights = [{"operator_id": anna["id"], "weight": 1}, {"operator_id": boris["id"], "weight": 1}]
    assert setup.post(f"{first}/sources/{source['id']}/config", json=weights).status_code == 200

    numbers = iter(range(10**6))
    numbers_lock = threading.Lock()

    def register(session: requests.Session, api: str) -> Registration:
        with numbers_lock:
            n = next(numbers)
        started = time.monotonic()
        response = session.post(
            f"{api}/contacts/register", json={"source_id": source["id"], "phone": f"+7900{n:07d}"}, timeout=60
        )
        finished = time.monotonic()
        operator = response.json().get("assigned_operator") if response.status_code == 201 else None
        return Registration(started, finished, response.status_code, operator["id"] if operator else None)

    stop = threading.Event()
    background: list[Registration] = []

    def registrar(k: int) -> None:
        session = api_session(token)
        apis = (first, second)
        i = k
        while not stop.is_set():
            background.append(register(session, apis[i % 2]))
            i += 1

    # (away answered, available sent) for every round: a registration wholly inside one must not go to Anna.
    away_windows: list[tuple[float, float]] = []
    right_after: list[Registration] = []
    flipper = api_session(token)

    def set_presence(presence: str) -> None:
        response = flipper.patch(f"{first}/operators/{anna['id']}", json={"presence": presence}, timeout=60)
        assert response.status_code == 200, response.text
        assert response.json()["presence"] == presence
        assert response.json()["at_work"] is (presence == "available")

    threads = [threading.Thread(target=registrar, args=(k,)) for k in range(REGISTRAR_THREADS)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.3)  # load flowing first
        for _ in range(ROUNDS):
            set_presence("away")
            answered = time.monotonic()
            round_ = [register(flipper, second) for _ in range(PER_ROUND)]
            right_after += round_
            assert [r.operator_id for r in round_] == [boris["id"]] * PER_ROUND, round_
            time.sleep(0.1)
            away_windows.append((answered, time.monotonic()))
            set_presence("available")
            time.sleep(0.1)
        set_presence("away")
        final_away = time.monotonic()
        time.sleep(0.5)  # registrations keep coming on both servers after the final away
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)

    statuses = Counter(r.status for r in background + right_after)
    assert set(statuses) == {201}, statuses  # no 5xx (nor anything else)
    after_final = [r for r in background if r.started > final_away]
    assert after_final, "no registration started after the final away"
    assert {r.operator_id for r in after_final} == {boris["id"]}
    inside = [r for r in background if any(a < r.started and r.finished < b for a, b in away_windows)]
    assert all(r.operator_id == boris["id"] for r in inside), [r for r in inside if r.operator_id != boris["id"]]
    # Anna did take contacts while available: the flips mattered.
    assert any(r.operator_id == anna["id"] for r in background)

    assert setup.get(f"{second}/operators/{anna['id']}").json()["presence"] == "away"
    contacts = fetch_all(setup, second, "/contacts/")
    assert len(contacts) == len(background) + len(right_after)
    held = Counter(c["operator_id"] for c in contacts if c["status"] == "open")
    for operator in fetch_all(setup, first, "/operators/"):
        assert operator["active_leads"] == held[operator["id"]], operator
