"""Seeded mutation fuzzer for PyTorch checkpoints (zip and legacy layouts), shared by the CI test
(tests/core/test_torch_hostile.py, a few seconds) and bench/fuzz.py (a long run):

    import fuzz_torch                      # tests/ on sys.path
    stats = fuzz_torch.run(seconds=180, seed=1)   # or cases=N
    # {"cases": ..., "opened": ..., "refused": ..., "crashes": [...], "hangs": [...], "slowest_s": ..., ...}

Seeds are the torch-made fixtures in tests/core/data.  Each case writes one mutated file and asks
``workbench.open_model`` for it and every tensor's values; the property is: it opens, or it raises a
``WorkbenchError`` whose message is one line under 300 characters.  Anything else is a crash; a case
running past ``timeout`` seconds (``signal.alarm``) is a hang.  Mutations: bit flips and byte
replacements anywhere, pickle-opcode arguments (lengths, counts, integers, memo indices) set to edge
values (0, -1, 2**31, 2**63, the file size +- 1), opcodes replaced, truncation at opcode boundaries,
zip header fields set to edges, and hand-built hostile pickles (shared-reference DAGs, deep nesting,
cycles, deep tuples as dict keys) in both layouts.
"""
from __future__ import annotations

import io
import pickletools
import random
import resource
import signal
import tempfile
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

DATA = Path(__file__).parent / "core" / "data"
SEEDS = ("torch_state.pt", "torch_proto4.pt", "torch_legacy.pt")
_FIXED_WIDTH = {"BININT": 4, "BININT1": 1, "BININT2": 2, "BINGET": 1, "LONG_BINGET": 4, "BINPUT": 1,
                "LONG_BINPUT": 4, "PROTO": 1, "FRAME": 8}
_COUNT_WIDTH = {"BINUNICODE": 4, "SHORT_BINUNICODE": 1, "BINUNICODE8": 8, "BINBYTES": 4, "SHORT_BINBYTES": 1,
                "BINBYTES8": 8, "BINSTRING": 4, "SHORT_BINSTRING": 1, "LONG1": 1, "LONG4": 4, "BYTEARRAY8": 8}
_OPCODES = sorted({op.code.encode("latin-1")[0] for op in pickletools.opcodes})


class Hang(Exception):
    pass


# -- seeds and their structure -------------------------------------------------------------------------

def _ops(data: bytes, start: int = 0) -> list[tuple[int, str, int]]:
    """(position, opcode name, argument byte width or 0) of one pickle starting at ``start``."""
    out = []
    for op, _arg, pos in pickletools.genops(io.BytesIO(data[start:])):
        width = _FIXED_WIDTH.get(op.name) or _COUNT_WIDTH.get(op.name) or 0
        out.append((start + pos, op.name, width))
        if op.name == "STOP":
            break
    return out


def _legacy_ops(data: bytes) -> tuple[list[tuple[int, str, int]], int]:
    """Opcodes of the five pickles of a legacy file, and where its storages start."""
    ops: list[tuple[int, str, int]] = []
    pos = 0
    for _ in range(5):
        part = _ops(data, pos)
        ops += part
        pos = part[-1][0] + 1
    return ops, pos


def _zip_members(data: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return [(i.filename, zf.read(i)) for i in zf.infolist()]


def _rezip(members: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members:
            zf.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), data)
    return out.getvalue()


class Seed:
    def __init__(self, name: str, data: bytes):
        self.name, self.data = name, data
        self.legacy = not data.startswith(b"PK")
        if self.legacy:
            self.ops, self.storages_at = _legacy_ops(data)
            self.members = None
            self.pkl = data
        else:
            self.members = _zip_members(data)
            self.pkl_index = next(i for i, (n, _) in enumerate(self.members) if n.endswith("/data.pkl"))
            self.pkl = self.members[self.pkl_index][1]
            self.ops = _ops(self.pkl)

    def with_pickle(self, pkl: bytes) -> bytes:
        """The file with its (first) pickle region replaced."""
        if self.legacy:
            return pkl
        members = list(self.members)
        members[self.pkl_index] = (members[self.pkl_index][0], pkl)
        return _rezip(members)


def load_seeds() -> list[Seed]:
    return [Seed(n, (DATA / n).read_bytes()) for n in SEEDS]


# -- mutations ------------------------------------------------------------------------------------

def _edges(width: int, size: int) -> list[int]:
    top = (1 << (8 * width)) - 1
    vals = {0, 1, top, top >> 1, (top >> 1) + 1, size - 1, size, size + 1}
    if width >= 4:
        vals |= {1 << 31, (1 << 31) - 1, (1 << 32) - 1}
    if width == 8:
        vals |= {1 << 63, (1 << 63) - 1}
    return sorted(v & top for v in vals if v >= 0)


def _put(buf: bytearray, pos: int, width: int, value: int) -> None:
    buf[pos:pos + width] = value.to_bytes(width, "little")


def mutate(seed: Seed, rng: random.Random) -> tuple[str, bytes]:
    """One mutated file: (description, bytes)."""
    kind = rng.choice(("bitflip", "bytes", "edge", "edge", "opcode", "truncate", "zipfield", "tail"))
    if kind in ("bitflip", "bytes", "truncate") or (kind == "zipfield" and seed.legacy):
        data = bytearray(seed.data)
        if kind == "truncate":
            cut = rng.randrange(len(data))
            return f"truncate file at {cut}", bytes(data[:cut])
        for _ in range(rng.choice((1, 1, 2, 4, 16))):
            at = rng.randrange(len(data))
            if kind == "bitflip":
                data[at] ^= 1 << rng.randrange(8)
            else:
                data[at] = rng.choice((0, 0xFF, 0x7F, 0x80, rng.randrange(256)))
        return f"{kind} in file", bytes(data)
    if kind == "zipfield":
        data = bytearray(seed.data)
        sigs = [(b"PK\x03\x04", (4, 6, 8, 14, 18, 22, 26, 28)), (b"PK\x01\x02", (8, 10, 16, 20, 24, 28, 30, 34, 42)),
                (b"PK\x05\x06", (8, 10, 12, 16))]
        sig, fields = rng.choice(sigs)
        spots = [i for i in range(len(data)) if data.startswith(sig, i)]
        at = rng.choice(spots) + rng.choice(fields)
        width = rng.choice((2, 4))
        value = rng.choice(_edges(width, len(data)))
        _put(data, at, width, value)
        return f"zip field at {at} = {value}", bytes(data)
    pkl = bytearray(seed.pkl)
    ops = [o for o in seed.ops if kind != "edge" or o[2]]
    pos, name, width = rng.choice(ops)
    if kind == "edge":
        value = rng.choice(_edges(width, len(seed.data)))
        _put(pkl, pos + 1, width, value)
        desc = f"{name} at {pos} = {value}"
    elif kind == "opcode":
        pkl[pos] = rng.choice(_OPCODES)
        desc = f"opcode at {pos} ({name}) -> 0x{pkl[pos]:02x}"
    else:  # tail: truncate the pickle at an opcode boundary (the rest of a zip stays valid)
        pkl = pkl[:pos]
        desc = f"pickle cut at opcode {name} ({pos})"
    return desc, seed.with_pickle(bytes(pkl))


def truncations(seed: Seed) -> Iterator[tuple[str, bytes]]:
    """The pickle cut at every opcode boundary (and, for a legacy file, at every storage boundary)."""
    for pos, name, _ in seed.ops:
        yield f"{seed.name}: pickle cut before {name} at {pos}", seed.with_pickle(seed.pkl[:pos])
    if seed.legacy:
        for cut in (seed.storages_at + 4, seed.storages_at + 8, len(seed.data) - 1):
            yield f"{seed.name}: cut at {cut}", seed.data[:cut]


# -- hostile pickles ---------------------------------------------------------------------------------

def _legacy_wrap(pkl: bytes, keys: bytes = b"\x80\x02].") -> bytes:
    head = (b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19." + b"\x80\x02M\xe9\x03."
            + b"\x80\x02}X\x0d\x00\x00\x00little_endian\x88s.")
    return head + pkl + keys


def _zip_wrap(pkl: bytes) -> bytes:
    return _rezip([("archive/data.pkl", pkl), ("archive/version", b"3\n")])


def hostile_pickles() -> list[tuple[str, bytes]]:
    """Pickles that are valid but pathological: (name, pickle)."""
    tensor = (b"ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\n"
              b"X\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x02tQK\x00K\x02\x85K\x01\x85\x89ccollections\nOrderedDict\n"
              b")RtR")
    out = []
    # each list holds the previous one twice: 2**60 paths through 61 objects
    out.append(("DAG of lists, 60 levels", b"\x80\x02]q\x00" + b"".join(
        b"(h%ch%clq%c" % (i, i, i + 1) for i in range(60)) + b"."))
    out.append(("DAG of dicts with a tensor at the bottom", b"\x80\x02" + tensor + b"q\x00" + b"".join(
        b"}(X\x01\x00\x00\x00ah%cX\x01\x00\x00\x00bh%cuq%c" % (i, i, i + 1) for i in range(60)) + b"."))
    out.append(("lists nested 20,000 deep", b"\x80\x02" + b"]" * 20_000 + b"a" * 19_999 + b"."))
    out.append(("dicts nested 20,000 deep", b"\x80\x02" + b"}X\x01\x00\x00\x00k" * 20_000 + b"}" + b"s" * 20_000
               + b"."))
    out.append(("tuples nested 1,000,000 deep as a dict key", b"\x80\x02})" + b"\x85" * 1_000_000 + b"K\x01s."))
    out.append(("tuples nested 1,000,000 deep in a frozenset",
                b"\x80\x02c__builtin__\nfrozenset\n)" + b"\x85" * 1_000_000 + b"\x85\x85R."))
    out.append(("a list that contains itself", b"\x80\x02]q\x00h\x00a."))
    out.append(("a dict that contains itself with a tensor", b"\x80\x02}q\x00(X\x01\x00\x00\x00w" + tensor
                + b"X\x01\x00\x00\x00sh\x00u."))
    out.append(("300,000 MARKs", b"\x80\x02" + b"(" * 300_000 + b"N."))
    out.append(("memo index 2**32-1", b"\x80\x02Nr\xff\xff\xff\xff."))
    out.append(("a tensor of 2**62 x 2**62 elements", tensor.replace(b"K\x02\x85K\x01\x85",
                b"(\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x40\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x40tK\x00K\x00\x86")
                .join([b"\x80\x02}X\x01\x00\x00\x00w", b"s."])))
    out.append(("a 64-dimension tensor", tensor.replace(b"K\x02\x85K\x01\x85", b"(" + b"K\x01" * 64 + b"t("
                + b"K\x01" * 64 + b"t").join([b"\x80\x02}X\x01\x00\x00\x00w", b"s."])))
    out.append(("an integer of 8 million bits as a shape", tensor.replace(b"K\x02\x85", b"\x8b\x00\x00\x10\x00"
                + b"\x01" * (1 << 20) + b"\x85").join([b"\x80\x02}X\x01\x00\x00\x00w", b"s."])))
    return out


def hostile_files() -> list[tuple[str, bytes]]:
    files = []
    for name, pkl in hostile_pickles():
        files.append((f"zip: {name}", _zip_wrap(pkl)))
        # legacy persistent ids carry a sixth item (view metadata, None)
        files.append((f"legacy: {name}", _legacy_wrap(pkl.replace(b"cpuK\x02tQ", b"cpuK\x02NtQ"))))
    return files


# -- the property -------------------------------------------------------------------------------------

@contextmanager
def alarm(seconds: float):
    """Raise :class:`Hang` in the block after ``seconds`` (SIGALRM; main thread only)."""
    def on_alarm(signum, frame):
        raise Hang(f"no answer within {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def check(path: Path, timeout: float = 10.0) -> str:
    """Open ``path`` and read every tensor: "opened" or "refused"; raise anything else (a crash) or
    :class:`Hang`."""
    from workbench.errors import WorkbenchError
    from workbench.formats import open_model

    with alarm(timeout):
        try:
            model = open_model(path)
            try:
                for t in model.tensors:
                    model.tensor(t.name).to_float32()
            finally:
                model.close()
            return "opened"
        except WorkbenchError as exc:
            text = str(exc)
            if len(text) >= 300 or "\n" in text:
                raise AssertionError(f"message of {len(text)} characters / not one line: {text[:120]}...") from None
            return "refused"


def run(seconds: float | None = None, cases: int | None = None, seed: int = 0, timeout: float = 10.0,
        include_fixed: bool = True, workdir: Path | None = None, hostile: bool = True) -> dict:
    """Fuzz for ``seconds`` or ``cases`` random mutants (after the fixed cases: hostile pickles and
    truncation at every opcode boundary when ``include_fixed``).  Returns the counts; crashes and hangs
    are listed with their description (the seed and case number reproduce them)."""
    rng = random.Random(seed)
    seeds = load_seeds()
    stats = {"cases": 0, "opened": 0, "refused": 0, "crashes": [], "hangs": [], "slowest_s": 0.0,
             "slowest": "", "seed": seed}
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t_end = time.monotonic() + seconds if seconds is not None else None

    def fixed() -> Iterator[tuple[str, bytes]]:
        if hostile:
            yield from hostile_files()
        for s in seeds:
            yield from truncations(s)

    def random_cases() -> Iterator[tuple[str, bytes]]:
        i = 0
        while True:
            s = rng.choice(seeds)
            desc, data = mutate(s, rng)
            yield f"{s.name} #{i} (seed {seed}): {desc}", data
            i += 1

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = Path(tmp) / "fuzz.pt"
        streams = ([fixed()] if include_fixed else []) + [random_cases()]
        n_random = 0
        for stream in streams:
            for desc, data in stream:
                is_random = stream is streams[-1]
                if is_random and ((cases is not None and n_random >= cases)
                                  or (t_end is not None and time.monotonic() > t_end)
                                  or (cases is None and t_end is None)):
                    break
                n_random += is_random
                path.unlink(missing_ok=True)  # a fresh file: truncating one still mapped is slow
                path.write_bytes(data)
                t0 = time.perf_counter()
                try:
                    stats[check(path, timeout)] += 1
                except Hang:
                    stats["hangs"].append(desc)
                except BaseException as exc:  # noqa: BLE001 - that is the finding
                    if isinstance(exc, KeyboardInterrupt):
                        raise
                    stats["crashes"].append(f"{desc}: {type(exc).__name__}: {str(exc)[:200]}")
                dt = time.perf_counter() - t0
                if dt > stats["slowest_s"]:
                    stats["slowest_s"], stats["slowest"] = dt, desc
                stats["cases"] += 1
    stats["max_rss_growth_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    return stats


if __name__ == "__main__":
    import json
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    secs = float(sys.argv[1]) if len(sys.argv) > 1 else 10
    print(json.dumps(run(seconds=secs, seed=int(sys.argv[2]) if len(sys.argv) > 2 else 0), indent=1))
