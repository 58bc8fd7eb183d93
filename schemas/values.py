"""Value types shared by every wire format, and the two model bases.

Owns how instants, local dates, local times and zone names look on the wire:

- ``Instant``: an aware ``datetime``; read from any RFC 3339 offset, normalised to UTC,
  written as ``2026-03-08T07:30:00Z`` (fractional seconds only when non-zero).
  Naive datetimes and bare numbers are rejected.
- ``LocalDate``: a ``datetime.date`` written ``YYYY-MM-DD``.
- ``LocalTime``: a naive ``datetime.time`` with whole minutes, written ``HH:MM``.
- ``Zone``: an IANA zone name (``str``) that ``zoneinfo`` knows.
- ``InputInstant``: the same, held to the input range of ``schemas.limits``. An instant
  that overflows when converted to UTC is a field error of either, never an exception.

``InputModel`` (records this service reads) ignores unknown fields; ``OutputModel`` (records
it only writes) forbids them. Both are frozen. Must not import faust, aiokafka, asyncpg,
settings or anything of ``streams``; must not read the clock.
"""

from __future__ import annotations

import re
import zoneinfo
from datetime import UTC, date, datetime, time
from typing import Annotated, Any, TypeAlias

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    PlainSerializer,
    Strict,
    StringConstraints,
    WithJsonSchema,
)
from pydantic_core import CoreSchema, PydanticCustomError, TzInfo, core_schema

from schemas.limits import (
    EARLIEST,
    LATEST,
    MAX_ZONE_CHARS,
)
from streams.timecore.instants import format_instant as format_instant

# The shape of an instant, checked in pydantic-core (Rust regex, anchored: a full match) before
# its datetime parser, which alone would also take a bare date or a number of seconds.
_RFC3339_TEXT = (r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?"
                 r"(?:[Zz]|[+-]\d{2}:\d{2})?$")
_RFC3339_OFFSET = r"(?:[Zz]|[+-]\d{2}:\d{2})$"
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_HH_MM = re.compile(r"(?:[01]\d|2[0-3]):[0-5]\d")
_NAIVE = "naive datetime: an instant needs a UTC offset such as 'Z'"


class _InstantShape:
    """Text an instant may be read from: an RFC 3339 string with an offset (a ``datetime``
    passes as it is; ``_to_utc`` refuses a naive one). Each step runs in pydantic-core, no
    Python call per field; each error says what is wrong, in this order: not a string, not
    RFC 3339, no offset."""

    def __get_pydantic_core_schema__(self, source: Any,
                                     handler: GetCoreSchemaHandler) -> CoreSchema:
        def step(text: CoreSchema, error: str, message: str) -> CoreSchema:
            # Text first: what a decoded record carries; no error is built on the way.
            either = core_schema.union_schema(
                [text, core_schema.is_instance_schema(datetime)], mode="left_to_right")
            return core_schema.custom_error_schema(
                either, custom_error_type=error, custom_error_message=message)

        return core_schema.chain_schema([
            step(core_schema.str_schema(strict=True), "instant_type",
                 "Input should be an RFC 3339 instant string"),
            step(core_schema.str_schema(pattern=_RFC3339_TEXT), "instant_format",
                 "Input should be an RFC 3339 instant"),
            step(core_schema.str_schema(pattern=_RFC3339_OFFSET), "instant_naive", _NAIVE),
            handler(source),
        ])


def _to_utc(value: datetime) -> datetime:
    zone = value.tzinfo
    # pydantic-core's parser gives its own fixed-offset TzInfo (its utcoffset is slow to ask);
    # a datetime handed in as such may carry any tzinfo, or none.
    if type(zone) is not TzInfo and (zone is None or value.utcoffset() is None):
        raise PydanticCustomError("instant_naive", _NAIVE)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        # Year 1 with a positive offset (or 9999 with a negative one) is legal RFC 3339 but
        # has no UTC instant in Python; pydantic passes only ValueError on as a field error.
        raise _out_of_range() from None


def _to_utc_in_range(value: datetime) -> datetime:
    # _to_utc written out again: this runs for every instant of every decoded record.
    zone = value.tzinfo
    if type(zone) is not TzInfo and (zone is None or value.utcoffset() is None):
        raise PydanticCustomError("instant_naive", _NAIVE)
    try:
        value = value.astimezone(UTC)
    except OverflowError:
        raise _out_of_range() from None
    if not EARLIEST <= value < LATEST:
        raise _out_of_range()
    return value


def _out_of_range() -> PydanticCustomError:
    return PydanticCustomError(
        "instant_range", "Input should be an instant between {earliest} and {latest}",
        {"earliest": format_instant(EARLIEST), "latest": format_instant(LATEST)})


def _date_shape(value: Any) -> Any:
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if isinstance(value, str) and _DATE.fullmatch(value):
        return value
    raise PydanticCustomError("local_date_format", "Input should be a local date 'YYYY-MM-DD'")


def _time_shape(value: Any) -> Any:
    if isinstance(value, time):
        if value.tzinfo is None and value.second == 0 and value.microsecond == 0:
            return value
    elif isinstance(value, str) and _HH_MM.fullmatch(value):
        return value
    raise PydanticCustomError("local_time_format", "Input should be a local time 'HH:MM'")


def _known_zone(name: str) -> str:
    try:
        if len(name) > MAX_ZONE_CHARS:
            raise ValueError(name)
        zoneinfo.ZoneInfo(name)
    # A directory of the tz database ("America") or an over-long path is an OSError.
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        # Zone names come from a picker, not free text; bound them anyway.
        shown = name if len(name) <= 64 else name[:64] + "..."
        raise PydanticCustomError(
            "unknown_zone", "unknown IANA time zone '{zone}'", {"zone": shown}
        ) from None
    return name


_INSTANT_JSON = WithJsonSchema(
    {"type": "string", "format": "date-time", "description": "RFC 3339; written in UTC with Z"})
_INSTANT_TEXT = PlainSerializer(format_instant, return_type=str, when_used="json")
Instant: TypeAlias = Annotated[
    datetime, _InstantShape(), AfterValidator(_to_utc), _INSTANT_TEXT, _INSTANT_JSON
]
LocalDate: TypeAlias = Annotated[date, BeforeValidator(_date_shape)]
# An input's instant (schemas.limits): the due index is only asked about this range. One
# Python call per instant: the conversion to UTC and the range check together.
InputInstant: TypeAlias = Annotated[
    datetime, _InstantShape(), AfterValidator(_to_utc_in_range), _INSTANT_TEXT, _INSTANT_JSON
]
LocalTime: TypeAlias = Annotated[
    time,
    BeforeValidator(_time_shape),
    PlainSerializer(lambda t: t.strftime("%H:%M"), return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$"}),
]
Zone: TypeAlias = Annotated[
    str,
    AfterValidator(_known_zone),
    WithJsonSchema({"type": "string", "minLength": 1, "description": "IANA time zone name"}),
]
NonEmptyStr: TypeAlias = Annotated[str, StringConstraints(min_length=1)]
Version: TypeAlias = Annotated[int, Strict(), Field(ge=1)]
Count: TypeAlias = Annotated[int, Strict(), Field(ge=0)]


class InputModel(BaseModel):
    """A record this service reads: unknown fields are ignored (forward compatible)."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class OutputModel(BaseModel):
    """A record this service only writes: unknown fields are an error; every key is written."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", json_schema_serialization_defaults_required=True
    )
