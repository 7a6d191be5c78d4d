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

from sqlalchemy.orm import Session

from leadcrm import storage
from leadcrm.errors import Conflict, Message
from leadcrm.models import utcnow
from leadcrm.storage import Tx

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


def claim_key(session: Session | Tx, caller: str, key: str, fingerprint: str) -> StoredAnswer | None:
    """Take ``caller``'s ``key`` for this request; or, if a request already used it, return the answer it got.

    Keys belong to their caller (a token or a user): the same key sent by
    another caller is another key, so no integration can replay or probe
    another's.

    The key is inserted before the registration runs, in its transaction: a
    concurrent retry with the same key waits until this one commits (or rolls
    back) and then sees its answer. Raises KeyReused for a different body.
    """
    tx = Tx.of(session)
    now = utcnow()
    storage.forget_expired_key(tx, caller, key, now - KEEP_FOR)
    if storage.claim_key(tx, caller, key, fingerprint, now):
        return None
    stored = storage.stored_key(tx, caller, key)
    if stored is None or stored.status_code is None or stored.response_body is None:
        # Cannot happen: a key is taken and answered in one transaction, and the claim found it taken.
        raise RuntimeError(f"idempotency key {key!r} of {caller} is taken but has no answer")
    if stored.request_hash != fingerprint:
        raise KeyReused(
            Message("This Idempotency-Key was already used with a different request."),
            {"Idempotency-Key": Message("Already used with a different request.")},
        )
    return StoredAnswer(stored.status_code, stored.response_body, stored.location)


def forget_expired(session: Session) -> int:
    """Delete every key older than 24 hours; returns how many."""
    return storage.forget_expired_keys(Tx.of(session), utcnow() - KEEP_FOR)


def remember_answer(session: Session | Tx, caller: str, key: str, answer: StoredAnswer) -> None:
    """Store the answer for ``caller``'s ``key``, in the registration's transaction."""
    storage.remember_answer(
        Tx.of(session), caller, key, status_code=answer.status_code, body=answer.body, location=answer.location
    )
