"""`flask leadcrm ...`: maintenance commands for cron, systemd timers and people."""

import logging
from collections.abc import Callable
from typing import NoReturn

import click
import sqlalchemy as sa
from flask import current_app
from flask.cli import AppGroup

from leadcrm import accounts, operators
from leadcrm.backup import BackupRefused, backup_sqlite
from leadcrm.database import begin_write
from leadcrm.distribution import drain_all
from leadcrm.errors import DomainError
from leadcrm.extensions import db
from leadcrm.idempotency import forget_expired
from leadcrm.leads import email_duplicates
from leadcrm.vocabulary import Role
from leadcrm.worker import Worker

cli = AppGroup("leadcrm", help="leadcrm maintenance and demo commands.")


def drain_backlog(batch: int | None = None) -> int:
    """Assign waiting contacts wherever an operator has room, batch after batch, until nothing more can be.

    Each batch (``LEADCRM_DRAIN_BATCH`` contacts at most) is its own short
    write transaction, committed before the next begins: on SQLite no batch
    holds the write lock for longer than one batch takes, and registrations
    run between batches. Returns how many contacts were assigned. Safe to run
    at any time, in any number of processes at once.
    """
    batch = batch or current_app.config["LEADCRM_DRAIN_BATCH"]
    total = 0
    while True:
        begin_write(db.session)
        try:
            assigned = drain_all(db.session(), limit=batch)
            db.session.commit()
        except Exception:
            db.session.rollback()
            raise
        total += assigned
        if assigned < batch:  # every queue is empty or has nobody with room
            return total


@cli.command("drain")
def drain() -> None:
    """Give waiting contacts an operator wherever one has room; forget expired Idempotency-Keys.

    Every change that frees capacity already assigns waiting contacts in its
    own transaction, one batch at most; this command assigns the rest of a
    long queue, one short transaction per batch, and is a safety net (for
    example after editing the database by hand). Safe to run at any time, as
    often as you like: from cron or a systemd timer, say hourly.
    """
    try:
        assigned = drain_backlog()
        begin_write(db.session)
        forgotten = forget_expired(db.session())
        db.session.commit()
    except sa.exc.OperationalError as exc:
        db.session.rollback()
        # What was committed batch by batch stays assigned; the rest waits for the next run.
        message = f"The database is busy or unreachable ({exc.orig}); run the command again."
        raise click.ClickException(message) from None
    click.echo(f"Assigned {assigned} waiting contact{'s' if assigned != 1 else ''}.")
    click.echo(f"Forgot {forgotten} expired idempotency key{'s' if forgotten != 1 else ''}.")


@cli.command("worker")
def worker() -> None:
    """Run the worker: shifts that start and end, offers not taken in time, long drains, expired keys.

    One long-running process; run one beside the app on every server
    (``make run`` starts it; see the README for a systemd unit). Stops after
    the step at hand on SIGTERM or Ctrl+C. ``LEADCRM_WORKER_TICK`` is its
    longest sleep in seconds (default 10).
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    running = Worker(current_app._get_current_object())  # type: ignore[attr-defined]  # the app, not its proxy
    running.stop_on_signals()
    running.run()


@cli.command("backup")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Overwrite PATH if it exists.")
def backup(path: str, force: bool) -> None:
    """Copy the SQLite database to PATH while the app keeps running (mode 0600).

    Uses SQLite's online backup: a consistent snapshot, including what is
    still in the -wal file. On PostgreSQL it refuses and names pg_dump.
    """
    try:
        copy = backup_sqlite(db.engine, path, overwrite=force)
    except BackupRefused as exc:
        raise click.ClickException(str(exc)) from None
    contacts = f"{copy.contacts} contact{'s' if copy.contacts != 1 else ''}"
    click.echo(f"Backed up to {copy.path}: {copy.size} bytes, {contacts}.")


@cli.command("email-duplicates")
def report_email_duplicates() -> None:
    """List leads whose e-mail addresses differ only in case, to decide what to do with them.

    Leads stored before addresses were matched whatever their case may be two
    for one customer (Ivan.Petrov@example.com and ivan.petrov@example.com).
    Nothing was merged: each keeps its contacts and identifiers. New
    registrations with any of a group's addresses find the lead marked "finds"
    (the oldest); the others are still found by their phone or external id.
    """
    groups = email_duplicates(db.session())
    db.session.rollback()  # only read
    if not groups:
        click.echo("No leads whose e-mail addresses differ only in case.")
        return
    for group in groups:
        found = f"lead {group.found.id}" if group.found else "no lead (a new registration creates one)"
        click.echo(f"{group.key}: new registrations find {found}")
        for lead, contacts in group.leads:
            mark = "finds" if group.found is not None and lead.id == group.found.id else "kept apart"
            count = f"{contacts} contact{'s' if contacts != 1 else ''}"
            click.echo(f"  lead {lead.id}\t{lead.email}\t{count}\t{mark}")
    click.echo(f"{len(groups)} address{'es' if len(groups) != 1 else ''} shared by more than one lead.")


users_cli = AppGroup("users", help="Manage user accounts (also on the Users page).")
cli.add_command(users_cli)


def _fail(exc: DomainError) -> NoReturn:
    """The error as one line: its message, then what its fields add (a field repeating it says nothing new)."""
    said = str(exc.message)
    details = [str(text) for text in exc.fields.values() if str(text).rstrip(".") not in said]
    raise click.ClickException(" ".join([said, *dict.fromkeys(details)]).strip())


@users_cli.command("create")
@click.argument("username")
@click.option("--role", type=click.Choice([role.value for role in Role]), default=Role.INTAKE.value, show_default=True)
@click.option("--operator", "operator_name", help="For --role operator: the operator it works as, by name or id.")
@click.password_option(help="Asked for when not given (read from stdin when it is not a terminal).")
def create_user(username: str, role: str, operator_name: str | None, password: str) -> None:
    """Add a user (an operator user with the operator it works as)."""
    begin_write(db.session)
    try:
        operator = operators.find_operator(db.session(), operator_name) if operator_name is not None else None
        user = accounts.create_user(
            db.session(),
            username=username,
            password=password,
            role=role,
            operator_id=operator.id if operator else None,
        )
    except DomainError as exc:
        _fail(exc)
    db.session.commit()
    linked = f", working as operator {operator.name!r} (#{operator.id})" if operator else ""
    click.echo(f"Created {user.role} {user.username!r}{linked}.")


@users_cli.command("set-password")
@click.argument("username")
@click.password_option(help="Asked for when not given (read from stdin when it is not a terminal).")
def set_password(username: str, password: str) -> None:
    """Give a user a new password (their open sessions end); also reactivates them."""
    try:
        password_hash = accounts.hash_password(password)  # before the write lock is taken
    except DomainError as exc:
        _fail(exc)
    begin_write(db.session)
    user = accounts.find_user(db.session(), username)
    if user is None:
        raise click.ClickException(f"No user {username!r}.")
    accounts.set_password_hash(db.session(), user, password_hash)
    user.is_active = True
    db.session.commit()
    click.echo(f"Password of {user.username!r} changed.")


@users_cli.command("list")
def list_users() -> None:
    """Show every user with role and state."""
    for user in accounts.list_users(db.session()):
        works_as = f"\toperator {user.operator.name!r} (#{user.operator.id})" if user.operator else ""
        click.echo(f"{user.username}\t{user.role}\t{'active' if user.is_active else 'inactive'}{works_as}")


def ensure_first_admin(log: Callable[[str], None]) -> None:
    """On an empty database create supervisor "admin" (LEADCRM_ADMIN_PASSWORD, or a random password logged once).

    A database with users is only read: every start does this, and a start
    must not wait for (or fail on) a write lock someone else holds.
    """
    has_users = accounts.has_users(db.session())
    db.session.commit()
    if has_users:
        return
    begin_write(db.session)
    try:
        generated = accounts.ensure_admin(db.session(), current_app.config["LEADCRM_ADMIN_PASSWORD"] or None)
    except DomainError as exc:
        db.session.rollback()
        raise click.ClickException(f"LEADCRM_ADMIN_PASSWORD: {exc.message}") from None
    db.session.commit()
    if generated:
        log(
            f"Created supervisor 'admin' with password: {generated}  "
            "(shown only now; log in and change it on the Your account page, /account)"
        )
