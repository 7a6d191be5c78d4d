"""The event feed: every event out, in commit order, for integrations without a public URL."""

from leadcrm import outbox
from leadcrm.api import bp
from leadcrm.api.http import Response, query_args
from leadcrm.api.openapi import Answer, operation
from leadcrm.api.schemas import EventFeedArgs, EventFeedOut
from leadcrm.auth import allow
from leadcrm.errors import InvalidInput
from leadcrm.extensions import db
from leadcrm.vocabulary import EventType, Role


@bp.get("/events")
@allow(Role.SUPERVISOR)
@operation("listEvents", Answer("Events after the cursor, in commit order.", EventFeedOut), query=EventFeedArgs)
def list_events() -> Response:
    """Follow the events: contacts registered, assigned, waiting, closed, reopened, accepted; operators
    updated; weights changed.

    Start without after= (from the oldest event kept: 30 days by default), then pass the answer's next as
    after= each time. Events are listed in the order their changes committed, and one that commits late is
    never passed over: the worker numbers committed events within a second (LEADCRM_EVENTS_POLL). Each
    event's id is stable: the same id in a webhook delivery.
    """
    args = query_args(EventFeedArgs)
    types = None
    if args.types is not None:
        types = [t.strip() for t in args.types.split(",") if t.strip()]
        unknown = [t for t in types if t not in tuple(EventType)]
        if unknown or not types:
            raise InvalidInput(
                "Unknown event type.",
                {"types": f"Unknown: {', '.join(unknown) or '(none given)'}. Known: {', '.join(EventType)}."},
            )
    events, position, more = outbox.feed(db.session(), int(args.after or 0), types, args.limit)
    return {"events": [outbox.envelope_json(e) for e in events], "next": str(position), "has_more": more}
