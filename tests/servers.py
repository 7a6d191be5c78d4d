"""Start the real app under gunicorn for tests that need real processes."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from leadcrm import accounts, create_app
from leadcrm.extensions import db
from leadcrm.vocabulary import TokenScope

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def gunicorn(
    database_url: str,
    workdir: Path,
    *,
    workers: int = 4,
    name: str = "gunicorn",
    env: dict[str, str] | None = None,
    tolerate: tuple[str, ...] = (),
) -> Iterator[str]:
    """Serve app:app with gunicorn.conf.py (migrations run in its master); yields the base URL.

    At the end the log must hold no error: no ``[ERROR]`` line and no traceback, except tracebacks
    that contain one of ``tolerate`` (a known fault of gunicorn's own, named where it is passed).
    """
    port = free_port()
    log_path = workdir / f"{name}.log"
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WORKERS": str(workers),
        "ACCESS_LOG": "",
        "LEADCRM_INSTANCE_PATH": str(workdir / "instance"),
        **(env or {}),
    }
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "app:app"],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if requests.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    errors = logged_errors(log_path.read_text(), tolerate)
    assert not errors, f"the server logged errors, see {log_path}:\n" + "\n".join(errors[:20])


class WorkerProcess:
    """A real ``flask leadcrm worker`` process (see ``worker``); ``start`` runs it again after it ended.

    Every start appends to the same log, ``<workdir>/<name>.log``.
    """

    def __init__(self, database_url: str, workdir: Path, *, name: str, env: dict[str, str]) -> None:
        self.log_path = workdir / f"{name}.log"
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "LEADCRM_INSTANCE_PATH": str(workdir / "instance"),
            "LEADCRM_WORKER_TICK": "0.5",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, *, wait: bool = True) -> "WorkerProcess":
        """Start the process; with ``wait``, return once its loop runs (it logged "started")."""
        assert self.process is None or self.process.poll() is not None, "already running"
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "flask", "--app", "app", "leadcrm", "worker"],
                cwd=PROJECT_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1
        if wait:
            self.wait_for_log(r"worker \S+ started", since=offset)
        return self

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def wait_for_log(self, pattern: str, *, since: int = 0, timeout: float = 30) -> re.Match[str]:
        """Wait until the log (from byte ``since``) matches ``pattern``; fails if the process ends first."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.log()[since:])
            if found:
                return found
            if self.process.poll() is not None:
                raise RuntimeError(f"the worker exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the worker's log never matched {pattern!r}:\n{self.log()[-3000:]}")
            time.sleep(0.05)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def terminate(self, timeout: float = 20) -> float:
        """SIGTERM, then wait for the exit (SIGKILL after ``timeout``); how many seconds it took to exit."""
        assert self.process is not None
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise
        return time.monotonic() - started

    def kill(self) -> None:
        """SIGKILL: the process ends wherever it is, in the middle of a transaction or not."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def errors(self, tolerate: tuple[str, ...] = ()) -> list[str]:
        """The log's ERROR and CRITICAL lines and tracebacks, but tracebacks holding a ``tolerate`` text."""
        lines = [line for line in self.log().splitlines() if re.search(r" (ERROR|CRITICAL) ", line)]
        return lines + logged_errors(self.log(), tolerate)


@contextmanager
def worker(
    database_url: str,
    workdir: Path,
    *,
    name: str = "worker",
    env: dict[str, str] | None = None,
    wait: bool = True,
    tolerate: tuple[str, ...] = (),
) -> Iterator[WorkerProcess]:
    """Run ``flask leadcrm worker`` on the database (tick 0.5 s unless ``env`` says otherwise); yields it
    running. At the end it is stopped (SIGTERM) and its log must hold no error and no traceback."""
    process = WorkerProcess(database_url, workdir, name=name, env=env or {})
    process.start(wait=wait)
    try:
        yield process
    finally:
        if process.running:
            process.terminate()
    errors = process.errors(tolerate)
    assert not errors, f"the worker logged errors, see {process.log_path}:\n" + "\n".join(errors[:20])


def logged_errors(log: str, tolerate: tuple[str, ...] = ()) -> list[str]:
    """A server log's [ERROR] lines and tracebacks (their first lines), but tracebacks holding a ``tolerate`` text."""
    lines = log.splitlines()
    errors = []
    for i, line in enumerate(lines):
        if "[ERROR]" in line:
            errors.append(line)
        elif "Traceback" in line:
            end = next((j for j in range(i + 1, len(lines)) if lines[j] and not lines[j][0].isspace()), len(lines))
            block = "\n".join(lines[i : end + 1])
            if not any(text in block for text in tolerate):
                errors.append(line)
    return errors


def create_token(database_url: str, scope: str = TokenScope.FULL, name: str = "tests") -> str:
    """An API token stored straight into a served (migrated) database; returns its secret."""
    app = create_app({"SQLALCHEMY_DATABASE_URI": database_url})
    with app.app_context():
        secret = accounts.create_token(db.session(), name=name, scope=scope, created_by=None).secret
        db.session.commit()
        db.session.remove()
        db.engine.dispose()
    return secret


def api_session(token: str) -> requests.Session:
    """A requests session that authenticates as an integration does."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    return session
