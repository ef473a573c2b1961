"""Argument types shared by the relaydiff command lines: a bad value is a one-line usage error
(exit 2) that names the option and its allowed range, before anything runs or is written."""

from __future__ import annotations

import argparse
import math


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `prog: error: argument --x: ...` and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _named(fn, name):
    fn.__name__ = name  # argparse shows it in "invalid NAME value" messages
    return fn


def _number(text: str, kind):
    try:
        value = kind(text)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"expected {'an int' if kind is int else 'a number'}, got {text!r}") from exc
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    return value


def _describe(low, high, low_open, high_open) -> str:
    if high is None:
        return f"{'>' if low_open else '>='} {low}"
    return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"


def in_range(kind=int, low=None, high=None, *, low_open=False, high_open=False):
    """An argparse type: a `kind` (int or float) number in the given range."""

    def parse(text):
        value = _number(text, kind)
        if (low is not None and (value <= low if low_open else value < low)) or \
                (high is not None and (value >= high if high_open else value > high)):
            raise argparse.ArgumentTypeError(f"must be {_describe(low, high, low_open, high_open)}, got {text}")
        return value

    return _named(parse, f"{kind.__name__}_range")


def number_list(kind=int, low=None, high=None, *, keep_text=False):
    """An argparse type: a non-empty comma list of `kind` numbers in [low, high]; with keep_text the
    text itself is returned (options saved as text), once checked."""
    one = in_range(kind, low, high)

    def parse(text):
        parts = [p for p in str(text).split(",") if p.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(f"expected a comma list of numbers, got {text!r}")
        try:
            values = [one(p.strip()) for p in parts]
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentTypeError(f"{exc} (in {text!r})") from exc
        return text if keep_text else values

    return _named(parse, f"{kind.__name__}_list")


positive_int = in_range(int, 1)
nonnegative_int = in_range(int, 0)
nonnegative_float = in_range(float, 0.0)
positive_float = in_range(float, 0.0, low_open=True)
probability = in_range(float, 0.0, 1.0, high_open=True)  # [0, 1)
