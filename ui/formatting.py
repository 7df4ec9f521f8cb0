"""Display strings for numbers, sizes and shapes (display only: never parsed back into data)."""
from __future__ import annotations

import math


def human_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"`` (binary units, as file managers and llama.cpp print them)."""
    n = float(n)
    if abs(n) < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        n /= 1024.0
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}"
    return f"{n:.1f} PiB"  # pragma: no cover


def human_count(n: float) -> str:
    """``134_515_008`` -> ``"134.5 M"`` (parameter counts)."""
    n = float(n)
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.1f} {unit}"
    return f"{int(n)}"


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
