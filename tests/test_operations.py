"""Running leadcrm: file permissions, gunicorn's control socket and access log, backup and restore.

These start the real app under gunicorn (tests/servers.py) on SQLite files.
"""

import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import requests
from gunicorn.ctl.client import ControlClient

from leadcrm import create_app
from leadcrm.extensions import db
from tests.servers import api_session, create_token, gunicorn


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
    with ExitStack() as first, ExitStack() as second:
        # Two servers of one install on one host share its instance folder.
        bases = [
            first.enter_context(gunicorn(url, tmp_path, workers=1, name="first", env=env)),
            second.enter_context(gunicorn(url, tmp_path, workers=1, name="second", env=env)),
        ]
        sockets = [instance / f"gunicorn-{base.rsplit(':', 1)[1]}.ctl" for base in bases]
        for base, path in zip(bases, sockets, strict=True):
            wait_for(path.exists)
            assert stat.S_ISSOCK(path.stat().st_mode) and mode(path) == 0o600
            with ControlClient(str(path), timeout=5) as client:
                assert client.send_command("show config")["bind"] == [base.removeprefix("http://")]
        assert not (home / ".gunicorn").exists()

        first.close()
        assert not sockets[0].exists()
        with ControlClient(str(sockets[1]), timeout=5) as client:
            assert client.send_command("show config")["bind"] == [bases[1].removeprefix("http://")]


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
    for secret in ("q=", "900", "petrov", "Petrov", "%D0%98", "Иван"):
        assert secret not in log, secret
    assert '"GET /api/v1/leads/ HTTP/1.1" 200' in log
    assert '"GET /leads/ HTTP/1.1" 302' in log
