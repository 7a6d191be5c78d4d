"""Concurrent registrations, closes and operator flips against the real app under gunicorn.

SQLite: one gunicorn with 4 worker processes. PostgreSQL: two gunicorn
instances on different ports with 3 workers each, on one database, the load
split across both, as behind a load balancer.
"""

import itertools
import random
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any, TypedDict

import pytest
import requests
import sqlalchemy as sa

from leadcrm import accounts, create_app
from leadcrm.extensions import db
from leadcrm.vocabulary import Role, TokenScope
from tests.helpers import csrf_token_of
from tests.servers import api_session, create_token, gunicorn

pytestmark = pytest.mark.slow

REGISTRATIONS = 2000
CUSTOMERS = 400
CLIENT_THREADS = 32
LIMITS = [1, 2, 3, 1, 2, 3]


@pytest.fixture
def servers(backend, tmp_path: Path) -> Iterator[tuple[str, list[str], str]]:
    """(database URL, base URLs of the app servers sharing it, a full-scope API token)."""
    url = backend.empty_url(tmp_path)
    layout = [4] if backend.name == "sqlite" else [3, 3]
    with ExitStack() as stack:
        # One after the other: the first one's master migrates the empty database.
        bases = [
            stack.enter_context(gunicorn(url, tmp_path, workers=workers, name=f"gunicorn{i}"))
            for i, workers in enumerate(layout)
        ]
        yield url, bases, create_token(url)


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


def test_limits_hold_under_concurrent_registrations_closes_and_flips(servers) -> None:
    database_url, bases, token = servers
    apis = [f"{base}/api/v1" for base in bases]
    api = apis[0]
    setup = api_session(token)
    # Registrations come from integrations with the narrowest scope.
    register_token = create_token(database_url, TokenScope.REGISTER, name="web form")
    ops = [
        setup.post(f"{api}/operators/", json={"name": f"Op{i}", "max_active_leads": limit}).json()
        for i, limit in enumerate(LIMITS)
    ]
    idle = setup.post(f"{api}/operators/", json={"name": "Idle", "max_active_leads": 100, "is_active": False}).json()
    telegram = setup.post(f"{api}/sources/", json={"name": "telegram_bot"}).json()
    phone_line = setup.post(f"{api}/sources/", json={"name": "phone_line", "strategy": "deterministic"}).json()
    weights = [{"operator_id": op["id"], "weight": 10 * (i + 1)} for i, op in enumerate(ops)]
    weights.append({"operator_id": idle["id"], "weight": 100})
    assert setup.post(f"{api}/sources/{telegram['id']}/config", json=weights).status_code == 200
    assert setup.post(f"{api}/sources/{phone_line['id']}/config", json=weights[2:]).status_code == 200

    rng = random.Random(1)
    bodies = []
    for n in range(REGISTRATIONS):
        customer = rng.randrange(CUSTOMERS)
        body: dict[str, Any] = {"phone": f"+7900{customer:07d}", "message": f"appeal {n}"}
        if customer % 2:
            body["external_id"] = f"tg:{customer}"
        if n % 2:
            body["source_id"] = telegram["id"]
        else:
            body["source_name"] = phone_line["name"]
        bodies.append((apis[n % len(apis)], body))

    local = threading.local()

    def register(job: tuple[str, dict]) -> tuple[int, dict]:
        target, body = job
        session = getattr(local, "session", None) or api_session(register_token)
        local.session = session
        response = session.post(f"{target}/contacts/register", json=body, timeout=60)
        return response.status_code, response.json()

    done = threading.Event()
    closed: list[int] = []
    flips: list[int] = []

    def close_some() -> None:
        session = api_session(token)
        for target in itertools.cycle(apis):
            if done.is_set():
                return
            page = session.get(f"{target}/contacts/", params={"status": "open", "unassigned": "false", "per_page": "3"})
            for contact in page.json()["items"]:
                response = session.post(f"{target}/contacts/{contact['id']}/close", timeout=60)
                assert response.status_code == 200
                closed.append(contact["id"])

    def flip_operators() -> None:
        session = api_session(token)
        flipper = random.Random(2)
        for target in itertools.cycle(apis):
            if done.wait(0.05):
                return
            op = flipper.choice(ops)
            response = session.patch(f"{target}/operators/{op['id']}", json={"is_active": flipper.random() < 0.7})
            assert response.status_code == 200
            flips.append(op["id"])

    helpers = [threading.Thread(target=close_some), threading.Thread(target=flip_operators)]
    for helper in helpers:
        helper.start()
    try:
        with ThreadPoolExecutor(CLIENT_THREADS) as pool:
            results = list(pool.map(register, bodies))
    finally:
        done.set()
        for helper in helpers:
            helper.join()
    for op in ops:  # everyone active again for the checks below
        setup.patch(f"{api}/operators/{op['id']}", json={"is_active": True})

    statuses = Counter(status for status, _ in results)
    assert statuses == {201: REGISTRATIONS}, statuses
    created_ids = [body["contact"]["id"] for _, body in results]
    assert len(set(created_ids)) == REGISTRATIONS
    assert len(closed) > 10 and len(flips) > 10, "the helpers should have run alongside the registrations"

    contacts = fetch_all(setup, api, "/contacts/")
    assert sorted(c["id"] for c in contacts) == sorted(created_ids), "every 201 is one stored contact, nothing else"
    by_id = {c["id"]: c for c in contacts}
    for _, body in results:  # what each 201 said is what was stored
        stored = by_id[body["contact"]["id"]]
        assert stored["lead_id"] == body["lead"]["id"]
        if body["assigned_operator"]:
            assert stored["operator_id"] == body["assigned_operator"]["id"]
        elif stored["operator_id"] is not None:  # it waited, then the queue gave it capacity that appeared
            assert stored["assigned_at"] > stored["created_at"]
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
    # The queue: a contact still waits only while every operator serving its source is full.
    loads = {o["operator_id"]: o for o in status["operators"]}
    for source in status["sources"]:
        if source["waiting"]:
            for share in source["operators"]:
                operator = loads[share["operator_id"]]
                assert not operator["is_active"] or operator["active_leads"] >= operator["max_active_leads"], source
    assert sum(s["assigned_total"] for src in status["sources"] for s in src["operators"]) == len(assigned)

    # And straight from the database, with no app code in between.
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            assert conn.scalar(sa.text("SELECT count(*) FROM contacts")) == REGISTRATIONS
            leads, phones = conn.execute(sa.text("SELECT count(*), count(DISTINCT phone) FROM leads")).one()
            assert leads == phones == len({body["phone"] for _, body in bodies})
            mismatched = conn.execute(
                sa.text(
                    "SELECT o.id, o.active_leads, count(c.id) FROM operators o "
                    "LEFT JOIN contacts c ON c.operator_id = o.id AND c.status = 'open' "
                    "GROUP BY o.id, o.active_leads HAVING o.active_leads != count(c.id)"
                )
            ).all()
            assert mismatched == []
            # The history: one "registered" per contact, and no contact taken from the queue twice.
            assert conn.scalar(sa.text("SELECT count(*) FROM contact_events WHERE reason = 'registered'")) == (
                REGISTRATIONS
            )
            twice = conn.execute(
                sa.text(
                    "SELECT contact_id FROM contact_events WHERE reason = 'queue' "
                    "GROUP BY contact_id HAVING count(*) > 1"
                )
            ).all()
            assert twice == []
    finally:
        engine.dispose()


def test_concurrent_retries_with_one_idempotency_key_store_one_contact(servers) -> None:
    database_url, bases, token = servers
    api = f"{bases[0]}/api/v1"
    setup = api_session(token)
    operator = setup.post(f"{api}/operators/", json={"name": "Anna", "max_active_leads": 100}).json()
    source = setup.post(f"{api}/sources/", json={"name": "web_form"}).json()
    setup.post(f"{api}/sources/{source['id']}/config", json={"operator_id": operator["id"], "weight": 1})
    body = {"source_id": source["id"], "phone": "+79001234567", "message": "retried"}

    def send(n: int) -> tuple[int, dict]:
        target = bases[n % len(bases)]
        headers = {"Idempotency-Key": "retry-1", "Authorization": f"Bearer {token}"}
        response = requests.post(f"{target}/api/v1/contacts/register", json=body, headers=headers, timeout=60)
        return response.status_code, response.json()

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(send, range(40)))
    assert {status for status, _ in results} == {201}
    assert len({answer["contact"]["id"] for _, answer in results}) == 1
    assert setup.get(f"{api}/contacts/").json()["total"] == 1
    assert setup.get(f"{api}/operators/{operator['id']}").json()["active_leads"] == 1


def test_crosswise_reassignments_queue_instead_of_deadlocking(servers) -> None:
    """Two supervisors keep moving two contacts between the same two operators, in opposite directions.

    Each move locks both operators' rows. Taken in different orders, PostgreSQL
    found a deadlock in about one move in 15 and one of them got a 503; taken in
    id order, every move succeeds.
    """
    database_url, bases, token = servers
    setup = api_session(token)
    api = f"{bases[0]}/api/v1"
    anna = setup.post(f"{api}/operators/", json={"name": "Anna", "max_active_leads": 10}).json()["id"]
    boris = setup.post(f"{api}/operators/", json={"name": "Boris", "max_active_leads": 10}).json()["id"]
    source = setup.post(f"{api}/sources/", json={"name": "phone_line"}).json()["id"]
    setup.post(f"{api}/sources/{source}/config", json=[{"operator_id": anna, "weight": 1}])
    first = setup.post(f"{api}/contacts/register", json={"source_id": source, "phone": "+79000000001"}).json()
    second = setup.post(f"{api}/contacts/register", json={"source_id": source, "phone": "+79000000002"}).json()
    setup.post(f"{api}/contacts/{second['contact']['id']}/assign", json={"operator_id": boris})

    def move(contact_id: int, targets: tuple[int, int], base: str) -> list[int]:
        session = api_session(token)
        url = f"{base}/api/v1/contacts/{contact_id}/assign"
        return [session.post(url, json={"operator_id": targets[n % 2]}, timeout=60).status_code for n in range(150)]

    with ThreadPoolExecutor(2) as pool:
        one = pool.submit(move, first["contact"]["id"], (boris, anna), bases[0])
        other = pool.submit(move, second["contact"]["id"], (anna, boris), bases[-1])
        statuses = Counter(one.result() + other.result())
    assert statuses == {200: 300}
    loads = {op["id"]: op["active_leads"] for op in setup.get(f"{api}/operators/").json()["items"]}
    assert loads == {anna: 1, boris: 1}


def test_concurrent_requests_filling_the_same_missing_identifier_keep_the_first(servers) -> None:
    """A known lead without an e-mail writes from 12 places at once, each with another address.

    One address is stored and every answer shows that one (sequentially, a lead
    keeps the identifiers it has). Before, each request overwrote the previous
    one, and the answers named addresses the lead no longer had.
    """
    database_url, bases, token = servers
    setup = api_session(token)
    api = f"{bases[0]}/api/v1"
    operator = setup.post(f"{api}/operators/", json={"name": "Anna", "max_active_leads": 1000}).json()["id"]
    source = setup.post(f"{api}/sources/", json={"name": "web_form"}).json()["id"]
    setup.post(f"{api}/sources/{source}/config", json=[{"operator_id": operator, "weight": 1}])

    def register(job: tuple[str, dict]) -> dict:
        base, body = job
        response = api_session(token).post(f"{base}/api/v1/contacts/register", json=body, timeout=60)
        assert response.status_code == 201, response.text
        return response.json()["lead"]

    for round_ in range(10):
        phone = f"+790100000{round_:02d}"
        lead = setup.post(f"{api}/contacts/register", json={"source_id": source, "phone": phone}).json()["lead"]
        jobs = [
            (bases[n % len(bases)], {"source_id": source, "phone": phone, "email": f"r{round_}n{n}@example.com"})
            for n in range(12)
        ]
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(register, jobs))
        stored = setup.get(f"{api}/leads/{lead['id']}").json()["email"]
        assert {answer["email"] for answer in answers} == {stored}
        assert {answer["id"] for answer in answers} == {lead["id"]}


def test_concurrent_new_leads_with_one_address_in_different_cases_make_one_lead(servers) -> None:
    """12 first contacts at once from one new customer, each typing the address in its own case: one lead.

    They meet at the unique email_key (INSERT ... ON CONFLICT DO NOTHING, then
    look again); before it, each case was a lead of its own.
    """
    database_url, bases, token = servers
    setup = api_session(token)
    api = f"{bases[0]}/api/v1"
    operator = setup.post(f"{api}/operators/", json={"name": "Anna", "max_active_leads": 1000}).json()["id"]
    source = setup.post(f"{api}/sources/", json={"name": "web_form"}).json()["id"]
    setup.post(f"{api}/sources/{source}/config", json=[{"operator_id": operator, "weight": 1}])
    rng = random.Random(11)

    def register(job: tuple[str, dict]) -> int:
        base, body = job
        response = api_session(token).post(f"{base}/api/v1/contacts/register", json=body, timeout=60)
        assert response.status_code == 201, response.text
        return response.json()["lead"]["id"]

    for round_ in range(10):
        address = f"ivan.petrov.{round_}@example.com"
        typed = ["".join(c.upper() if rng.random() < 0.5 else c for c in address) for _ in range(12)]
        jobs = [(bases[n % len(bases)], {"source_id": source, "email": email}) for n, email in enumerate(typed)]
        with ThreadPoolExecutor(12) as pool:
            assert len(set(pool.map(register, jobs))) == 1, round_
    assert setup.get(f"{api}/leads/").json()["total"] == 10
    assert setup.get(f"{api}/contacts/").json()["total"] == 120


class Invariants(TypedDict):
    load_mismatches: list[sa.Row]  # (operator id, active_leads, open contacts)
    total_mismatches: list[sa.Row]  # (source id, operator id, assigned_total, assignments in the history)
    reasons: dict[str, int]  # history rows by reason


def assignment_invariants(database_url: str) -> Invariants:
    """What the counters say against what the contacts and the history say, straight from SQL."""
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            loads = conn.execute(
                sa.text(
                    "SELECT o.id, o.active_leads, count(c.id) FROM operators o "
                    "LEFT JOIN contacts c ON c.operator_id = o.id AND c.status = 'open' "
                    "GROUP BY o.id, o.active_leads ORDER BY o.id"
                )
            ).all()
            # assigned_total counts every time the source's contact was given to the operator.
            totals = conn.execute(
                sa.text(
                    "SELECT so.source_id, so.operator_id, so.assigned_total, "
                    "(SELECT count(*) FROM contact_events e JOIN contacts c ON c.id = e.contact_id "
                    " WHERE c.source_id = so.source_id AND e.to_operator_id = so.operator_id) "
                    "FROM source_operators so ORDER BY so.source_id, so.operator_id"
                )
            ).all()
            reasons: dict[str, int] = dict(
                conn.execute(sa.text("SELECT reason, count(*) FROM contact_events GROUP BY reason")).all()
            )
    finally:
        engine.dispose()
    return {
        "load_mismatches": [row for row in loads if row[1] != row[2]],
        "total_mismatches": [row for row in totals if row[2] != row[3]],
        "reasons": reasons,
    }


def test_parallel_reopens_closes_and_assigns_of_one_contact_change_it_once(servers) -> None:
    """Rounds of 8 simultaneous reopens of one closed contact, then 8 assigns, then 8 closes, on two servers.

    Before, on PostgreSQL every reopen that waited for the first one's row lock
    went on as if it had reopened the contact itself: the operator's load and
    assigned_total grew once per request and the history showed several
    "reopened"; crossing assigns answered 409.
    """
    database_url, bases, token = servers
    setup = api_session(token)
    api = f"{bases[0]}/api/v1"
    ops = [setup.post(f"{api}/operators/", json={"name": f"Op{i}", "max_active_leads": 50}).json()["id"] for i in "ABC"]
    source = setup.post(f"{api}/sources/", json={"name": "web_form"}).json()["id"]
    setup.post(f"{api}/sources/{source}/config", json=[{"operator_id": op, "weight": 1} for op in ops])
    parallel, rounds = 8, 6
    sessions = [api_session(token) for _ in range(parallel)]

    def at_once(action: str, contact_id: int, bodies: list[dict | None]) -> list[tuple[int, dict]]:
        def send(n: int) -> tuple[int, dict]:
            url = f"{bases[n % len(bases)]}/api/v1/contacts/{contact_id}/{action}"
            response = sessions[n].post(url, json=bodies[n], timeout=60)
            return response.status_code, response.json()

        with ThreadPoolExecutor(parallel) as pool:
            return list(pool.map(send, range(parallel)))

    for round_ in range(rounds):
        registered = setup.post(
            f"{api}/contacts/register", json={"source_id": source, "phone": f"+7902000{round_:04d}"}
        )
        contact_id = registered.json()["contact"]["id"]
        assert setup.post(f"{api}/contacts/{contact_id}/close").status_code == 200

        reopened = at_once("reopen", contact_id, [None] * parallel)
        assert {status for status, _ in reopened} == {200}, reopened
        assert {body["status"] for _, body in reopened} == {"open"}
        assert len({body["operator_id"] for _, body in reopened}) == 1, "every answer shows the one reopening"
        found = assignment_invariants(database_url)
        assert found["reasons"]["reopened"] == round_ + 1, found
        assert found["load_mismatches"] == [] and found["total_mismatches"] == [], found

        assigned = at_once("assign", contact_id, [{"operator_id": ops[n % len(ops)]} for n in range(parallel)])
        assert {status for status, _ in assigned} == {200}, assigned

        closed = at_once("close", contact_id, [None] * parallel)
        assert {status for status, _ in closed} == {200}, closed
        assert len({body["closed_at"] for _, body in closed}) == 1

    found = assignment_invariants(database_url)
    assert found["load_mismatches"] == []
    assert found["total_mismatches"] == []
    assert found["reasons"]["reopened"] == rounds
    assert found["reasons"]["closed"] == 2 * rounds
    assert all(op["active_leads"] == 0 for op in setup.get(f"{api}/operators/").json()["items"])


def create_supervisor(database_url: str, username: str = "boss") -> str:
    """A supervisor stored straight into a served database; returns its password."""
    password = "a long enough password"
    app = create_app({"SQLALCHEMY_DATABASE_URI": database_url})
    with app.app_context():
        accounts.create_user(db.session(), username=username, password=password, role=Role.SUPERVISOR)
        db.session.commit()
        db.session.remove()
        db.engine.dispose()
    return password


def page_session(base: str, username: str, password: str) -> tuple[requests.Session, str]:
    """A browser-like session logged in through the real login form; returns it and its CSRF token."""
    session = requests.Session()
    page = session.get(f"{base}/login", timeout=30).text
    csrf = csrf_token_of(page)
    response = session.post(
        f"{base}/login", data={"csrf_token": csrf, "username": username, "password": password}, timeout=30
    )
    assert response.status_code == 200 and response.url.rstrip("/") != f"{base}/login", response.text[:500]
    page = session.get(f"{base}/contacts/", timeout=30).text
    return session, csrf_token_of(page)


def test_crosswise_bulk_reassigns_queue_instead_of_deadlocking(servers) -> None:
    """Two supervisors at once: [c1 on A, c2 on B] to C, and [c3 on B, c4 on A] to D, then back, many rounds.

    Each contact moved locks its old and its new operator. Moved one by one,
    the two requests took A and B in opposite orders and PostgreSQL found a
    deadlock in most rounds (a 503); locking every contact by id, then every
    operator by id, before changing anything, they queue.
    """
    database_url, bases, token = servers
    setup = api_session(token)
    api = f"{bases[0]}/api/v1"
    a, b, c, d = (
        setup.post(f"{api}/operators/", json={"name": name, "max_active_leads": 10}).json()["id"] for name in "ABCD"
    )
    source = setup.post(f"{api}/sources/", json={"name": "phone_line"}).json()["id"]
    setup.post(f"{api}/sources/{source}/config", json=[{"operator_id": op, "weight": 1} for op in (a, b, c, d)])
    homes = (a, b, b, a)
    contacts = [
        setup.post(f"{api}/contacts/register", json={"source_id": source, "phone": f"+7903000{n:04d}"}).json()
        for n in range(len(homes))
    ]
    c1, c2, c3, c4 = (registered["contact"]["id"] for registered in contacts)
    password = create_supervisor(database_url)
    supervisors = [page_session(base, "boss", password) for base in (bases[0], bases[-1])]

    def bulk(who: int, ids: list[int], operator: int) -> int:
        session, csrf = supervisors[who]
        data = {"csrf_token": csrf, "action": "reassign", "operator_id": str(operator), "contact_id": ids}
        response = session.post(
            f"{bases[who % len(bases)]}/contacts/bulk", data=data, timeout=60, allow_redirects=False
        )
        return response.status_code

    statuses: Counter = Counter()
    for _round in range(15):
        for contact, home in zip((c1, c2, c3, c4), homes, strict=True):  # back home, one by one
            assert setup.post(f"{api}/contacts/{contact}/assign", json={"operator_id": home}).status_code == 200
        # [c1 on A, c2 on B] to C and [c3 on B, c4 on A] to D: A and B are met in opposite orders.
        with ThreadPoolExecutor(2) as pool:
            statuses.update(pool.map(lambda job: bulk(*job), [(0, [c1, c2], c), (1, [c3, c4], d)]))
    assert statuses == {302: 30}, statuses
    found = assignment_invariants(database_url)
    assert found["load_mismatches"] == [] and found["total_mismatches"] == []
    loads = {op["id"]: op["active_leads"] for op in setup.get(f"{api}/operators/").json()["items"]}
    assert loads == {a: 0, b: 0, c: 2, d: 2}
