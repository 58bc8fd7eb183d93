"""(A frozen copy of schemas/wire.py at 1e4ecda: see tests/legacy_decoding/__init__.py.)

Bytes ↔ models for every schema in this package.

Owns the JSON encoding (orjson, UTF-8) and turning a bad record into a ``WireError`` whose
``reason`` is short and safe to log and to put in a dead letter: it names locations and
rules, never the offending values (they may be user text such as a title). Must not import
faust, aiokafka, asyncpg or ``streams``.
"""

from __future__ import annotations

from typing import Any, TypeAlias, TypeVar, overload

import orjson
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
Data: TypeAlias = bytes | bytearray | memoryview | str

MAX_REASON = 300
# Union tags pydantic puts into error locations; they say which branch, not where.
_BRANCH_TAGS = frozenset({"BeforeReminder", "AtReminder"})


class WireError(ValueError):
    """A record that cannot be decoded into the expected schema; ``reason`` is safe to log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def dumps(model: BaseModel) -> bytes:
    """``model`` as UTF-8 JSON: every field written (``null`` too) unless the model omits it."""
    return orjson.dumps(model.model_dump(mode="json"))


@overload
def loads(target: type[M], data: Data) -> M: ...
@overload
def loads(target: TypeAdapter[T], data: Data) -> T: ...
def loads(target: type[BaseModel] | TypeAdapter[Any], data: Data) -> Any:
    """Decode and validate one record, or raise ``WireError``."""
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise WireError(_bounded(f"invalid JSON: {exc}")) from None
    if not isinstance(document, dict):
        raise WireError("expected a JSON object")
    try:
        if isinstance(target, TypeAdapter):
            return target.validate_python(document)
        return target.model_validate(document)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        raise WireError(_reason(document, errors, tagged=isinstance(target, TypeAdapter))) from None


def _reason(document: dict[str, Any], errors: list[ErrorDetails], *, tagged: bool) -> str:
    for error in errors:
        at_type = (error["loc"], error["type"])
        if at_type in {((), "union_tag_not_found"), (("type",), "missing")}:
            return "missing field 'type'"
        if at_type in {((), "union_tag_invalid"), (("type",), "literal_error")}:
            return _unknown_type(document.get("type"))
    parts: list[str] = []
    for error in errors:
        loc = error["loc"]
        # A discriminated union puts the record's type first in the location.
        if tagged and loc and loc[0] == document.get("type"):
            loc = loc[1:]
        path = ".".join(str(part) for part in loc if part not in _BRANCH_TAGS)
        parts.append(f"{path}: {error['msg']}" if path else error["msg"])
    return _summary(parts)


def _summary(parts: list[str]) -> str:
    """As many whole messages as fit in ``MAX_REASON``, then how many were left out."""
    reason = _bounded(parts[0], MAX_REASON - 20) if parts else "invalid record"
    for shown, part in enumerate(parts[1:], start=1):
        more = f"; and {len(parts) - shown} more"
        if len(reason) + 2 + len(part) + len(more) > MAX_REASON:
            return reason + more
        reason += "; " + part
    return reason


def _unknown_type(tag: object) -> str:
    if not isinstance(tag, str):
        return "field 'type' should be a string"
    shown = tag if len(tag) <= 40 else tag[:40] + "..."
    return f"unknown type {shown!r}"


def _bounded(reason: str, limit: int = MAX_REASON) -> str:
    return reason if len(reason) <= limit else reason[: limit - 3] + "..."
