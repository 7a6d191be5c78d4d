"""What every API view does with the request and its answer: parse JSON strictly, read query
arguments, dump models, page lists."""

import json
from decimal import Decimal
from typing import Any, TypeVar

import sqlalchemy as sa
from flask import request
from pydantic import BaseModel, TypeAdapter
from werkzeug.exceptions import BadRequest, UnsupportedMediaType

from leadcrm.api.schemas import (
    PageArgs,
    WeightIn,
)
from leadcrm.errors import InvalidInput
from leadcrm.extensions import db
from leadcrm.vocabulary import PER_PAGE_MAX

M = TypeVar("M", bound=BaseModel)
Response = tuple[Any, int] | tuple[Any, int, dict[str, str]] | Any

weight_list = TypeAdapter(list[WeightIn])


# An integer literal this long is larger than any id, limit or weight: it
# parses as this stand-in, which every integer field refuses as out of range
# (a 422 naming the field) instead of Python's own error about "4300 digits".
INTEGER_DIGITS_MAX = 100
TOO_LARGE = 10**INTEGER_DIGITS_MAX


class _BodyRefused(ValueError):
    """The body parses as JSON but is not one we accept (a key given twice)."""


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Plain JSON would keep the last of two equal keys: a typo or a smuggling
    # attempt either way, so it is refused rather than guessed at.
    obj: dict[str, Any] = {}
    for name, value in pairs:
        if name in obj:
            raise _BodyRefused(f"The key {name!r} appears twice in one object.")
        obj[name] = value
    return obj


def _integer(digits: str) -> int:
    if len(digits) > INTEGER_DIGITS_MAX:
        return -TOO_LARGE if digits.startswith("-") else TOO_LARGE
    return int(digits)


def json_body() -> Any:
    """The request's JSON; 415 if it is not JSON, 400 if it does not parse or repeats a key in an object."""
    if not request.is_json:
        raise UnsupportedMediaType("Send the body as JSON, with Content-Type: application/json.")
    try:
        # Fractions exactly, as Decimal: a float would round 0.000...01 to 0 (a weight
        # removed) and 1.0000000000000001 to 1; every number field here is an integer.
        return json.loads(
            request.get_data(cache=True), object_pairs_hook=_no_duplicate_keys, parse_int=_integer, parse_float=Decimal
        )
    except _BodyRefused as exc:
        raise BadRequest(str(exc)) from None
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"The body is not valid JSON: {exc}") from None


def parse(model: type[M], data: Any) -> M:
    return model.model_validate(data)


def query_args(model: type[M]) -> M:
    """The query string as ``model``. An unknown or repeated parameter is a 422, like a typo in a body."""
    unknown = [name for name in request.args if name not in model.model_fields]
    if unknown:
        raise InvalidInput(
            "Unknown query parameter.",
            {name or "(empty name)": "Not a parameter of this endpoint." for name in unknown},
        )
    repeated = [name for name, values in request.args.lists() if len(values) > 1]
    if repeated:
        raise InvalidInput("A query parameter is given twice.", dict.fromkeys(repeated, "Give it once."))
    # Query strings carry text: lax mode converts "2" to 2 and "true" to True.
    return model.model_validate(request.args.to_dict())


def dump(model: type[BaseModel], obj: Any) -> dict[str, Any]:
    return model.model_validate(obj).model_dump(mode="json")


def page_of(query: sa.Select[Any], args: PageArgs, model: type[BaseModel]) -> dict[str, Any]:
    page = db.paginate(query, page=args.page, per_page=args.per_page, max_per_page=PER_PAGE_MAX, error_out=False)
    return {
        "items": [dump(model, item) for item in page.items],
        "page": args.page,
        "per_page": args.per_page,
        "total": page.total,
    }
