"""Faults around the app, against the real app under gunicorn: dropped database
connections, a write lock held by someone else, clients that send slowly.

Whatever happens, the answer is never a 500 or a page of gunicorn's own: the
API answers a JSON 503 with Retry-After, pages the app's own 503 page, and
nothing acknowledged is lost.
"""

import re
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from tests.servers import api_session, create_token, gunicorn

pytestmark = pytest.mark.slow

ADMIN_PASSWORD = "outage-test-admin"


def log_in(base: str) -> requests.Session:
    """A supervisor's browser session (the first start created "admin" with ADMIN_PASSWORD)."""
    browser = requests.Session()
    page = browser.get(f"{base}/login", timeout=10).text
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)
    form = {"csrf_token": csrf, "username": "admin", "password": ADMIN_PASSWORD}
    assert browser.post(f"{base}/login", data=form, timeout=10, allow_redirects=False).status_code == 302
    return browser


def unavailable_problem(response: requests.Response, *, api: bool) -> str | None:
    """What is wrong with ``response`` as the answer of an unavailable database (None: nothing)."""
    if response.status_code != 503:
        return f"status {response.status_code}: {response.text[:200]!r}"
    if "Retry-After" not in response.headers:
        return "no Retry-After"
    if "Content-Security-Policy" not in response.headers or "X-Frame-Options" not in response.headers:
        return "no security headers"
    if api:
        if not response.headers.get("Content-Type", "").startswith("application/json"):
            return f"not JSON: {response.text[:200]!r}"
        if response.json()["error"]["code"] != "database_unavailable":
            return f"code {response.json()['error']['code']}"
    elif "leadcrm" not in response.text or not response.headers.get("Content-Type", "").startswith("text/html"):
        return f"not the app's page: {response.text[:200]!r}"
    return None


def set_up_distribution(api: str, token: str, operators: int, limit: int) -> tuple[list[dict], dict]:
    session = api_session(token)
    ops = [
        session.post(f"{api}/operators/", json={"name": f"Op{i}", "max_active_leads": limit}, timeout=10).json()
        for i in range(operators)
    ]
    source = session.post(f"{api}/sources/", json={"name": "web_form"}, timeout=10).json()
    weights = [{"operator_id": op["id"], "weight": 10} for op in ops]
    assert session.post(f"{api}/sources/{source['id']}/config", json=weights, timeout=10).status_code == 200
    return ops, source


def assert_counters_exact(database_url: str, acknowledged: set[int]) -> None:
    """Every acknowledged contact is stored; every load counter and assignment total is exact."""
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            stored = set(conn.scalars(sa.text("SELECT id FROM contacts")))
            assert acknowledged <= stored, f"lost: {sorted(acknowledged - stored)[:20]}"
            wrong_load = conn.execute(
                sa.text(
                    "SELECT o.id, o.active_leads, count(c.id) FROM operators o "
                    "LEFT JOIN contacts c ON c.operator_id = o.id AND c.status = 'open' "
                    "GROUP BY o.id, o.active_leads HAVING o.active_leads <> count(c.id)"
                )
            ).all()
            assert wrong_load == []
            wrong_totals = conn.execute(
                sa.text(
                    "SELECT so.operator_id, so.assigned_total, count(c.id) FROM source_operators so "
                    "LEFT JOIN contacts c ON c.operator_id = so.operator_id AND c.source_id = so.source_id "
                    "GROUP BY so.source_id, so.operator_id, so.assigned_total "
                    "HAVING so.assigned_total <> count(c.id)"
                )
            ).all()
            assert wrong_totals == []
            events = conn.scalar(sa.text("SELECT count(*) FROM contact_events WHERE reason = 'registered'"))
            assert events == len(stored)
    finally:
        engine.dispose()


# --- 1. PostgreSQL connections dropped under load -------------------------------------


def test_dropped_postgresql_connections_answer_503_and_are_replaced(backend, tmp_path: Path) -> None:
    if backend.name != "postgresql":
        pytest.skip("terminating the app's connections is a PostgreSQL test")
    # The app's connections carry a name of their own: only they are terminated.
    app_name = f"leadcrm_outage_{uuid.uuid4().hex[:10]}"
    plain_url = backend.empty_url(tmp_path, "outage")
    url = sa.make_url(plain_url).update_query_dict({"application_name": app_name}).render_as_string(False)
    env = {"LEADCRM_ADMIN_PASSWORD": ADMIN_PASSWORD}
    with gunicorn(url, tmp_path, workers=3, env=env) as base:
        api = f"{base}/api/v1"
        token = create_token(plain_url)
        set_up_distribution(api, token, operators=4, limit=100_000)
        browser = log_in(base)

        storm = threading.Event()
        done = threading.Event()
        acknowledged: set[int] = set()
        outcomes: Counter = Counter()
        problems: list[str] = []
        serial = iter(range(1_000_000))
        lock = threading.Lock()

        def register_in_a_loop() -> None:
            session = api_session(token)
            while not done.is_set():
                with lock:
                    n = next(serial)
                body = {"source_name": "web_form", "phone": f"+7901{n:07d}"}
                response = session.post(f"{api}/contacts/register", json=body, timeout=30)
                with lock:
                    outcomes["api", response.status_code] += 1
                    if response.status_code == 201:
                        acknowledged.add(response.json()["contact"]["id"])
                    elif problem := unavailable_problem(response, api=True):
                        problems.append(f"register: {problem}")

        def load_pages_in_a_loop() -> None:
            while not done.is_set():
                for path in ("/", "/contacts/"):
                    response = browser.get(f"{base}{path}", timeout=30)
                    with lock:
                        outcomes["page", response.status_code] += 1
                        if response.status_code != 200 and (problem := unavailable_problem(response, api=False)):
                            problems.append(f"GET {path}: {problem}")

        def terminate_the_apps_connections() -> None:
            admin = sa.create_engine(backend.base_url, isolation_level="AUTOCOMMIT")
            try:
                with admin.connect() as conn:
                    while storm.is_set():
                        conn.execute(
                            sa.text(
                                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                "WHERE application_name = :name AND pid <> pg_backend_pid()"
                            ),
                            {"name": app_name},
                        )
                        time.sleep(0.2)
            finally:
                admin.dispose()

        clients = [threading.Thread(target=register_in_a_loop) for _ in range(3)]
        clients.append(threading.Thread(target=load_pages_in_a_loop))
        killer = threading.Thread(target=terminate_the_apps_connections)
        storm.set()
        for thread in [*clients, killer]:
            thread.start()
        time.sleep(10)
        storm.clear()
        killer.join()
        done.set()
        for thread in clients:
            thread.join()

        assert problems == [], f"{len(problems)} wrong answers ({dict(outcomes)}): {problems[:10]}"
        # The storm did hit: some requests found their connection gone.
        assert outcomes["api", 503] + outcomes["page", 503] > 0, dict(outcomes)
        # After the storm, dead connections are replaced: everything works again at once.
        session = api_session(token)
        for n in range(20):
            response = session.post(
                f"{api}/contacts/register", json={"source_name": "web_form", "phone": f"+7902{n:07d}"}, timeout=10
            )
            assert response.status_code == 201, response.text
            acknowledged.add(response.json()["contact"]["id"])
            assert browser.get(f"{base}/", timeout=10).status_code == 200
        assert_counters_exact(plain_url, acknowledged)
