"""Hostile PyTorch checkpoints: code-running pickles are refused (and provably would have run), and
mutated or pathological files open or fail with a short WorkbenchError, never a crash, hang or blow-up.

The payloads are checked live: each one is first unpickled the naive way (as ``torch.load(...,
weights_only=False)`` does, with stand-in ``torch`` modules) in a child process, which must create
its marker file; then ``open_model`` must refuse the same file with UnsafeFileError and create none.
"""
from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from workbench.errors import FormatError, UnsafeFileError, UnsupportedError, WorkbenchError
from workbench.formats import open_model
from workbench.formats import torchbin

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import fuzz_torch  # noqa: E402

LEGACY_HEAD = (b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19." + b"\x80\x02M\xe9\x03."
               + b"\x80\x02}X\x0d\x00\x00\x00little_endian\x88s.")


def U(text: str) -> bytes:  # BINUNICODE
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


class _Reduce:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def state_dict_with(extra: bytes, legacy: bool = False, tensor_args_patch: bytes | None = None) -> bytes:
    """A torch-style protocol-2 state dict {"w": tensor(2 floats)} plus raw key/value opcodes ``extra``."""
    out = torchbin._PickleOut()
    out.ordered_dict()
    out.buf += b"("
    out.text("w")
    out.tensor("FloatStorage", "0", (2,))
    data = bytes(out.buf)
    if tensor_args_patch is not None:  # replace requires_grad (NEWFALSE) by something else
        data = data.replace(b"\x89", tensor_args_patch, 1)
    if legacy:  # legacy persistent ids carry view metadata (None) as a sixth item
        data = data.replace(b"K\x02tQ", b"K\x02NtQ")
    return data + extra + b"u."


def zip_file(pkl: bytes) -> bytes:
    return fuzz_torch._rezip([("archive/data.pkl", pkl), ("archive/data/0", b"\0" * 8), ("archive/version", b"3\n")])


def legacy_file(pkl: bytes, head: bytes = LEGACY_HEAD) -> bytes:
    return head + pkl + b"\x80\x02]X\x01\x00\x00\x000a." + struct.pack("<q", 2) + b"\0" * 8


def payloads(marker: Path) -> list[tuple[str, str, bytes]]:
    """(kind, the global our message must name, file bytes): each creates ``marker`` when unpickled naively."""
    cmd = f"touch {marker}"
    code = f"open({str(marker)!r}, 'w').close()"
    call_system = b"cos\nsystem\n(" + U(cmd) + b"tR"
    inner = pickle.dumps(_Reduce(os.system, cmd), protocol=2)
    return [
        ("GLOBAL+REDUCE os.system inside a legit state dict", "os.system",
         zip_file(state_dict_with(U("evil") + call_system))),
        ("pickle's own spelling of os.system", "posix.system", zip_file(pickle.dumps({"w": _Reduce(os.system, cmd)}))),
        ("nt.system (Windows)", "nt.system", zip_file(b"\x80\x02cnt\nsystem\n(" + U(cmd) + b"tR.")),
        ("builtins.exec via STACK_GLOBAL (protocol 4)", "builtins.exec",
         zip_file(pickle.dumps([1, _Reduce(exec, code)], protocol=4))),
        ("__builtin__.eval (protocol 2)", "builtins.eval", zip_file(pickle.dumps([_Reduce(eval, code)], protocol=2))),
        ("builtins.getattr on __import__('os')", "builtins.getattr",
         zip_file(b"\x80\x02c__builtin__\ngetattr\n(c__builtin__\n__import__\n(" + U("os") + b"tR" + U("system")
                  + b"tR(" + U(cmd) + b"tR.")),
        ("importlib.import_module + getattr", "importlib.import_module",
         zip_file(b"\x80\x02cimportlib\nimport_module\n(" + U("os") + b"tRq\x000c__builtin__\ngetattr\n(h\x00"
                  + U("system") + b"tR(" + U(cmd) + b"tR.")),
        ("subprocess.Popen(...).wait()", "subprocess.Popen",
         zip_file(b"\x80\x02csubprocess\nPopen\n((" + U("touch") + U(str(marker)) + b"ltRq\x000"
                  + b"c__builtin__\ngetattr\n(h\x00" + U("wait") + b"tR)R.")),
        ("INST opcode (protocol 0)", "os.system", zip_file(b"(S'" + cmd.encode() + b"'\nios\nsystem\n.")),
        ("OBJ opcode", "os.system", zip_file(b"\x80\x02(cos\nsystem\n" + U(cmd) + b"o.")),
        ("NEWOBJ functools.partial, then called", "functools.partial",
         zip_file(b"\x80\x02cfunctools\npartial\ncos\nsystem\n" + U(cmd) + b"\x86\x81)R.")),
        ("BUILD: an instance __setstate__ set to os.system", "types.SimpleNamespace",
         zip_file(b"\x80\x02ctypes\nSimpleNamespace\n)\x81N}" + U("__setstate__") + b"cos\nsystem\ns\x86b"
                  + U(cmd) + b"b.")),
        ("a persistent id whose tuple makes the call", "os.system",
         zip_file(b"\x80\x02(" + U("storage") + call_system + U("0") + U("cpu") + b"K\x02tQ.")),
        ("pickle.loads of a nested payload", "pickle.loads",
         zip_file(b"\x80\x02cpickle\nloads\n(B" + struct.pack("<I", len(inner)) + inner + b"tR.")),
        ("os.spawnlp(P_WAIT, ...)", "os.spawnlp",
         zip_file(b"\x80\x02cos\nspawnlp\n(K\x00" + U("touch") + U("touch") + U(str(marker)) + b"tR.")),
        ("runpy._run_code", "runpy._run_code", zip_file(b"\x80\x02crunpy\n_run_code\n(" + U(code) + b"}tR.")),
        ("STACK_GLOBAL with names from the memo", "posix.system",
         zip_file(b"\x80\x04\x8c\x05posix\x94\x8c\x06system\x94h\x00h\x01\x93(" + U(cmd) + b"tR.")),
        ("a call in a tensor's arguments", "os.system", zip_file(state_dict_with(b"", tensor_args_patch=call_system))),
        ("legacy: os.system inside a legit state dict", "os.system",
         legacy_file(state_dict_with(U("evil") + call_system, legacy=True))),
        ("legacy: a payload as the system-info pickle", "os.system",
         legacy_file(state_dict_with(b"", legacy=True), head=LEGACY_HEAD[:21] + b"\x80\x02" + call_system + b".")),
    ]


NAIVE_LOADER = r"""
import io, os, pickle, sys, types, zipfile

class Stub(types.ModuleType):  # torch, as far as a checkpoint's pickle asks for it
    def __getattr__(self, name):
        return lambda *a, **k: None
for name in ("torch", "torch._utils", "torch._tensor", "torch.nn", "torch.nn.parameter", "torch.storage"):
    sys.modules[name] = Stub(name)
nt = types.ModuleType("nt"); nt.system = os.system; sys.modules["nt"] = nt  # as on Windows

class TorchUnpickler(pickle.Unpickler):
    def persistent_load(self, pid):
        return pid

for path in sys.argv[1:]:
    try:
        if open(path, "rb").read(2) == b"PK":  # torch.load: data.pkl with persistent ids
            with zipfile.ZipFile(path) as zf:
                TorchUnpickler(io.BytesIO(zf.read("archive/data.pkl"))).load()
        else:  # torch.serialization._legacy_load: magic, version, sys_info, then the object
            with open(path, "rb") as f:
                for _ in range(3):
                    pickle.load(f)
                TorchUnpickler(f).load()
    except Exception:
        pass
"""


def test_payloads_would_run_naively_and_are_refused(tmp_path):
    cases = []
    for i, (kind, qualname, _data) in enumerate(payloads(tmp_path / "probe")):
        marker = tmp_path / f"MARKER{i}"
        data = payloads(marker)[i][2]
        path = tmp_path / f"payload{i}.pt"
        path.write_bytes(data)
        cases.append((kind, qualname, marker, path))
    assert len({kind for kind, *_ in cases}) >= 17

    # the naive loader (what torch.load without weights_only does) runs every one of them
    subprocess.run([sys.executable, "-c", NAIVE_LOADER, *[str(c[3]) for c in cases]], cwd=tmp_path, timeout=120,
                   check=True, stdin=subprocess.DEVNULL, capture_output=True)
    did_not_run = [kind for kind, _q, marker, _p in cases if not marker.exists()]
    assert not did_not_run, f"payloads that do not run even naively (the test would prove nothing): {did_not_run}"

    for kind, qualname, marker, path in cases:
        marker.unlink()
        with pytest.raises(UnsafeFileError) as info:
            model = open_model(path)
            for t in model.tensors:
                model.tensor(t.name).to_float32()
        text = str(info.value)
        assert qualname in text and path.name in text, (kind, text)
        assert ", byte " in text, (kind, text)  # found by the opcode scan, before any object was built
        assert "\n" not in text and len(text) < 300, (kind, text)
        assert not marker.exists(), kind


# -- pathological but harmless pickles -------------------------------------------------------------

HOSTILE_EXPECT = {  # substring of the message, per hostile pickle (both layouts)
    "DAG of lists, 60 levels": None,  # opens: no tensors, values shared, each object visited once
    "DAG of dicts with a tensor at the bottom": "shares references",
    "lists nested 20,000 deep": "nested more than 64 levels",
    "dicts nested 20,000 deep": "nested more than 64 levels",
    "tuples nested 1,000,000 deep as a dict key": "tuples are nested more than 100 levels",
    "tuples nested 1,000,000 deep in a frozenset": "tuples are nested more than 100 levels",
    "a list that contains itself": "contains itself",
    "a dict that contains itself with a tensor": "contains itself",
    "300,000 MARKs": None,
    "memo index 2**32-1": "memo index 4294967295 is out of range",
    "a tensor of 2**62 x 2**62 elements": "",  # missing storage (zip) / past the end (legacy): any FormatError
    "a 64-dimension tensor": "at most 32",
    "an integer of 8 million bits as a shape": "an integer of 1048576 bytes",
}


@pytest.mark.parametrize("name, data", fuzz_torch.hostile_files(), ids=lambda v: v if isinstance(v, str) else "")
def test_hostile_pickles_open_or_fail_fast(tmp_path, name, data):
    path = tmp_path / "hostile.pt"
    path.write_bytes(data)
    expect = HOSTILE_EXPECT[name.split(": ", 1)[1]]
    t0 = time.perf_counter()
    with fuzz_torch.alarm(10):  # a walk without a memo would never end: fail instead of hanging
        if expect is None:
            model = open_model(path)
            assert model.tensors == []
        else:
            with pytest.raises(FormatError) as info:
                open_model(path)
            text = str(info.value)
            assert expect in text and "hostile.pt" in text and len(text) < 300 and "\n" not in text, text
    assert time.perf_counter() - t0 < 2.0


def test_dag_values_are_shared_not_copied(tmp_path):
    # 2**60 paths: a walk without a memo never ends; with one, each list is converted once
    path = tmp_path / "dag.pt"
    path.write_bytes(dict(fuzz_torch.hostile_files())["zip: DAG of lists, 60 levels"])
    with fuzz_torch.alarm(10):
        _, extra = torchbin.read_bin(path)
    top = extra["values"]["value"]
    assert top[0] is top[1] and top[0][0] is top[0][1]


def test_too_many_opcodes_is_refused_quickly(tmp_path):
    # 1.5 million NONE/POP pairs: over the opcode cap, refused in well under 2 s
    pkl = b"\x80\x02" + b"N0" * 750_001 + b"N."
    path = tmp_path / "many.pt"
    path.write_bytes(zip_file(pkl))
    t0 = time.perf_counter()
    with pytest.raises(UnsupportedError, match="more than 1,000,000 pickle opcodes"):
        open_model(path)
    assert time.perf_counter() - t0 < 2.0


def test_zip_bomb_member_is_never_inflated(tmp_path):
    # data.pkl deflated: 64 MB of zeros in a ~64 KB file; refused from the directory, not inflated
    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("archive/data.pkl", "w", force_zip64=True) as out:
            block = b"\0" * (1 << 20)
            for _ in range(64):
                out.write(block)
    assert path.stat().st_size < 1 << 20
    t0 = time.perf_counter()
    with pytest.raises(UnsupportedError, match="compressed"):
        open_model(path)
    assert time.perf_counter() - t0 < 2.0


def test_huge_zip_directory_claim_is_refused(tmp_path):
    data = bytearray(zip_file(state_dict_with(b"")))
    eocd = data.rfind(b"PK\x05\x06")
    data[eocd + 12:eocd + 16] = struct.pack("<I", 0xFFFFFFF0)  # size of the central directory
    path = tmp_path / "cd.pt"
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="zip directory claims 4294967280 bytes"):
        open_model(path)


def test_a_legit_state_dict_still_opens(tmp_path):
    # the control for the payloads: the same builders without the payload give a readable file
    for name, data in (("z.pt", zip_file(state_dict_with(b""))), ("l.pt", legacy_file(state_dict_with(b"", True)))):
        path = tmp_path / name
        path.write_bytes(data)
        model = open_model(path)
        assert [t.name for t in model.tensors] == ["w"]
        assert model.tensor("w").to_float32().tolist() == [0.0, 0.0]


def test_legacy_storage_count_must_match(tmp_path):
    # the int64 element count before a legacy storage must be the count its tensors were saved with
    good = legacy_file(state_dict_with(b"", legacy=True))
    bad = good[:-16] + struct.pack("<q", 3) + b"\0" * 12  # 3 elements where the pickle says 2
    path = tmp_path / "count.pt"
    path.write_bytes(bad)
    with pytest.raises(FormatError, match="holds 3 elements but its tensors expect 2"):
        open_model(path)


# -- the mutation fuzzer ---------------------------------------------------------------------------

def test_mutation_fuzz(tmp_path):
    """Seeded: the hostile pickles, truncation at every opcode boundary of each torch-made seed, then
    300 random mutants (bit flips, byte replacements, opcode arguments at edge values, opcodes
    replaced, zip fields at edges).  The hostile pickles have their own test above.  A long run:
    bench/fuzz.py calls fuzz_torch.run(seconds=...)."""
    stats = fuzz_torch.run(cases=300, seed=13, timeout=10, workdir=tmp_path, hostile=False)
    assert stats["crashes"] == [] and stats["hangs"] == [], stats
    assert stats["cases"] > 1300 and stats["refused"] > 0 and stats["opened"] > 0, stats
    assert stats["slowest_s"] < 2.0, stats
    assert stats["max_rss_growth_mb"] < 500, stats


def test_fuzz_property_catches_a_crash(tmp_path, monkeypatch):
    # the harness itself: a reader raising a non-WorkbenchError is counted as a crash, a slow one as a hang
    def broken(path):
        raise IndexError("boom")

    monkeypatch.setattr(torchbin, "read_bin", broken)
    stats = fuzz_torch.run(cases=3, seed=0, include_fixed=False, workdir=tmp_path)
    assert len(stats["crashes"]) == 3 and "IndexError: boom" in stats["crashes"][0]

    def slow(path):
        while True:
            pass

    monkeypatch.setattr(torchbin, "read_bin", slow)
    stats = fuzz_torch.run(cases=1, seed=0, include_fixed=False, timeout=0.2, workdir=tmp_path)
    assert len(stats["hangs"]) == 1
    assert issubclass(UnsafeFileError, WorkbenchError)
