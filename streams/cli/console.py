"""What every ``cronorch`` command shares at the console: argument types and JSON output."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime

import orjson

from streams.errors import InvalidInput
from streams.timecore.instants import parse_instant


def instant(text: str) -> datetime:
    """An argparse type: an RFC 3339 instant with an offset, as aware UTC."""
    try:
        return parse_instant(text)
    except InvalidInput as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def print_json(value: object) -> None:
    """``value`` as indented JSON on stdout (datetimes as RFC 3339)."""
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")
