"""tokc's exceptions: every failure of the public API (tokcodec.encode, tokcodec.decode,
codec.describe, the Pillow plugin) is a TokcError.

    TokcError
      FormatError     (also ValueError)  the bytes are not a valid .tkc file this reader can decode
      CodecError      (also RuntimeError) a valid-looking file this model cannot decode (model id,
                                          codebook, damaged payload), an unreachable target
      ArgumentError   (also ValueError)  an argument outside its allowed range
        ArgumentTypeError (also TypeError) an argument of the wrong type
      WeightsError, ImageError           defined in codec.py (they also derive from
                                          weights.WeightsError and imageio.ImageError)

This module imports nothing, so `import tokcodec` stays light.
"""

from __future__ import annotations

import math
import numbers


class TokcError(Exception):
    """Base class of every error tokc raises on purpose."""


class FormatError(TokcError, ValueError):
    """The bytes are not a valid .tkc file this reader can decode."""


class CodecError(TokcError, RuntimeError):
    """A valid-looking file that this model cannot decode, or an unreachable target."""


class ArgumentError(TokcError, ValueError):
    """An argument of the public API is outside its allowed range."""


class ArgumentTypeError(ArgumentError, TypeError):
    """An argument of the public API has the wrong type."""


SEED_MAX = 2 ** 64 - 1  # as the format (spec section 7.1)
TEMPERATURE_MAX = 5.0


def check_int(name: str, value, lo: int, hi: int | None = None) -> int:
    """An integer (bool excluded) in lo..hi, else ArgumentError naming `name` and the range."""
    span = f"{lo}..{hi}" if hi is not None else f">= {lo}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(f"{name} must be an integer {span}, got {value!r}")
    v = int(value)
    if v < lo or (hi is not None and v > hi):
        raise ArgumentError(f"{name} must be an integer {span}, got {v}")
    return v


def check_real(name: str, value, lo: float, hi: float | None = None, lo_open: bool = False) -> float:
    """A finite real number (bool excluded) in [lo, hi] (or (lo, hi] with lo_open)."""
    left = "(" if lo_open else "["
    span = f"in {left}{lo:g}, {hi:g}]" if hi is not None else ("> " if lo_open else ">= ") + f"{lo:g}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{name} must be a number {span}, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < lo or (lo_open and v == lo) or (hi is not None and v > hi):
        raise ArgumentError(f"{name} must be a finite number {span}, got {value!r}")
    return v


def check_seed(seed) -> int:
    return check_int("seed", seed, 0, SEED_MAX)


def check_temperature(t) -> float:
    return check_real("temperature", t, 0.0, TEMPERATURE_MAX)


def check_realism(r) -> float:
    return check_real("realism", r, 0.0, 1.0)


def check_max_pixels(n) -> int:
    return check_int("max_pixels", n, 1)


def check_choice(name: str, value, choices) -> object:
    if value not in choices:
        raise ArgumentError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value
