"""gunicorn settings for leadcrm (`gunicorn app:app` reads this file)."""

import multiprocessing
import os

_port = os.environ.get("PORT", "8000")
bind = f"{os.environ.get('HOST', '127.0.0.1')}:{_port}"
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
# The path without its query string (%(U)s, not the request line %(r)s):
# searches carry customers' phone numbers, e-mails and names in ?q=.
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(M)sms'
errorlog = "-"
# gunicorn would believe X-Forwarded-Proto from any local process; leave that
# to the app, which trusts exactly LEADCRM_PROXY_COUNT proxies (ProxyFix).
forwarded_allow_ips = ""
# gunicorn's control socket (for gunicornc) defaults to one path per user
# ($XDG_RUNTIME_DIR/gunicorn.ctl or ~/.gunicorn/gunicorn.ctl): every instance
# binds the same one, the last started takes it over, the first stopped
# deletes it. Each instance keeps its own in its instance folder (0700),
# named by its port, since servers on one host may share that folder.
# The instance folder as leadcrm.config.instance_path() finds it (this file is
# read before the project is importable).
_here = os.path.dirname(os.path.abspath(__file__))
_instance = os.environ.get("LEADCRM_INSTANCE_PATH") or os.path.join(_here, "instance")
control_socket = os.path.join(_instance, f"gunicorn-{_port}.ctl")
control_socket_mode = 0o600
# A Unix socket's path holds at most 107 bytes: past that, no control socket
# (rather than an error in the log at every start).
control_socket_disable = len(os.fsencode(control_socket)) > 100


def on_starting(server):
    """Bring the schema up to date once, in the master, before any worker starts.

    On an empty database this also creates the first supervisor, "admin";
    contacts waiting while an operator has room are assigned.
    """
    from click import ClickException
    from flask_migrate import upgrade
    from sqlalchemy.exc import OperationalError

    from leadcrm import create_app
    from leadcrm.cli import drain_backlog, ensure_first_admin
    from leadcrm.extensions import db

    if control_socket_disable:
        server.log.warning("control socket off: its path would be too long (%s)", control_socket)
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
        try:
            assigned = drain_backlog()
        except OperationalError as exc:
            # A busy database must not stop the start: the queue is drained by the next capacity change.
            server.log.warning("waiting contacts not drained at start (%s); run flask leadcrm drain", exc.orig)
        else:
            if assigned:
                server.log.info("Assigned %d waiting contact%s.", assigned, "" if assigned == 1 else "s")
        db.session.remove()
        db.engine.dispose()
