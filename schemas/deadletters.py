"""Output records on ``scheduler.dead-letters``: a record that failed decoding or validation.

Owns the shape only. The original key and value are carried base64-encoded, byte for byte,
because they may not be UTF-8 or JSON at all; past ``schemas.limits.DEAD_LETTER_VALUE_BYTES``
(key: ``DEAD_LETTER_KEY_BYTES``) only a prefix is kept, with the original's size and SHA-256
(v1.1 additions), so a letter always fits the dead-letter topic. ``reason`` must be safe to
log: it never contains the record's content. Must not import faust, aiokafka, asyncpg or
``streams``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from datetime import datetime
from typing import Literal

from pydantic import field_validator
from pydantic_core import PydanticCustomError

from schemas.limits import DEAD_LETTER_KEY_BYTES, DEAD_LETTER_VALUE_BYTES
from schemas.values import Count, Instant, NonEmptyStr, OutputModel

MAX_REASON_CHARS = 500


class DeadLetter(OutputModel):
    type: Literal["dead.letter"] = "dead.letter"
    reason: NonEmptyStr
    source_topic: NonEmptyStr
    source_partition: Count
    source_offset: Count
    original_key_b64: str | None
    original_value_b64: str
    failed_at: Instant
    original_size_bytes: Count | None = None  # of the whole value (v1.1)
    original_sha256: str | None = None  # hex digest of the whole value (v1.1)
    original_truncated: bool = False  # key or value cut to their prefix (v1.1)

    @field_validator("original_key_b64", "original_value_b64")
    @classmethod
    def _base64(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                base64.b64decode(value, validate=True)
            except binascii.Error:
                raise PydanticCustomError("base64", "Input should be standard base64") from None
        return value

    @classmethod
    def of(
        cls,
        *,
        reason: str,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes,
        failed_at: datetime,
    ) -> DeadLetter:
        """A dead letter for the raw record at ``topic``/``partition``/``offset``; the key
        and value are kept whole up to their limits, as a prefix past them."""
        truncated = len(value) > DEAD_LETTER_VALUE_BYTES or (
            key is not None and len(key) > DEAD_LETTER_KEY_BYTES)
        if len(reason) > MAX_REASON_CHARS:
            reason = reason[: MAX_REASON_CHARS - 3] + "..."
        return cls(
            reason=reason or "invalid record",
            source_topic=topic,
            source_partition=partition,
            source_offset=offset,
            original_key_b64=None if key is None
            else base64.b64encode(key[:DEAD_LETTER_KEY_BYTES]).decode("ascii"),
            original_value_b64=base64.b64encode(value[:DEAD_LETTER_VALUE_BYTES]).decode("ascii"),
            failed_at=failed_at,
            original_size_bytes=len(value),
            original_sha256=hashlib.sha256(value).hexdigest(),
            original_truncated=truncated,
        )

    @property
    def original_key(self) -> bytes | None:
        if self.original_key_b64 is None:
            return None
        return base64.b64decode(self.original_key_b64)

    @property
    def original_value(self) -> bytes:
        return base64.b64decode(self.original_value_b64)
