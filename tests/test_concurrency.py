"""Concurrent registrations and closes against the real app under gunicorn (4 worker processes)."""

import random
import sqlite3
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import pytest
import requests

from tests.servers import gunicorn

pytestmark = pytest.mark.slow

REGISTRATIONS = 600
CUSTOMERS = 150
CLIENT_THREADS = 32
LIMITS = [1, 2, 3, 1, 2, 3]


def fetch_all(session: requests.Session, base: str, path: str) -> list[dict]:
    items, page = [], 1
    while True:
        body = session.get(f"{base}{path}", params={"page": page, "per_page": 500}, timeout=30).json()
        items += body["items"]
        if len(items) >= body["total"]:
            return items
        page += 1


def max_concurrent_open(contacts: list[dict]) -> dict[int, int]:
    """Replay assignments and closes in time order: the most contacts each operator held at once."""
    events = []
    for c in contacts:
        if c["operator_id"] is None:
            continue
        events.append((datetime.fromisoformat(c["assigned_at"]), 1, c["operator_id"]))
        if c["closed_at"]:
            events.append((datetime.fromisoformat(c["closed_at"]), -1, c["operator_id"]))
    # At an equal timestamp count the assignment first: the stricter reading.
    events.sort(key=lambda e: (e[0], -e[1]))
    held: Counter = Counter()
    peak: Counter = Counter()
    for _, delta, operator_id in events:
        held[operator_id] += delta
        peak[operator_id] = max(peak[operator_id], held[operator_id])
    return dict(peak)


def test_limits_hold_under_concurrent_registrations_and_closes(tmp_path: Path) -> None:
    db_file = tmp_path / "leadcrm.sqlite3"
    with gunicorn(f"sqlite:///{db_file}", tmp_path, workers=4) as base:
        api = f"{base}/api/v1"
        setup = requests.Session()
        ops = [
            setup.post(f"{api}/operators/", json={"name": f"Op{i}", "max_active_leads": limit}).json()
            for i, limit in enumerate(LIMITS)
        ]
        idle = setup.post(
            f"{api}/operators/", json={"name": "Idle", "max_active_leads": 100, "is_active": False}
        ).json()
        telegram = setup.post(f"{api}/sources/", json={"name": "telegram_bot"}).json()
        phone_line = setup.post(f"{api}/sources/", json={"name": "phone_line", "strategy": "deterministic"}).json()
        weights = [{"operator_id": op["id"], "weight": 10 * (i + 1)} for i, op in enumerate(ops)]
        weights.append({"operator_id": idle["id"], "weight": 100})
        assert setup.post(f"{api}/sources/{telegram['id']}/config", json=weights).status_code == 200
        assert setup.post(f"{api}/sources/{phone_line['id']}/config", json=weights[2:]).status_code == 200

        local = threading.local()
        rng = random.Random(1)
        bodies = []
        for n in range(REGISTRATIONS):
            customer = rng.randrange(CUSTOMERS)
            body = {"phone": f"+7900{customer:07d}", "message": f"appeal {n}"}
            if customer % 2:
                body["external_id"] = f"tg:{customer}"
            if n % 2:
                body["source_id"] = telegram["id"]
            else:
                body["source_name"] = phone_line["name"]
            bodies.append(body)

        def register(body: dict) -> tuple[int, dict]:
            session = getattr(local, "session", None) or requests.Session()
            local.session = session
            response = session.post(f"{api}/contacts/register", json=body, timeout=60)
            return response.status_code, response.json()

        done = threading.Event()
        closed: list[int] = []

        def close_some() -> None:
            session = requests.Session()
            while not done.is_set():
                page = session.get(f"{api}/contacts/", params={"status": "open", "unassigned": "false", "per_page": 3})
                for contact in page.json()["items"]:
                    response = session.post(f"{api}/contacts/{contact['id']}/close", timeout=60)
                    assert response.status_code == 200
                    closed.append(contact["id"])

        closer = threading.Thread(target=close_some)
        closer.start()
        try:
            with ThreadPoolExecutor(CLIENT_THREADS) as pool:
                results = list(pool.map(register, bodies))
        finally:
            done.set()
            closer.join()

        statuses = Counter(status for status, _ in results)
        assert statuses == {201: REGISTRATIONS}, statuses
        created_ids = [body["contact"]["id"] for _, body in results]
        assert len(set(created_ids)) == REGISTRATIONS
        assert len(closed) > 10, "the closer should have run alongside the registrations"

        contacts = fetch_all(setup, api, "/contacts/")
        assert sorted(c["id"] for c in contacts) == sorted(created_ids)
        assigned = [c for c in contacts if c["operator_id"] is not None]
        unassigned = [c for c in contacts if c["operator_id"] is None]
        assert len(assigned) + len(unassigned) == REGISTRATIONS
        assert unassigned, "small limits should have left some contacts waiting"
        assert all(c["status"] == "open" for c in unassigned)

        limits = {op["id"]: op["max_active_leads"] for op in ops}
        peaks = max_concurrent_open(contacts)
        assert idle["id"] not in peaks
        for operator_id, peak in peaks.items():
            assert peak <= limits[operator_id], (operator_id, peak, limits[operator_id])
        open_by_operator = Counter(c["operator_id"] for c in assigned if c["status"] == "open")
        for op in ops:
            now = setup.get(f"{api}/operators/{op['id']}").json()
            assert now["active_leads"] == open_by_operator[op["id"]] <= op["max_active_leads"]

        status = setup.get(f"{api}/distribution_status/").json()
        assert status["unassigned_open"] == len(unassigned)
        history = Counter(c["operator_id"] for c in assigned)
        for source in status["sources"]:
            for share in source["operators"]:
                assert share["assigned_total"] <= history[share["operator_id"]]
        assert sum(s["assigned_total"] for src in status["sources"] for s in src["operators"]) == len(assigned)

    with sqlite3.connect(db_file) as con:
        assert con.execute("SELECT count(*) FROM contacts").fetchone()[0] == REGISTRATIONS
        leads = con.execute("SELECT count(*), count(DISTINCT phone) FROM leads").fetchone()
        assert leads[0] == leads[1] == len({b["phone"] for b in bodies})
