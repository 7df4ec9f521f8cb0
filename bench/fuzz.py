#!/usr/bin/env python3
"""Mutation fuzzer for every reader: GGUF (single and split), safetensors (single and sharded index), the JSON
files of Hugging Face folders, PEFT adapter configs, plan files and tokenizer files.

Seeds are real small files (built by ``tests/builders.py``, plus the cached real models where they are cheap);
each case applies one seeded mutation (bit flips, byte replacements, length/count fields set to edge values,
truncation at structure boundaries, JSON values swapped for other types, deep nesting, huge numbers...) and
then opens the result the way the app does: ``workbench.open_model``, every tensor's info, a few tensors
decoded with ``to_float32``, the Q4_K_M plan, the tokenizer where there is one, the plan file.  The property:
that succeeds or raises a ``WorkbenchError`` whose text is one line under 300 characters.  Anything else (another
exception, RecursionError, MemoryError, a case running longer than the time limit) is a failure, printed with
the command that reproduces it.

    python bench/fuzz.py --seconds 600            # long run over every seed, then the summary
    python bench/fuzz.py --repro gguf:1234        # one case again, with its traceback
    python bench/fuzz.py --big                    # hostile ~100 MB files: time and peak memory of each

``tests/core/test_fuzz.py`` runs the same engine for a few seconds.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import random
import resource
import shutil
import signal
import struct
import sys
import tempfile
import time
import tracemalloc
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

TIME_LIMIT = 2.0  # seconds per case (or 4x the unmutated seed's own time, whichever is larger)


class Hang(BaseException):
    """Raised by the timer in the middle of a case that runs too long (a BaseException: no reader swallows it)."""


# -- seeds --------------------------------------------------------------------------------------------------

@dataclass
class Seed:
    name: str
    folder: Path  # the working copy: ``target`` is rewritten for each case and restored after it
    target: str  # the file mutated (relative to folder)
    kind: str  # "gguf", "safetensors" or "json"
    open: str = ""  # what open_model gets (relative to folder; "" = the folder)
    tokenizer: bool = False  # load the tokenizer too
    plan_file: str = ""  # Plan.load this file too
    prefix: bytes = b""  # the target's bytes (for big files: the header only ...)
    tail: int = 0  # ... and this many bytes of zeros after it, written as a sparse file
    fields: list = field(default_factory=list)  # (offset, width, label) of numeric fields in binary formats
    bounds: list = field(default_factory=list)  # structure boundaries (byte offsets) for truncation
    limit: float = TIME_LIMIT
    limit_traced: float = TIME_LIMIT  # the same with tracemalloc on (which slows allocation-heavy code 2-5x)
    base: float = 0.01  # seconds the unmutated seed takes

    @property
    def size(self) -> int:
        return len(self.prefix) + self.tail


def _u32(b, p):
    return struct.unpack_from("<I", b, p)[0]


def _u64(b, p):
    return struct.unpack_from("<Q", b, p)[0]


def gguf_layout(data: bytes) -> tuple[list, list]:
    """Numeric fields and structure boundaries of a valid GGUF, found by walking it (independently of the
    reader under test): counts, lengths, value types, array counts, dimensions, tensor types and offsets."""
    fields = [(4, 4, "version"), (8, 8, "tensor count"), (16, 8, "metadata count")]
    bounds = [0, 4, 8, 16, 24]
    n_tensors, n_kv = _u64(data, 8), _u64(data, 16)
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    pos = 24
    alignment = 32

    def string(label: str, record: bool = True) -> None:
        nonlocal pos
        if record:
            fields.append((pos, 8, label))
        pos += 8 + _u64(data, pos)

    def value(vtype: int, label: str) -> None:
        nonlocal pos
        if vtype == 8:
            string(label + " string length")
        elif vtype in sizes:
            pos += sizes[vtype]
        elif vtype == 9:
            fields.append((pos, 4, label + " array type"))
            item = _u32(data, pos)
            fields.append((pos + 4, 8, label + " array count"))
            count = _u64(data, pos + 4)
            pos += 12
            if item in sizes:
                pos += count * sizes[item]
            else:
                for i in range(count):
                    if i < 3 or i == count - 1:
                        bounds.append(pos)
                    value(item, f"{label}[{i}]") if item == 9 else string(f"{label}[{i}] length", i < 3 or i == count - 1)

    for i in range(n_kv):
        bounds.append(pos)
        key_pos = pos
        string(f"key {i} length")
        key = data[key_pos + 8:pos].decode("utf-8", "replace")
        fields.append((pos, 4, f"{key} type"))
        vtype = _u32(data, pos)
        pos += 4
        if key == "general.alignment":
            alignment = _u32(data, pos)
            fields.append((pos, 4, "general.alignment value"))
        value(vtype, key)
    for i in range(n_tensors):
        bounds.append(pos)
        string(f"tensor {i} name length")
        fields.append((pos, 4, f"tensor {i} n_dims"))
        n_dims = _u32(data, pos)
        pos += 4
        for d in range(n_dims):
            fields.append((pos, 8, f"tensor {i} ne[{d}]"))
            pos += 8
        fields.append((pos, 4, f"tensor {i} type"))
        fields.append((pos + 4, 8, f"tensor {i} offset"))
        pos += 12
    bounds.append(pos)
    bounds.append(-(-pos // alignment) * alignment)
    return fields, sorted(set(b for b in bounds if b <= len(data)))


def st_layout(data: bytes) -> tuple[list, list]:
    hlen = _u64(data, 0)
    bounds = [0, 8, 8 + hlen]
    header = json.loads(data[8:8 + hlen])
    for k, v in header.items():
        if k != "__metadata__":
            bounds += [8 + hlen + v["data_offsets"][0], 8 + hlen + v["data_offsets"][1]]
    return [(0, 8, "header length")], sorted(set(b for b in bounds if b <= len(data)))


def _copy_seed(src: Path, dest: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dest)
    else:
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / src.name)


def _make(name, folder, target, kind, *, big_header_only=False, **kw) -> Seed:
    path = folder / target
    data = path.read_bytes() if not big_header_only else None
    tail = 0
    if big_header_only:  # keep the header, let the data be (sparse) zeros: cheap to rewrite for each case
        with open(path, "rb") as f:
            head = f.read(32 << 20)  # more than any seed's header
        cut = 8 + _u64(head, 0) if kind == "safetensors" else gguf_layout(head)[1][-1]
        with open(path, "rb") as f:
            data = f.read(cut)
        tail = path.stat().st_size - cut
    seed = Seed(name, folder, target, kind, prefix=data, tail=tail, **kw)
    if kind == "gguf":
        seed.fields, seed.bounds = gguf_layout(data)
    elif kind == "safetensors":
        seed.fields, seed.bounds = st_layout(data)
    else:
        seed.bounds = [0, len(data)]
    return seed


MODEL_KEYS = {"tinycoder": "tinycoder", "smollm2": "smollm2", "minilm": "minilm", "t5-lora": "t5-lora",
              "vocab-llama-spm": "llama-vocabs", "vocab-bert-bge": "llama-vocabs", "vocab-gpt-2": "llama-vocabs"}
VOCABS = {"vocab-llama-spm": "ggml-vocab-llama-spm.gguf", "vocab-bert-bge": "ggml-vocab-bert-bge.gguf",
          "vocab-gpt-2": "ggml-vocab-gpt-2.gguf"}


def model_path(name: str, fetched: Path) -> Path:
    """The file or folder a real seed starts from, given what ``fetch_models.ensure(MODEL_KEYS[name])`` returned."""
    return fetched / VOCABS[name] if name in VOCABS else fetched


def real_models() -> dict[str, Path]:
    """The cached real models (those not in the cache are left out: the bench does not download)."""
    try:
        from fetch_models import MODELS, models_dir
    except Exception:  # noqa: BLE001
        return {}
    out = {}
    for name, key in MODEL_KEYS.items():
        requirement, inner, *_ = MODELS[key]
        dest = models_dir() / requirement.replace("==", "-")
        if (dest / ".complete").is_file() and model_path(name, dest / inner).exists():
            out[name] = model_path(name, dest / inner)
    return out


def build_seeds(work: Path, *, real: bool = True, real_tokenizers: bool = True) -> list[Seed]:
    """Every seed, built under ``work``: the builders' files, and with ``real`` the cached real models
    (``real_tokenizers``: build their tokenizers in each case too, ~0.5 s for a 50k-token vocabulary)."""
    seeds = builder_seeds(work)
    if real:
        seeds += real_seeds(work, real_models(), tokenizers=real_tokenizers)
    return seeds


def builder_seeds(work: Path) -> list[Seed]:
    """Seeds from tests/builders.py: a GGUF with a small vocabulary, a split GGUF, an HF folder (safetensors,
    config, generation config, tokenizer files), a plan file, a sharded folder with its index, a PEFT adapter."""
    from builders import build_hf_folder, build_peft_adapter, write_gguf_model

    import workbench
    from workbench.plan import Plan

    seeds: list[Seed] = []
    g = work / "gguf"
    g.mkdir(parents=True)
    write_gguf_model(g / "m.gguf")
    seeds.append(_make("gguf", g, "m.gguf", "gguf", open="m.gguf", tokenizer=True))
    s = work / "split"
    s.mkdir()
    write_gguf_model(s / "s.gguf", split_max_tensors=5)
    seeds.append(_make("gguf-split-1", s, "s-00001-of-00004.gguf", "gguf", open="s-00001-of-00004.gguf",
                       tokenizer=True))
    seeds.append(_make("gguf-split-3", s, "s-00003-of-00004.gguf", "gguf", open="s-00001-of-00004.gguf"))

    hf = work / "hf"
    build_hf_folder(hf)
    (hf / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": {"content": "</s>"}}))
    plan = Plan(workbench.open_model(hf), "Q4_K_M")
    plan.set_rules([(r"attn_v", "Q6_K")])
    plan.set_override("model.layers.0.mlp.down_proj.weight", "Q8_0")
    plan.save(hf / "plan.json")
    seeds.append(_make("safetensors", hf, "model.safetensors", "safetensors", tokenizer=True))
    for fname in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                  "special_tokens_map.json"):
        seeds.append(_make(f"hf-{fname}", hf, fname, "json", tokenizer=True))
    seeds.append(_make("plan", hf, "plan.json", "json", plan_file="plan.json"))

    sh = work / "sharded"
    build_hf_folder(sh, shards=2)
    seeds.append(_make("index", sh, "model.safetensors.index.json", "json"))
    seeds.append(_make("index-open", sh, "model.safetensors.index.json", "json", open="model.safetensors.index.json"))
    seeds.append(_make("shard-2", sh, "model-00002-of-00002.safetensors", "safetensors"))

    pf = work / "peft"
    build_peft_adapter(pf)
    seeds.append(_make("peft-config", pf, "adapter_config.json", "json"))
    seeds.append(_make("peft-weights", pf, "adapter_model.safetensors", "safetensors"))
    return seeds


def real_seeds(work: Path, models: dict[str, Path], *, tokenizers: bool = True) -> list[Seed]:
    """Seeds from real models (``models``: seed name -> path, see :data:`MODEL_KEYS`).  Big files keep their
    header and get zeros (a sparse file) for data; real JSON files go beside a real safetensors header."""
    seeds: list[Seed] = []
    for key in ("tinycoder", "vocab-llama-spm", "vocab-bert-bge", "vocab-gpt-2"):
        if key in models:
            d = work / key
            _copy_seed(models[key], d)
            seeds.append(_make(key, d, models[key].name, "gguf", open=models[key].name, tokenizer=tokenizers))
    if "smollm2" in models:
        d = work / "smollm2"
        d.mkdir()
        os.symlink(models["smollm2"], d / "src.gguf")
        seeds.append(_make("smollm2", d, "src.gguf", "gguf", open="m.gguf", big_header_only=True))
        seeds[-1].target = "m.gguf"
    if "minilm" in models:  # the real JSON files beside the real weights' header
        d = work / "minilm"
        d.mkdir()
        src = models["minilm"]
        for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            shutil.copy2(src / f, d / f)
        os.symlink(src / "model.safetensors", d / "src.safetensors")
        st = _make("minilm-weights", d, "src.safetensors", "safetensors", big_header_only=True)
        st.target = "model.safetensors"
        seeds.append(st)
        for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
            seeds.append(_make(f"minilm-{f}", d, f, "json", tokenizer=True))
    if "t5-lora" in models:
        d = work / "t5-lora"
        d.mkdir()
        src = models["t5-lora"]
        for f in ("adapter_config.json", "tokenizer_config.json"):
            shutil.copy2(src / f, d / f)
        os.symlink(src / "adapter_model.safetensors", d / "src.safetensors")
        st = _make("t5-lora-weights", d, "src.safetensors", "safetensors", big_header_only=True)
        st.target = "adapter_model.safetensors"
        seeds.append(st)
        seeds.append(_make("t5-lora-config", d, "adapter_config.json", "json"))
    for seed in seeds:  # symlinked sources: write the working file once, then drop the link
        if not (seed.folder / seed.target).exists():
            write_case(seed, seed.prefix, seed.size)
        for link in seed.folder.glob("src.*"):
            link.unlink()
    return seeds


# -- mutations ----------------------------------------------------------------------------------------------

EDGES = [0, 1, 2, 7, 8, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53, 2**62,
         2**63 - 1, 2**63, 2**64 - 1]
INTERESTING_BYTES = [0x00, 0x01, 0x7F, 0x80, 0xFF, ord("{"), ord("["), ord('"'), ord("\\"), ord("9")]

POOL = [None, True, False, 0, 1, -1, 2, 2**31, -2**31, 2**32, 2**63, 2**64, 2**70, -2**63 - 1, 1.5, -0.0, 1e308,
        "", "x", "F16", "BF16", "Q4_K", "\u0000", "x" * 2000, "é\ud83d\ude00", [], [0], [-1], [2**64], ["a", "b"],
        [[1, 2]], ["a b"], {}, {"a": None}, {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
        {"content": "<s>"}, [None] * 3]


class Placeholder(str):
    """A value serialized by text substitution (too deep or too big for json.dumps)."""


def _deep(rng: random.Random) -> Placeholder:
    depth = rng.choice([65, 200, 999, 5000, 100_000])
    o, c = rng.choice([("[", "]"), ('{"a":', "}")])
    return Placeholder(o * depth + ("1" if o == "[" else "1") + c * depth)


def _raw_value(rng: random.Random) -> Placeholder:
    return Placeholder(rng.choice(["9" * 5000, "-" + "9" * 400, "1e99999", "NaN", "Infinity", "-Infinity",
                                   "1" + "0" * 30, "[" + ",".join(["[]"] * 20000) + "]",
                                   '"' + "\\ud800" + '"', "0.0000000000000000000000001"]))


def _pick_node(obj, rng: random.Random):
    """A random node of a JSON tree: (parent, key) with parent[key] the node, or (None, None) for the root."""
    parent, key, node = None, None, obj
    while isinstance(node, (dict, list)) and node and rng.random() < 0.8:
        keys = list(node) if isinstance(node, dict) else range(len(node))
        k = rng.choice(list(keys)) if isinstance(node, dict) or len(node) < 50 else rng.randrange(len(node))
        parent, key, node = node, k, node[k]
    return parent, key, node


def _replace(obj, parent, key, value):
    if parent is None:
        return value
    parent[key] = value
    return obj


def mutate_json_value(obj, rng: random.Random) -> tuple[object, str]:
    parent, key, node = _pick_node(obj, rng)
    where = "root" if parent is None else repr(key)[:40]
    op = rng.choice(["swap", "swap", "swap", "edge", "delete", "add", "deep", "raw", "wrap", "dup"])
    if op == "edge" and isinstance(node, (int, float)) and not isinstance(node, bool):
        v = rng.choice(EDGES) * rng.choice([1, -1]) + rng.choice([0, 0, 1, -1])
        return _replace(obj, parent, key, v), f"{where}: {node!r} -> {v}"
    if op == "delete" and isinstance(node, (dict, list)) and node:
        k = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
        del node[k]
        return obj, f"{where}: delete {str(k)[:40]!r}"
    if op == "add" and isinstance(node, dict):
        k = rng.choice(["__metadata__", "dtype", "shape", "data_offsets", "weight_map", "model", "vocab", "id",
                        "special", "content", "r", "lora_alpha", "rules", "overrides", "preset", "x" * 300,
                        "architectures", "model_type", "eos_token_id", "added_tokens"])
        v = copy.deepcopy(rng.choice(POOL))
        node[k] = v
        return obj, f"{where}: add {k[:40]!r}: {str(v)[:40]}"
    if op == "deep":
        return _replace(obj, parent, key, _deep(rng)), f"{where}: deep nesting"
    if op == "raw":
        v = _raw_value(rng)
        return _replace(obj, parent, key, v), f"{where}: raw {v[:30]}"
    if op == "wrap":
        v = rng.choice([[node], {"a": node}])
        return _replace(obj, parent, key, v), f"{where}: wrapped"
    if op == "dup" and isinstance(node, list) and node:
        v = node * rng.choice([2, 1000])
        return _replace(obj, parent, key, v), f"{where}: list x{len(v) // len(node)}"
    v = copy.deepcopy(rng.choice(POOL))
    return _replace(obj, parent, key, v), f"{where}: {type(node).__name__} -> {str(v)[:40]!r}"


def dump_json(obj, rng: random.Random) -> bytes:
    holders: dict[str, str] = {}

    def default(o):
        raise TypeError

    def sub(o):
        if isinstance(o, Placeholder):
            tag = f"@@P{len(holders)}@@"
            holders[tag] = str(o)
            return tag
        if isinstance(o, dict):
            return {k: sub(v) for k, v in o.items()}
        if isinstance(o, list):
            return [sub(v) for v in o]
        return o

    text = json.dumps(sub(obj), ensure_ascii=rng.random() < 0.5, default=default)
    for tag, raw in holders.items():
        text = text.replace(json.dumps(tag), raw)
    return text.encode("utf-8", "surrogatepass")


def mutate_json_bytes(raw: bytes, rng: random.Random) -> tuple[bytes, str]:
    r = rng.random()
    if r < 0.7:
        try:
            obj = json.loads(raw)
        except ValueError:
            obj = None
        if obj is not None:
            desc = []
            for _ in range(rng.choice([1, 1, 1, 2, 3])):
                obj, d = mutate_json_value(obj, rng)
                desc.append(d)
            return dump_json(obj, rng), "json " + "; ".join(desc)
    if r < 0.8 and raw:
        cut = rng.randrange(len(raw))
        return raw[:cut], f"truncated at {cut}"
    b = bytearray(raw)
    if not b:
        return bytes(b), "empty"
    desc = [_poke(b, rng.randrange(len(b)), rng, rng.random() < 0.5) for _ in range(rng.choice([1, 1, 2, 4]))]
    return bytes(b), ", ".join(desc)


def _poke(data: bytearray, p: int, rng: random.Random, flip: bool) -> str:
    """Flip one bit of ``data[p]`` or set it to an interesting byte; returns the description."""
    if flip:
        bit = rng.randrange(8)
        data[p] ^= 1 << bit
        return f"flip byte {p} bit {bit}"
    v = rng.choice(INTERESTING_BYTES + [rng.randrange(256)])
    data[p] = v
    return f"byte {p} = {v:#x}"


def mutate_binary(seed: Seed, rng: random.Random) -> tuple[bytes, int, str]:
    """A mutated (prefix, total size) of a binary seed and a description."""
    data = bytearray(seed.prefix)
    size = seed.size
    head_end = max(seed.bounds) if seed.bounds else len(data)
    op = rng.choice(["flip", "flip", "byte", "field", "field", "field", "truncate", "truncate", "insert",
                     "delete", "json"] if seed.kind == "safetensors" else
                    ["flip", "flip", "byte", "field", "field", "field", "field", "truncate", "truncate", "insert",
                     "delete", "swap-fields"])
    if op == "json" and seed.kind == "safetensors":
        hlen = _u64(data, 0)
        header, desc = mutate_json_bytes(bytes(data[8:8 + hlen]), rng)
        keep_len = rng.random() < 0.2
        new_len = hlen if keep_len else len(header)
        out = struct.pack("<Q", new_len) + header + bytes(data[8 + hlen:])
        return out, len(out) + seed.tail, f"header {desc}" + (" (old length kept)" if keep_len else "")
    if op in ("flip", "byte"):
        desc = []
        for _ in range(rng.choice([1, 1, 1, 2, 3, 8])):
            p = rng.randrange(min(len(data), head_end + 64)) if rng.random() < 0.9 else rng.randrange(len(data))
            desc.append(_poke(data, p, rng, op == "flip"))
        return bytes(data), size, ", ".join(desc)
    if op == "field" and seed.fields:
        off, width, label = rng.choice(seed.fields)
        mask = (1 << (8 * width)) - 1
        cur = int.from_bytes(data[off:off + width], "little")
        v = rng.choice(EDGES + [size - 1, size, size + 1, cur + 1, cur - 1, cur * 2, cur + len(data) - off, -1])
        v &= mask
        data[off:off + width] = v.to_bytes(width, "little")
        return bytes(data), size, f"field {label} at byte {off}: {cur} -> {v}"
    if op == "swap-fields" and len(seed.fields) > 1:
        (a, wa, la), (b, wb, lb) = rng.sample(seed.fields, 2)
        w = min(wa, wb)
        data[a:a + w], data[b:b + w] = data[b:b + w], data[a:a + w]
        return bytes(data), size, f"swapped {la} and {lb}"
    if op == "insert":
        p = rng.randrange(head_end + 1)
        junk = bytes(rng.randrange(256) for _ in range(rng.choice([1, 4, 8, 13])))
        return bytes(data[:p] + junk + data[p:]), size + len(junk), f"inserted {len(junk)} bytes at {p}"
    if op == "delete":
        p = rng.randrange(max(1, head_end))
        n = rng.choice([1, 4, 8])
        return bytes(data[:p] + data[p + n:]), max(size - n, len(data) - n), f"deleted {n} bytes at {p}"
    # truncate at a structure boundary (or near one), or anywhere
    if seed.bounds and rng.random() < 0.8:
        cut = max(0, rng.choice(seed.bounds) + rng.choice([0, 0, -1, 1, -4, 4]))
    else:
        cut = rng.randrange(size)
    cut = min(cut, size - 1)
    return bytes(data[:cut]), cut, f"truncated at {cut}"


def mutate(seed: Seed, rng: random.Random) -> tuple[bytes, int, str]:
    if seed.kind == "json":
        raw, desc = mutate_json_bytes(seed.prefix, rng)
        return raw, len(raw), desc
    return mutate_binary(seed, rng)


def write_case(seed: Seed, prefix: bytes, size: int) -> None:
    """Write the file as a new inode (models still mapping the old one keep it), zeros after ``prefix``."""
    path = seed.folder / seed.target
    tmp = path.with_name(path.name + ".fuzz-tmp")
    with open(tmp, "wb") as f:
        f.write(prefix[:size])
        if size > len(prefix):
            f.truncate(size)
    os.replace(tmp, path)


# -- the property ----------------------------------------------------------------------------------------

def exercise(seed: Seed) -> None:
    """Open the seed's model as the app does and touch everything opening promises."""
    import workbench
    from workbench.infer.tokenizer import load_tokenizer
    from workbench.plan import Plan

    model = workbench.open_model(seed.folder / seed.open)
    try:
        model.summary()
        model.layers()
        for t in model.tensors:
            (t.name, t.shape, t.dtype, t.nbytes, t.n_params, t.layer)
        for t in model.tensors[:2] + model.tensors[-1:]:
            model.tensor(t.name).to_float32()
        for entries in model.metadata.values():
            for e in entries:
                (e.key, e.vtype, e.length)
        if model.format != "peft":  # an adapter has no quantization plan (refused by design)
            Plan(model, "Q4_K_M").nbytes
        if seed.tokenizer and (model.format == "gguf" and model.meta("tokenizer.ggml.model") is not None
                               or (model.path if model.path.is_dir() else model.path.parent).joinpath(
                                   "tokenizer.json").is_file()):
            load_tokenizer(model)
        if seed.plan_file:
            Plan.load(model, seed.folder / seed.plan_file).nbytes
    finally:
        model.close()


@dataclass
class Outcome:
    seed: str
    case: int
    desc: str
    result: str  # "ok", "error" (a WorkbenchError), "crash", "hang", "bad-message"
    detail: str
    seconds: float
    peak: int = 0  # bytes (tracemalloc), when measured

    @property
    def failed(self) -> bool:
        return self.result in ("crash", "hang", "bad-message")

    def repro(self) -> str:
        return f"python bench/fuzz.py --repro {self.seed}:{self.case}"


def _on_alarm(signum, frame):
    raise Hang()


def run_case(seed: Seed, case: int, *, trace_memory: bool = False, limit: float | None = None) -> Outcome:
    from workbench.errors import WorkbenchError

    rng = random.Random(f"{seed.name}:{case}")
    prefix, size, desc = mutate(seed, rng)
    write_case(seed, prefix, size)
    limit = limit or (seed.limit_traced if trace_memory else seed.limit)
    old = signal.signal(signal.SIGALRM, _on_alarm)
    if trace_memory:
        tracemalloc.start()
    start = time.perf_counter()
    result, detail, native = "ok", "", ""
    sys.stderr.flush()
    saved_fd2 = os.dup(2)
    err_file = tempfile.TemporaryFile()
    os.dup2(err_file.fileno(), 2)  # what native code prints (a Rust panic's message) shows which case it was
    try:
        signal.setitimer(signal.ITIMER_REAL, limit)
        try:
            exercise(seed)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            sys.stderr.flush()
            os.dup2(saved_fd2, 2)
            os.close(saved_fd2)
            err_file.seek(0)
            native = err_file.read(4000).decode("utf-8", "replace")
            err_file.close()
        if "panicked at" in native:
            result, detail = "crash", "native panic: " + native.split("panicked at", 1)[1].strip()[:200]
    except Hang:
        result, detail = "hang", f"still running after {limit:.1f} s"
    except WorkbenchError as exc:
        text = str(exc)
        if "panicked at" in native:
            result, detail = "crash", "native panic: " + native.split("panicked at", 1)[1].strip()[:200]
        elif "\n" in text or len("error: " + text) >= 300:
            result, detail = "bad-message", f"{len(text)} characters, {text.count(chr(10)) + 1} lines: {text[:200]!r}"
        else:
            result, detail = "error", text
    except (Exception, RecursionError, MemoryError) as exc:  # noqa: BLE001 - a crash is what we look for
        tb = traceback.extract_tb(exc.__traceback__)
        where = f"{Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else "?"
        result, detail = "crash", f"{type(exc).__name__} at {where}: {str(exc)[:200]}"
    finally:
        signal.signal(signal.SIGALRM, old)
    seconds = time.perf_counter() - start
    peak = 0
    if trace_memory:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    write_case(seed, seed.prefix, seed.size)  # restore
    return Outcome(seed.name, case, desc, result, detail, seconds, peak)


def calibrate(seeds: list[Seed], trace_memory: bool = False) -> None:
    """Open every unmutated seed (it must open cleanly) and set its time limits from how long that takes."""
    for seed in seeds:
        for traced in (False, True) if trace_memory else (False,):
            if traced:
                tracemalloc.start()
            start = time.perf_counter()
            exercise(seed)
            seconds = time.perf_counter() - start
            limit = max(TIME_LIMIT, 4 * seconds)
            if traced:
                tracemalloc.stop()
                seed.limit_traced = limit
            else:
                seed.limit = seed.limit_traced = limit
                seed.base = seconds


# -- hostile big files -------------------------------------------------------------------------------------

def big_cases(work: Path, mb: int = 100) -> dict[str, Path]:
    """Hand-built hostile files: ~``mb`` MB of whatever costs a naive reader most per byte (refused), and files
    just inside each of the readers' limits (the most a file can make them do)."""
    from builders import gguf_string, raw_gguf

    from workbench.formats import gguf as gguf_fmt
    from workbench.formats import hf
    from workbench.formats import safetensors as st_fmt

    size = mb << 20
    out: dict[str, Path] = {}

    def put(name: str, data: bytes) -> None:
        (work / name).write_bytes(data)
        out[name] = work / name

    def folder(name: str, tokenizer_json: bytes) -> None:
        d = work / name
        d.mkdir()
        (d / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
        (d / "tokenizer.json").write_bytes(tokenizer_json)
        (d / "model.safetensors").write_bytes(struct.pack("<Q", 2) + b"{}")
        out[f"{name}/tokenizer.json"] = d

    # ~mb MB of the cheapest items: refused before anything is allocated per item
    def gguf_tensors(n: int) -> bytes:  # n F32 tensors of 8 values (builders.raw_gguf is quadratic in n)
        head = b"GGUF" + struct.pack("<IQQ", 3, n, 0) + b"".join(
            gguf_string(f"t{i:x}") + struct.pack("<IQIQ", 1, 8, 0, 32 * i) for i in range(n))
        return head + b"\0" * (-len(head) % 32) + b"\0" * 32 * n

    n = (size - 64) // 8
    put("gguf-empty-strings.gguf", raw_gguf(kv=gguf_string("a") + struct.pack("<IIQ", 9, 8, n) + b"\0" * 8 * n, n_kv=1))
    n = (size - 64) // 12
    put("gguf-empty-arrays.gguf", raw_gguf(kv=gguf_string("a") + struct.pack("<IIQ", 9, 9, n)
                                           + struct.pack("<IQ", 0, 0) * n, n_kv=1))
    n = size // 40
    put("gguf-many-tensors.gguf", b"GGUF" + struct.pack("<IQQ", 3, n, 0)
        + b"".join(gguf_string(f"{i:x}") + struct.pack("<IQIQ", 1, 1, 0, 0) for i in range(n)))
    header = b'{"__metadata__":{"a":[' + b",".join([b"[]"] * ((size - 40) // 3)) + b"]}}"
    put("st-many-lists.safetensors", struct.pack("<Q", len(header)) + header)
    header = b'{"a":' + b"[" * (size // 2 - 10) + b"]" * (size // 2 - 10) + b"}"
    put("st-deep.safetensors", struct.pack("<Q", len(header)) + header)
    folder("tok-deep", b"[" * (size // 2) + b"]" * (size // 2))
    folder("tok-bigint", b'{"model":{"vocab":' + b"9" * (size - 40) + b"}}")
    # just inside the limits: the most work a file can ask for
    n = gguf_fmt.MAX_STRINGS - 10
    per = max(0, min(64, (size - 64) // n - 8))
    put("gguf-strings-at-limit.gguf", raw_gguf(kv=gguf_string("a") + struct.pack("<IIQ", 9, 8, n)
                                               + gguf_string("x" * per) * n, n_kv=1))
    n = gguf_fmt.MAX_NESTED - 1
    put("gguf-nested-at-limit.gguf", raw_gguf(kv=gguf_string("a") + struct.pack("<IIQ", 9, 9, n)
                                              + (struct.pack("<IQ", 4, 1) + b"\0" * 4) * n, n_kv=1))
    n = gguf_fmt.MAX_KEYS
    put("gguf-keys-at-limit.gguf", raw_gguf(kv=b"".join(gguf_string(f"k{i:x}") + struct.pack("<IB", 0, 0)
                                                        for i in range(n)), n_kv=n))
    n = gguf_fmt.MAX_TENSORS
    put("gguf-tensors-at-limit.gguf", gguf_tensors(n))
    n = st_fmt.MAX_TENSORS
    header = ("{" + ",".join(f'"t{i:x}":{{"dtype":"F32","shape":[1],"data_offsets":[{4 * i},{4 * i + 4}]}}'
                             for i in range(n)) + "}").encode()
    put("st-tensors-at-limit.safetensors", struct.pack("<Q", len(header)) + header + b"\0" * 4 * n)
    n = hf.MAX_JSON_ITEMS
    folder("tok-lists-at-limit", b'{"model":{"merges":[' + b",".join([b"[]"] * n) + b"]}}")
    folder("tok-dicts-at-limit", b'{"model":{"merges":[' + b",".join([b'{"a":1.5}'] * (n // 2)) + b"]}}")
    folder("tok-strings-at-limit", b'{"model":{"vocab":[' + b",".join([b'"' + b"x" * 24 + b'"'] * n) + b"]}}")
    return out


_CHILD = """
import json, resource, sys, time
sys.path.insert(0, sys.argv[2])
import workbench
from workbench.errors import WorkbenchError

def hwm():  # peak resident KB of this process (VmHWM: unlike ru_maxrss, not inherited from the parent)
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

rss0 = hwm()
start = time.perf_counter()
try:
    m = workbench.open_model(sys.argv[1])
    res = f"opened ({len(m.tensors)} tensors)"
except WorkbenchError as exc:
    res = "refused: " + str(exc).replace(sys.argv[1], "").lstrip(": /")
except BaseException as exc:
    res = f"CRASH {type(exc).__name__}: {str(exc)[:100]}"
dt = time.perf_counter() - start
print(json.dumps({"seconds": dt, "rss0": rss0, "rss": hwm(), "result": res}))
"""


def run_big(work: Path, mb: int) -> int:
    """Open each hostile file in a fresh process: wall time of open_model and the process's peak memory."""
    import subprocess

    print(f"hostile files (~{mb} MB, or just inside a limit), each opened in a fresh process: open_model's time and "
          "the process's peak resident memory, interpreter included (limits: 2 s, 1 GB)")
    bad = 0
    for name, path in big_cases(work, mb).items():
        try:
            proc = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(ROOT)], capture_output=True,
                                  text=True, timeout=120)
            r = json.loads(proc.stdout.strip().splitlines()[-1])
        except subprocess.TimeoutExpired:
            r = {"seconds": 120.0, "rss0": 0, "rss": 0, "result": "HANG (killed after 120 s)"}
        except (ValueError, IndexError):
            r = {"seconds": 0.0, "rss0": 0, "rss": 0, "result": "CRASH " + proc.stderr.strip()[-200:]}
        peak = r["rss"] * 1024
        over = r["seconds"] > 2 or peak > 1 << 30 or r["result"].startswith(("CRASH", "HANG"))
        bad += over
        size = path.stat().st_size if path.is_file() else (path / "tokenizer.json").stat().st_size
        print(f"  {name:36s} {size / 2**20:6.1f} MB {r['seconds']:6.2f} s  peak RSS {peak / 2**20:5.0f} MB "
              f"(after import {r['rss0'] / 1024:.0f})  {r['result'][:110]}{'  <-- OVER' if over else ''}", flush=True)
    return bad


# -- the driver -------------------------------------------------------------------------------------------

def fuzz(seeds: list[Seed], *, seconds: float | None = None, cases: int | None = None, start: int = 0,
         memory_every: int = 0, report: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """Round-robin over the seeds, ``cases`` per seed or until ``seconds`` have passed (in a timed run a cheap
    seed gets more cases per round than one whose tokenizer takes a second to build); every
    ``memory_every``-th case of each seed runs under tracemalloc to measure its peak."""
    outcomes: list[Outcome] = []
    end = time.monotonic() + seconds if seconds else math.inf
    nxt = {s.name: start for s in seeds}
    while time.monotonic() < end and (cases is None or min(nxt.values()) < start + cases):
        for seed in seeds:
            share = 1 if cases is not None else max(1, min(20, int(0.1 / max(seed.base, 1e-3))))
            for _ in range(share):
                i = nxt[seed.name]
                if cases is not None and i >= start + cases:
                    break
                nxt[seed.name] = i + 1
                o = run_case(seed, i, trace_memory=bool(memory_every) and i % memory_every == 0)
                outcomes.append(o)
                if report:
                    report(o)
                if time.monotonic() >= end:
                    return outcomes
    return outcomes


def run_torch(seconds: float, seed: int) -> int:
    """The PyTorch fuzzer of tests/fuzz_torch.py for ``seconds``: prints cases, crashes and hangs."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import fuzz_torch

    r = fuzz_torch.run(seconds=seconds, seed=seed)
    for line in r["crashes"] + r["hangs"]:
        print("FAIL", line)
    print(f"{r['cases']} cases ({r['opened']} opened, {r['refused']} refused with a WorkbenchError): "
          f"{len(r['crashes'])} crashes, {len(r['hangs'])} hangs; slowest {r['slowest_s']:.2f} s; "
          f"peak memory growth {r['max_rss_growth_mb']:.0f} MB")
    return 1 if r["crashes"] or r["hangs"] else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60, help="how long to run (default 60)")
    ap.add_argument("--start", type=int, default=0, help="first case number (runs are deterministic)")
    ap.add_argument("--seeds", default="", help="comma-separated seed names (default: all)")
    ap.add_argument("--no-real", action="store_true", help="only the seeds built by tests/builders.py")
    ap.add_argument("--no-memory", action="store_true",
                    help="do not measure the peak memory of every 4th case with tracemalloc")
    ap.add_argument("--repro", help="SEED:CASE: run one case and show its traceback")
    ap.add_argument("--big", action="store_true", help="open hostile ~100 MB files and report time and memory")
    ap.add_argument("--big-mb", type=int, default=100)
    ap.add_argument("--torch", action="store_true",
                    help="PyTorch checkpoints instead (zip and legacy pickles: hostile payloads, truncation at every "
                         "opcode, seeded mutants; tests/fuzz_torch.py)")
    ap.add_argument("--seed", type=int, default=0, help="random seed of the --torch run")
    args = ap.parse_args(argv)
    import warnings

    warnings.simplefilter("ignore", RuntimeWarning)  # NaN/overflow while decoding random bytes as weights
    if args.torch:
        return run_torch(args.seconds, args.seed)

    with tempfile.TemporaryDirectory(prefix="wb-fuzz-") as tmp:
        work = Path(tmp)
        if args.big:
            return 1 if run_big(work, args.big_mb) else 0
        seeds = build_seeds(work / "seeds", real=not args.no_real)
        if args.seeds:
            wanted = set(args.seeds.split(","))
            seeds = [s for s in seeds if s.name in wanted]
        calibrate(seeds, trace_memory=not args.no_memory)
        if args.repro:
            name, case = args.repro.rsplit(":", 1)
            seed = next(s for s in seeds if s.name == name)
            rng = random.Random(f"{seed.name}:{int(case)}")
            prefix, size, desc = mutate(seed, rng)
            print(f"{seed.name}:{case}: {desc}")
            write_case(seed, prefix, size)
            exercise(seed)  # raises with the full traceback
            print("opened without error")
            return 0
        print(f"{len(seeds)} seeds: {', '.join(s.name for s in seeds)}")
        counts: dict[str, int] = {}
        failures: list[Outcome] = []
        t0 = time.monotonic()
        last = [t0]

        def report(o: Outcome) -> None:
            counts[o.result] = counts.get(o.result, 0) + 1
            if o.failed:
                failures.append(o)
                print(f"FAIL {o.result}: {o.seed}:{o.case} [{o.desc[:120]}] {o.detail}\n  repro: {o.repro()}",
                      flush=True)
            if time.monotonic() - last[0] > 30:
                last[0] = time.monotonic()
                print(f"  {time.monotonic() - t0:5.0f} s: {sum(counts.values())} cases {counts}", flush=True)

        outcomes = fuzz(seeds, seconds=args.seconds, start=args.start, memory_every=0 if args.no_memory else 4,
                        report=report)
        n = len(outcomes)
        crashes = sum(o.result in ("crash", "bad-message") for o in outcomes)
        hangs = sum(o.result == "hang" for o in outcomes)
        print(f"\n{n} cases in {time.monotonic() - t0:.0f} s ({counts.get('ok', 0)} opened, "
              f"{counts.get('error', 0)} refused with a WorkbenchError): {crashes} crashes, {hangs} hangs")
        slow = max((o for o in outcomes if not o.peak), key=lambda o: o.seconds, default=outcomes[0])
        print(f"slowest case: {slow.seconds:.2f} s  {slow.seed}:{slow.case} [{slow.desc[:100]}] {slow.result}")
        if not args.no_memory:
            big = max(outcomes, key=lambda o: o.peak)
            print(f"most memory (tracemalloc peak, every 4th case): {big.peak / 2**20:.1f} MB  {big.seed}:{big.case} "
                  f"[{big.desc[:100]}] {big.result}")
        per_seed: dict[str, list[Outcome]] = {}
        for o in outcomes:
            per_seed.setdefault(o.seed, []).append(o)
        for name, os_ in per_seed.items():
            ok = sum(o.result == "ok" for o in os_)
            print(f"  {name:28s} {len(os_):6d} cases  {ok:6d} opened  max {max(o.seconds for o in os_):.2f} s")
        return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
