"""Running leadcrm: file permissions, gunicorn's control socket and access log, backup and restore.

These start the real app under gunicorn (tests/servers.py) on SQLite files.
"""

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from leadcrm import create_app
from leadcrm.extensions import db
from tests.servers import api_session, create_token, gunicorn


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


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
