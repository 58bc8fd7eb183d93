"""What every ``cronorch`` command shares at the console: argument types and JSON output."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime

import orjson

from streams.errors import InvalidInput
from streams.settings import MIN_TICK_INTERVAL_S
from streams.timecore.instants import parse_instant


def instant(text: str) -> datetime:
    """An argparse type: an RFC 3339 instant with an offset, as aware UTC."""
    try:
        return parse_instant(text)
    except InvalidInput as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def tick_step(text: str) -> float:
    """An argparse type: seconds between ticks, whole milliseconds, at least
    ``MIN_TICK_INTERVAL_S`` (as ``TICK_INTERVAL_S``)."""
    try:
        step_s = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not step_s >= MIN_TICK_INTERVAL_S or abs(step_s * 1000 - round(step_s * 1000)) > 1e-6:
        raise argparse.ArgumentTypeError(
            f"{text!r}: a step is at least {MIN_TICK_INTERVAL_S} s, in whole milliseconds")
    return round(step_s, 3)


def print_json(value: object) -> None:
    """``value`` as indented JSON on stdout (datetimes as RFC 3339)."""
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")
