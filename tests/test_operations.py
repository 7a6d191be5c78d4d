"""Running leadcrm: file permissions, gunicorn's control socket and access log, backup and restore.

These start the real app under gunicorn (tests/servers.py) on SQLite files.
"""

import os
import random
import shutil
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import requests
from flask import Flask
from gunicorn.ctl.client import ControlClient

from leadcrm import create_app
from leadcrm.extensions import db
from tests.helpers import add_operator
from tests.servers import PROJECT_ROOT, api_session, create_token, gunicorn


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def wait_for(condition: Callable[[], bool], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.05)


@pytest.fixture
def usual_umask() -> Iterator[None]:
    """The umask most systems give a service (files 0644 unless the program asks for less)."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.fixture
def instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The instance folder the servers and the in-process app of a test share."""
    monkeypatch.setenv("LEADCRM_INSTANCE_PATH", str(tmp_path / "instance"))
    return tmp_path / "instance"


@pytest.mark.slow
def test_database_files_secret_key_and_instance_folder_are_private_to_their_owner(
    tmp_path: Path, instance: Path, usual_umask: None
) -> None:
    database = instance / "leadcrm.sqlite3"
    # No DATABASE_URL: the default file in the instance folder, made by the master's start.
    with gunicorn("", tmp_path, workers=1) as base:
        assert mode(instance) == 0o700
        assert mode(database) == 0o600
        assert mode(instance / "secret_key") == 0o600
        api = api_session(create_token(f"sqlite:///{database}"))
        assert api.post(f"{base}/api/v1/sources/", json={"name": "web"}).status_code == 201
        answer = api.post(f"{base}/api/v1/contacts/register", json={"source_name": "web", "phone": "+79001234567"})
        assert answer.status_code == 201
        # The worker's connection keeps the WAL and its shared memory open.
        for companion in ("-wal", "-shm", "-writelock"):
            assert mode(database.with_name(database.name + companion)) == 0o600, companion


def test_existing_database_files_and_instance_folder_are_made_private_on_start(
    instance: Path, usual_umask: None
) -> None:
    instance.mkdir()
    os.chmod(instance, 0o755)
    secret = instance / "secret_key"
    secret.write_text("0" * 64)
    database = instance / "leadcrm.sqlite3"
    # As an older version left them: SQLite's own 0644, its -wal and -shm alike.
    older = sqlite3.connect(database)
    try:
        older.execute("PRAGMA journal_mode = WAL")
        older.execute("CREATE TABLE notes (body TEXT)")
        older.execute("INSERT INTO notes VALUES ('kept')")
        older.commit()
        files = [database, database.with_name(database.name + "-wal"), database.with_name(database.name + "-shm")]
        assert [mode(path) for path in [secret, *files]] == [0o644] * 4

        app = create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{database}"})

        assert mode(instance) == 0o700
        assert [mode(path) for path in [secret, *files]] == [0o600] * 4
        assert older.execute("SELECT body FROM notes").fetchall() == [("kept",)]
        with app.app_context():
            db.engine.dispose()
    finally:
        older.close()


@pytest.mark.slow
def test_two_instances_running_at_once_each_keep_their_own_control_socket(tmp_path: Path, instance: Path) -> None:
    """gunicorn's default is one socket per user: the second instance took it over, stopping either removed it."""
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "XDG_RUNTIME_DIR": ""}
    url = f"sqlite:///{tmp_path / 'leadcrm.sqlite3'}"
    # gunicorn 27 stopped while its control server still closes a client's connection logs an asyncio
    # CancelledError from gunicorn/ctl/server.py (its own shutdown race, seen under load): not ours.
    benign = ("gunicorn/ctl/server.py",)
    with ExitStack() as first, ExitStack() as second:
        # Two servers of one install on one host share its instance folder.
        bases = [
            first.enter_context(gunicorn(url, tmp_path, workers=1, name="first", env=env, tolerate=benign)),
            second.enter_context(gunicorn(url, tmp_path, workers=1, name="second", env=env, tolerate=benign)),
        ]
        sockets = [instance / f"gunicorn-{base.rsplit(':', 1)[1]}.ctl" for base in bases]
        for base, path in zip(bases, sockets, strict=True):
            wait_for(path.exists)
            assert stat.S_ISSOCK(path.stat().st_mode) and mode(path) == 0o600
            with ControlClient(str(path), timeout=5) as client:
                assert client.send_command("show config")["bind"] == [base.removeprefix("http://")]
        assert not (home / ".gunicorn").exists()

        time.sleep(1)  # as below: gunicorn's control server finishes closing the connections first
        first.close()
        assert not sockets[0].exists()
        with ControlClient(str(sockets[1]), timeout=5) as client:
            assert client.send_command("show config")["bind"] == [bases[1].removeprefix("http://")]
        # gunicorn 27 stopped while its control server still closes a client's connection logs an
        # asyncio CancelledError traceback (its own shutdown race): let it finish closing first.
        time.sleep(1)


@pytest.mark.slow
def test_an_instance_folder_too_deep_for_a_unix_socket_serves_without_a_control_socket(tmp_path: Path) -> None:
    workdir = tmp_path / ("deep" * 20)
    workdir.mkdir()
    home = tmp_path / "home"
    with gunicorn(f"sqlite:///{workdir / 'leadcrm.sqlite3'}", workdir, workers=1, env={"HOME": str(home)}):
        pass  # it serves (and logs no error)
    assert "control socket off: its path would be too long" in (workdir / "gunicorn.log").read_text()
    assert not list((workdir / "instance").glob("*.ctl")) and not home.exists()


@pytest.mark.slow
def test_access_log_records_paths_without_query_strings(tmp_path: Path, instance: Path) -> None:
    """Searches carry customers' phone numbers, e-mails and names."""
    url = f"sqlite:///{tmp_path / 'leadcrm.sqlite3'}"
    with gunicorn(url, tmp_path, workers=1, env={"ACCESS_LOG": "-"}) as base:
        api = api_session(create_token(url))
        for term in ("+7 900 123-45-67", "ivan.petrov@example.com", "Иван Петров"):
            assert api.get(f"{base}/api/v1/leads/", params={"q": term}).status_code == 200
        # The search page, before logging in, is sent to the login page.
        answer = requests.get(f"{base}/leads/", params={"q": "Petrov"}, allow_redirects=False, timeout=10)
        assert answer.status_code == 302
    log = (tmp_path / "gunicorn.log").read_text()
    for secret in ("q=", "123-45-67", "ivan.petrov", "example.com", "Petrov", "%D0%98", "Иван"):
        assert secret not in log, secret
    assert '"GET /api/v1/leads/ HTTP/1.1" 200' in log
    assert '"GET /leads/ HTTP/1.1" 302' in log


def operator_names(path: Path) -> list[str]:
    with sqlite3.connect(path) as copy:
        return [row[0] for row in copy.execute("SELECT name FROM operators ORDER BY id")]


def test_backup_writes_a_private_self_contained_copy_and_keeps_an_existing_file(
    backend, app: Flask, tmp_path: Path, usual_umask: None
) -> None:
    if backend.name != "sqlite":
        pytest.skip("SQLite's backup; PostgreSQL's refusal is tested below")
    runner = app.test_cli_runner()
    target = tmp_path / "backups" / "leadcrm.sqlite3"
    target.parent.mkdir()
    with app.app_context():
        add_operator("Anna")
        db.session.commit()

    result = runner.invoke(args=["leadcrm", "backup", str(target)])
    assert result.exit_code == 0, result.output
    assert f"Backed up to {target}" in result.output
    assert mode(target) == 0o600
    assert operator_names(target) == ["Anna"]
    with sqlite3.connect(target) as copy:
        assert copy.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    assert sorted(path.name for path in target.parent.iterdir()) == ["leadcrm.sqlite3"]

    with app.app_context():
        add_operator("Boris")
        db.session.commit()
    refused = runner.invoke(args=["leadcrm", "backup", str(target)])
    assert refused.exit_code == 1
    assert "exists; use --force to overwrite it" in refused.output
    assert operator_names(target) == ["Anna"]

    forced = runner.invoke(args=["leadcrm", "backup", "--force", str(target)])
    assert forced.exit_code == 0, forced.output
    assert operator_names(target) == ["Anna", "Boris"]
    assert mode(target) == 0o600

    nowhere = runner.invoke(args=["leadcrm", "backup", str(tmp_path / "missing" / "copy.sqlite3")])
    assert nowhere.exit_code == 1 and "no folder" in nowhere.output

    with app.app_context():
        database = db.engine.url.database
    assert database is not None  # a SQLite file
    itself = runner.invoke(args=["leadcrm", "backup", "--force", database])
    assert itself.exit_code == 1 and "is the database itself" in itself.output
    # Nor any of its files (a -wal replaced by a copy would corrupt it), nor a link or a device with --force.
    for companion in ("-wal", "-shm", "-writelock"):
        refused = runner.invoke(args=["leadcrm", "backup", "--force", database + companion])
        assert refused.exit_code == 1 and "one of its files" in refused.output, refused.output
    link = tmp_path / "backups" / "latest.sqlite3"
    link.symlink_to(target)
    linked = runner.invoke(args=["leadcrm", "backup", "--force", str(link)])
    assert linked.exit_code == 1 and "not a regular file" in linked.output and link.is_symlink()
    device = runner.invoke(args=["leadcrm", "backup", "--force", "/dev/null"])
    assert device.exit_code == 1 and "not a regular file" in device.output


def test_backup_on_postgresql_refuses_and_names_pg_dump(backend, app: Flask, tmp_path: Path) -> None:
    if backend.name != "postgresql":
        pytest.skip("PostgreSQL only")
    result = app.test_cli_runner().invoke(args=["leadcrm", "backup", str(tmp_path / "copy")])
    assert result.exit_code == 1
    assert "pg_dump --format=custom" in result.output and "pg_restore" in result.output
    assert not (tmp_path / "copy").exists()


@pytest.mark.slow
def test_backup_taken_while_serving_registrations_restores_every_acknowledged_contact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    live, restored = tmp_path / "live", tmp_path / "restored"
    live.mkdir()
    restored.mkdir()
    database = live / "instance" / "leadcrm.sqlite3"
    monkeypatch.setenv("LEADCRM_INSTANCE_PATH", str(live / "instance"))
    with gunicorn("", live, workers=2) as base:
        token = create_token(f"sqlite:///{database}")
        api = api_session(token)
        anna = api.post(f"{base}/api/v1/operators/", json={"name": "Anna", "max_active_leads": 10_000}).json()
        boris = api.post(f"{base}/api/v1/operators/", json={"name": "Boris", "max_active_leads": 5}).json()
        source = api.post(f"{base}/api/v1/sources/", json={"name": "web"}).json()
        weights = [{"operator_id": anna["id"], "weight": 1}, {"operator_id": boris["id"], "weight": 3}]
        assert api.post(f"{base}/api/v1/sources/{source['id']}/config", json=weights).status_code == 200

        acknowledged: list[tuple[float, int]] = []  # (when the 201 arrived, contact id)
        stop = threading.Event()
        failures: list[str] = []

        def register(worker: int) -> None:
            session = api_session(token)
            n = 0
            while not stop.is_set():
                n += 1
                body = {"source_id": source["id"], "phone": f"+7901{worker:02d}{n:05d}"}
                answer = session.post(f"{base}/api/v1/contacts/register", json=body, timeout=30)
                if answer.status_code != 201:
                    failures.append(answer.text)
                    return
                acknowledged.append((time.monotonic(), answer.json()["contact"]["id"]))

        def close_some() -> None:
            session = api_session(token)
            rng = random.Random(7)
            while not stop.is_set():
                if acknowledged:
                    _, contact_id = rng.choice(acknowledged)
                    answer = session.post(f"{base}/api/v1/contacts/{contact_id}/close", timeout=30)
                    if answer.status_code != 200:
                        failures.append(answer.text)
                        return
                time.sleep(0.01)

        threads = [threading.Thread(target=register, args=(i,)) for i in range(3)]
        threads.append(threading.Thread(target=close_some))
        for thread in threads:
            thread.start()
        try:
            wait_for(lambda: len(acknowledged) >= 150, seconds=60)
            started = time.monotonic()
            before = {contact_id for when, contact_id in list(acknowledged) if when < started}
            backup = subprocess.run(
                [sys.executable, "-m", "flask", "--app", "app", "leadcrm", "backup", str(tmp_path / "backup.sqlite3")],
                cwd=PROJECT_ROOT,
                env={**os.environ, "DATABASE_URL": ""},
                capture_output=True,
                text=True,
                timeout=60,
            )
            finished = time.monotonic()
            # More than the registrations that can be in flight at once: some are surely not in the copy.
            wait_for(lambda: sum(when > finished for when, _ in list(acknowledged)) >= 30, seconds=30)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        assert backup.returncode == 0, backup.stderr
        assert not failures, failures[:3]
        assert mode(tmp_path / "backup.sqlite3") == 0o600

    # Restore as the README says: the app stopped, the copy in place, no stale -wal/-shm, start.
    (restored / "instance").mkdir(mode=0o700)
    shutil.copy(tmp_path / "backup.sqlite3", restored / "instance" / "leadcrm.sqlite3")
    monkeypatch.setenv("LEADCRM_INSTANCE_PATH", str(restored / "instance"))
    with gunicorn("", restored, workers=1) as base:
        api = api_session(token)  # the token is in the copy too
        contacts: dict[int, dict] = {}
        page = 1
        while True:
            answer = api.get(f"{base}/api/v1/contacts/", params={"per_page": 500, "page": page}).json()
            contacts.update((item["id"], item) for item in answer["items"])
            if page * 500 >= answer["total"]:
                break
            page += 1
        status = api.get(f"{base}/api/v1/distribution_status/").json()

    assert before <= set(contacts), f"missing from the backup: {sorted(before - set(contacts))[:10]}"
    assert len(contacts) < len(acknowledged), "registrations went on after the backup"
    assert f"{len(contacts)} contacts" in backup.stdout
    # Counters exact in the copy: load = open contacts, assigned_total = contacts given.
    for operator in status["operators"]:
        mine = [c for c in contacts.values() if c["operator_id"] == operator["operator_id"]]
        assert operator["active_leads"] == sum(c["status"] == "open" for c in mine), operator
    (shares,) = status["sources"]
    for share in shares["operators"]:
        given = sum(c["operator_id"] == share["operator_id"] for c in contacts.values())
        assert share["assigned_total"] == given, share
    waiting = sum(c["operator_id"] is None and c["status"] == "open" for c in contacts.values())
    assert status["unassigned_open"] == waiting
