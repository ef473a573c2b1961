"""Argument types shared by the relaydiff command lines: a bad value is a one-line usage error
(exit 2) that names the option and its allowed range, before anything runs or is written."""

from __future__ import annotations

import argparse
import math
import os
import re


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

MAX_SEEDS = 1_000_000  # a seed list longer than this is a typo, not a run (ImageNet's preset uses 50,000)


def seed_list(text: str) -> list[int]:
    """An argparse type: '0-3,8,10-11' -> [0, 1, 2, 3, 8, 10, 11] (ranges inclusive, as EDM's
    generate.py), seeds in [0, 2**32), at most MAX_SEEDS of them (counted before any list is made)."""
    parts, count = [], 0
    for part in str(text).split(","):
        m = re.fullmatch(r"\s*(\d{1,10})\s*(?:-\s*(\d{1,10})\s*)?", part)
        if not m:
            raise argparse.ArgumentTypeError(f"bad seed list {text!r}: use e.g. 0-63 or 1,5,9-12")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo or hi >= 2**32:
            raise argparse.ArgumentTypeError(f"bad range {part.strip()!r}: seeds go from low to high in [0, 2**32)")
        count += hi - lo + 1
        if count > MAX_SEEDS:
            raise argparse.ArgumentTypeError(f"{text!r} has more than {MAX_SEEDS} seeds")
        parts.append((lo, hi))
    return [s for lo, hi in parts for s in range(lo, hi + 1)]


def check_sigma_order(sigma_min, sigma_max, where: str = "--sigma-min/--sigma-max") -> None:
    """ValueError unless 0 < sigma_min < sigma_max (per stage, lists of equal length or scalars)."""
    lows = sigma_min if isinstance(sigma_min, (list, tuple)) else [sigma_min]
    highs = sigma_max if isinstance(sigma_max, (list, tuple)) else [sigma_max]
    for lo, hi in zip(lows if len(lows) > 1 else lows * len(highs), highs if len(highs) > 1 else highs * len(lows),
                      strict=False):
        if not 0 < lo < hi:
            raise ValueError(f"{where}: need 0 < sigma_min < sigma_max, got sigma_min={lo} sigma_max={hi}")


def check_outdir(path: str, name: str = "--outdir") -> None:
    """ValueError naming the option when path exists and is not a folder, or cannot be written."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{name} {path}: exists and is not a folder")
    parent = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{name} {path}: {parent} is not a writable folder")
