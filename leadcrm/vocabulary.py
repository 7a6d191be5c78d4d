"""The words and limits of the domain, declared once.

The models (columns and CHECK constraints), the engine, the API's schemas and
its OpenAPI document, the forms and the templates all read them from here, so
they cannot drift apart. This module imports nothing of ours: anything may
import it.

The enumerations are ``StrEnum``: a member *is* its stored string
(``ContactStatus.OPEN == "open"``), so values read from the database compare
equal to them and JSON carries them unchanged.
"""

from enum import StrEnum


class Strategy(StrEnum):
    """How a source picks among the operators that serve it."""

    RANDOM = "random"  # by weights, at random
    DETERMINISTIC = "deterministic"  # the operator furthest behind its weight share


class ContactStatus(StrEnum):
    OPEN = "open"
    CLOSED = "closed"


class EventReason(StrEnum):
    """Why a contact's assignment changed (ContactEvent.reason)."""

    REGISTERED = "registered"
    QUEUE = "queue"
    STICKY = "sticky"
    MANUAL = "manual"
    OVERRIDE = "override"
    CLOSED = "closed"
    REOPENED = "reopened"
    TIMEOUT = "timeout"  # an offer not taken in time: taken back and routed again


class Role(StrEnum):
    """What a user who logs in may do: supervisors everything, intake staff registering and reading,
    an operator user only its own operator's contacts (its inbox) and presence."""

    SUPERVISOR = "supervisor"
    INTAKE = "intake"
    OPERATOR = "operator"


class Presence(StrEnum):
    """Whether an operator is at work: ``available`` gets new contacts, ``away`` keeps what it has and gets none."""

    AVAILABLE = "available"
    AWAY = "away"


class OperatorChange(StrEnum):
    """What an operator event (its history) records a change of."""

    PRESENCE = "presence"
    IS_ACTIVE = "is_active"
    MAX_ACTIVE_LEADS = "max_active_leads"
    IDLE_AWAY_MINUTES = "idle_away_minutes"
    SCHEDULE = "schedule"  # working hours, absences or time zone replaced


class AwayReason(StrEnum):
    """Why an operator is away when it did not set itself so (``Operator.away_reason``)."""

    MISSED_OFFERS = "missed_offers"  # it let OFFER_MISSES in a row of one source's offers pass


class EventType(StrEnum):
    """What an event out (the outbox, the feed, webhooks) says happened."""

    CONTACT_REGISTERED = "contact.registered"
    CONTACT_ASSIGNED = "contact.assigned"  # every change of operator; data.reason as in the history
    CONTACT_WAITING = "contact.waiting"  # stored, taken back or reopened with no operator
    CONTACT_CLOSED = "contact.closed"
    CONTACT_REOPENED = "contact.reopened"
    CONTACT_ACCEPTED = "contact.accepted"
    OPERATOR_UPDATED = "operator.updated"  # limit, active, presence (and idle setting, schedule)
    SOURCE_WEIGHTS_CHANGED = "source.weights_changed"


# The type of a webhook's test delivery (never stored as an event, never in the feed).
PING = "ping"


class DeliveryState(StrEnum):
    """Where one event stands with one webhook."""

    PENDING = "pending"  # to be sent (again, at next_attempt_at)
    DELIVERED = "delivered"  # a 2xx answer
    FAILED = "failed"  # retried for the whole retry window without a 2xx: given up (redeliver sends it again)


class WebhookDisabled(StrEnum):
    """Why a webhook is off."""

    BY_HAND = "by_hand"  # a supervisor turned it off
    FAILING = "failing"  # no 2xx answer for the whole retry window


class TokenScope(StrEnum):
    """What an API token may call: ``register`` only registering contacts and the distribution status."""

    REGISTER = "register"
    FULL = "full"


# Lengths of text, as stored.
NAME_MAX = 200
EXTERNAL_ID_MAX = 200
PHONE_MAX = 32  # E.164 is at most 16 characters; room for the '+' and future formats
# A phone as typed (spaces, dashes, brackets, a leading 8) before it is read as E.164.
PHONE_INPUT_MAX = 64
EMAIL_MAX = 320
MESSAGE_MAX = 10_000
IDEMPOTENCY_KEY_MAX = 200
USERNAME_MAX = 64
PASSWORD_MIN = 10
PASSWORD_MAX = 256  # long passphrases are welcome; unbounded input is not

# Largest value any id, limit or weight column holds on every supported database.
INT_MAX = 2**31 - 1
LIMIT_MAX = 1_000_000  # an operator's limit of active leads
# "Away after N minutes without the inbox open": at most a week.
IDLE_MINUTES_MAX = 7 * 24 * 60
# The inbox's refresh is an operator's sign of life; it is written at most this often (seconds),
# so an open inbox costs one write per operator every half minute, not one per refresh.
LAST_SEEN_EVERY = 30
# Offers (a source's offer_timeout_seconds): the shortest and longest time to take a contact, and
# how many offers of one source an operator may let pass in a row before it is set away.
OFFER_TIMEOUT_MIN = 30
OFFER_TIMEOUT_MAX = 24 * 60 * 60
OFFER_MISSES_DEFAULT = 3
OFFER_MISSES_MAX = 100
# Schedules: time zones are IANA names (Europe/Moscow); an absence's note; how many intervals and
# absences one operator's schedule holds.
TIMEZONE_MAX = 64
ABSENCE_NOTE_MAX = 200
SCHEDULE_HOURS_MAX = 7 * 8
SCHEDULE_ABSENCES_MAX = 200
# An absence's days lie within these years: further out is a typo (and near the calendar's ends
# the stretch's arithmetic, days past the last absence, would leave it).
ABSENCE_YEAR_MIN = 2000
ABSENCE_YEAR_MAX = 2999
# The worker: a page warns when no worker has beaten for this long (seconds).
WORKER_SILENT_AFTER = 120
# Events out: a webhook's URL and description; how many event types one subscribes to is bounded by
# EventType. A delivery waits at most this long (seconds) for an answer and reads at most this much of it.
URL_MAX = 2000
DESCRIPTION_MAX = 200
WEBHOOK_TIMEOUT = 10
WEBHOOK_BODY_READ_MAX = 64 * 1024
# The delivery log keeps this many attempts per webhook.
WEBHOOK_ATTEMPTS_KEPT = 1000
# The event feed: events per page by default and at most.
FEED_LIMIT = 100
FEED_LIMIT_MAX = 1000
# Bounded so that a source's total weight always fits an integer column.
WEIGHT_MAX = 1_000_000
# Lists: a page holds PER_PAGE items (the API's default; pages always), at most PER_PAGE_MAX.
PER_PAGE = 50
PER_PAGE_MAX = 500
# The furthest page a page's link may ask for (past the last one it is simply empty).
PAGE_NUMBER_MAX = 1_000_000
