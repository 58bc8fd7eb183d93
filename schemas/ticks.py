"""Ticks and the internal ``scheduler.timeline`` log they are interleaved into.

Owns the tick record and the union of everything a timeline partition carries (ticks next
to re-keyed task events; ``schemas.edge.TIMELINE_ADAPTER`` decodes it). Only the tick
producer reads a clock; this module never does. Must not import faust, aiokafka, asyncpg
or ``streams``.
"""

from __future__ import annotations

from typing import Annotated, Literal, TypeAlias

from pydantic import Field

from schemas.events import TaskDeleted, TaskUpserted, UserSettings
from schemas.values import InputInstant, InputModel


class Tick(InputModel):
    """A point on the tick grid: time, as an event.

    ``source`` says who chose the instant: ``live`` ticks come from the tick producer's clock
    and are checked against the broker's timestamp of their record (a tick far ahead of it is
    refused), ``range`` ticks are an operator's explicit window (``cronorch tick --from``) for
    tests, demos and backfills and are taken as they are. A tick without it is ``live``.
    """

    type: Literal["tick"] = "tick"
    tick_at: InputInstant
    source: Literal["live", "range"] = "live"


TimelineRecord: TypeAlias = Annotated[
    Tick | TaskUpserted | TaskDeleted | UserSettings, Field(discriminator="type")
]
