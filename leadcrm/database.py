"""How leadcrm talks to its database engines.

SQLite: WAL so readers never wait for the writer, foreign keys on, a busy
timeout, and write transactions that take the write lock at BEGIN
(``BEGIN IMMEDIATE``). A deferred transaction that reads first and writes
later fails at once with "database is locked" when another process wrote in
between; taking the lock up front makes every writer queue on the busy timeout
instead, so each assignment decision is made and written under one lock.

PostgreSQL: nothing special here; the distribution engine's conditional
UPDATEs and row locks make decisions atomic at READ COMMITTED.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

# Execution option that marks a session's transaction as one that will write.
WRITE_OPTION = "leadcrm_write"


def configure_engine(engine: Engine, busy_timeout: float) -> None:
    """Install the per-connection settings for ``engine``'s dialect."""
    if engine.dialect.name != "sqlite":
        return

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below issue BEGIN itself.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        if connection.get_execution_options().get(WRITE_OPTION):
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            connection.exec_driver_sql("BEGIN")


def begin_write(session: Session) -> None:
    """Start ``session``'s transaction as a write transaction.

    Call it before the first query of a unit of work that writes. On SQLite it
    takes the write lock now; elsewhere it only opens the transaction.
    (SQLAlchemy warns if the session had already started reading.)
    """
    session.connection(execution_options={WRITE_OPTION: True})


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
