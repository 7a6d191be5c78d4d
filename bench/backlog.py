"""leadcrm benchmark: draining a long waiting queue (not a test; not part of `make bench`).

    .venv/bin/python bench/backlog.py [--waiting 20000] [--register-seconds 10]

On SQLite (and on PostgreSQL too when LEADCRM_BENCH_POSTGRES_URL or
LEADCRM_TEST_POSTGRES_URL is set, in a schema of its own, dropped afterwards),
under gunicorn with the project's gunicorn.conf.py:

1. registration throughput and p50/p99 (wrk, 8 clients) to a source whose
   operators have room: the hot path, for comparing versions;
2. WAITING contacts stored unassigned behind the only operator of another
   source, whose limit is 0; then PATCH its limit to 1,000,000: the answer's
   status and time, and how many contacts that request assigned;
3. `flask leadcrm drain`: its time and how many it assigned, while one client
   keeps registering to the first source (the slowest of those registrations
   shows how long the drain held SQLite's write lock at a stretch).

Prints one Markdown table; run it on two versions one after the other to
compare them on the same machine.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import requests
import sqlalchemy as sa

# Run as a script, this file's folder comes first on the path, where `bench` would be bench/bench.py:
# the project's root first, so that `bench` is the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench import ROOT, count_contacts, migrate, server, setup_source, wrk  # noqa: E402
from bench.postgres import fresh_schema  # noqa: E402


def waiting_backlog(url: str, waiting: int) -> int:
    """An operator with a limit of 0 and a source it alone serves, with ``waiting`` contacts in its queue."""
    setup_source(url, "backlog_source", 1, limit=0, prefix="backlog")
    engine = sa.create_engine(url)
    stamp = datetime(2026, 1, 1, tzinfo=UTC)
    with engine.begin() as conn:
        source_id = conn.execute(sa.text("SELECT id FROM sources WHERE name = 'backlog_source'")).scalar_one()
        operator_id = conn.execute(
            sa.text("SELECT operator_id FROM source_operators WHERE source_id = :s"), {"s": source_id}
        ).scalar_one()
        tag = uuid.uuid4().hex[:8]
        leads = [{"external_id": f"wait-{tag}-{n}", "name": "waiting", "created_at": stamp} for n in range(waiting)]
        conn.execute(
            sa.text("INSERT INTO leads (external_id, name, created_at) VALUES (:external_id, :name, :created_at)"),
            leads,
        )
        first = conn.execute(
            sa.text("SELECT min(id) FROM leads WHERE external_id LIKE :p"), {"p": f"wait-{tag}-%"}
        ).scalar_one()
        contacts = [
            {"lead_id": first + n, "source_id": source_id, "message": "waiting", "created_at": stamp}
            for n in range(waiting)
        ]
        conn.execute(
            sa.text(
                "INSERT INTO contacts (lead_id, source_id, operator_id, status, message, created_at) "
                "VALUES (:lead_id, :source_id, NULL, 'open', :message, :created_at)"
            ),
            contacts,
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("VACUUM ANALYZE"))
        else:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    return operator_id


def waiting_count(url: str) -> int:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        n = conn.scalar(sa.text("SELECT count(*) FROM contacts WHERE operator_id IS NULL AND status = 'open'"))
    engine.dispose()
    return n


def measure(url: str, workdir: Path, waiting: int, register_seconds: int) -> dict:
    setup_source(url, "bench_source", 10)
    operator_id = waiting_backlog(url, waiting)
    result: dict = {}
    with server(url, workdir) as (base, auth):
        register = f"{base}/api/v1/contacts/register"
        wrk(register, seconds=2, script_args=["bench_source", "warm"], headers=auth["api"])
        result["register"] = wrk(
            register, seconds=register_seconds, script_args=["bench_source", "main"], headers=auth["api"]
        )
        started = time.monotonic()
        try:
            response = requests.patch(
                f"{base}/api/v1/operators/{operator_id}",
                json={"max_active_leads": 1_000_000},
                headers=auth["api"],
                timeout=120,
            )
            result["patch_status"] = str(response.status_code)
        except requests.RequestException as exc:
            result["patch_status"] = type(exc).__name__
        result["patch_seconds"] = time.monotonic() - started
        result["patch_assigned"] = waiting - waiting_count(url)

        # The drain, with one client registering alongside.
        stop = threading.Event()
        latencies: list[float] = []

        def keep_registering() -> None:
            session = requests.Session()
            session.headers.update(auth["api"])
            n = 0
            while not stop.is_set():
                n += 1
                body = {"source_name": "bench_source", "external_id": f"during-{n}"}
                sent = time.monotonic()
                session.post(register, json=body, timeout=120)
                latencies.append(time.monotonic() - sent)

        before = waiting_count(url)
        env = {**os.environ, "DATABASE_URL": url, "FLASK_APP": "app"}
        env["LEADCRM_INSTANCE_PATH"] = str(workdir / "instance")
        client = threading.Thread(target=keep_registering)
        client.start()
        started = time.monotonic()
        drained = subprocess.run(
            [sys.executable, "-m", "flask", "leadcrm", "drain"], cwd=ROOT, env=env, capture_output=True, text=True
        )
        result["drain_seconds"] = time.monotonic() - started
        stop.set()
        client.join()
        result["drain_ok"] = drained.returncode == 0
        result["drain_assigned"] = before - waiting_count(url)
        result["drain_output"] = (drained.stdout + drained.stderr).strip().splitlines()[-2:]
        result["during"] = (len(latencies), max(latencies) if latencies else 0.0)
    result["contacts"] = count_contacts(url)
    return result


def row(name: str, r: dict) -> str:
    reg = r["register"]
    return (
        f"| {name} | {reg['rps']:,.0f}/s, p50 {reg['p50']:.1f} ms, p99 {reg['p99']:.1f} ms "
        f"| {r['patch_status']} in {r['patch_seconds']:.2f} s, {r['patch_assigned']:,} assigned "
        f"| {r['drain_seconds']:.1f} s, {r['drain_assigned']:,} assigned{'' if r['drain_ok'] else ' (failed)'} "
        f"| {r['during'][0]} registrations, slowest {r['during'][1] * 1000:.0f} ms |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--waiting", type=int, default=20_000)
    parser.add_argument("--register-seconds", type=int, default=10)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    pg_url = os.environ.get("LEADCRM_BENCH_POSTGRES_URL") or os.environ.get("LEADCRM_TEST_POSTGRES_URL")
    lines = [
        f"backlog of {args.waiting:,} waiting contacts ({ROOT})",
        "",
        "| database | registration (wrk, 8 clients) | limit 0 → 1,000,000 (PATCH) | `flask leadcrm drain` "
        "| registering during the drain |",
        "|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory(prefix="leadcrm-backlog-") as tmp:
        workdir = Path(tmp)
        url = f"sqlite:///{workdir / 'backlog.sqlite3'}"
        migrate(url)
        print("SQLite ...", flush=True)
        result = measure(url, workdir, args.waiting, args.register_seconds)
        print(result, flush=True)
        lines.append(row("SQLite", result))
        if pg_url and not args.no_postgres:
            print("PostgreSQL ...", flush=True)
            with fresh_schema(pg_url, "leadcrm_backlog") as url:
                migrate(url)
                result = measure(url, workdir, args.waiting, args.register_seconds)
                print(result, flush=True)
                lines.append(row("PostgreSQL", result))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
