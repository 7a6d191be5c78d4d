"""Online backups of the SQLite database, taken while the app keeps serving.

Copying the database file of a running install is not a backup: what was
committed lately may still be only in the -wal file (a copy made so missed 49
contacts), and a copy made during a checkpoint can be torn. SQLite's backup
API reads every page of one snapshot, the WAL included, without stopping the
writers. PostgreSQL has pg_dump for the same.
"""

import os
import sqlite3
import stat
from dataclasses import dataclass

from sqlalchemy.engine import Engine

from leadcrm.database import SQLITE_COMPANIONS, sqlite_file

PG_DUMP_HINT = (
    "flask leadcrm backup copies SQLite databases; on PostgreSQL use pg_dump, "
    "for example: pg_dump --format=custom --file=leadcrm.dump 'postgresql://user@host/leadcrm' "
    "(and pg_restore to restore it; see the README, Operations)."
)


class BackupRefused(Exception):
    """The backup was not taken, for the reason given; nothing was written."""


@dataclass(frozen=True)
class Backup:
    path: str
    size: int
    contacts: int


def backup_sqlite(engine: Engine, target: str, *, overwrite: bool = False) -> Backup:
    """Write a consistent copy of the SQLite database ``engine`` opens to ``target``, readable by its owner only.

    The copy is one self-contained file (rollback journal mode, nothing in a
    -wal beside it), checked with ``PRAGMA quick_check``. It is written under
    a temporary name and then put in place, so ``target`` is either absent,
    the previous file, or the whole new copy. An existing ``target`` is kept
    unless ``overwrite``.
    """
    database = sqlite_file(engine.url.render_as_string(hide_password=False))
    if engine.dialect.name != "sqlite" or database is None:
        raise BackupRefused(PG_DUMP_HINT if engine.dialect.name == "postgresql" else "not an SQLite database file")
    target = os.path.abspath(target)
    live = os.path.abspath(database)
    if target in (live, *(live + suffix for suffix in SQLITE_COMPANIONS)):
        raise BackupRefused(f"{target} is the database itself or one of its files")
    if os.path.lexists(target):
        if os.path.exists(database) and os.path.exists(target) and os.path.samefile(target, database):
            raise BackupRefused(f"{target} is the database itself")
        if not overwrite:
            raise BackupRefused(f"{target} exists; use --force to overwrite it")
        if not stat.S_ISREG(os.lstat(target).st_mode):
            # --force replaces a file, never a link, a device (/dev/stdout) or a folder.
            raise BackupRefused(f"{target} is not a regular file; give the path of a file")
    folder = os.path.dirname(target)
    if not os.path.isdir(folder):
        raise BackupRefused(f"no folder {folder}")
    partial = os.path.join(folder, f".{os.path.basename(target)}.{os.getpid()}.partial")
    # Made 0600 before SQLite opens it: the copy holds what the database does.
    os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        contacts = _copy(engine, partial)
        if overwrite:
            os.replace(partial, target)
        else:
            try:
                os.link(partial, target)  # fails, rather than replaces, if it appeared meanwhile
            except FileExistsError:
                raise BackupRefused(f"{target} exists; use --force to overwrite it") from None
            os.unlink(partial)
    except BaseException:
        if os.path.exists(partial):
            os.unlink(partial)
        raise
    return Backup(path=target, size=os.path.getsize(target), contacts=contacts)


def _copy(engine: Engine, partial: str) -> int:
    source = engine.raw_connection()
    try:
        copy = sqlite3.connect(partial)
        try:
            # All pages in one step: one read snapshot, while writers go on (WAL).
            driver = source.driver_connection
            assert driver is not None  # checked out of the pool just now, so open
            driver.backup(copy)
            copy.execute("PRAGMA journal_mode = DELETE")
            (check,) = copy.execute("PRAGMA quick_check").fetchone()
            if check != "ok":
                raise BackupRefused(f"the copy failed its check: {check}")
            tables = {row[0] for row in copy.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
            return copy.execute("SELECT count(*) FROM contacts").fetchone()[0] if "contacts" in tables else 0
        finally:
            copy.close()
    finally:
        source.close()
