"""How many threads heavy work uses: the kernels' thread pools and worker processes, and numpy's BLAS.

``set_threads(n)`` (the CLI's ``--threads N``) sets ``WORKBENCH_THREADS``, which
:func:`workbench.kernels.base.default_threads` reads (worker processes inherit it), and tells the BLAS
library numpy is linked against (OpenBLAS, as in numpy's wheels, or MKL) to use ``n`` threads for the
matrix products of the inference engines.  Setting ``WORKBENCH_THREADS`` (and ``OPENBLAS_NUM_THREADS``)
before starting does the same for any program.
"""
from __future__ import annotations

import ctypes
import os
from functools import lru_cache
from pathlib import Path

from .errors import WorkbenchError

ENV = "WORKBENCH_THREADS"
# (set, get) symbol pairs: numpy's scipy-openblas wheels (64-bit ints), plain OpenBLAS, MKL
_BLAS_SYMBOLS = (("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
                 ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
                 ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
                 ("openblas_set_num_threads", "openblas_get_num_threads"),
                 ("MKL_Set_Num_Threads", "MKL_Get_Max_Threads"))


def set_threads(n: int) -> None:
    """Use ``n`` threads for quantization kernels and BLAS from now on (in this process and its workers)."""
    if not isinstance(n, int) or n < 1:
        raise WorkbenchError(f"--threads must be a positive whole number, not {n!r}")
    os.environ[ENV] = str(n)
    set_blas_threads(n)


def set_blas_threads(n: int) -> bool:
    """Tell numpy's BLAS to use ``n`` threads; False if no known BLAS library was found."""
    done = False
    for setter, _getter in _blas_functions():
        setter(n)
        done = True
    return done


def blas_threads() -> int | None:
    """The thread count numpy's BLAS uses now (None if its library is not one we know)."""
    for _setter, getter in _blas_functions():
        return int(getter())
    return None


@lru_cache(maxsize=1)
def _blas_functions() -> tuple:
    import numpy as np  # noqa: F401 - loads the BLAS library we look for

    found = []
    for path in _blas_library_paths():
        try:
            lib = ctypes.CDLL(str(path))
        except OSError:
            continue
        for set_name, get_name in _BLAS_SYMBOLS:
            setter, getter = getattr(lib, set_name, None), getattr(lib, get_name, None)
            if setter is not None and getter is not None:
                setter.argtypes, setter.restype = [ctypes.c_int], None
                getter.argtypes, getter.restype = [], ctypes.c_int
                found.append((setter, getter))
                break
    return tuple(found)


def _blas_library_paths() -> list[Path]:
    """BLAS libraries loaded in this process (Linux: the memory map) or shipped beside numpy (wheels)."""
    names = ("openblas", "mkl_rt", "libmkl")
    paths: list[Path] = []
    maps = Path("/proc/self/maps")
    if maps.is_file():
        try:
            for line in maps.read_text(errors="replace").splitlines():
                part = line.split(maxsplit=5)
                if len(part) == 6 and any(n in Path(part[5]).name.lower() for n in names):
                    paths.append(Path(part[5]))
        except OSError:
            pass
    if not paths:  # macOS / Windows wheels keep the library in numpy/.dylibs or numpy.libs
        import numpy as np

        root = Path(np.__file__).parent
        for folder in (root / ".dylibs", root.parent / "numpy.libs"):
            if folder.is_dir():
                paths += [p for p in sorted(folder.iterdir()) if any(n in p.name.lower() for n in names)]
    seen: list[Path] = []
    for p in paths:
        if p not in seen:
            seen.append(p)
    return seen
