"""Output records on ``scheduler.dead-letters``: a record that failed decoding or validation.

Owns the shape only. The original key and value are carried base64-encoded, byte for byte,
because they may not be UTF-8 or JSON at all. ``reason`` must be safe to log: it never
contains the record's content. Must not import faust, aiokafka, asyncpg or ``streams``.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Literal

from pydantic import field_validator
from pydantic_core import PydanticCustomError

from schemas.values import Count, Instant, NonEmptyStr, OutputModel


class DeadLetter(OutputModel):
    type: Literal["dead.letter"] = "dead.letter"
    reason: NonEmptyStr
    source_topic: NonEmptyStr
    source_partition: Count
    source_offset: Count
    original_key_b64: str | None
    original_value_b64: str
    failed_at: Instant

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
        """A dead letter for the raw record at ``topic``/``partition``/``offset``."""
        return cls(
            reason=reason,
            source_topic=topic,
            source_partition=partition,
            source_offset=offset,
            original_key_b64=None if key is None else base64.b64encode(key).decode("ascii"),
            original_value_b64=base64.b64encode(value).decode("ascii"),
            failed_at=failed_at,
        )

    @property
    def original_key(self) -> bytes | None:
        if self.original_key_b64 is None:
            return None
        return base64.b64decode(self.original_key_b64)

    @property
    def original_value(self) -> bytes:
        return base64.b64decode(self.original_value_b64)
