"""Helpers shared by the family builders."""

from __future__ import annotations


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``v`` to the nearest multiple of ``divisor``, never going down by more than 10%.

    The rounding of the TF-slim MobileNet code, used by torchvision, timm, keras and paddle.
    """
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def width_id(width: float) -> str:
    """0.75 -> '075', 1.0 -> '100', 1.3 -> '130'."""
    return f"{round(width * 100):03d}"
