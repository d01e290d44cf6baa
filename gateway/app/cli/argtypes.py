"""argparse types shared by the subcommands: a bad value is a usage error (exit 2)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    # What ``ArgumentParser.add_subparsers`` returns: each command module adds its parsers
    # to it (generic only to the type checker).
    Subcommands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]


def positive_int(text: str) -> int:
    """An argparse type: an integer ≥ 1 (a bad one is a usage error, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more (got {value})")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number (got {text})")
    return value
