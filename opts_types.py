"""argparse types of the command-line flags (opts.py): positive and bounded numbers, each error one line that
names what was expected."""

from __future__ import annotations

import argparse


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return n


def _positive_float(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not x > 0 or x == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return x


def _number(kind: type, low: float | None = None, high: float | None = None, low_open: bool = False,
            high_open: bool = False):
    """An argparse type: a finite ``kind`` (int or float) within [low, high] ('open' ends excluded)."""
    lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
    hi = "" if high is None else f"{'<' if high_open else '<='} {high}"
    want = f"{'an integer' if kind is int else 'a number'} {' and '.join(filter(None, (lo, hi)))}".strip()

    def parse(text: str):
        try:
            x = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
        finite = x == x and abs(x) != float("inf")
        too_low = low is not None and (x <= low if low_open else x < low)
        too_high = high is not None and (x >= high if high_open else x > high)
        if not finite or too_low or too_high:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}")
        return x

    return parse


_count = _number(int, 0)  # 0 has a meaning (off / automatic) for these flags
_amount = _number(float, 0.0)
_positive = _number(float, 0.0, low_open=True)
_factor_spread = _number(float, 0.0, 1.0, high_open=True)  # factors in [1-x, 1+x] must stay positive
_probability = _number(float, 0.0, 1.0)


def _shift_scale_rotate(text: str) -> tuple[float, float, float]:
    """argparse type of --shift-scale-rotate: 'SHIFT,SCALE,DEGREES', each >= 0, SCALE < 1."""
    parts = text.split(",")
    try:
        shift, scale, degrees = (float(x) for x in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SHIFT,SCALE,DEGREES (e.g. 0.0625,0.1,45), got {text!r}") from None
    if not (0 <= shift <= 1 and 0 <= scale < 1 and 0 <= degrees <= 180):
        raise argparse.ArgumentTypeError(f"expected 0 <= SHIFT <= 1, 0 <= SCALE < 1, 0 <= DEGREES <= 180, got {text!r}")
    return shift, scale, degrees
