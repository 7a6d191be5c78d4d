"""leadcrm benchmark: `make bench` (not a test; numbers go to bench/results.md).

Measures, on this machine, in one run:
1. registration throughput and p50/p99 latency through the JSON API under
   gunicorn (the project's gunicorn.conf.py), 8 concurrent keep-alive wrk
   clients for 30 s, next to the ceiling: GET /healthz, a trivial JSON
   endpoint of the same app and server, measured the same way in the same run;
2. growth: registration p50 with 10,000 vs 1,000,000 contacts of history, and
   with 10 vs 1,000 operators serving the source;
3. the load-table fragment and GET /api/v1/distribution_status/ with 1,000
   operators and 30 sources: p50 server time;
4. distribution accuracy after 10,000 registrations on weights 10/30/60.

SQLite always; PostgreSQL too when LEADCRM_BENCH_POSTGRES_URL (or
LEADCRM_TEST_POSTGRES_URL) is set, in a schema of its own that is dropped
afterwards. The load generator is wrk (Debian package `wrk`), a compiled
program, so that it takes little CPU from the server on the same 2 cores.
"""

import argparse
import math
import os
import platform
import random
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import cpu  # noqa: E402
from bench.postgres import fresh_schema, server_version  # noqa: E402
from leadcrm import create_app  # noqa: E402
from leadcrm.distribution import register_contact  # noqa: E402
from leadcrm.extensions import db  # noqa: E402
from leadcrm.identity import LeadIdentity  # noqa: E402
from leadcrm.models import Operator, Source, SourceOperator  # noqa: E402

LUA = ROOT / "bench" / "register.lua"
RESULTS = ROOT / "bench" / "results.md"
NOTES = ROOT / "bench" / "notes.md"


# --- helpers ------------------------------------------------------------------------


def find(pattern: str, text: str, flags: int = 0) -> re.Match[str]:
    """re.search for what must be there (a CSRF token, a line of wrk's report)."""
    found = re.search(pattern, text, flags)
    assert found, f"{pattern!r} not in {text!r}"
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def migrate(url: str) -> None:
    from flask_migrate import upgrade

    app = create_app({"SQLALCHEMY_DATABASE_URI": url})
    with app.app_context():
        upgrade()
        db.engine.dispose()


def credentials(url: str, base: str) -> dict[str, dict[str, str]]:
    """Headers of an integration (a full API token) and of a logged-in supervisor's browser."""
    from werkzeug.security import generate_password_hash

    from leadcrm import accounts
    from leadcrm.models import User
    from leadcrm.vocabulary import Role, TokenScope

    app = create_app({"SQLALCHEMY_DATABASE_URI": url})
    with app.app_context():
        secret = accounts.create_token(db.session(), name="bench", scope=TokenScope.FULL, created_by=None).secret
        if accounts.find_user(db.session(), "bench") is None:
            db.session.add(
                User(username="bench", password_hash=generate_password_hash("bench password"), role=Role.SUPERVISOR)
            )
        db.session.commit()
        db.session.remove()
        db.engine.dispose()
    browser = requests.Session()
    page = browser.get(f"{base}/login", timeout=30).text
    csrf = find(r'name="csrf-token" content="([^"]+)"', page).group(1)
    form = {"csrf_token": csrf, "username": "bench", "password": "bench password"}
    assert browser.post(f"{base}/login", data=form, timeout=30, allow_redirects=False).status_code == 302
    cookie = "; ".join(f"{c.name}={c.value}" for c in browser.cookies)
    return {"api": {"Authorization": f"Bearer {secret}"}, "page": {"Cookie": cookie}}


@contextmanager
def server(url: str, workdir: Path):
    """gunicorn with the project's gunicorn.conf.py, access log off."""
    port = free_port()
    env = {**os.environ, "DATABASE_URL": url, "PORT": str(port), "HOST": "127.0.0.1", "ACCESS_LOG": ""}
    env["LEADCRM_INSTANCE_PATH"] = str(workdir / "instance")
    env.pop("WORKERS", None)
    log = open(workdir / "gunicorn.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:app"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if requests.get(base + "/healthz", timeout=1).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        else:
            raise RuntimeError("gunicorn did not start; see " + str(workdir / "gunicorn.log"))
        yield base, credentials(url, base)
    finally:
        process.terminate()
        process.wait(30)
        log.close()


def wrk(
    url: str,
    *,
    seconds: int,
    connections: int = 8,
    threads: int = 2,
    script_args: list[str] | None = None,
    headers: dict[str, str] | None = None,
) -> dict:
    """Run wrk; returns requests/s, p50/p99 in ms and the count of non-2xx answers."""
    cmd = ["wrk", f"-t{min(threads, connections)}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for name, value in (headers or {}).items():
        cmd += ["-H", f"{name}: {value}"]
    if script_args is not None:
        cmd += ["-s", str(LUA), url, "--", *script_args]
    else:
        cmd.append(url)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout

    def latency(label: str) -> float:
        value, unit = find(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": float(find(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": latency("50%"),
        "p99": latency("99%"),
        "requests": int(find(r"(\d+) requests in", out).group(1)),
        "non2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": socket_errors.group(1) if socket_errors else "",
    }


def setup_source(
    url: str, name: str, operators: int, *, strategy: str = "random", limit: int = 10**6, prefix: str = "op"
) -> None:
    """Operators and a source with weights, written straight to the database."""
    engine = sa.create_engine(url)
    now = datetime.now(UTC)
    with engine.begin() as conn:
        source_id = conn.execute(
            sa.insert(Source).values(name=name, strategy=strategy, created_at=now).returning(Source.id)
        ).scalar_one()
        rows = [{"name": f"{prefix}-{name}-{i}", "is_active": True, "max_active_leads": limit, "active_leads": 0,
                 "created_at": now} for i in range(operators)]  # fmt: skip
        ids = conn.execute(sa.insert(Operator).returning(Operator.id), rows).scalars().all()
        conn.execute(
            sa.insert(SourceOperator),
            [{"source_id": source_id, "operator_id": op, "weight": 1 + i % 5, "assigned_total": 0}
             for i, op in enumerate(ids)],
        )  # fmt: skip
    engine.dispose()


def load_history(url: str, contacts: int, source_name: str) -> None:
    """Bulk-load closed contacts (one lead per 5 contacts) as past history."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        source_id = conn.execute(sa.text("SELECT id FROM sources WHERE name = :n"), {"n": source_name}).scalar_one()
        operator_id = conn.execute(
            sa.text("SELECT operator_id FROM source_operators WHERE source_id = :s LIMIT 1"), {"s": source_id}
        ).scalar_one()
        leads = max(contacts // 5, 1)
        tag = uuid.uuid4().hex[:8]
        if engine.dialect.name == "sqlite":
            series = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :count) "
            src = "FROM n"
            stamp = "'2026-01-01 00:00:00.000000'"
        else:
            series = ""
            src = "FROM generate_series(1, :count) AS n(i)"
            stamp = "timestamptz '2026-01-01 00:00:00+00'"
        conn.execute(
            sa.text(
                f"{series}INSERT INTO leads (external_id, phone, email, name, created_at) "
                f"SELECT 'hist-{tag}-' || i, NULL, NULL, 'history', {stamp} {src}"
            ),
            {"count": leads},
        )
        first_lead = conn.execute(
            sa.text("SELECT min(id) FROM leads WHERE external_id LIKE :prefix"), {"prefix": f"hist-{tag}-%"}
        ).scalar_one()
        conn.execute(
            sa.text(
                f"{series}INSERT INTO contacts (lead_id, source_id, operator_id, status, message, created_at, "
                f"assigned_at, closed_at) SELECT :first + (i % :leads), :source, :operator, 'closed', 'old', "
                f"{stamp}, {stamp}, {stamp} {src}"
            ),
            {"count": contacts, "first": first_lead, "leads": leads, "source": source_id, "operator": operator_id},
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("VACUUM ANALYZE"))
        else:
            # Fold the bulk load's WAL into the database now, as a live system
            # would have done bit by bit, so that no measurement pays for it.
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()


def count_contacts(url: str) -> int:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        n = conn.execute(sa.text("SELECT count(*) FROM contacts")).scalar_one()
    engine.dispose()
    return n


# --- the measurements -----------------------------------------------------------------


def throughput(url: str, workdir: Path, seconds: int) -> dict:
    setup_source(url, "bench_source", 10)
    with server(url, workdir) as (base, auth):
        # Warm up every worker's imports, pools and statement caches.
        wrk(f"{base}/healthz", seconds=2)
        wrk(f"{base}/api/v1/contacts/register", seconds=2, script_args=["bench_source", "1"], headers=auth["api"])
        # The ceiling is measured before and after registration, and the ratio
        # taken against the higher of the two: a noisy neighbour slowing one
        # ceiling run must not flatter the ratio.
        ceiling_before = wrk(f"{base}/healthz", seconds=seconds)
        before = count_contacts(url)
        register = wrk(
            f"{base}/api/v1/contacts/register",
            seconds=seconds,
            script_args=["bench_source", "2"],
            headers=auth["api"],
        )
        stored = count_contacts(url) - before
        with_key = wrk(
            f"{base}/api/v1/contacts/register",
            seconds=seconds,
            script_args=["bench_source", "3", "key"],
            headers=auth["api"],
        )
        ceiling_after = wrk(f"{base}/healthz", seconds=seconds)
    for run in (register, with_key):
        if run["non2xx"] or run["socket_errors"]:
            # A refused registration measures an error path, not the hot path: no results from that.
            raise SystemExit(f"registrations failed: {run['non2xx']} non-2xx, socket errors {run['socket_errors']!r}")
    ceiling = max(ceiling_before, ceiling_after, key=lambda run: run["rps"])
    return {
        "ceiling": ceiling,
        "ceilings": (ceiling_before, ceiling_after),
        "register": register,
        "with_key": with_key,
        "stored": stored,
    }


def growth(url: str, workdir: Path, seconds: int, big_history: int) -> dict:
    setup_source(url, "grow_source", 10)
    setup_source(url, "ten_operators", 10, prefix="ten")
    setup_source(url, "thousand_operators", 1000, prefix="thousand")
    result: dict[str, Any] = {}
    load_history(url, 10_000, "grow_source")
    with server(url, workdir) as (base, auth):
        register = f"{base}/api/v1/contacts/register"
        wrk(register, seconds=2, connections=1, script_args=["grow_source", "4"], headers=auth["api"])
        result["history_10k"] = wrk(
            register, seconds=seconds, connections=1, script_args=["grow_source", "5"], headers=auth["api"]
        )
        result["operators_10"] = wrk(
            register, seconds=seconds, connections=1, script_args=["ten_operators", "6"], headers=auth["api"]
        )
        result["operators_1000"] = wrk(
            register, seconds=seconds, connections=1, script_args=["thousand_operators", "7"], headers=auth["api"]
        )
    started = time.monotonic()
    load_history(url, big_history - count_contacts(url), "grow_source")
    result["load_seconds"] = time.monotonic() - started
    result["history_total"] = count_contacts(url)
    with server(url, workdir) as (base, auth):
        register = f"{base}/api/v1/contacts/register"
        wrk(register, seconds=2, connections=1, script_args=["grow_source", "8"], headers=auth["api"])
        result["history_1m"] = wrk(
            register, seconds=seconds, connections=1, script_args=["grow_source", "9"], headers=auth["api"]
        )
    return result


def pages(url: str, workdir: Path, seconds: int) -> dict:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        now = datetime.now(UTC)
        ids = conn.execute(
            sa.insert(Operator).returning(Operator.id),
            [{"name": f"Operator {i:04d}", "is_active": i % 10 != 0, "max_active_leads": 5 + i % 20,
              "active_leads": i % 7, "created_at": now} for i in range(1000)],
        ).scalars().all()  # fmt: skip
        for s in range(30):
            source_id = conn.execute(
                sa.insert(Source).values(name=f"source_{s:02d}", strategy="random", created_at=now)
                .returning(Source.id)
            ).scalar_one()  # fmt: skip
            rng = random.Random(s)
            conn.execute(
                sa.insert(SourceOperator),
                [{"source_id": source_id, "operator_id": op, "weight": rng.randint(1, 50), "assigned_total": 0}
                 for op in rng.sample(ids, 200)],
            )  # fmt: skip
    engine.dispose()
    with server(url, workdir) as (base, auth):
        htmx = {"HX-Request": "true", **auth["page"]}
        wrk(f"{base}/", seconds=1, connections=1, headers=htmx)
        fragment = wrk(f"{base}/", seconds=seconds, connections=1, headers=htmx)
        status = wrk(f"{base}/api/v1/distribution_status/", seconds=seconds, connections=1, headers=auth["api"])
        html = requests.get(f"{base}/", headers=htmx, timeout=30).text
        assert html.count('<tr id="load-operator-') == 1000, "the fragment should list every operator"
    return {"fragment": fragment, "status": status}


def accuracy(workdir: Path) -> dict:
    """10,000 registrations per strategy through the engine, in process, on SQLite."""
    path = workdir / "accuracy.sqlite3"
    url = f"sqlite:///{path}"
    migrate(url)
    weights = (10, 30, 60)
    out = {}
    for strategy in ("random", "deterministic"):
        setup_source(url, f"acc_{strategy}", 3, strategy=strategy, prefix=strategy)
        app = create_app({"SQLALCHEMY_DATABASE_URI": url})
        with app.app_context():
            source = db.session.scalars(sa.select(Source).where(Source.name == f"acc_{strategy}")).one()
            rows = db.session.scalars(sa.select(SourceOperator).where(SourceOperator.source_id == source.id)).all()
            for row, weight in zip(sorted(rows, key=lambda r: r.operator_id), weights, strict=True):
                row.weight = weight
            db.session.commit()
            order = sorted(r.operator_id for r in rows)
            rng = random.Random(2026)
            counts: Counter = Counter()
            for n in range(10_000):
                registration = register_contact(
                    db.session(), source=source, identity=LeadIdentity(external_id=f"{strategy}-{n}"), rng=rng
                )
                assert registration.operator is not None  # every operator has room for all of them
                counts[registration.operator.id] += 1
                if n % 500 == 499:
                    db.session.commit()
            db.session.commit()
            db.engine.dispose()
        total = sum(counts.values())
        expected = [total * w / sum(weights) for w in weights]
        observed = [counts[op] for op in order]
        result = {"observed": observed, "expected": expected}
        if strategy == "random":
            chi2 = sum((o - e) ** 2 / e for o, e in zip(observed, expected, strict=True))
            result["chi2"] = chi2
            result["p_value"] = math.exp(-chi2 / 2)  # chi-square survival function, 2 degrees of freedom
        else:
            result["max_deviation"] = max(abs(o - e) for o, e in zip(observed, expected, strict=True))
        out[strategy] = result
    return out


# --- the report ---------------------------------------------------------------------------


def ms(value: float) -> str:
    return f"{value:.2f} ms"


def report(results: dict, args: argparse.Namespace, elapsed: float) -> str:
    lines = [
        "# leadcrm benchmark results",
        "",
        f"Run on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `make bench` ({elapsed / 60:.1f} min), on "
        f"{os.cpu_count()} CPU cores, {platform.machine()}, Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}{', ' + results['pg_version'] if results.get('pg_version') else ''}.",
        "Load generator: wrk (compiled; 2 threads), on the same machine as the server. gunicorn with the",
        "project's `gunicorn.conf.py` (sync workers: one per core on SQLite, 2n+1 on PostgreSQL), access log off.",
        "All numbers come from this one run; the machine is shared and noisy, so compare ratios within a run.",
        "",
        f"## Registration throughput ({args.seconds} s, 8 concurrent keep-alive clients)",
        "",
        "The ceiling is GET /healthz on the same server, measured before and after the registrations; the",
        "ratio is taken against the higher of the two. Each registration sends a phone and an e-mail (a new",
        "lead every time); the second row adds an Idempotency-Key to each.",
        "",
    ]
    for name in ("sqlite", "postgresql"):
        if name not in results["throughput"]:
            continue
        t = results["throughput"][name]
        c, r = t["ceiling"], t["register"]
        lines += ["| database | endpoint | requests/s | p50 | p99 | non-2xx | of the ceiling |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for label, run in zip(("before", "after"), t["ceilings"], strict=True):
            lines.append(f"| {name} | GET /healthz (ceiling, {label}) | {run['rps']:.0f} | {ms(run['p50'])} | "
                         f"{ms(run['p99'])} | {run['non2xx']} | {run['rps'] / c['rps'] * 100:.0f} % |")  # fmt: skip
        for label, run in (("", r), (" with an Idempotency-Key", t["with_key"])):
            lines.append(f"| {name} | POST /api/v1/contacts/register{label} | {run['rps']:.0f} | {ms(run['p50'])} | "
                         f"{ms(run['p99'])} | {run['non2xx']} | **{run['rps'] / c['rps'] * 100:.0f} %** |")  # fmt: skip
        lines.append("")
        lines.append(f"{name}: {r['requests']} registrations counted by wrk, {t['stored']} contacts stored "
                     "(wrk stops counting at the deadline with up to 8 requests in flight).")  # fmt: skip
        lines.append("")
    lines += [
        "## Worker CPU per request (in process)",
        "",
        "The same requests through the app's WSGI interface in this process (no sockets, no HTTP parsing),",
        "taking turns in rounds; the median CPU time of the thread per request (bench/cpu.py). wrk's ratio",
        "above includes gunicorn's HTTP work, the same for both endpoints, and the database server's CPU",
        "(PostgreSQL runs on the same 2 cores), which this one does not.",
        "",
        *cpu.table(results["cpu"]),
        "",
    ]
    g = results["growth"]
    lines += [
        f"## Growth (SQLite, one client, {args.growth_seconds} s each)",
        "",
        "| case | requests/s | p50 | p99 |",
        "|---|---|---|---|",
        f"| 10,000 contacts of history | {g['history_10k']['rps']:.0f} | {ms(g['history_10k']['p50'])} | "
        f"{ms(g['history_10k']['p99'])} |",
        f"| {g['history_total']:,} contacts of history | {g['history_1m']['rps']:.0f} | {ms(g['history_1m']['p50'])} | "
        f"{ms(g['history_1m']['p99'])} |",
        f"| 10 operators serving the source | {g['operators_10']['rps']:.0f} | {ms(g['operators_10']['p50'])} | "
        f"{ms(g['operators_10']['p99'])} |",
        f"| 1,000 operators serving the source | {g['operators_1000']['rps']:.0f} | "
        f"{ms(g['operators_1000']['p50'])} | {ms(g['operators_1000']['p99'])} |",
        "",
        f"p50 with {g['history_total']:,} vs 10,000 contacts: "
        f"**{g['history_1m']['p50'] / g['history_10k']['p50']:.2f}x**; "
        f"1,000 vs 10 operators: **{g['operators_1000']['p50'] / g['operators_10']['p50']:.2f}x**. "
        f"(Bulk-loading the history took {g['load_seconds']:.0f} s.)",
        "",
        f"## Pages with 1,000 operators and 30 sources (SQLite, one client, {args.page_seconds} s each)",
        "",
        "| what | p50 | p99 | requests/s |",
        "|---|---|---|---|",
    ]
    p = results["pages"]
    lines += [
        f"| load-table fragment (GET / with HX-Request) | {ms(p['fragment']['p50'])} | {ms(p['fragment']['p99'])} | "
        f"{p['fragment']['rps']:.0f} |",
        f"| GET /api/v1/distribution_status/ | {ms(p['status']['p50'])} | {ms(p['status']['p99'])} | "
        f"{p['status']['rps']:.0f} |",
        "",
        "## Distribution accuracy (10,000 registrations, weights 10 / 30 / 60)",
        "",
        "| strategy | contacts per operator | expected | measure |",
        "|---|---|---|---|",
    ]
    a = results["accuracy"]
    lines.append(f"| random | {' / '.join(map(str, a['random']['observed']))} | 1000 / 3000 / 6000 | "
                 f"chi-square {a['random']['chi2']:.2f}, p = {a['random']['p_value']:.3f} |")  # fmt: skip
    lines.append(f"| deterministic | {' / '.join(map(str, a['deterministic']['observed']))} | 1000 / 3000 / 6000 | "
                 f"max deviation {a['deterministic']['max_deviation']:.2f} contacts |")  # fmt: skip
    lines.append("")
    if NOTES.exists():
        lines += [NOTES.read_text().rstrip(), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=30, help="length of each throughput run")
    parser.add_argument("--growth-seconds", type=int, default=10)
    parser.add_argument("--page-seconds", type=int, default=5)
    parser.add_argument("--history", type=int, default=1_000_000, help="contacts of history for the growth case")
    parser.add_argument("--cpu-rounds", type=int, default=300, help="rounds of the in-process CPU measurement")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install wrk (make bench does this when run as root)")
    started = time.monotonic()
    results: dict = {"throughput": {}}
    pg_url = os.environ.get("LEADCRM_BENCH_POSTGRES_URL") or os.environ.get("LEADCRM_TEST_POSTGRES_URL")
    with tempfile.TemporaryDirectory(prefix="leadcrm-bench-") as tmp:
        workdir = Path(tmp)
        print("throughput on SQLite ...", flush=True)
        url = f"sqlite:///{workdir / 'throughput.sqlite3'}"
        migrate(url)
        results["throughput"]["sqlite"] = throughput(url, workdir, args.seconds)
        if pg_url:
            print("throughput on PostgreSQL ...", flush=True)
            results["pg_version"] = "PostgreSQL " + server_version(pg_url)
            with fresh_schema(pg_url, "leadcrm_bench") as url:
                migrate(url)
                results["throughput"]["postgresql"] = throughput(url, workdir, args.seconds)
        print("worker CPU per request ...", flush=True)
        results["cpu"] = cpu.run(args.cpu_rounds, pg_url)
        print("growth ...", flush=True)
        url = f"sqlite:///{workdir / 'growth.sqlite3'}"
        migrate(url)
        results["growth"] = growth(url, workdir, args.growth_seconds, args.history)
        print("pages ...", flush=True)
        url = f"sqlite:///{workdir / 'pages.sqlite3'}"
        migrate(url)
        results["pages"] = pages(url, workdir, args.page_seconds)
        print("accuracy ...", flush=True)
        results["accuracy"] = accuracy(workdir)
    text = report(results, args, time.monotonic() - started)
    args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
