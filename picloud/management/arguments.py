"""Integer options of management commands: plain ASCII digits within bounds.

The bound is checked twice on purpose: argparse checks what a command line
gives (``--days 0``), and ``check_between`` what ``call_command(days=0)``
gives, since keyword options skip argparse.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from django.core.management.base import CommandError

from picloud.config import parse_int


def _allowed(low: int, high: int, unit: str) -> str:
    return f"an integer from {low} to {high} ({unit})"


def int_between(low: int, high: int, unit: str) -> Callable[[str], int]:
    """An argparse ``type``: an ASCII integer in [low, high]; `unit` says what it counts."""

    def parse(text: str) -> int:
        value = parse_int(text.strip())
        if value is None or not low <= value <= high:
            what = "is not valid" if value is None else "is out of range"
            raise argparse.ArgumentTypeError(
                f"{text!r} {what}: allowed is {_allowed(low, high, unit)}"
            )
        return value

    return parse


def check_between(option: str, value: object, low: int, high: int, unit: str) -> int:
    """`value` when it is an int in [low, high], else CommandError naming `option`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise CommandError(
            f"{option}={value!r} is not valid: allowed is {_allowed(low, high, unit)}"
        )
    if not low <= value <= high:
        raise CommandError(
            f"{option}={value!r} is out of range: allowed is {_allowed(low, high, unit)}"
        )
    return value
