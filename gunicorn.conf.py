"""gunicorn settings for leadcrm (`gunicorn app:app` reads this file)."""

import multiprocessing
import os

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WORKERS", multiprocessing.cpu_count() * 2 + 1))
# Sync workers: each request is short and database-bound.
worker_class = "sync"
timeout = 30
graceful_timeout = 10
keepalive = 5
# Not preloaded: every worker builds its own app and database engine after
# the fork, so no connection or pool is ever shared between processes.
preload_app = False
# ACCESS_LOG= (empty) turns the access log off, e.g. for benchmarks.
accesslog = os.environ.get("ACCESS_LOG", "-") or None
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms'
errorlog = "-"


def on_starting(server):  # noqa: ARG001 - gunicorn's hook signature
    """Bring the schema up to date once, in the master, before any worker starts."""
    from flask_migrate import upgrade

    from leadcrm import create_app
    from leadcrm.extensions import db

    app = create_app()
    with app.app_context():
        upgrade()
        db.engine.dispose()
