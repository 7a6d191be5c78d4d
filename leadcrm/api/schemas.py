"""Request and response shapes of the JSON API, and the source of its OpenAPI schemas."""

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from functools import partial
from typing import Annotated, Any, Generic, Literal, Optional, TypeVar

from annotated_types import GroupedMetadata, MaxLen
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    StringConstraints,
    WithJsonSchema,
    computed_field,
)
from pydantic.config import JsonDict
from pydantic_core import PydanticCustomError

from leadcrm.models import utcnow
from leadcrm.queries import next_shift_change
from leadcrm.schedules import read_clock
from leadcrm.storage import is_at_work, is_on_shift
from leadcrm.vocabulary import (
    ABSENCE_NOTE_MAX,
    DESCRIPTION_MAX,
    EMAIL_MAX,
    EXTERNAL_ID_MAX,
    FEED_LIMIT,
    FEED_LIMIT_MAX,
    IDEMPOTENCY_KEY_MAX,
    IDLE_MINUTES_MAX,
    INT_MAX,
    LIMIT_MAX,
    MESSAGE_MAX,
    NAME_MAX,
    OFFER_MISSES_DEFAULT,
    OFFER_MISSES_MAX,
    OFFER_TIMEOUT_MAX,
    OFFER_TIMEOUT_MIN,
    PER_PAGE,
    PER_PAGE_MAX,
    PHONE_INPUT_MAX,
    SCHEDULE_ABSENCES_MAX,
    SCHEDULE_HOURS_MAX,
    TIMEZONE_MAX,
    URL_MAX,
    WEIGHT_MAX,
    AwayReason,
    ContactStatus,
    DeliveryState,
    EventReason,
    EventType,
    Presence,
    Strategy,
    WebhookDisabled,
)


def _integral(value: object) -> object:
    """JSON has one number type: 3.0 is the integer 3 (JSON Schema agrees). 3.5 stays a fraction and is refused.

    The API reads fractions exactly (as Decimal, see ``api.http.json_body``):
    0.000...01 is not 0, and 1.0000000000000001 is not 1.
    """
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    # adjusted() first: it is the exponent, read without arithmetic (1e999999999 would overflow any).
    if isinstance(value, Decimal) and value.is_finite() and value.adjusted() < 18 and value == int(value):
        return int(value)
    return value


INTEGRAL = BeforeValidator(_integral)
# No text may hold a NUL character: PostgreSQL cannot store one. Names must not be blank.
NO_NUL = r"^[^\x00]*$"
# What str.strip() removes, spelled out: a regular expression's \s means other characters in Python
# (the separators \x1c-\x1f, \x85) than in JSON Schema's ECMA dialect (\ufeff), so the documented
# pattern says exactly what the validator does. tests/test_fuzz.py checks it against str.isspace.
WHITESPACE = r"\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
NOT_BLANK = rf"^[^\x00]*[^{WHITESPACE}\x00][^\x00]*$"


def _clean(value: str, *, required: bool, strip: bool) -> str:
    if "\x00" in value:
        raise PydanticCustomError("nul_character", "Must not contain the NUL character.")
    if strip:
        value = value.strip()
    if required and not value:
        raise PydanticCustomError("blank", "Must not be blank.")
    return value


@dataclass(frozen=True)
class Text(GroupedMetadata):
    """Text of at most ``max_length`` characters as sent, stored stripped (unless not ``strip``).

    ``required``: not blank. Used as ``Annotated[str, Text(NAME_MAX)]``.

    The document states the same rules as patterns, so clients and the fuzz test know them.
    """

    max_length: int
    required: bool = False
    strip: bool = True

    def __iter__(self) -> Iterator[object]:
        schema: JsonDict = {"type": "string", "maxLength": self.max_length}
        schema["pattern"] = NOT_BLANK if self.required else NO_NUL
        if self.required:
            schema["minLength"] = 1
        yield MaxLen(self.max_length)
        yield AfterValidator(partial(_clean, required=self.required, strip=self.strip))
        yield WithJsonSchema(schema)


Name = Annotated[str, Text(NAME_MAX, required=True)]
Id = Annotated[int, Field(ge=1, le=INT_MAX), INTEGRAL]
Limit = Annotated[int, Field(ge=0, le=LIMIT_MAX, description="Limit of active leads (open contacts)."), INTEGRAL]
Weight = Annotated[
    int, Field(ge=0, le=WEIGHT_MAX, description="Share of the source's traffic; 0 = does not serve it."), INTEGRAL
]
IdleMinutes = Annotated[
    int,
    Field(
        ge=1,
        le=IDLE_MINUTES_MAX,
        description="Away after this many minutes without the operator's inbox open; null = off.",
    ),
    INTEGRAL,
]
PresenceIn = Annotated[
    Presence,
    Field(strict=False, description="available: gets new contacts; away: keeps its open contacts, gets none."),
]
# An enumeration in a strict body is still sent as its text: "random", not an enum object.
StrategyIn = Annotated[Strategy, Field(strict=False)]


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def omittable() -> Any:
    """A field that may be left out, but not sent as null.

    Left out, it reads as None and is not in ``model_fields_set`` (the views
    change only the fields that were sent). The schema states no default:
    a generated client must not send ``null`` for it.
    """
    return Field(None, json_schema_extra=_no_default)


class Strict(BaseModel):
    """Request bodies: exact JSON types, unknown fields refused (typos surface at once)."""

    model_config = ConfigDict(strict=True, extra="forbid")


class OperatorCreate(Strict):
    name: Name
    is_active: bool = True
    max_active_leads: Limit
    presence: PresenceIn = Presence.AVAILABLE
    idle_away_minutes: Optional[IdleMinutes] = None


class OperatorUpdate(Strict):
    # Every field may be left out; none may be null but the idle setting (null turns it off).
    name: Name = omittable()
    is_active: bool = omittable()
    max_active_leads: Limit = omittable()
    presence: PresenceIn = omittable()
    idle_away_minutes: Optional[IdleMinutes] = Field(None, json_schema_extra=_no_default)


Sticky = Annotated[
    bool, Field(description="Returning leads go back to the operator of their latest contact through this source.")
]


# The lower bound is the server's LEADCRM_OFFER_TIMEOUT_MIN (tests shorten it), so the domain checks
# the range (sources.check_offers, a 422 naming the field); the document states the default bounds.
OfferTimeout = Annotated[
    int, INTEGRAL, WithJsonSchema({"type": "integer", "minimum": OFFER_TIMEOUT_MIN, "maximum": OFFER_TIMEOUT_MAX})
]
OFFER_TIMEOUT_TEXT = (
    "Offers: each contact routing gives an operator (registration, the queue, sticky, reopen) must be taken "
    "by it (POST /contacts/{contact_id}/accept) within this many seconds, or it is routed to someone else; "
    f"null: off. At least {OFFER_TIMEOUT_MIN} (the server's LEADCRM_OFFER_TIMEOUT_MIN), at most {OFFER_TIMEOUT_MAX}."
)
OfferMisses = Annotated[
    int,
    Field(
        ge=1,
        le=OFFER_MISSES_MAX,
        description="After this many of the source's offers in a row let pass, the operator is set away "
        "(away_reason missed_offers).",
    ),
    INTEGRAL,
]


class SourceCreate(Strict):
    name: Name
    strategy: StrategyIn = Strategy.RANDOM
    sticky: Sticky = False
    offer_timeout_seconds: Optional[OfferTimeout] = Field(None, description=OFFER_TIMEOUT_TEXT)
    offer_misses_away: OfferMisses = OFFER_MISSES_DEFAULT


class SourceUpdate(Strict):
    name: Name = omittable()
    strategy: StrategyIn = omittable()
    sticky: Sticky = omittable()
    # The one field whose null is a value (offers off).
    offer_timeout_seconds: Optional[OfferTimeout] = Field(
        None, description=OFFER_TIMEOUT_TEXT, json_schema_extra=_no_default
    )
    offer_misses_away: OfferMisses = omittable()


class WeightIn(Strict):
    operator_id: Id
    weight: Weight


class AssignIn(Strict):
    operator_id: Id
    override: bool = Field(False, description="Allow assigning past the operator's limit (recorded as override).")


# A time of day as typed, "HH:MM" (schedules.read_clock reads it): a start 00:00-23:59; an end
# 00:01-24:00, where 00:00 and 24:00 are the midnight that ends the day.
START_PATTERN = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"
END_PATTERN = r"^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$"
ISO_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _clock(value: object, *, end: bool) -> int:
    minutes = read_clock(value, end=end) if isinstance(value, str) else None
    if minutes is None:
        if end:
            raise PydanticCustomError("clock", "An end is a time of day as HH:MM, 00:00 to 24:00 (both midnight).")
        raise PydanticCustomError("clock", "A start is a time of day as HH:MM, 00:00 to 23:59.")
    return minutes


def _day(value: object) -> date:
    if not isinstance(value, str) or not ISO_DAY.fullmatch(value):
        raise PydanticCustomError("day", "A day as YYYY-MM-DD.")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise PydanticCustomError("day", "Not a day of the calendar.") from None


# Minutes since midnight in the schedule's domain; "HH:MM" text in JSON.
ClockStart = Annotated[
    int,
    PlainValidator(partial(_clock, end=False)),
    WithJsonSchema({"type": "string", "pattern": START_PATTERN, "examples": ["09:00"]}),
]
ClockEnd = Annotated[
    int,
    PlainValidator(partial(_clock, end=True)),
    WithJsonSchema({"type": "string", "pattern": END_PATTERN, "examples": ["18:00"]}),
]
Day = Annotated[date, PlainValidator(_day), WithJsonSchema({"type": "string", "format": "date"})]
TimezoneName = Annotated[str, Text(TIMEZONE_MAX, required=True)]


class HoursIn(Strict):
    weekday: Annotated[int, Field(ge=1, le=7, description="ISO day of the week: 1 is Monday, 7 Sunday."), INTEGRAL]
    start: ClockStart
    end: ClockEnd = Field(
        description="24:00 (or 00:00) is the midnight that ends the day; an end before the start is "
        "the next day's (22:00-06:00). Not equal to the start."
    )


class AbsenceIn(Strict):
    from_: Day = Field(alias="from", description="The first day away, in the schedule's time zone.")
    to: Day = Field(description="The last day away (inclusive); not before `from`.")
    note: Optional[Annotated[str, Text(ABSENCE_NOTE_MAX)]] = None


class ScheduleIn(Strict):
    """An operator's whole schedule: what is not sent is not kept (an empty list clears)."""

    timezone: Optional[TimezoneName] = Field(
        description="An IANA time zone (Europe/Moscow); null: the organisation's (GET /settings)."
    )
    hours: list[HoursIn] = Field(
        max_length=SCHEDULE_HOURS_MAX,
        description="Weekly working hours, never overlapping; none: always on shift (absences aside).",
    )
    absences: list[AbsenceIn] = Field(max_length=SCHEDULE_ABSENCES_MAX)


class SettingsIn(Strict):
    timezone: TimezoneName = Field(
        description="The organisation's time zone, an IANA name (Europe/Moscow, UTC): schedules without "
        "a zone of their own are in it."
    )


# "Exactly one of source_id and source_name" in JSON Schema's words: a number
# in one and nothing (absent or null) in the other. Said with if/then/else, not
# a top-level oneOf: client generators read a oneOf as two body types, each
# without the other fields (openapi-python-client does), and skip if/then/else.
EXACTLY_ONE_SOURCE: JsonDict = {
    "if": {"required": ["source_id"], "properties": {"source_id": {"type": "integer"}}},
    "then": {"properties": {"source_name": {"type": "null"}}},
    "else": {"required": ["source_name"], "properties": {"source_name": {"type": "string"}}},
}


class RegisterIn(Strict):
    """Exactly one of source_id / source_name; at least one of external_id, phone, email."""

    model_config = ConfigDict(strict=True, extra="forbid", json_schema_extra=EXACTLY_ONE_SOURCE)

    source_id: Optional[Id] = None
    source_name: Optional[Name] = None
    external_id: Optional[Annotated[str, Text(EXTERNAL_ID_MAX)]] = None
    phone: Optional[Annotated[str, Text(PHONE_INPUT_MAX)]] = Field(
        None,
        description="Any common format; stored as E.164. Without a country code it is read in LEADCRM_PHONE_REGION.",
    )
    email: Optional[Annotated[str, Text(EMAIL_MAX)]] = None
    name: Optional[Annotated[str, Text(NAME_MAX)]] = None
    message: Optional[Annotated[str, Text(MESSAGE_MAX, strip=False)]] = None


class RegisterHeaders(BaseModel):
    """The request headers a registration reads (the view checks them itself; this states them in the document)."""

    idempotency_key: Optional[
        Annotated[str, StringConstraints(min_length=1, max_length=IDEMPOTENCY_KEY_MAX, pattern=NOT_BLANK)]
    ] = Field(
        None,
        alias="Idempotency-Key",
        description="Retry-safe: the same key with the same body within 24 hours returns the original response "
        "and stores nothing new (header Idempotent-Replayed: true); the same key with a different body is a 409.",
    )


class Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class OperatorOut(Out):
    id: int
    name: str
    is_active: bool
    max_active_leads: int
    active_leads: int = Field(description="Load: the operator's open contacts.")
    presence: Presence = Field(description="available: gets new contacts; away: keeps its open contacts, gets none.")
    idle_away_minutes: Optional[int] = Field(
        description="Away after this many minutes without the operator's inbox open; null = off."
    )
    last_seen_at: Optional[datetime] = Field(
        description="The operator's last sign of life (its inbox open); null if never seen."
    )

    away_reason: Optional[AwayReason] = Field(
        description="Set away by leadcrm, not by a person: why (missed_offers: it let offers pass); null otherwise."
    )
    shift_from: Optional[datetime] = Field(
        exclude=True, description="The current or next stretch on shift begins (null: open-ended)."
    )
    shift_until: Optional[datetime] = Field(exclude=True, description="... and ends (null: open-ended).")

    @computed_field(  # type: ignore[prop-decorator]  # pydantic's documented use
        description="Within its working hours and not absent now (always, with no hours set)."
    )
    @property
    def on_shift(self) -> bool:
        return is_on_shift(self.shift_from, self.shift_until, utcnow())

    @computed_field(  # type: ignore[prop-decorator]  # pydantic's documented use
        description="When it next goes on or off shift; null when no change is foreseen (no hours, no absence)."
    )
    @property
    def next_shift_change_at(self) -> Optional[datetime]:
        return next_shift_change(self.shift_from, self.shift_until, utcnow())

    @computed_field(  # type: ignore[prop-decorator]  # pydantic's documented use
        description="Active, available, not idle and on shift now: it gets new contacts while it has room."
    )
    @property
    def at_work(self) -> bool:
        # From the fields: an ORM Operator has no such property.
        return is_at_work(
            self.is_active,
            self.presence,
            self.idle_away_minutes,
            self.last_seen_at,
            utcnow(),
            shift_from=self.shift_from,
            shift_until=self.shift_until,
        )


class SourceOut(Out):
    id: int
    name: str
    strategy: Strategy
    sticky: bool
    offer_timeout_seconds: Optional[int] = Field(description=OFFER_TIMEOUT_TEXT)
    offer_misses_away: int = Field(
        description="After this many of the source's offers in a row let pass, the operator is set away."
    )


class HoursOut(BaseModel):
    weekday: int = Field(description="ISO day of the week: 1 is Monday, 7 Sunday.")
    start: str = Field(description="HH:MM.")
    end: str = Field(description="HH:MM; 24:00 is the midnight that ends the day; before the start: the next day's.")


class AbsenceOut(BaseModel):
    model_config = ConfigDict(serialize_by_alias=True)

    from_: date = Field(alias="from", description="The first day away.")
    to: date = Field(description="The last day away (inclusive).")
    note: Optional[str]


class ScheduleOut(BaseModel):
    operator_id: int
    timezone: Optional[str] = Field(description="The schedule's own time zone; null: the organisation's.")
    effective_timezone: str = Field(description="The zone the hours and absences are read in.")
    hours: list[HoursOut] = Field(description="By day of the week and start.")
    absences: list[AbsenceOut] = Field(description="By first day.")
    on_shift: bool = Field(description="Within its working hours and not absent now (always, with no hours set).")
    next_shift_change_at: Optional[datetime] = Field(
        description="When it next goes on or off shift; null when no change is foreseen (no hours, no absence)."
    )


class SettingsOut(BaseModel):
    timezone: str = Field(description="The organisation's time zone (IANA name).")
    timezone_set: bool = Field(
        description="true: set through PUT /settings (or the settings page); false: preset by the server's "
        "LEADCRM_TIMEZONE (UTC when unset)."
    )


class WeightOut(Out):
    operator_id: int
    weight: int


class ContactOut(Out):
    id: int
    lead_id: int
    source_id: int
    operator_id: Optional[int]
    status: ContactStatus
    message: Optional[str]
    created_at: datetime
    assigned_at: Optional[datetime]
    closed_at: Optional[datetime]
    offered_until: Optional[datetime] = Field(
        description="An offer (its source has offer_timeout_seconds): its operator must take it before then "
        "(POST .../accept), or it is routed to someone else; null: not an offer, or taken."
    )
    accepted_at: Optional[datetime] = Field(
        description="When its operator took it (or a supervisor assigned it by hand); null otherwise."
    )


class LeadOut(Out):
    id: int
    external_id: Optional[str]
    phone: Optional[str]
    email: Optional[str]
    name: Optional[str]
    created_at: datetime


class LeadDetailOut(LeadOut):
    contacts: list[ContactOut]


class EventOut(Out):
    id: int
    contact_id: int
    reason: EventReason
    from_operator_id: Optional[int]
    to_operator_id: Optional[int]
    actor: Optional[str] = Field(description="Who made the change, once accounts exist.")
    created_at: datetime


class RegisteredLeadOut(BaseModel):
    """A registration's lead as a caller that may not read leads (a ``register`` token) sees it.

    Only the identifiers (and name) the caller sent that the lead holds: the
    answer tells nothing about the customer that the caller did not know.
    """

    id: int
    external_id: Optional[str] = None
    phone: Optional[str] = Field(None, description="As stored (E.164).")
    email: Optional[str] = None
    name: Optional[str] = None


class RegistrationOut(Out):
    contact: ContactOut
    lead: LeadOut | RegisteredLeadOut = Field(
        description="The whole lead for callers that may read leads; otherwise only what the caller sent."
    )
    lead_created: bool = Field(description="true: a new lead; false: a returning one.")
    assigned_operator: Optional[OperatorOut] = Field(
        description="null: no operator was eligible; the contact waits unassigned."
    )


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    # What api.http.page_of answers. Each list has its own named page below, so the
    # document (and a client generated from it) calls it OperatorPage, not Page_OperatorOut_.
    items: list[T]
    page: int
    per_page: int
    total: int


class OperatorPage(Page[OperatorOut]):
    """A page of operators."""


class SourcePage(Page[SourceOut]):
    """A page of sources."""


class ContactPage(Page[ContactOut]):
    """A page of contacts."""


class LeadPage(Page[LeadOut]):
    """A page of leads."""


class OperatorLoadOut(BaseModel):
    operator_id: int
    name: str
    is_active: bool
    active_leads: int
    max_active_leads: int
    presence: Presence
    at_work: bool = Field(description="Active, available and not idle now: it gets new contacts while it has room.")


class SourceShareOut(BaseModel):
    operator_id: int
    weight: int
    target_share: float = Field(description="weight / the source's total weight")
    assigned_total: int = Field(description="Contacts of this source assigned to the operator so far.")


class SourceStatusOut(BaseModel):
    source_id: int
    name: str
    strategy: Strategy
    operators: list[SourceShareOut]
    waiting: int = Field(description="Open contacts of this source waiting for an operator (its queue).")
    oldest_waiting_at: Optional[datetime] = Field(description="When the oldest of them arrived; null if none wait.")


class DistributionStatusOut(BaseModel):
    operators: list[OperatorLoadOut]
    sources: list[SourceStatusOut]
    unassigned_open: int = Field(description="Open contacts waiting without an operator.")


class ErrorBody(BaseModel):
    code: str
    message: str
    fields: Optional[dict[str, str]] = Field(None, description="Input field path -> what is wrong with it.")


class ErrorOut(BaseModel):
    error: ErrorBody


class PageArgs(BaseModel):
    page: int = Field(1, ge=1, le=INT_MAX)
    per_page: int = Field(PER_PAGE, ge=1, le=PER_PAGE_MAX)


class AcceptArgs(BaseModel):
    operator_id: Optional[Id] = Field(
        None,
        description="The operator the caller takes it for (a supervisor or token acting for one): a 409 if the "
        "contact is not offered to that operator now, as when it was taken back and offered to someone else. "
        "Without it: for whichever operator it is offered to. An operator user takes its own.",
    )


class ContactFilter(PageArgs):
    status: Optional[ContactStatus] = None
    operator_id: Optional[Id] = None
    source_id: Optional[Id] = None
    lead_id: Optional[Id] = None
    unassigned: Optional[bool] = None


class ContactExport(ContactFilter):
    sep: Literal["comma", "semicolon"] = Field(
        "comma",
        description="The cell separator: semicolon for spreadsheets in locales whose decimal mark is a comma "
        "(Russian Excel and LibreOffice split on it).",
    )


class LeadSearch(PageArgs):
    q: Optional[Annotated[str, Text(NAME_MAX)]] = None


# --- events out: the feed and webhooks ---------------------------------------------------------

EVENT_TYPES_TEXT = "Event types: " + ", ".join(EventType) + "."


class OutEventOut(BaseModel):
    """An event out, as the feed lists it and a webhook's body carries it."""

    id: str = Field(description="Stable: the same in the feed, in a webhook's body and webhook-id header, on retries.")
    type: EventType
    created_at: datetime
    actor: Optional[str] = Field(
        description="Who made the change: user:<name>, token:<name> (#<id>), worker, or system (a command)."
    )
    data: dict[str, Any] = Field(
        description="What changed, as it was then: contact events {contact, lead, operator} (contact.assigned and "
        "contact.waiting add reason and previous_operator_id); operator.updated {operator, changed}; "
        "source.weights_changed {source, weights}."
    )


class EventFeedOut(BaseModel):
    events: list[OutEventOut] = Field(description="In commit order.")
    next: str = Field(description="The cursor to continue from: pass it as after= next time.")
    has_more: bool = Field(description="true: more events follow at once; ask again with after=next.")


_ONE_TYPE = "(?:" + "|".join(re.escape(t) for t in EventType) + ")"


class EventFeedArgs(BaseModel):
    after: Optional[Annotated[str, Field(pattern=r"^[0-9]{1,18}$", description="A cursor (next of a page).")]] = None
    types: Optional[
        Annotated[
            str,
            Field(
                pattern=rf"^{_ONE_TYPE}(?:,{_ONE_TYPE})*$",
                max_length=1000,
                description="Comma-separated event types; all if left out.",
            ),
        ]
    ] = None
    limit: int = Field(FEED_LIMIT, ge=1, le=FEED_LIMIT_MAX)


Url = Annotated[
    str,
    Text(URL_MAX, required=True),
    Field(
        description="http:// or https://; receives POSTs. By default not a loopback, link-local or private address "
        "(checked again at each send, on what the name resolves to)."
    ),
]
EventTypeIn = Annotated[EventType, Field(strict=False)]
EventTypes = Annotated[list[EventTypeIn], Field(min_length=1, max_length=len(EventType), description=EVENT_TYPES_TEXT)]
Description = Annotated[str, Text(DESCRIPTION_MAX)]


class WebhookCreate(Strict):
    url: Url
    events: EventTypes
    description: Optional[Description] = None


class WebhookUpdate(Strict):
    url: Url = omittable()
    events: EventTypes = omittable()
    description: Description = omittable()
    enabled: bool = Field(  # type: ignore[assignment]  # omittable, not nullable
        None,
        description="false: nothing more is sent; true: resumes from the first event not delivered.",
        json_schema_extra=_no_default,
    )


class WebhookOut(BaseModel):
    id: int
    url: str
    description: Optional[str]
    events: list[EventType]
    enabled: bool
    disabled_reason: Optional[WebhookDisabled] = Field(
        description="by_hand: turned off by a supervisor; failing: no 2xx answer for the whole retry window."
    )
    disabled_at: Optional[datetime]
    failing_since: Optional[datetime] = Field(description="The first failure since the last success; null if none.")
    last_success_at: Optional[datetime]
    created_at: datetime
    pending: int = Field(
        description="Events still to send: its stream's after its cursor, retries and those queued behind them."
    )
    failed: int = Field(description="Deliveries given up after the retry window (redeliver sends them again).")
    delivered: int = Field(description="Events that got a 2xx answer since the endpoint was added.")


class WebhookCreatedOut(WebhookOut):
    secret: str = Field(description="The signing secret (whsec_...): shown this once. Verify with Standard Webhooks.")


class WebhookAttemptOut(Out):
    id: int
    event_id: Optional[str] = Field(description="The event's id; null for a test ping.")
    event_type: str
    at: datetime
    status_code: Optional[int] = Field(description="The receiver's answer; null: none (refused, timeout, ...).")
    duration_ms: int
    error: Optional[str]


class WebhookDeliveryOut(BaseModel):
    id: int
    event_id: str
    event_type: EventType
    state: DeliveryState
    attempts: int
    next_attempt_at: Optional[datetime] = Field(description="null: behind an earlier event of the same subject.")
    delivered_at: Optional[datetime]


class WebhookDeliveryArgs(BaseModel):
    state: Optional[DeliveryState] = None
    limit: int = Field(100, ge=1, le=1000)


class PingOut(BaseModel):
    ok: bool = Field(description="A 2xx answer came.")
    status_code: Optional[int]
    duration_ms: int
    error: Optional[str]
