"""Metadata around the weights: config.json, generation_config.json, tokenizer files, GGUF keys."""
from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from gguf import LlamaFileType, TokenType

from ..errors import FormatError, MissingFileError
from ..model import MetaEntry
from .gguf import GGUFField

JSON_FILES = ("config.json", "generation_config.json", "adapter_config.json", "tokenizer_config.json",
              "special_tokens_map.json")


def load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"not valid JSON: {exc}", path=path, hint="Fix or remove the file and open the model again.") from None


def load_json_if_present(path: Path) -> Any:
    """The parsed file, or None when it does not exist (a FormatError when it is not valid JSON)."""
    return load_json(path) if Path(path).is_file() else None


def read_shard_index(index_path: Path) -> tuple[list[Path], dict[str, str], dict[str, Any]]:
    """Parse a sharded checkpoint's index (``model.safetensors.index.json``, ``pytorch_model.bin.index.json``):
    (shard files in order of first use, weight_map, index metadata).  Every shard must be in the folder."""
    index_path = Path(index_path)
    if not index_path.is_file():
        raise MissingFileError("no such index file", path=index_path)
    index = load_json(index_path)
    wmap = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(wmap, dict) or not all(isinstance(v, str) for v in wmap.values()):
        raise FormatError("index has no weight_map of tensor name -> shard file", path=index_path)
    files: list[Path] = []
    for shard in dict.fromkeys(wmap.values()):
        if not shard or Path(shard).name != shard or shard in (".", ".."):
            raise FormatError(f"index names shard {shard!r} outside the model folder", path=index_path)
        p = index_path.parent / shard
        if not p.is_file():
            raise MissingFileError(f"shard {shard} named by the index is missing", path=index_path,
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
    entries: list[MetaEntry] = []
    tj = folder / "tokenizer.json"
    if tj.is_file():
        obj = load_json(tj)
        model = obj.get("model") or {}
        vocab = model.get("vocab")
        entries.append(MetaEntry("file", "string", "tokenizer.json"))
        entries.append(MetaEntry("model", "string", str(model.get("type", "?"))))
        if vocab is not None:
            entries.append(MetaEntry("vocab size", "int", len(vocab)))
        merges = model.get("merges")
        if merges is not None:
            entries.append(MetaEntry("merges", "int", len(merges)))
        added = obj.get("added_tokens") or []
        entries.append(MetaEntry("added tokens", "array", [a.get("content") for a in added if isinstance(a, dict)]))
        for part in ("normalizer", "pre_tokenizer", "decoder"):
            sub = obj.get(part)
            if isinstance(sub, dict):
                entries.append(MetaEntry(part, "string", str(sub.get("type"))))
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
                entries.append(MetaEntry("chat_template", "string", cfg["chat_template"]))
    return entries


def architecture_from_config(config: Any) -> str | None:
    if not isinstance(config, dict):
        return None
    archs = config.get("architectures")
    if isinstance(archs, list) and archs:
        return str(archs[0])
    return config.get("model_type")


# -- GGUF ---------------------------------------------------------------------------------------

def _decode_enum(key: str, value: Any) -> str | None:
    try:
        if key == "general.file_type":
            return LlamaFileType(int(value)).name
    except (ValueError, TypeError):
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
    def val(key, default=None):
        f = fields.get(key)
        return f.value if f is not None else default

    tokens = val("tokenizer.ggml.tokens")
    if tokens is None and val("tokenizer.ggml.model") is None:
        return []
    out = [MetaEntry("model", "string", val("tokenizer.ggml.model", "?"))]
    if val("tokenizer.ggml.pre") is not None:
        out.append(MetaEntry("pre-tokenizer", "string", val("tokenizer.ggml.pre")))
    if tokens is not None:
        out.append(MetaEntry("vocab size", "int", len(tokens)))
    merges = val("tokenizer.ggml.merges")
    if merges is not None:
        out.append(MetaEntry("merges", "int", len(merges)))
    types = val("tokenizer.ggml.token_type")
    if isinstance(types, np.ndarray) and types.size:
        uniq, counts = np.unique(types, return_counts=True)
        names = {}
        for u, c in zip(uniq.tolist(), counts.tolist()):
            try:
                names[TokenType(u).name.lower()] = c
            except ValueError:
                names[str(u)] = c
        out.append(MetaEntry("token types", "object", names))
    for key in ("bos", "eos", "unknown", "padding", "seperator", "eot"):
        tid = val(f"tokenizer.ggml.{key}_token_id")
        if tid is not None:
            text = tokens[tid] if tokens is not None and 0 <= tid < len(tokens) else "?"
            out.append(MetaEntry(f"{key} token", "int", tid, f"{tid} {text!r}"))
    for key in ("add_bos_token", "add_eos_token", "add_space_prefix"):
        v = val(f"tokenizer.ggml.{key}")
        if v is not None:
            out.append(MetaEntry(key, "bool", v))
    if val("tokenizer.chat_template"):
        out.append(MetaEntry("chat_template", "string", val("tokenizer.chat_template")))
    return out


