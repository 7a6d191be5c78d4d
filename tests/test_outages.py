"""Faults around the app, against the real app under gunicorn: dropped database
connections, a write lock held by someone else, clients that send slowly.

Whatever happens, the answer is never a 500 or a page of gunicorn's own: the
API answers a JSON 503 with Retry-After, pages the app's own 503 page, and
nothing acknowledged is lost.
"""

import fcntl
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from leadcrm.database import SQLiteConnection
from leadcrm.extensions import db
from leadcrm.storage import Sql, Tx
from leadcrm.units import request_unit, runs_on_driver_connection
from tests.helpers import csrf_token_of
from tests.servers import PROJECT_ROOT, api_session, create_token, free_port, gunicorn

pytestmark = pytest.mark.slow

ADMIN_PASSWORD = "outage-test-admin"


def log_in(base: str) -> requests.Session:
    """A supervisor's browser session (the first start created "admin" with ADMIN_PASSWORD)."""
    browser = requests.Session()
    page = browser.get(f"{base}/login", timeout=10).text
    csrf = csrf_token_of(page)
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


def test_the_hand_written_sql_path_invalidates_a_lost_connection(app, backend) -> None:
    """storage.Tx runs SQL on the driver connection: a lost connection is invalidated as
    SQLAlchemy does for its own statements, so ending the transaction does not touch it and
    the next unit of work gets a new one."""
    if backend.name != "postgresql":
        pytest.skip("terminating a connection is a PostgreSQL test")
    with app.app_context():
        connection = db.session.connection()
        tx = Tx.of(db.session())
        pid = tx.execute(Sql("SELECT pg_backend_pid()"), {}).fetchone()[0]
        with backend.admin.connect() as admin:
            admin.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        with pytest.raises(sa.exc.OperationalError) as caught:
            tx.execute(Sql("SELECT 1"), {})
        assert caught.value.connection_invalidated
        assert connection.invalidated
        db.session.rollback()  # does not try the dead connection
        assert db.session.execute(sa.text("SELECT pg_backend_pid()")).scalar() != pid


def test_a_registration_whose_connection_is_terminated_after_the_token_check_is_a_503_that_wrote_nothing(
    app, backend, client
) -> None:
    """The registration's driver connection (units.request_unit) on PostgreSQL: the token read
    begins the transaction the write continues. Terminated between the two, the registration is
    the API's JSON 503, nothing of it is stored (not its Idempotency-Key either), and the next
    ones get a new connection: the same key then registers once."""
    if backend.name != "postgresql":
        pytest.skip("terminating a connection is a PostgreSQL test")
    terminate = threading.Event()

    @app.before_request  # after the access check, which read the token on the unit's connection
    def terminate_the_units_connection() -> None:
        if terminate.is_set() and runs_on_driver_connection():
            pid = request_unit().execute(Sql("SELECT pg_backend_pid()"), {}).fetchone()[0]
            with backend.admin.connect() as admin:
                admin.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            time.sleep(0.1)  # the server closes it

    api = "/api/v1"
    operator = client.post(f"{api}/operators/", json={"name": "Ann", "max_active_leads": 10}).get_json()
    source = client.post(f"{api}/sources/", json={"name": "web_form"}).get_json()
    client.post(f"{api}/sources/{source['id']}/config", json={"operator_id": operator["id"], "weight": 1})
    registration = {"source_id": source["id"], "phone": "+79001110001"}
    terminate.set()
    lost = client.post(f"{api}/contacts/register", json=registration, headers={"Idempotency-Key": "k"})
    assert lost.status_code == 503 and lost.get_json()["error"]["code"] == "database_unavailable", lost.data
    assert lost.headers["Retry-After"]
    terminate.clear()
    with app.app_context():
        for table in ("leads", "contacts", "idempotency_keys", "contact_events"):
            assert db.session.scalar(sa.text(f"SELECT count(*) FROM {table}")) == 0, table
    for n in range(6):  # more than the pool holds
        again = client.post(f"{api}/contacts/register", json=registration, headers={"Idempotency-Key": "k"})
        assert again.status_code == 201, again.data
        assert (again.headers.get("Idempotent-Replayed") == "true") == (n > 0)
    assert client.get(f"{api}/operators/{operator['id']}").get_json()["active_leads"] == 1


def test_a_pooled_connection_the_server_closed_is_replaced_before_use(app, backend, client) -> None:
    """No pre-ping round trip on every checkout, yet a connection the server terminated while it
    sat in the pool (a restart, an administrator, an idle timeout) is never handed to a request:
    the next request is answered, not refused with a 503."""
    if backend.name != "postgresql":
        pytest.skip("terminating a connection is a PostgreSQL test")
    assert not app.config["SQLALCHEMY_ENGINE_OPTIONS"].get("pool_pre_ping")
    with app.app_context():
        db.session.remove()
        # Every connection the pool keeps (pool_size of them), checked out at once, then back, idle.
        connections = [db.engine.connect() for _ in range(app.config["SQLALCHEMY_ENGINE_OPTIONS"]["pool_size"])]
        pids = [c.execute(sa.text("SELECT pg_backend_pid()")).scalar() for c in connections]
        for connection in connections:
            connection.close()
        with backend.admin.connect() as admin:
            admin.execute(sa.text("SELECT pg_terminate_backend(pid) FROM unnest(CAST(:pids AS int[])) pid"),
                          {"pids": pids})  # fmt: skip
        time.sleep(0.2)  # the server's goodbye reaches the socket
    for _ in range(3):
        response = client.get("/api/v1/operators/")
        assert response.status_code == 200, response.get_data(as_text=True)


# --- 2. SQLite's write lock held by another process ------------------------------------

# Another program on the same database file: it takes our writers' file lock
# too when asked (as a second install of leadcrm would), and SQLite's write
# lock, holds both, and lets go.
HOLD_THE_WRITE_LOCK = textwrap.dedent(
    """
    import fcntl, os, sqlite3, sys, time
    path, seconds, with_flock = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "1"
    if with_flock:
        fd = os.open(path + "-writelock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    print("held", flush=True)
    time.sleep(seconds)
    conn.execute("ROLLBACK")
    """
)
HOLD_SECONDS = 12


def probe_while_held(
    held_until: float,
    register: Callable[[], tuple[float, requests.Response]],
    reads: Mapping[str, Callable[[], requests.Response]],
    page_write: Callable[[], requests.Response],
) -> tuple[list[str], int, dict[str, float]]:
    """Two API writers, a page write and a reader while the lock is held:
    (problems, 503s seen, slowest read per kind)."""
    problems: list[str] = []
    busy: list[float] = []

    def write_a_page() -> None:
        started = time.monotonic()
        response = page_write()
        if time.monotonic() - started > 6:
            problems.append(f"page write: a {response.status_code} after {time.monotonic() - started:.1f} s")
        if problem := unavailable_problem(response, api=False):
            problems.append(f"page write: {problem}")

    def write_while_held() -> None:
        while time.monotonic() < held_until - 1:
            took, response = register()
            if took > 6:
                problems.append(f"register: a {response.status_code} after {took:.1f} s")
            if response.status_code == 201:
                continue  # the lock was let go meanwhile
            if problem := unavailable_problem(response, api=True):
                problems.append(f"register: {problem}")
            busy.append(took)

    writers = [threading.Thread(target=write_while_held) for _ in range(2)]
    writers.append(threading.Thread(target=write_a_page))
    for writer in writers:
        writer.start()
    slowest: dict[str, float] = {}
    while time.monotonic() < held_until - 1:
        for what, get in reads.items():
            started = time.monotonic()
            response = get()
            slowest[what] = max(slowest.get(what, 0), time.monotonic() - started)
            if response.status_code != 200:
                problems.append(f"{what}: {response.status_code}")
        time.sleep(0.2)
    for writer in writers:
        writer.join()
    return problems, len(busy), slowest


def test_a_write_lock_held_elsewhere_gives_quick_503s_and_reads_keep_answering(backend, tmp_path: Path) -> None:
    if backend.name != "sqlite":
        pytest.skip("SQLite's single write lock")
    path = tmp_path / "locked.sqlite3"
    url = f"sqlite:///{path}"
    env = {"LEADCRM_ADMIN_PASSWORD": ADMIN_PASSWORD}
    # One worker more than the writers below: the readers' own.
    with gunicorn(url, tmp_path, workers=4, env=env) as base:
        api = f"{base}/api/v1"
        token = create_token(url)
        _, source = set_up_distribution(api, token, operators=3, limit=100_000)
        browser = log_in(base)
        csrf = csrf_token_of(browser.get(f"{base}/intake/").text)

        def intake() -> requests.Response:
            # The intake form, sent without JavaScript: an error is the app's own page.
            form = {"csrf_token": csrf, "source_id": source["id"], "phone": "+79039999999"}
            return browser.post(f"{base}/intake/", data=form, timeout=60, allow_redirects=False)

        acknowledged: set[int] = set()
        serial = iter(range(1_000_000))
        lock = threading.Lock()

        def register() -> tuple[float, requests.Response]:
            with lock:
                n = next(serial)
            started = time.monotonic()
            response = api_session(token).post(
                f"{api}/contacts/register", json={"source_name": "web_form", "phone": f"+7903{n:07d}"}, timeout=60
            )
            if response.status_code == 201:
                with lock:
                    acknowledged.add(response.json()["contact"]["id"])
            return time.monotonic() - started, response

        # First SQLite's lock alone (any other program), then with our writers' file lock too.
        for with_flock in ("0", "1"):
            # A token never used before: its last use is due to be written on every read.
            reader = api_session(create_token(url, name=f"reader {with_flock}"))
            reads: dict[str, Callable[[], requests.Response]] = {
                "healthz": lambda: requests.get(f"{base}/healthz", timeout=30),
                "api read": partial(reader.get, f"{api}/distribution_status/", timeout=30),
                "page": lambda: browser.get(f"{base}/", timeout=30),
            }
            args = [sys.executable, "-c", HOLD_THE_WRITE_LOCK, str(path), str(HOLD_SECONDS), with_flock]
            with subprocess.Popen(args, stdout=subprocess.PIPE, text=True) as holder:
                assert holder.stdout is not None
                assert holder.stdout.readline().strip() == "held"
                held_until = time.monotonic() + HOLD_SECONDS
                problems, busy, slowest = probe_while_held(held_until, register, reads, intake)
            assert problems == [], problems
            assert busy >= 2, "the writers never found the lock taken"
            assert max(slowest.values()) < 1, slowest
            # Let go: writing works again at once.
            for _ in range(5):
                _, response = register()
                assert response.status_code == 201, response.text
        assert_counters_exact(url, acknowledged)
    assert "WORKER TIMEOUT" not in (tmp_path / "gunicorn.log").read_text()


def test_a_stall_ties_up_one_worker_not_all_of_them(backend, tmp_path: Path) -> None:
    """As many writers as workers while SQLite's lock is held elsewhere: one writer waits it out (in SQLite's
    busy handler, holding our file lock), the others give up after watching that holder for a second, so
    /healthz still finds a worker."""
    if backend.name != "sqlite":
        pytest.skip("SQLite's single write lock")
    path = tmp_path / "stalled.sqlite3"
    url = f"sqlite:///{path}"
    with gunicorn(url, tmp_path, workers=2, env={"LEADCRM_ADMIN_PASSWORD": ADMIN_PASSWORD}) as base:
        api = f"{base}/api/v1"
        token = create_token(url)
        set_up_distribution(api, token, operators=1, limit=100_000)
        stop = threading.Event()
        statuses: Counter[int] = Counter()

        def write() -> None:
            session = api_session(token)
            n = 0
            while not stop.is_set():
                n += 1
                body = {"source_name": "web_form", "phone": f"+7904{threading.get_ident() % 1000:03d}{n:04d}"}
                statuses[session.post(f"{api}/contacts/register", json=body, timeout=60).status_code] += 1

        args = [sys.executable, "-c", HOLD_THE_WRITE_LOCK, str(path), str(HOLD_SECONDS), "0"]
        with subprocess.Popen(args, stdout=subprocess.PIPE, text=True) as holder:
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == "held"
            held_until = time.monotonic() + HOLD_SECONDS
            writers = [threading.Thread(target=write) for _ in range(2)]
            for writer in writers:
                writer.start()
            slowest = 0.0
            time.sleep(1)  # both writers are waiting by now
            while time.monotonic() < held_until - 1:
                started = time.monotonic()
                assert requests.get(f"{base}/healthz", timeout=30).status_code == 200
                slowest = max(slowest, time.monotonic() - started)
                time.sleep(0.25)
            stop.set()
            for writer in writers:
                writer.join()
    assert statuses[503] >= 3, statuses
    assert slowest < 2.5, f"/healthz took {slowest:.1f} s while writers waited"


def test_the_file_lock_wait_has_a_deadline_in_any_thread(tmp_path: Path) -> None:
    """The main thread blocks in flock with a timer, other threads poll: both give up in time."""
    path = str(tmp_path / "lock.sqlite3")
    holder = os.open(f"{path}-writelock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(holder, fcntl.LOCK_EX)
    outcomes: dict[str, str | tuple[str, float]] = {}

    def try_to_write(label: str) -> None:
        conn = SQLiteConnection(path, timeout=0.5, isolation_level=None)
        started = time.monotonic()
        try:
            conn.lock_for_write()
            outcomes[label] = "locked"
        except sa.exc.OperationalError as exc:
            outcomes[label] = (str(exc.orig), time.monotonic() - started)
        finally:
            conn.close()

    try:
        try_to_write("main")
        thread = threading.Thread(target=try_to_write, args=("thread",))
        thread.start()
        thread.join()
    finally:
        fcntl.flock(holder, fcntl.LOCK_UN)
    for label in ("main", "thread"):
        outcome = outcomes[label]
        assert isinstance(outcome, tuple), outcome
        message, took = outcome
        assert "database is locked" in message
        assert 0.5 <= took < 1.0
    # Let go: taken at once, from either.
    try_to_write("main")
    thread = threading.Thread(target=try_to_write, args=("thread",))
    thread.start()
    thread.join()
    os.close(holder)
    assert outcomes == {"main": "locked", "thread": "locked"}


# --- 3. Slow clients, behind the shipped nginx configuration ---------------------------

NGINX = os.environ.get("LEADCRM_NGINX") or shutil.which("nginx") or "/usr/sbin/nginx"
SLOW_CLIENTS_PER_KIND = 4  # of each kind (headers, bodies): twice the workers


def nginx_or_skip() -> str:
    if not os.path.exists(NGINX):
        reason = f"no nginx at {NGINX}: install Debian's package (apt-get install nginx) or set LEADCRM_NGINX"
        if os.environ.get("LEADCRM_REQUIRE_NGINX") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return NGINX


def self_signed_certificate(workdir: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (and its key) that requests can be told to trust."""
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@contextmanager
def nginx_in_front_of(app_base: str, workdir: Path, tls: tuple[Path, Path] | None = None) -> Iterator[str]:
    """nginx with deploy/nginx.conf (only its two addresses and its log's path changed) in front of ``app_base``.

    With ``tls`` (certificate, key) it listens for HTTPS, as the file's comment says to, on a port other than 443.
    """
    binary = nginx_or_skip()
    port = free_port()
    site = (PROJECT_ROOT / "deploy" / "nginx.conf").read_text()
    listen = f"listen 127.0.0.1:{port};"
    if tls:
        listen = f"listen 127.0.0.1:{port} ssl; ssl_certificate {tls[0]}; ssl_certificate_key {tls[1]};"
    site, listens = re.subn(r"^(\s*)listen 80;", rf"\1{listen}", site, flags=re.M)
    site, upstreams = re.subn(r"server 127\.0\.0\.1:8000;", f"server {app_base.removeprefix('http://')};", site)
    assert listens == upstreams == 1, "deploy/nginx.conf changed shape: update this test"
    prefix = workdir / "nginx"
    prefix.mkdir()
    # Its access log goes where the http block's does (the test reads it): the site's format decides.
    site = site.replace("/var/log/nginx/leadcrm.access.log", f"{prefix}/access.log")
    (prefix / "leadcrm.conf").write_text(site)
    temp = "\n".join(
        f"    {kind}_temp_path {prefix}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # What Debian's /etc/nginx/nginx.conf gives the site (its access log in the
    # "combined" format, request lines whole), in the foreground and without root.
    (prefix / "nginx.conf").write_text(
        f"daemon off;\nmaster_process off;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log;\n"
        f"events {{ worker_connections 1024; }}\n"
        f"http {{\n{temp}\n    access_log {prefix}/access.log;\n    include {prefix}/leadcrm.conf;\n}}\n"
    )
    command = [binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", str(prefix / "error.log")]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    base = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, (prefix / "error.log").read_text()
            try:
                if requests.get(f"{base}/healthz", timeout=1, verify=str(tls[0]) if tls else True).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "nginx did not start"
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=20)


def send_slowly(base: str, head: str, trickle: bytes, stop: threading.Event) -> None:
    """Send ``head`` at once, then one ``trickle`` a second until ``stop``: a client on a bad line, or an attack."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(head.encode())
        while not stop.wait(1):
            try:
                sock.sendall(trickle)
            except OSError:
                return  # the server gave up on us: fine


def healthz_while_slow_clients_hold(base: str, token: str, seconds: float = 5) -> list[str]:
    """Open more slow connections than workers (headers and bodies); what went wrong with /healthz meanwhile."""
    stop = threading.Event()
    slow_headers = "GET /healthz HTTP/1.1\r\nHost: leadcrm\r\n"
    slow_body = (
        "POST /api/v1/contacts/register HTTP/1.1\r\nHost: leadcrm\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 10000\r\n\r\n"
    )
    clients = [
        threading.Thread(target=send_slowly, args=(base, head, trickle, stop))
        for head, trickle in ((slow_headers, b"X-Slow: 1\r\n"), (slow_body, b" "))
        for _ in range(SLOW_CLIENTS_PER_KIND)
    ]
    for client in clients:
        client.start()
    problems = []
    try:
        time.sleep(1)  # let them all get hold of what they can
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            started = time.monotonic()
            try:
                response = requests.get(f"{base}/healthz", timeout=1)
                if response.status_code != 200:
                    problems.append(f"/healthz answered {response.status_code}")
            except requests.RequestException as exc:
                problems.append(f"/healthz: no answer within 1 s ({type(exc).__name__})")
            time.sleep(max(0.0, 0.25 - (time.monotonic() - started)))
    finally:
        stop.set()
        for client in clients:
            client.join()
    return problems


def test_slow_clients_do_not_hold_the_workers_behind_the_shipped_proxy(tmp_path: Path) -> None:
    nginx_or_skip()
    url = f"sqlite:///{tmp_path / 'proxied.sqlite3'}"
    with (
        gunicorn(url, tmp_path, workers=2, env={"LEADCRM_PROXY_COUNT": "1"}) as app_base,
        nginx_in_front_of(app_base, tmp_path) as base,
    ):
        token = create_token(url)
        problems = healthz_while_slow_clients_hold(base, token)
        assert problems == [], problems
        # The app works through the proxy: its headers come through, writes are accepted.
        api = f"{base}/api/v1"
        set_up_distribution(api, token, operators=1, limit=10)
        response = api_session(token).post(
            f"{api}/contacts/register", json={"source_name": "web_form", "phone": "+79040000001"}
        )
        assert response.status_code == 201, response.text
        assert "Content-Security-Policy" in response.headers


def test_the_shipped_proxy_keeps_query_strings_out_of_its_access_log(tmp_path: Path) -> None:
    """Searches carry customers' phone numbers and names: nginx must not log them either (Debian logs $request)."""
    nginx_or_skip()
    url = f"sqlite:///{tmp_path / 'proxied.sqlite3'}"
    with (
        gunicorn(url, tmp_path, workers=1, env={"LEADCRM_PROXY_COUNT": "1"}) as app_base,
        nginx_in_front_of(app_base, tmp_path) as base,
    ):
        token = create_token(url)
        assert api_session(token).get(f"{base}/api/v1/leads/", params={"q": "+79001234567"}).status_code == 200
        assert requests.get(f"{base}/leads/", params={"q": "Ivan Petrov"}, allow_redirects=False).status_code == 302
    logged = (tmp_path / "nginx" / "access.log").read_text()
    assert "/api/v1/leads/" in logged and "/leads/" in logged
    assert "79001234567" not in logged and "Ivan" not in logged and "q=" not in logged, logged


def test_forms_work_through_the_shipped_proxy_over_https_on_any_port(tmp_path: Path) -> None:
    """Flask-WTF compares an HTTPS form's Referer with the Host: the proxy must pass the port on."""
    nginx_or_skip()
    url = f"sqlite:///{tmp_path / 'proxied.sqlite3'}"
    tls = self_signed_certificate(tmp_path)
    env = {"LEADCRM_PROXY_COUNT": "1", "LEADCRM_ADMIN_PASSWORD": ADMIN_PASSWORD}
    with gunicorn(url, tmp_path, workers=1, env=env) as app_base, nginx_in_front_of(app_base, tmp_path, tls) as base:
        browser = requests.Session()
        trust = str(tls[0])  # per request: REQUESTS_CA_BUNDLE in the environment would win over Session.verify
        page = browser.get(f"{base}/login", timeout=10, verify=trust).text
        csrf = csrf_token_of(page)
        form = {"csrf_token": csrf, "username": "admin", "password": ADMIN_PASSWORD}
        # As a browser sends it: the page's own address, port included.
        referer = {"Referer": f"{base}/login"}
        answer = browser.post(
            f"{base}/login", data=form, headers=referer, timeout=10, allow_redirects=False, verify=trust
        )
        assert answer.status_code == 302, answer.text[:500]
        assert "Secure" in answer.headers["Set-Cookie"] and "Strict-Transport-Security" in answer.headers
        assert browser.get(f"{base}/users/", timeout=10, allow_redirects=False, verify=trust).status_code == 200


def test_only_the_configured_proxies_may_say_a_request_came_over_https(tmp_path: Path) -> None:
    """gunicorn by itself believes X-Forwarded-Proto from any local process; the app decides (LEADCRM_PROXY_COUNT)."""
    url = f"sqlite:///{tmp_path / 'direct.sqlite3'}"
    with gunicorn(url, tmp_path, workers=1, env={"LEADCRM_ADMIN_PASSWORD": ADMIN_PASSWORD}) as base:
        claimed = requests.get(f"{base}/login", headers={"X-Forwarded-Proto": "https"}, timeout=10)
        assert claimed.status_code == 200
        assert "Strict-Transport-Security" not in claimed.headers
        assert "Secure" not in claimed.headers.get("Set-Cookie", "")
        # gunicorn itself refuses a request line over 4094 bytes, as the README says.
        too_long = requests.get(f"{base}/leads/", params={"q": "9" * 5000}, timeout=10)
        assert too_long.status_code == 414


def test_the_server_starts_while_the_write_lock_is_held_elsewhere(tmp_path: Path) -> None:
    """Every start reads whether users exist and drains the queue: neither may stop it when the lock is taken."""
    path = tmp_path / "busy.sqlite3"
    url = f"sqlite:///{path}"
    with gunicorn(url, tmp_path, workers=1, env={"LEADCRM_ADMIN_PASSWORD": ADMIN_PASSWORD}):
        pass  # migrated, with its first supervisor
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        with gunicorn(url, tmp_path, workers=1, name="second") as base:
            assert time.monotonic() - started < 15
            assert requests.get(f"{base}/healthz", timeout=5).status_code == 200
    finally:
        holder.rollback()
        holder.close()
    assert "waiting contacts not drained at start" in (tmp_path / "second.log").read_text()
