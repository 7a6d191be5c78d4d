"""Worker CPU per request, in process: where the hot path's time goes, without wrk's noise.

Each request is sent through the app's WSGI interface (Flask's test client,
no sockets), and the CPU time of this thread is taken around it
(``time.thread_time``): what a gunicorn worker spends on the request, less
HTTP parsing. The kinds of request take turns in rounds, so a noisy
neighbour slows them all alike; the median of each kind is reported.

    python bench/cpu.py [--rounds 400] [--postgres URL]

``bench/bench.py`` runs it too and puts the table in bench/results.md.
"""

import argparse
import os
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.postgres import fresh_schema  # noqa: E402
from leadcrm import create_app  # noqa: E402
from leadcrm.extensions import db  # noqa: E402


def measure(url: str, rounds: int, instance: Path) -> dict[str, float]:
    """Median worker CPU in ms per kind of request, on the database at ``url``."""
    from flask_migrate import upgrade

    from leadcrm import accounts, distribution
    from leadcrm.identity import LeadIdentity
    from leadcrm.models import Contact, Operator, Source, SourceOperator, User, utcnow
    from leadcrm.vocabulary import Role, TokenScope

    os.environ["LEADCRM_INSTANCE_PATH"] = str(instance)
    app = create_app({"SQLALCHEMY_DATABASE_URI": url})
    with app.app_context():
        upgrade()
        secret = accounts.create_token(db.session(), name="cpu", scope=TokenScope.FULL, created_by=None).secret
        db.session.commit()
        source = Source(name="cpu", strategy="random")
        db.session.add(source)
        db.session.flush()
        for i in range(10):
            operator = Operator(name=f"cpu-{i}", max_active_leads=10**6)
            db.session.add(operator)
            db.session.flush()
            db.session.add(SourceOperator(source_id=source.id, operator_id=operator.id, weight=1 + i % 5))
        # The status page's case: 1,000 operators and 30 sources.
        operators = [Operator(name=f"status-{i}", max_active_leads=10) for i in range(1000)]
        db.session.add_all(operators)
        db.session.flush()
        for s in range(30):
            status_source = Source(name=f"status-{s}")
            db.session.add(status_source)
            db.session.flush()
            rng = random.Random(s)  # as bench.py's page measurement: 200 of the 1,000 serve each source
            db.session.add_all(
                SourceOperator(source_id=status_source.id, operator_id=op.id, weight=rng.randint(1, 50))
                for op in rng.sample(operators, 200)
            )
        # An operator's inbox with 10 open contacts, polled as an open inbox does every 2 s.
        desk = Operator(name="inbox", max_active_leads=10)
        inbox_source = Source(name="inbox", strategy="random")
        db.session.add_all([desk, inbox_source])
        db.session.flush()
        db.session.add(SourceOperator(source_id=inbox_source.id, operator_id=desk.id, weight=1))
        for n in range(10):
            distribution.register_contact(
                db.session(), source=inbox_source, identity=LeadIdentity(phone=f"+7901{n:07d}"), name=f"Lead {n}"
            )
        # Assigned two hours ago: the ages the inbox shows stay the same for the whole run.
        db.session.execute(
            sa.update(Contact).where(Contact.operator_id == desk.id).values(assigned_at=utcnow() - timedelta(hours=2))
        )
        user = User(username="desk", password_hash="-", role=Role.OPERATOR, operator_id=desk.id)
        db.session.add(user)
        db.session.commit()
        desk_secret = accounts.start_session(db.session(), user, app.permanent_session_lifetime)
        db.session.commit()
        db.session.remove()
    client = app.test_client()
    desk_client = app.test_client()
    with desk_client.session_transaction() as session:
        session["_user_id"] = desk_secret
    shown = re.search(r"/inbox/\?v=(\w+)", desk_client.get("/inbox/").get_data(as_text=True))
    assert shown, "the inbox names the version it shows"
    unchanged_poll = f"/inbox/?v={shown.group(1)}"
    auth = {"Authorization": f"Bearer {secret}"}
    counter = iter(range(10**9))

    def register(body: Callable[[int], dict[str, Any]], key: bool = False) -> Callable[[], Any]:
        def send() -> Any:
            n = next(counter)
            headers = {**auth, "Idempotency-Key": f"k-{n}"} if key else auth
            return client.post("/api/v1/contacts/register", json=body(n), headers=headers)

        return send

    def external_id(n: int) -> dict[str, Any]:
        return {"source_name": "cpu", "external_id": f"x-{n}", "name": "Bench lead", "message": "load test"}

    def phone_and_email(n: int) -> dict[str, Any]:
        return {
            "source_name": "cpu",
            "phone": f"+7900{n:07d}",
            "email": f"lead{n}@example.com",
            "name": "Bench lead",
            "message": "load test",
        }

    kinds: dict[str, Callable[[], Any]] = {
        "GET /healthz": lambda: client.get("/healthz"),
        "register (external id)": register(external_id),
        "register (phone and e-mail)": register(phone_and_email),
        "register (phone and e-mail, Idempotency-Key)": register(phone_and_email, key=True),
        "GET /inbox/ (the poll, 10 open contacts)": lambda: desk_client.get("/inbox/", headers={"HX-Request": "true"}),
        "GET /inbox/ (the poll, nothing changed: 204)": lambda: desk_client.get(
            unchanged_poll, headers={"HX-Request": "true"}
        ),
    }
    status_every = 20  # the status answer is slow: a sample of it is enough
    times: dict[str, list[float]] = {name: [] for name in [*kinds, "GET /api/v1/distribution_status/"]}
    for round_number in range(rounds):
        for name, send in kinds.items():
            started = time.thread_time()
            response = send()
            times[name].append(time.thread_time() - started)
            answered = (name, response.status_code, response.get_data(as_text=True))
            assert response.status_code in (200, 201, 204), answered
        if round_number % status_every == 0:
            started = time.thread_time()
            response = client.get("/api/v1/distribution_status/", headers=auth)
            times["GET /api/v1/distribution_status/"].append(time.thread_time() - started)
            assert response.status_code == 200
    with app.app_context():
        db.engine.dispose()
    return {name: statistics.median(values) * 1000 for name, values in times.items()}


def run(rounds: int, postgres: str | None) -> dict[str, dict[str, float]]:
    results = {}
    with tempfile.TemporaryDirectory(prefix="leadcrm-cpu-") as tmp:
        results["sqlite"] = measure(f"sqlite:///{tmp}/cpu.sqlite3", rounds, Path(tmp) / "instance")
        if postgres:
            with fresh_schema(postgres, "leadcrm_cpu") as url:
                results["postgresql"] = measure(url, rounds, Path(tmp) / "instance-pg")
    return results


def table(results: dict[str, dict[str, float]]) -> list[str]:
    names = list(next(iter(results.values())))
    header = "| request | " + " | ".join(f"{db_name} CPU" for db_name in results) + " |"
    lines = [header, "|---" * (len(results) + 1) + "|"]
    for name in names:
        cells = []
        for values in results.values():
            ratio = values["GET /healthz"] / values[name]
            cells.append(f"{values[name]:.2f} ms" + ("" if name == "GET /healthz" else f" ({ratio:.0%} of /healthz)"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--postgres", default=os.environ.get("LEADCRM_BENCH_POSTGRES_URL"))
    args = parser.parse_args()
    print("\n".join(table(run(args.rounds, args.postgres))))


if __name__ == "__main__":
    main()
