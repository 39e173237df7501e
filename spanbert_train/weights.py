"""A blend's weights (`--data-weights 3,1`, `data.weights`): read, checked, and turned into the exact integer ratios
that the schedule uses (spanbert_train.schedule). No torch, no Numba: the configuration checks them at once."""

from __future__ import annotations

import math
from fractions import Fraction

from spanbert_train.errors import ConfigError

MAX_BLEND_PERIOD = 10**6  # the largest sum of a blend's integer weights (the period of spanbert_train.schedule)


def blend_weights(weights: list, n: int) -> list[int]:
    """The integer ratios of a blend's weights (the schedule's, spanbert_train.schedule): each weight read as the
    decimal it was written as (0.75 is 3/4), scaled to integers and reduced; empty: n equal weights. ConfigError
    naming data.weights when they are not n numbers >= 0 with one > 0, or reduce to a sum above MAX_BLEND_PERIOD."""
    if not weights:
        return [1] * n
    if len(weights) != n:
        raise ConfigError(f"data.weights has {len(weights)} entries for {n} dataset(s) (data.path); give one weight "
                          "per --data, e.g. --data-weights 3,1")  # fmt: skip
    exact = []
    for w in weights:
        if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or w < 0:
            raise ConfigError(f"data.weights must be numbers >= 0 (got {w!r})")
        exact.append(Fraction(w) if isinstance(w, int) else Fraction(repr(float(w))))
    if sum(exact) == 0:
        raise ConfigError("data.weights must not all be 0")
    scale = math.lcm(*(f.denominator for f in exact))
    ints = [int(f * scale) for f in exact]
    common = math.gcd(*ints)
    ints = [i // common for i in ints]
    if sum(ints) > MAX_BLEND_PERIOD:
        ratio = ":".join(map(str, ints))
        raise ConfigError(f"data.weights {weights} reduce to the integer ratio {ratio}, whose sum exceeds "
                          f"{MAX_BLEND_PERIOD:,}; give them with fewer digits, e.g. 3,1 or 0.7,0.3")  # fmt: skip
    return ints


def parse_weights(ctx, param, text: str | None) -> list[float] | None:
    """The click callback of `--data-weights 3,1` (commas, optional spaces) → [3.0, 1.0]; None when not given;
    ConfigError (one line, exit 2) naming the text otherwise."""
    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise ConfigError(f"--data-weights expects numbers separated by commas, e.g. 3,1 (got {text!r})") from None


