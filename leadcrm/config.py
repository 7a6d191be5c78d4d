"""Configuration read from the environment, with safe defaults."""

import os

from leadcrm.vocabulary import OFFER_TIMEOUT_MIN

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def instance_path() -> str:
    """The instance folder: the default SQLite file, the secret key, gunicorn's control socket."""
    return os.environ.get("LEADCRM_INSTANCE_PATH") or os.path.join(PROJECT_ROOT, "instance")


class Config:
    # Empty means: an SQLite file in the instance folder (set in create_app).
    SQLALCHEMY_DATABASE_URI = os.environ.get("DATABASE_URL", "")
    # Region used to read phone numbers written without a country code.
    LEADCRM_PHONE_REGION = os.environ.get("LEADCRM_PHONE_REGION", "RU")
    # Seconds a writer waits for SQLite's write lock (its turn on the file lock
    # and SQLite's own wait together) before answering 503: well below
    # gunicorn's worker timeout (30 s), so a lock held elsewhere never gets
    # workers killed.
    LEADCRM_SQLITE_BUSY_TIMEOUT = float(os.environ.get("LEADCRM_SQLITE_BUSY_TIMEOUT", "5"))
    # Signs sessions, CSRF tokens and device cookies. Empty: a random key kept in the instance folder.
    SECRET_KEY = os.environ.get("SECRET_KEY", "")
    # CSRF tokens do not expire while the page stays open (intake works all day).
    WTF_CSRF_TIME_LIMIT = None
    # Bodies larger than this are refused with 413 before they are parsed.
    MAX_CONTENT_LENGTH = 1024 * 1024
    # The login cookie: not readable by scripts, not sent on cross-site posts.
    # It is also marked Secure whenever a request arrives over HTTPS.
    SESSION_COOKIE_HTTPONLY = True
    SESSION_COOKIE_SAMESITE = "Lax"
    SESSION_COOKIE_SECURE = os.environ.get("LEADCRM_SECURE_COOKIES", "") == "1"
    # Number of reverse proxies in front of the app whose X-Forwarded-* headers
    # to trust (client address for login throttling, HTTPS for cookies). 0: none.
    LEADCRM_PROXY_COUNT = int(os.environ.get("LEADCRM_PROXY_COUNT") or 0)
    # Password for the first supervisor, "admin", created on an empty database.
    # Unset: a random password is printed once in the log.
    LEADCRM_ADMIN_PASSWORD = os.environ.get("LEADCRM_ADMIN_PASSWORD", "")
    # Waiting contacts assigned at most per transaction when capacity appears
    # (the rest by the next batches: later capacity events, `flask leadcrm drain`).
    LEADCRM_DRAIN_BATCH = int(os.environ.get("LEADCRM_DRAIN_BATCH") or 200)
    # The organisation's time zone until a supervisor sets one on the settings page (IANA name).
    LEADCRM_TIMEZONE = os.environ.get("LEADCRM_TIMEZONE") or "UTC"
    # The worker's longest sleep (seconds): it acts at most this long after a step becomes due
    # that it did not know of (an offer made a moment ago), and beats its heartbeat this often.
    LEADCRM_WORKER_TICK = float(os.environ.get("LEADCRM_WORKER_TICK") or 10)
    # The shortest offer timeout a source may have (seconds); tests shorten it.
    LEADCRM_OFFER_TIMEOUT_MIN = int(os.environ.get("LEADCRM_OFFER_TIMEOUT_MIN") or OFFER_TIMEOUT_MIN)
    # Events out: kept this many days (the worker forgets older ones); the worker looks for new ones this
    # often (seconds). Webhooks: the first retry after about RETRY_BASE seconds, the gaps doubling up to
    # RETRY_MAX; a delivery is retried (and an endpoint failing throughout is kept on) for RETRY_FOR
    # seconds. SENDERS: how many endpoints are sent to at once. ALLOW_PRIVATE=1: webhooks may go to
    # loopback, link-local and private addresses (a LAN install; the tests).
    LEADCRM_EVENTS_KEEP_DAYS = float(os.environ.get("LEADCRM_EVENTS_KEEP_DAYS") or 30)
    LEADCRM_EVENTS_POLL = float(os.environ.get("LEADCRM_EVENTS_POLL") or 1)
    LEADCRM_WEBHOOK_RETRY_BASE = float(os.environ.get("LEADCRM_WEBHOOK_RETRY_BASE") or 5)
    LEADCRM_WEBHOOK_RETRY_MAX = float(os.environ.get("LEADCRM_WEBHOOK_RETRY_MAX") or 3600)
    LEADCRM_WEBHOOK_RETRY_FOR = float(os.environ.get("LEADCRM_WEBHOOK_RETRY_FOR") or 24 * 3600)
    LEADCRM_WEBHOOK_SENDERS = int(os.environ.get("LEADCRM_WEBHOOK_SENDERS") or 16)
    LEADCRM_WEBHOOKS_ALLOW_PRIVATE = os.environ.get("LEADCRM_WEBHOOKS_ALLOW_PRIVATE", "") == "1"
