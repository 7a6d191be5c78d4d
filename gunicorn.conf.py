"""gunicorn settings for leadcrm (`gunicorn app:app` reads this file)."""

import multiprocessing
import os

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
# SQLite has one write lock: more processes than cores only queue on it and
# get descheduled while holding it (measured in bench/results.md: 2 workers
# beat 5 on 2 cores). PostgreSQL overlaps database waits: the usual 2n+1.
_on_sqlite = (os.environ.get("DATABASE_URL") or "sqlite").startswith("sqlite")
_cpus = multiprocessing.cpu_count()
workers = int(os.environ.get("WORKERS") or (_cpus if _on_sqlite else 2 * _cpus + 1))
# Sync workers: each request is short and database-bound.
worker_class = "sync"
timeout = 30
graceful_timeout = 10
# Not preloaded: every worker builds its own app and database engine after
# the fork, so no connection or pool is ever shared between processes.
preload_app = False
# ACCESS_LOG= (empty) turns the access log off, e.g. for benchmarks.
accesslog = os.environ.get("ACCESS_LOG", "-") or None
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms'
errorlog = "-"


def on_starting(server):
    """Bring the schema up to date once, in the master, before any worker starts.

    On an empty database this also creates the first supervisor, "admin";
    contacts waiting while an operator has room are assigned.
    """
    from click import ClickException
    from flask_migrate import upgrade

    from leadcrm import create_app
    from leadcrm.cli import drain_backlog, ensure_first_admin
    from leadcrm.extensions import db

    app = create_app()
    with app.app_context():
        upgrade()
        try:
            ensure_first_admin(server.log.warning)
        except ClickException as exc:
            server.log.error("cannot start: %s", exc.message)
            raise SystemExit(1) from None
        # Contacts that waited while an operator had room (left so by an older
        # version, or by hand) get one now rather than at the next capacity change.
        assigned = drain_backlog()
        if assigned:
            server.log.info("Assigned %d waiting contact%s.", assigned, "" if assigned == 1 else "s")
        db.session.remove()
        db.engine.dispose()
