"""Retry-safe registration: an ``Idempotency-Key`` answers a retry with the first answer.

Integrations retry on network errors. The same key with the same body within
24 hours gets the original response (same contact, same status code) and
stores nothing new; the same key with a different body is refused.
"""

import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from flask_babel import lazy_gettext as _l
from sqlalchemy.orm import Session

from leadcrm import storage
from leadcrm.errors import Conflict
from leadcrm.models import utcnow

KEEP_FOR = timedelta(hours=24)


class KeyReused(Conflict):
    code = "idempotency_key_reused"


@dataclass(frozen=True)
class StoredAnswer:
    status_code: int
    body: str
    location: str | None


def request_hash(data: Any) -> str:
    """The body's fingerprint: equal for equal JSON, whatever its spacing or key order."""
    # Fractions arrive as Decimal (api.http.json_body), written as sent.
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def claim_key(session: Session, caller: str, key: str, fingerprint: str) -> StoredAnswer | None:
    """Take ``caller``'s ``key`` for this request; or, if a request already used it, return the answer it got.

    Keys belong to their caller (a token or a user): the same key sent by
    another caller is another key, so no integration can replay or probe
    another's.

    The key is inserted before the registration runs, in its transaction: a
    concurrent retry with the same key waits until this one commits (or rolls
    back) and then sees its answer. Raises KeyReused for a different body.
    """
    tx = storage.Tx.of(session)
    now = utcnow()
    tx.execute(storage.FORGET_EXPIRED_KEY, {"caller": caller, "key": key, "before": tx.time(now - KEEP_FOR)})
    params = {"caller": caller, "key": key, "request_hash": fingerprint, "created_at": tx.time(now)}
    if tx.execute(storage.CLAIM_KEY, params).fetchone() is not None:
        return None
    request_hash_, status_code, body, location = tx.execute(storage.GET_KEY, {"caller": caller, "key": key}).fetchone()
    if request_hash_ != fingerprint:
        raise KeyReused(
            _l("This Idempotency-Key was already used with a different request."),
            {"Idempotency-Key": _l("Already used with a different request.")},
        )
    return StoredAnswer(status_code, body, location)


def forget_expired(session: Session) -> int:
    """Delete every key older than 24 hours; returns how many."""
    tx = storage.Tx.of(session)
    return tx.execute(storage.FORGET_EXPIRED_KEYS, {"before": tx.time(utcnow() - KEEP_FOR)}).rowcount


def remember_answer(session: Session, caller: str, key: str, answer: StoredAnswer) -> None:
    """Store the answer for ``caller``'s ``key``, in the registration's transaction."""
    params = {
        "caller": caller,
        "key": key,
        "status_code": answer.status_code,
        "body": answer.body,
        "location": answer.location,
    }
    storage.Tx.of(session).execute(storage.REMEMBER_ANSWER, params)
