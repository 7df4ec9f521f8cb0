"""Metadata around the weights: config.json, generation_config.json, tokenizer files, GGUF keys."""
from __future__ import annotations

import gc
import json
import operator
import os
from collections import OrderedDict
from itertools import chain, compress, repeat
from pathlib import Path
from typing import Any

import numpy as np
from gguf import LlamaFileType, TokenType

from ..errors import FormatError, MissingFileError, quote, short
from ..model import MetaEntry
from .gguf import GGUFField

JSON_FILES = ("config.json", "generation_config.json", "adapter_config.json", "tokenizer_config.json",
              "special_tokens_map.json")

# Limits for every JSON file read (configs, tokenizer.json, indexes, plans, safetensors headers).  The largest
# real files (a 262k-token tokenizer.json: ~35 MB, under a million items, 6 levels) stay far below them; a
# hostile file is refused before it costs more than ~1 GB or ~2 s.
MAX_JSON_BYTES = 100 * 1024 * 1024
MAX_JSON_ITEMS = 3_000_000  # commas: every array item or object member after the first needs one
MAX_JSON_DEPTH = 64


def parse_json(raw: bytes | str, path, what: str = "") -> Any:
    """``json.loads`` for data read from a file, with the limits above: a :class:`FormatError` naming ``path``
    for invalid JSON, too many items or too deep nesting (never a RecursionError or MemoryError)."""
    label = f"{what} " if what else ""
    if len(raw) > MAX_JSON_BYTES:
        raise FormatError(f"{label}JSON is {len(raw)} bytes, more than the {MAX_JSON_BYTES >> 20} MB Model Workbench "
                          "reads", path=path)
    items = raw.count(b"," if isinstance(raw, bytes) else ",")
    if items > MAX_JSON_ITEMS:
        raise FormatError(f"{label}JSON has {items} items, more than the {MAX_JSON_ITEMS} Model Workbench reads",
                          path=path)
    deep = False
    collect = gc.isenabled()
    gc.disable()  # the cyclic collector would rescan the growing tree again and again (2-3x the parse time)
    try:
        obj = json.loads(raw)
        deep = json_depth(obj) > MAX_JSON_DEPTH
    except RecursionError:
        obj, deep = None, True
    except json.JSONDecodeError as exc:
        raise FormatError(f"{label}not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno}, char {exc.pos})",
                          path=path, hint="Fix or remove the file and open the model again.") from None
    except UnicodeDecodeError as exc:
        raise FormatError(f"{label}not valid JSON: invalid UTF-8 at byte {exc.start}", path=path) from None
    except ValueError as exc:  # e.g. an integer literal of more than 4300 digits
        raise FormatError(f"{label}not valid JSON: {quote(str(exc), 80)}", path=path) from None
    finally:
        if collect:
            gc.enable()
    if deep:
        raise FormatError(f"{label}JSON is nested more than {MAX_JSON_DEPTH} levels deep", path=path)
    return obj


def json_depth(obj: Any, limit: int = MAX_JSON_DEPTH) -> int:
    """Nesting depth of a parsed JSON value (0 for a scalar), counted up to ``limit + 1``; no recursion and no
    Python-level loop per item (a level at a time with C iterators), so a big tokenizer.json costs little."""
    lists, dicts = ([obj], []) if type(obj) is list else ([], [obj]) if type(obj) is dict else ([], [])
    depth = 0
    while (lists or dicts) and depth <= limit:
        depth += 1
        vals = list(chain(chain.from_iterable(lists), chain.from_iterable(map(dict.values, dicts))))
        types = list(map(type, vals))
        kinds = set(types)
        if list in kinds and dict in kinds or len(kinds) > 1:
            lists = list(compress(vals, map(operator.is_, types, repeat(list)))) if list in kinds else []
            dicts = list(compress(vals, map(operator.is_, types, repeat(dict)))) if dict in kinds else []
        else:  # one kind only (a list of lists, a list of numbers...): no filtering pass
            lists, dicts = (vals, []) if list in kinds else ([], vals) if dict in kinds else ([], [])
    return depth


def read_json_bytes(path: Path) -> bytes:
    """A JSON file's bytes, its size checked against :data:`MAX_JSON_BYTES` before reading."""
    path = Path(path)
    try:
        size = os.path.getsize(path)
        if size > MAX_JSON_BYTES:
            raise FormatError(f"JSON file is {size} bytes, more than the {MAX_JSON_BYTES >> 20} MB Model Workbench "
                              "reads", path=path)
        return path.read_bytes()
    except OSError as exc:
        raise FormatError(f"could not be read: {exc.strerror or exc.__class__.__name__}", path=path) from None


def load_json(path: Path) -> Any:
    """A JSON file parsed with the limits of :func:`parse_json` (size checked before reading)."""
    return parse_json(read_json_bytes(path), Path(path))


def load_json_if_present(path: Path) -> Any:
    """The parsed file, or None when it does not exist (a FormatError when it is not valid JSON)."""
    return load_json(path) if Path(path).is_file() else None


def load_json_object(path: Path, required: bool = False) -> dict:
    """A JSON file that must hold an object: ``{}`` when it is absent (unless ``required``), a FormatError
    when it holds something else."""
    if not required and not Path(path).is_file():
        return {}
    obj = load_json(path)
    if not isinstance(obj, dict):
        raise FormatError(f"expected a JSON object, found {hf_type_name(obj)}", path=path)
    return obj


def hf_type_name(value: Any) -> str:
    return {"int": "a number", "float": "a number", "bool": "true/false", "string": "a string",
            "array": "an array", "object": "an object", "null": "null"}.get(json_type(value), json_type(value))


def expect_type(value: Any, types, what: str, path) -> Any:
    """``value`` when it is one of ``types`` (bool never counts as int), else a FormatError naming ``what``."""
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in (types if isinstance(types, tuple)
                                                                                     else (types,)))
    if not ok:
        names = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        names = names.replace("str", "string").replace("dict", "object").replace("list", "array")
        raise FormatError(f"{what} should be {names} but is {hf_type_name(value)} {quote(value)}", path=path)
    return value


def read_shard_index(index_path: Path) -> tuple[list[Path], dict[str, str], dict[str, Any]]:
    """Parse a sharded checkpoint's index (``model.safetensors.index.json``, ``pytorch_model.bin.index.json``):
    (shard files in order of first use, weight_map, index metadata).  Every shard must be in the folder."""
    index_path = Path(index_path)
    if not index_path.is_file():
        raise MissingFileError("no such index file", path=index_path)
    index = load_json(index_path)
    wmap = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(wmap, dict) or not all(isinstance(v, str) for v in wmap.values()):
        raise FormatError("index has no weight_map of tensor name -> shard file name", path=index_path)
    files: list[Path] = []
    for shard in dict.fromkeys(wmap.values()):
        if not shard or Path(shard).name != shard or shard in (".", ".."):
            raise FormatError(f"index names shard {quote(shard)} outside the model folder", path=index_path)
        p = index_path.parent / shard
        if not p.is_file():
            raise MissingFileError(f"shard {short(shard)} named by the index is missing", path=index_path,
                                   hint="Download the complete set of shards into the same folder.")
        files.append(p)
    meta = index.get("metadata") or {}
    return files, dict(wmap), meta if isinstance(meta, dict) else {}


def json_type(value: Any) -> str:
    """A readable type name for a metadata value (JSON values, numpy scalars and arrays)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple, np.ndarray)):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null" if value is None else type(value).__name__


def json_entries(obj: dict) -> list[MetaEntry]:
    return [MetaEntry(str(k), json_type(v), v) for k, v in obj.items()]


def folder_metadata(folder: Path) -> "OrderedDict[str, list[MetaEntry]]":
    """config.json and friends as groups (nested objects stay dicts: the GUI shows them as a tree)."""
    groups: OrderedDict[str, list[MetaEntry]] = OrderedDict()
    for name in JSON_FILES:
        p = folder / name
        if p.is_file():
            obj = load_json(p)
            if isinstance(obj, dict):
                groups[name] = json_entries(obj)
    tok = tokenizer_summary(folder)
    if tok:
        groups["tokenizer"] = tok
    return groups


def tokenizer_summary(folder: Path) -> list[MetaEntry]:
    """What the tokenizer files say, for the metadata view (values of an unexpected type are left out; loading
    the tokenizer names them)."""
    def obj_of(value) -> dict:
        return value if isinstance(value, dict) else {}

    entries: list[MetaEntry] = []
    tj = folder / "tokenizer.json"
    if tj.is_file():
        obj = obj_of(load_json(tj))
        model = obj_of(obj.get("model"))
        vocab = model.get("vocab")
        entries.append(MetaEntry("file", "string", "tokenizer.json"))
        entries.append(MetaEntry("model", "string", short(model.get("type", "?"))))
        if isinstance(vocab, (list, dict)):
            entries.append(MetaEntry("vocab size", "int", len(vocab)))
        merges = model.get("merges")
        if isinstance(merges, list):
            entries.append(MetaEntry("merges", "int", len(merges)))
        added = obj.get("added_tokens")
        added = added if isinstance(added, list) else []
        entries.append(MetaEntry("added tokens", "array", [a.get("content") for a in added if isinstance(a, dict)]))
        for part in ("normalizer", "pre_tokenizer", "decoder"):
            sub = obj.get(part)
            if isinstance(sub, dict):
                entries.append(MetaEntry(part, "string", short(sub.get("type"))))
    else:
        for name in ("tokenizer.model", "vocab.txt", "vocab.json", "spiece.model"):
            if (folder / name).is_file():
                entries.append(MetaEntry("file", "string", name))
    tc = folder / "tokenizer_config.json"
    if tc.is_file():
        cfg = load_json(tc)
        if isinstance(cfg, dict):
            for key in ("bos_token", "eos_token", "unk_token", "pad_token", "model_max_length"):
                if key in cfg:
                    v = cfg[key]
                    v = v.get("content") if isinstance(v, dict) else v
                    entries.append(MetaEntry(key, json_type(v), v))
            if cfg.get("chat_template"):
                entries.append(MetaEntry("chat_template", json_type(cfg["chat_template"]), cfg["chat_template"]))
    return entries


def architecture_from_config(config: Any) -> str | None:
    if not isinstance(config, dict):
        return None
    archs = config.get("architectures")
    if isinstance(archs, list) and archs and isinstance(archs[0], str):
        return archs[0]
    model_type = config.get("model_type")
    return model_type if isinstance(model_type, str) else None


# -- GGUF ---------------------------------------------------------------------------------------

def _decode_enum(key: str, value: Any) -> str | None:
    try:
        if key == "general.file_type":
            return LlamaFileType(int(value)).name
    except (ValueError, TypeError, OverflowError):
        return "unknown"
    return None


def gguf_metadata(fields: "OrderedDict[str, GGUFField]") -> "OrderedDict[str, list[MetaEntry]]":
    groups: OrderedDict[str, list[MetaEntry]] = OrderedDict()
    entries = []
    for key, f in fields.items():
        entries.append(MetaEntry(key, f.type_name, f.value, _decode_enum(key, f.value)))
    groups["GGUF"] = entries
    tok = gguf_tokenizer_summary(fields)
    if tok:
        groups["tokenizer"] = tok
    return groups


def gguf_tokenizer_summary(fields: "OrderedDict[str, GGUFField]") -> list[MetaEntry]:
    """The tokenizer keys of a GGUF, summarized (keys of an unexpected type are left out here: loading the
    tokenizer names them)."""
    def val(key, default=None, types=None):
        f = fields.get(key)
        if f is None or (types is not None and not isinstance(f.value, types)):
            return default
        return f.value

    def is_int(v) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))

    tokens = val("tokenizer.ggml.tokens", types=list)
    if tokens is None and val("tokenizer.ggml.model") is None:
        return []
    out = [MetaEntry("model", "string", val("tokenizer.ggml.model", "?", str))]
    if val("tokenizer.ggml.pre", types=str) is not None:
        out.append(MetaEntry("pre-tokenizer", "string", val("tokenizer.ggml.pre")))
    if tokens is not None:
        out.append(MetaEntry("vocab size", "int", len(tokens)))
    merges = val("tokenizer.ggml.merges", types=list)
    if merges is not None:
        out.append(MetaEntry("merges", "int", len(merges)))
    types = val("tokenizer.ggml.token_type", types=np.ndarray)
    if types is not None and types.size and types.dtype.kind in "iu":
        uniq, counts = np.unique(types, return_counts=True)
        names = {}
        for u, c in zip(uniq.tolist()[:64], counts.tolist()):
            try:
                names[TokenType(u).name.lower()] = c
            except ValueError:
                names[str(u)] = c
        out.append(MetaEntry("token types", "object", names))
    for key in ("bos", "eos", "unknown", "padding", "seperator", "eot"):
        tid = val(f"tokenizer.ggml.{key}_token_id")
        if is_int(tid):
            tid = int(tid)
            text = tokens[tid] if tokens is not None and 0 <= tid < len(tokens) else "?"
            out.append(MetaEntry(f"{key} token", "int", tid, f"{tid} {quote(text)}"))
    for key in ("add_bos_token", "add_eos_token", "add_space_prefix"):
        v = val(f"tokenizer.ggml.{key}", types=(bool, np.bool_))
        if v is not None:
            out.append(MetaEntry(key, "bool", bool(v)))
    if val("tokenizer.chat_template", types=str):
        out.append(MetaEntry("chat_template", "string", val("tokenizer.chat_template")))
    return out
