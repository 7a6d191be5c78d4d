"""How leadcrm talks to its database engines.

SQLite: WAL so readers never wait for the writer, foreign keys on, a busy
timeout, and write transactions that take the write lock at BEGIN
(``BEGIN IMMEDIATE``). A deferred transaction that reads first and writes
later fails at once with "database is locked" when another process wrote in
between; taking the lock up front makes every writer wait its turn instead, so
each assignment decision is made and written under one lock.

Writers wait for that turn on a file lock beside the database (``flock``),
not in SQLite's busy handler, which sleeps in steps of up to 100 ms (measured:
p99 of 0.9 s at 8 concurrent clients without the file lock). The file lock is
polled without blocking, with sleeps that start at 50 us and grow to 2 ms, so
the next writer starts soon after the previous one commits, and a writer gives
up after the busy timeout (flock wait and SQLite's own wait together): a lock
held elsewhere (another program, a stuck process) answers 503 well before
gunicorn's worker timeout instead of hanging every worker.

PostgreSQL: nothing special here; the distribution engine's conditional
UPDATEs and row locks make decisions atomic at READ COMMITTED.
"""

import fcntl
import logging
import os
import select
import signal
import sqlite3
import stat
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, scoped_session
from sqlalchemy.util import immutabledict

# Execution option that marks a session's transactions as ones that will write:
# True waits for the write lock up to the busy timeout, NO_WAIT tries once.
WRITE_OPTION = "leadcrm_write"
# Files beside an SQLite database: SQLite's WAL, shared memory and rollback
# journal (which it creates with the database file's mode), and our write lock.
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal", "-writelock")

log = logging.getLogger(__name__)


def sqlite_file(url: str) -> str | None:
    """The path of the database file an SQLite URL names; None for memory databases and file: URIs."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    if parsed.database.startswith("file:"):
        return None
    return parsed.database


def keep_private(path: str) -> None:
    """Take away group and other permissions from ``path``, if it exists and has any."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return
    if mode & 0o077:
        try:
            os.chmod(path, mode & ~0o077)
        except PermissionError:
            log.warning("cannot make %s private (mode %o): not its owner", path, mode)


def prepare_sqlite_file(path: str) -> None:
    """Create the database file readable by its owner only, before SQLite opens it; tighten existing files.

    It holds customers' data and password hashes. SQLite itself would create
    it 0644 (less the umask) and gives its -wal and -shm the main file's mode,
    so an empty 0600 file made first keeps all of them private.
    """
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    except FileNotFoundError:
        return  # no such folder: SQLite says so when it opens the file
    for name in (path, *(path + suffix for suffix in SQLITE_COMPANIONS)):
        keep_private(name)


NO_WAIT = "no wait"

# Polling the file lock: the first sleep, and the longest.
_FIRST_SLEEP = 0.00005
_LONGEST_SLEEP = 0.002
# A writer that waited less than this for the file lock leaves SQLite's busy
# timeout as it is (not worth a statement); a longer wait is taken off it.
_SLACK = 0.1
# No write transaction of ours holds the lock this long. Each writer that
# takes the file lock writes the time into the lock file; a waiter goes on
# waiting while the lock changes hands (a queue that moves), and gives up with
# a 503 once it has watched one holder keep it this long: something is stuck
# (a process stopped while writing, or SQLite's own lock held elsewhere, which
# that holder alone waits out in SQLite's busy handler). So a stall ties up one
# sync worker, not all of them, and reads and /healthz keep a worker.
_STALL = 1.0


def write_lock_busy(waited: float) -> sa.exc.OperationalError:
    """The error of a writer that gave up waiting for the write lock (the API answers 503)."""
    orig = sqlite3.OperationalError(f"database is locked (waited {waited:.1f} s for the write lock)")
    return sa.exc.OperationalError("BEGIN IMMEDIATE", None, orig)


class _Deadline(Exception):
    """Raised by the timer signal into a blocking flock."""


def _raise_deadline(_signum: int, _frame: Any) -> None:
    raise _Deadline


@contextmanager
def _deadline_alarm(seconds: float) -> Iterator[None]:
    """Interrupt the ``with`` body with ``_Deadline`` after ``seconds`` (main thread only).

    The timer fires once; whenever it does, ``_Deadline`` is raised inside
    this block and never later (the caller suppresses it around the block).
    """
    previous = signal.signal(signal.SIGALRM, _raise_deadline)
    try:
        try:
            signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)


class UndeclaredWrite(RuntimeError):
    """A request wrote in a transaction it had not declared as a write (``begin_write``): a bug in its view."""

    def __init__(self, endpoint: str | None = None) -> None:
        super().__init__(f"{endpoint or 'a request'} wrote without begin_write(): its transaction was read-only")


class SQLiteConnection(sqlite3.Connection):
    """A pysqlite connection whose write transactions queue on an flock beside the database file.

    The busy timeout (``timeout``) bounds the whole wait for the write lock:
    the flock first, then SQLite's busy handler gets what is left of it.
    """

    def __init__(self, database: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(database, *args, **kwargs)
        memory = database in ("", ":memory:") or str(database).startswith("file::memory:")
        # Opened once per connection; each write transaction only locks and unlocks it.
        self._lock_fd = None if memory else os.open(f"{database}-writelock", os.O_RDWR | os.O_CREAT, 0o600)
        self._locked = False
        self.busy_timeout = float(kwargs.get("timeout", 5.0))
        self._busy_ms = round(self.busy_timeout * 1000)  # SQLite's busy timeout as now set
        # Rows changed on this connection when its read-only transaction began (None: not read-only).
        self._changes_at_begin: int | None = None

    def expect_no_writes(self, read_only: bool) -> None:
        """Make the transaction beginning now refuse to commit if it changed any row.

        A row count kept by SQLite itself, read twice: PRAGMA query_only would
        refuse the write itself, but each change of it makes SQLite prepare
        every statement again (measured: +0.3 ms of CPU per registration).
        """
        self._changes_at_begin = self.total_changes if read_only else None

    def lock_for_write(self, wait: bool = True) -> None:
        """Take the file lock (waiting at most the busy timeout, or not at all), then set
        SQLite's busy timeout to what is left; raises ``write_lock_busy`` on giving up."""
        if self._locked:
            return
        started = time.monotonic()
        if self._lock_fd is not None:
            self._wait_for_file_lock(started, self.busy_timeout if wait else 0.0)
            self._locked = True
            os.pwrite(self._lock_fd, struct.pack("d", time.time()), 0)  # for the writers waiting behind this one
        waited = time.monotonic() - started
        left = 0.0 if not wait else self.busy_timeout if waited < _SLACK else self.busy_timeout - waited
        busy_ms = max(0, round(left * 1000))
        if busy_ms != self._busy_ms:
            self.execute(f"PRAGMA busy_timeout = {busy_ms}")
            self._busy_ms = busy_ms

    @property
    def _file_lock(self) -> int:
        """The lock file's descriptor, for the methods below: only a file database's open connection locks."""
        assert self._lock_fd is not None
        return self._lock_fd

    def _wait_for_file_lock(self, started: float, patience: float) -> None:
        if self._try_file_lock():
            return
        holder, watched_since = self._holder(), time.monotonic()
        while time.monotonic() - started < patience:
            if self._wait_until(started, min(patience, watched_since + _STALL - started)):
                return
            if (now_holder := self._holder()) == holder:
                break  # one holder all the while this writer watched: stuck
            holder, watched_since = now_holder, time.monotonic()  # the lock changed hands: the queue moves
        raise write_lock_busy(time.monotonic() - started)

    def _holder(self) -> float:
        """Which take of the file lock holds it now: the time its writer took it, as it wrote it down."""
        mark = os.pread(self._file_lock, 8, 0)
        return struct.unpack("d", mark)[0] if len(mark) == 8 else 0.0

    def _wait_until(self, started: float, patience: float) -> bool:
        """Wait for the file lock until ``patience`` after ``started``; True once it is taken."""
        if threading.current_thread() is threading.main_thread():
            # A sync worker's request: block in flock, woken by the kernel the
            # moment the holder lets go, and by a timer signal at the deadline.
            with suppress(_Deadline), _deadline_alarm(patience - (time.monotonic() - started)):
                fcntl.flock(self._file_lock, fcntl.LOCK_EX)
            # Locked, or the deadline came (perhaps just as the lock did): one
            # more try tells which (flock again on a lock held is a no-op).
            return self._try_file_lock()
        # No signals outside the main thread: poll, sleeping a little longer each time.
        sleep = _FIRST_SLEEP
        while (left := patience - (time.monotonic() - started)) > 0:
            time.sleep(min(sleep, left))
            sleep = min(sleep * 2, _LONGEST_SLEEP)
            if self._try_file_lock():
                return True
        return False

    def _try_file_lock(self) -> bool:
        try:
            fcntl.flock(self._file_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(self) -> None:
        if self._locked:
            self._locked = False
            fcntl.flock(self._file_lock, fcntl.LOCK_UN)

    def commit(self) -> None:
        try:
            if self._changes_at_begin is not None and self.total_changes != self._changes_at_begin:
                self._changes_at_begin = None
                super().rollback()  # nothing it wrote is kept (SQLAlchemy will not roll back a failed commit)
                raise UndeclaredWrite()
            super().commit()
        finally:
            self._unlock()

    def rollback(self) -> None:
        self._changes_at_begin = None
        try:
            super().rollback()
        finally:
            self._unlock()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._unlock()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None


def sqlite_connect_args(busy_timeout: float) -> dict[str, Any]:
    return {"factory": SQLiteConnection, "timeout": busy_timeout}


def configure_engine(engine: Engine) -> None:
    """Install the per-connection settings for ``engine``'s dialect, and the refusal of undeclared writes."""
    if engine.dialect.name == "postgresql":
        sa.event.listen(engine, "checkout", _refuse_closed_by_server)

        @sa.event.listens_for(engine, "begin")
        def _on_postgresql_begin(connection: sa.Connection) -> None:
            # psycopg then sends BEGIN READ ONLY instead of BEGIN: no round trip of its own.
            read_only = connection.get_execution_options().get(WRITE_OPTION) is False
            dbapi_connection = connection.connection.dbapi_connection
            if dbapi_connection is not None and dbapi_connection.read_only != read_only:
                dbapi_connection.read_only = read_only

        return
    if engine.dialect.name != "sqlite":
        return

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below issue BEGIN itself.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        write = connection.get_execution_options().get(WRITE_OPTION)
        dbapi_connection = connection.connection.dbapi_connection
        if isinstance(dbapi_connection, SQLiteConnection):
            dbapi_connection.expect_no_writes(write is False)
        if write:
            if isinstance(dbapi_connection, SQLiteConnection):
                dbapi_connection.lock_for_write(wait=write != NO_WAIT)
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            connection.exec_driver_sql("BEGIN")


def _refuse_closed_by_server(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """Hand out no pooled PostgreSQL connection that the server has closed, without a round trip.

    An idle connection has nothing to read; one the server terminated or
    dropped on a restart has its last message or the end of the stream
    waiting in the socket. Seeing that costs a poll(), where SQLAlchemy's
    pre-ping costs a round trip on every checkout (a registration's cost on
    PostgreSQL is mostly round trips). The pool opens a new connection instead.
    A connection lost without a word (a network cut) is caught when used:
    that request gets a 503 and its connection is replaced.
    """
    if dbapi_connection.closed:
        raise sa.exc.DisconnectionError("connection closed")
    try:
        readable, _, _ = select.select([dbapi_connection.fileno()], [], [], 0)
    except (OSError, ValueError) as exc:
        raise sa.exc.DisconnectionError(f"connection unusable: {exc}") from exc
    if readable:
        raise sa.exc.DisconnectionError("the server closed the connection")


# PostgreSQL's SQLSTATE for a write in a READ ONLY transaction.
READ_ONLY_SQL_TRANSACTION = "25006"


def write_refused_as_undeclared(exc: sa.exc.DBAPIError) -> bool:
    """Is ``exc`` PostgreSQL refusing a write in a read-only request transaction (see ``reads_only``)?

    (SQLite's refusal, at the commit, is an ``UndeclaredWrite`` itself.)
    """
    return getattr(exc.orig, "sqlstate", None) == READ_ONLY_SQL_TRANSACTION


def reads_only(session: Session | scoped_session[Any]) -> None:
    """Make ``session``'s transactions read-only until ``begin_write()``: the database refuses any write.

    The app calls it at the start of every request, so a view that writes
    without declaring it fails instead of writing without the write lock:
    PostgreSQL at its first write (BEGIN READ ONLY), SQLite at its commit
    (``SQLiteConnection.expect_no_writes``), with ``UndeclaredWrite``.
    Commands and tests outside a request are not affected (``end_request``).
    """
    real = session() if isinstance(session, scoped_session) else session
    real.execution_options = real.execution_options.union({WRITE_OPTION: False})


def end_request(session: Session | scoped_session[Any]) -> None:
    """Forget what the request declared: the session may outlive it (an app context a test holds)."""
    real = session() if isinstance(session, scoped_session) else session
    if WRITE_OPTION in real.execution_options:
        real.execution_options = immutabledict(
            {name: value for name, value in real.execution_options.items() if name != WRITE_OPTION}
        )


def begin_write(session: Session | scoped_session[Any]) -> None:
    """Declare the unit of work a write: its next transaction takes the write lock when it begins.

    A view calls it once it has parsed and checked its input, just before the
    domain call, so that invalid input never waits for the lock or holds it.
    A read-only transaction open now (a lookup's, a form's choices) is ended
    first, and the objects it loaded are expired: what the write decides on
    is read again under the lock. Changes not yet written mean something
    wrote before declaring it: that raises. On SQLite the lock is taken by
    ``BEGIN IMMEDIATE``; elsewhere the transaction is simply not read-only.
    """
    real = session() if isinstance(session, scoped_session) else session
    if real.new or real.dirty or real.deleted:
        raise RuntimeError("begin_write(): the session holds changes made before the write was declared")
    if real.in_transaction():
        real.rollback()  # it only read; rolling back also expires what it loaded
    real.execution_options = real.execution_options.union({WRITE_OPTION: True})


@contextmanager
def unique_or(session: Session, error: Exception) -> Iterator[None]:
    """Make the changes of the ``with`` body; if a unique constraint refuses them, raise ``error``.

    The changes are flushed in a savepoint, so on refusal they are undone and
    the surrounding transaction stays usable. Checking first with a SELECT is
    not enough: two requests can both see a name free; the constraint decides.
    """
    try:
        with session.begin_nested():
            yield
            session.flush()
    except sa.exc.IntegrityError:
        raise error from None


def end_session(session: scoped_session[Any], logger: logging.Logger) -> None:
    """End the request's session (its teardown); never raises.

    The answer is built by now: a connection that died since the last
    statement (the server restarted or terminated it) must not turn it into
    a 500 while the rollback tries to reach the server. The connection is
    thrown away and the pool opens a new one for the next request.
    """
    try:
        session.remove()
    except sa.exc.DBAPIError as exc:
        logger.warning("database connection lost at the end of a request: %s", exc.orig)
        try:
            session().invalidate()
        except sa.exc.DBAPIError:
            pass  # invalidating closes the driver connection; it is gone either way
        session.registry.clear()
