"""Human-readable sizes and counts, for the CLI, the reports and the GUI (display only, never parsed back),
and ``parse_size`` for the sizes a user types (``--memory-budget 2GB``)."""
from __future__ import annotations


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


_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40,
               "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40}


def parse_size(text: str, what: str = "size") -> int:
    """A size the user typed -> bytes: ``"2GB"`` (10^9), ``"1.5GiB"`` or ``"1.5G"`` (2^30), ``"500 MB"``,
    ``"4096"`` (bytes).  A WorkbenchError naming ``what`` if it is not one."""
    import re

    from .errors import WorkbenchError

    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).upper() if m else ""
    if not m or unit not in _SIZE_UNITS:
        raise WorkbenchError(f"{what} {str(text)[:40]!r} is not a size",
                             hint="Write a number with a unit: 500MB, 2GB, 1.5GiB (or bytes).")
    value = int(float(m.group(1)) * _SIZE_UNITS[unit])
    if value <= 0:
        raise WorkbenchError(f"{what} {str(text)[:40]!r} must be more than 0 bytes")
    return value
