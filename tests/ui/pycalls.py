"""Which Python functions of given modules Qt calls on this (the GUI) thread: while a worker runs Python code,
each such call has to take the interpreter lock from it, so a repaint that makes none never waits for one."""
from __future__ import annotations

import sys
from contextlib import contextmanager


@contextmanager
def calls_into(*modules):
    """Collect ``function name`` of every call into a function defined in one of ``modules`` on this thread."""
    files = {m.__file__ for m in modules}
    seen: list[str] = []

    def profile(frame, event, _arg):
        if event == "call" and frame.f_code.co_filename in files:
            seen.append(frame.f_code.co_name)

    old = sys.getprofile()
    sys.setprofile(profile)
    try:
        yield seen
    finally:
        sys.setprofile(old)
