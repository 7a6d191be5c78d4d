"""`flask leadcrm ...`: maintenance commands for cron, systemd timers and people."""

import click
from flask.cli import AppGroup

from leadcrm.database import begin_write
from leadcrm.distribution import drain_all
from leadcrm.extensions import db
from leadcrm.idempotency import forget_expired

cli = AppGroup("leadcrm", help="leadcrm maintenance and demo commands.")


@cli.command("drain")
def drain() -> None:
    """Give waiting contacts an operator wherever one has room; forget expired Idempotency-Keys.

    Every change that frees capacity already assigns waiting contacts in its
    own transaction; this sweep is a safety net (for example after editing the
    database by hand). Safe to run at any time, as often as you like: from cron
    or a systemd timer, say hourly.
    """
    begin_write(db.session)
    assigned = drain_all(db.session)
    forgotten = forget_expired(db.session)
    db.session.commit()
    click.echo(f"Assigned {assigned} waiting contact{'s' if assigned != 1 else ''}.")
    click.echo(f"Forgot {forgotten} expired idempotency key{'s' if forgotten != 1 else ''}.")
