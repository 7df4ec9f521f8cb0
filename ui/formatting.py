"""Display strings for numbers, sizes and shapes (display only: never parsed back into data)."""
from __future__ import annotations

import math

from workbench.units import human_bytes, human_count  # noqa: F401 - re-exported for the views


def grouped(n: int) -> str:
    """``884736`` -> ``"884,736"``."""
    return f"{int(n):,}"


def shape_text(shape: tuple[int, ...]) -> str:
    return " × ".join(str(d) for d in shape) if shape else "scalar"


def float_text(x: float) -> str:
    """Compact but exact-enough float for statistics."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if x == 0:
        return "0"
    ax = abs(x)
    if ax >= 1e5 or ax < 1e-4:
        return f"{x:.4e}"
    return f"{x:.6g}"


def count_with_percent(n: int, total: int) -> str:
    if total <= 0:
        return grouped(n)
    pct = 100.0 * n / total
    if n == 0:
        return "0"
    return f"{grouped(n)}  ({pct:.3g} %)"
