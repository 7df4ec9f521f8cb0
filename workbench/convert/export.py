"""Export any opened model as a Hugging Face folder: safetensors (sharded like ``save_pretrained``) or
PyTorch ``.bin``, one tensor at a time.

GGUF sources of the supported architectures get HF tensor names, the llama Q/K permutation undone, Gemma's
norms shifted back, qwen3moe's stacked experts split per expert and config / generation / tokenizer files
rebuilt from the GGUF metadata (:mod:`.gguf_to_hf`); quantized tensors are dequantized with
:mod:`workbench.kernels`.  A GGUF architecture without a Hugging Face mapping is refused before anything is
written, unless ``raw=True`` asks for its tensors under their GGUF names.  Other sources (safetensors,
``.bin``, PEFT adapters) keep their tensor names and have their config, tokenizer and sentence-transformers
files (modules.json and the module folders it names) copied.

Everything is written into a temporary folder beside ``out_dir`` and moved into place at the end:
a failure or a cancel leaves nothing under the final names, and the source is never modified.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generator, Iterator

import numpy as np

from .. import dtypes, fsutil
from ..errors import Cancelled, UnsupportedError, WorkbenchError
from ..model import Model, TensorInfo
from ..progress import Progress
from . import gguf_to_hf

DEFAULT_MAX_SHARD_SIZE = 5 * 2**30
CHUNK_ELEMENTS = 1 << 22  # values converted at a time (whole rows): bounds temporary memory per tensor
OUT_DTYPES = ("F32", "F16", "BF16")
_DTYPE_ALIASES = {"F32": "F32", "FLOAT32": "F32", "FP32": "F32", "F16": "F16", "FLOAT16": "F16", "FP16": "F16",
                  "HALF": "F16", "BF16": "BF16", "BFLOAT16": "BF16"}
_FLOAT_SOURCES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")
_BIN_DTYPES = ("F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL")
# files beside the weights that a Hugging Face folder needs, copied from non-GGUF sources
SIDE_FILES = ("config.json", "generation_config.json", "adapter_config.json", "tokenizer.json",
              "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "tokenizer.model",
              "spiece.model", "sentencepiece.bpe.model", "vocab.json", "merges.txt", "vocab.txt",
              "chat_template.jinja", "chat_template.json", "preprocessor_config.json")
# a sentence-transformers model: these files plus the module folders modules.json names (1_Pooling/ ...)
ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")
_ST_MODULE_FILE_LIMIT = 64 << 20  # a module folder's files are configs and small Dense weights


@dataclass(frozen=True)
class _Item:
    name: str  # output name
    src: TensorInfo
    dtype: str  # output element type
    heads: int | None  # un-permute the rows over this many heads (llama Q/K)
    expert: int | None = None  # write only this slice of the first axis (one expert of a 3-D GGUF tensor)
    offset: float = 0.0  # added to every value (Gemma norms: HF = GGUF - 1)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.src.shape[1:] if self.expert is not None else self.src.shape

    @property
    def n_params(self) -> int:
        return self.src.n_params // self.src.shape[0] if self.expert is not None else self.src.n_params

    @property
    def nbytes(self) -> int:
        return self.n_params * dtypes.PLAIN_DTYPES[self.dtype].itemsize


def normalize_dtype(dtype: str | None) -> str | None:
    """"F16", "float16", "fp16"... -> "F16"; None/"keep"/"auto" -> None (keep each tensor's own float type)."""
    if dtype is None or str(dtype).lower() in ("keep", "auto", "none", ""):
        return None
    key = str(dtype).upper().replace("TORCH.", "")
    if key not in _DTYPE_ALIASES:
        raise UnsupportedError(f"export type {dtype!r} is not supported", hint="Choose F32, F16 or BF16.")
    return _DTYPE_ALIASES[key]


# -- conversion of one tensor --------------------------------------------------------------------

def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even like torch; NaN stays NaN."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded[nan] = ((u[nan] >> np.uint32(16)) | np.uint32(0x40)).astype(np.uint16)
    return rounded


def _encode(x: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        return f32_to_bf16_bits(x)
    with np.errstate(over="ignore"):  # values beyond F16's range become inf, as torch's .half() does
        return x.astype(dtypes.PLAIN_DTYPES[dtype], copy=False)


def _dequantize(chunk: np.ndarray, src_dtype: str, rows: int, cols: int) -> np.ndarray:
    from .. import kernels

    if src_dtype in kernels.Kernel.registry:
        return kernels.dequantize(chunk, src_dtype, cols)
    return dtypes.decode(chunk, src_dtype, (rows, cols))  # types without a workbench kernel: gguf-py's decoder


def iter_converted(model: Model, item: _Item, chunk_elements: int = CHUNK_ELEMENTS) -> Iterator[np.ndarray]:
    """The output tensor as consecutive row blocks already in ``item.dtype`` (the bytes to write, in order)."""
    info = item.src
    raw = model.tensor(info.name).raw()
    shape = item.shape
    cols = shape[-1] if shape else 1
    quantized = dtypes.is_quantized(info.dtype)
    if item.heads and len(shape) == 1:  # a permuted bias: rows of one value
        cols = 1
    rows = item.n_params // max(cols, 1) if cols else 0
    if rows == 0:
        return
    if item.expert is not None:  # the expert's rows are one contiguous slice of the stored bytes
        raw = raw.reshape(info.shape[0], -1)[item.expert]
    raw2 = raw.reshape(rows, -1)
    step = max(1, chunk_elements // max(cols, 1))
    if item.heads:
        head_rows = rows // item.heads
        step = max(1, step // head_rows) * head_rows
    same = not quantized and info.dtype == item.dtype and not item.offset
    for start in range(0, rows, step):
        part = raw2[start:start + step]
        n = part.shape[0]
        if same:
            out = np.ascontiguousarray(part)
        else:
            x = _dequantize(part, info.dtype, n, cols) if quantized else dtypes.decode(part, info.dtype, (n, cols))
            if item.offset:
                x = np.asarray(x, np.float32) + np.float32(item.offset)
            out = _encode(x, item.dtype)
        if item.heads:
            out = np.ascontiguousarray(gguf_to_hf.unpermute(out, n // (rows // item.heads)))
        yield out


# -- planning ------------------------------------------------------------------------------------

def _out_dtype(src: str, requested: str | None) -> str:
    if dtypes.is_quantized(src):
        return requested or "F32"
    if src in _FLOAT_SOURCES:
        if requested:
            return requested
        return "F32" if src.startswith("F8") else src
    return src  # integer and bool tensors are kept as they are


def _plan(model: Model, dtype: str | None, raw: bool = False) -> tuple[list[_Item], dict[str, str], list[str]]:
    """(tensors to write, side files name -> text, notes) for the export."""
    notes: list[str] = []
    side: dict[str, str] = {}
    items: list[_Item] = []
    gguf_supported = gguf_to_hf.is_supported(model)
    if model.format == "gguf" and not gguf_supported and not raw:
        arch = gguf_to_hf.gguf_arch(model)
        raise UnsupportedError(f"GGUF architecture {str(arch)[:40]!r} has no Hugging Face mapping: the export would "
                               "have no config.json, no tokenizer and GGUF tensor names", path=model.path,
                               hint="Supported: " + ", ".join(gguf_to_hf.SUPPORTED_ARCHS) + "; --raw (raw=True) "
                               "writes its tensors under their GGUF names anyway.")
    names: dict[str, str | None] = {t.name: t.name for t in model.tensors}
    if gguf_supported:
        names = gguf_to_hf.hf_names(model)
        kept = [n for n, hf in names.items() if hf == n]
        if kept:
            notes.append(f"{len(kept)} tensors have no Hugging Face name and keep their GGUF name, e.g. {kept[0]}")
        notes += gguf_to_hf.derived_notes(model)
        cfg_dtype = dtype or _common_dtype(model)
        side["config.json"] = _json(gguf_to_hf.hf_config(model, cfg_dtype))
        gen = gguf_to_hf.generation_config(model)
        if gen:
            side["generation_config.json"] = _json(gen)
        tok_files, tok_notes = gguf_to_hf.tokenizer_files(model)
        side.update(tok_files)
        notes += tok_notes
        side.update(gguf_to_hf.sentence_transformers_files(model))
    elif model.format == "gguf":
        notes.append(f"GGUF architecture {gguf_to_hf.gguf_arch(model)!r} has no Hugging Face mapping: raw export, "
                     "tensors keep their GGUF names and no config.json or tokenizer is written")
    for t in model.tensors:
        out_name = names.get(t.name)
        if out_name is None:
            continue
        out_dtype = _out_dtype(t.dtype, dtype)
        if not gguf_supported:
            items.append(_Item(out_name, t, out_dtype, None))
            continue
        offset = gguf_to_hf.value_offset(model, t.name)
        if offset and out_dtype not in OUT_DTYPES:
            out_dtype = "F32"
        experts = gguf_to_hf.expert_names(model, t.name)
        if experts:
            items.extend(_Item(e_name, t, out_dtype, None, e, offset) for e, e_name in enumerate(experts))
            continue
        items.append(_Item(out_name, t, out_dtype, gguf_to_hf.qk_heads(model, t.name), None, offset))
    seen: dict[str, str] = {}
    for it in items:
        if it.name in seen:
            raise WorkbenchError(f"tensors {seen[it.name]} and {it.src.name} would both be written as {it.name}",
                                 path=model.path)
        seen[it.name] = it.src.name
    return items, side, notes


def _common_dtype(model: Model) -> str:
    counts: dict[str, int] = {}
    for t in model.tensors:
        out = _out_dtype(t.dtype, None)
        if out in OUT_DTYPES:
            counts[out] = counts.get(out, 0) + t.n_params
    return max(counts, key=counts.get) if counts else "F32"


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def _source_folder(model: Model) -> Path | None:
    folder = model.path if model.path.is_dir() else model.path.parent
    return folder if folder.is_dir() else None


def _copied_side_files(model: Model, dtype: str | None, out_dir: Path) -> dict[str, Path | str]:
    """Config and tokenizer files of a non-GGUF source: name -> source path (or rewritten text)."""
    folder = _source_folder(model)
    out: dict[str, Path | str] = {}
    if folder is None:
        return out
    for name in (*SIDE_FILES, *ST_FILES, *_st_module_files(folder)):
        p = folder / name
        if not p.is_file() or _same_file(p, out_dir / name):
            continue
        if name == "config.json" and dtype is not None:
            try:
                cfg = json.loads(p.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                cfg = None
            if isinstance(cfg, dict):
                for key in ("torch_dtype", "dtype"):
                    if key in cfg or key == "torch_dtype":
                        cfg[key] = gguf_to_hf.TORCH_DTYPES[dtype]
                out[name] = _json(cfg)
                continue
        out[name] = p
    return out


def _st_module_files(folder: Path) -> list[str]:
    """Files of the module folders a sentence-transformers modules.json names (``1_Pooling/config.json`` ...):
    only plain files directly inside sub-folders of ``folder``, nothing outside it."""
    path = folder / "modules.json"
    if not path.is_file():
        return []
    try:
        modules = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return []
    out: list[str] = []
    for mod in modules if isinstance(modules, list) else []:
        sub = mod.get("path") if isinstance(mod, dict) else None
        if not isinstance(sub, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", sub) or sub in (".", ".."):
            continue
        d = folder / sub
        if not d.is_dir() or d.is_symlink():
            continue
        for f in sorted(d.iterdir()):
            if f.is_file() and not f.is_symlink() and f.stat().st_size <= _ST_MODULE_FILE_LIMIT:
                out.append(f"{sub}/{f.name}")
    return out


def write_side_files(tmp: Path, side: dict[str, Path | str]) -> None:
    """Write the side files (copied from a path, or text) into the temporary output folder ``tmp``."""
    for name, content in side.items():
        target = tmp / name
        _make_subfolders(tmp, target.parent)
        if isinstance(content, Path):
            shutil.copyfile(content, target)
        else:
            _write_text(target, content)


def _make_subfolders(root: Path, folder: Path) -> None:
    """Create ``folder`` below ``root`` level by level, never ``root`` itself: a root removed meanwhile (the
    user deleted the output folder during the job) stays removed and the write fails, instead of silently
    recreating the folder."""
    path = root
    for part in folder.relative_to(root).parts:
        path = path / part
        with contextlib.suppress(FileExistsError):
            path.mkdir()


def _same_file(a: Path, b: Path) -> bool:
    try:
        return b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def shard_plan(items: list[_Item], max_shard_size: int) -> list[list[_Item]]:
    """Greedy split in tensor order, as huggingface_hub's ``split_state_dict_into_shards`` does:
    a tensor that does not fit starts a new shard; a tensor larger than the limit gets a shard of its own."""
    shards: list[list[_Item]] = [[]]
    size = 0
    for it in items:
        if it.nbytes > max_shard_size:
            shards.append([it])
            shards.append([])
            size = 0
            continue
        if shards[-1] and size + it.nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(it)
        size += it.nbytes
    return [s for s in shards if s] or [[]]


def _weights_base(model: Model, fmt: str) -> tuple[str, str]:
    """(file stem, extension): model/pytorch_model, or adapter_model for PEFT adapters."""
    if model.format == "peft":
        return "adapter_model", ("safetensors" if fmt == "safetensors" else "bin")
    return ("model", "safetensors") if fmt == "safetensors" else ("pytorch_model", "bin")


def _shard_names(stem: str, ext: str, n: int) -> list[str]:
    if n == 1:
        return [f"{stem}.{ext}"]
    return [f"{stem}-{k:05d}-of-{n:05d}.{ext}" for k in range(1, n + 1)]


# -- writing -------------------------------------------------------------------------------------

def _check_cancel(cancel: Callable[[], bool] | None) -> None:
    if cancel is not None and cancel():
        raise Cancelled()


def _write_stream(f, model: Model, item: _Item, cancel) -> int:
    written = 0
    for block in iter_converted(model, item):
        _check_cancel(cancel)
        view = memoryview(block).cast("B")
        f.write(view)
        written += view.nbytes
    if written != item.nbytes:
        raise WorkbenchError(f"internal error: tensor {item.src.name} produced {written} bytes, expected {item.nbytes}")
    model.release(item.src.name)  # stream: drop the source pages of a finished tensor
    return written


def _safetensors_header(items: list[_Item]) -> bytes:
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for it in items:
        header[it.name] = {"dtype": it.dtype, "shape": list(it.shape), "data_offsets": [offset, offset + it.nbytes]}
        offset += it.nbytes
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the reference writer pads the header to 8 bytes with spaces
    return struct.pack("<Q", len(raw)) + raw


def _write_safetensors_shard(path: Path, model: Model, items: list[_Item], cancel,
                             tick) -> Generator[Progress, None, None]:
    with open(path, "wb") as f:
        f.write(_safetensors_header(items))
        for it in items:
            _check_cancel(cancel)
            _write_stream(f, model, it, cancel)
            yield tick(it)
        f.flush()
        os.fsync(f.fileno())


def _write_bin_shard(path: Path, model: Model, items: list[_Item], cancel, tick) -> Generator[Progress, None, None]:
    """Stream the converted tensors into a scratch file, then hand ``write_bin`` memory-mapped views of it
    (so no tensor is held in memory while the zip is written)."""
    from ..formats.torchbin import write_bin

    scratch = path.with_name(path.name + ".scratch")
    offsets: list[int] = []
    try:
        with open(scratch, "wb") as f:
            for it in items:
                _check_cancel(cancel)
                f.write(b"\0" * (-f.tell() % 64))
                offsets.append(f.tell())
                _write_stream(f, model, it, cancel)
                yield tick(it)
        arrays: dict[str, np.ndarray] = {}
        for it, off in zip(items, offsets):
            dt = dtypes.PLAIN_DTYPES[it.dtype]
            if it.nbytes == 0:
                arrays[it.name] = np.zeros(it.shape, dt)
            else:
                arrays[it.name] = np.memmap(scratch, dtype=dt, mode="r", offset=off, shape=it.shape)
        _check_cancel(cancel)
        write_bin(path, arrays, bf16_names={it.name for it in items if it.dtype == "BF16"})
        arrays.clear()
    finally:
        with contextlib.suppress(FileNotFoundError):
            scratch.unlink()


def _index(items_by_file: list[tuple[str, list[_Item]]]) -> dict[str, Any]:
    weight_map = {}
    total = 0
    for fname, items in items_by_file:
        for it in items:
            weight_map[it.name] = fname
            total += it.nbytes
    return {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}


def _stale_pattern(stem: str, ext: str) -> re.Pattern:
    return re.compile(rf"^{re.escape(stem)}(-\d{{5}}-of-\d{{5}})?\.{ext}$|^{re.escape(stem)}\.{ext}\.index\.json$")


def _check_output(out_dir: Path, names: list[str], stem: str, ext: str, model: Model, overwrite: bool) -> list[Path]:
    """Refuse conflicts before any work; return the stale weight files an overwrite must remove."""
    if out_dir.exists() and not out_dir.is_dir():
        raise WorkbenchError("the output is a file, not a folder", path=out_dir,
                             hint="Choose a folder (it is created if it does not exist).")
    if not out_dir.is_dir():
        return []
    existing = [out_dir / n for n in names if (out_dir / n).exists()]
    pattern = _stale_pattern(stem, ext)
    stale = [p for p in out_dir.iterdir() if pattern.match(p.name) and p.name not in names]
    sources = [Path(f) for f in model.files]
    for p in existing + stale:
        if any(_same_file(s, p) for s in sources):
            raise WorkbenchError(f"the export would replace {p.name}, a file of the source model", path=out_dir,
                                 hint="Export into another folder.")
    if (existing or stale) and not overwrite:
        shown = ", ".join(p.name for p in (existing + stale)[:4])
        raise WorkbenchError(f"the output folder already holds {shown}", path=out_dir,
                             hint="Choose another folder or allow overwriting.")
    return stale


def _commit(tmp: Path, out_dir: Path, names: list[str], stale: list[Path]) -> None:
    fsutil.fsync_tree(tmp)  # every file (copied side files too) on disk before any rename
    if not out_dir.exists():
        os.replace(tmp, out_dir)
    else:
        for p in stale:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        for n in names:
            _make_subfolders(out_dir, (out_dir / n).parent)
            os.replace(tmp / n, out_dir / n)
        for sub in {(out_dir / n).parent for n in names} - {out_dir}:
            fsutil.fsync_dir(sub)
        fsutil.fsync_dir(out_dir)
    fsutil.fsync_dir(out_dir.parent)


def export_hf(src_model_or_path, out_dir, *, dtype: str | None = "F16", format: str = "safetensors",
              max_shard_size: int = DEFAULT_MAX_SHARD_SIZE, overwrite: bool = False,
              cancel: Callable[[], bool] | None = None, raw: bool = False) -> Generator[Progress, None, list[Path]]:
    """Write a Hugging Face folder from a model (a :class:`Model` or a path to open).

    ``dtype``: F32, F16 or BF16 for every floating-point tensor (quantized ones are dequantized);
    None keeps each float tensor's own type (quantized ones become F32).  Integer tensors are kept.
    ``format``: "safetensors" or "bin" (torch zip checkpoint).  Shards of at most ``max_shard_size``
    bytes are named and indexed as ``save_pretrained`` does.  ``raw``: a GGUF architecture without a Hugging
    Face mapping is written anyway, tensors under their GGUF names, no config or tokenizer (else refused with
    an UnsupportedError before anything is written).  Returns the paths written.
    """
    if format not in ("safetensors", "bin"):
        raise UnsupportedError(f"export format {format!r} is not supported", hint="Choose safetensors or bin.")
    if not isinstance(max_shard_size, int) or max_shard_size <= 0:
        raise WorkbenchError(f"max_shard_size must be a positive number of bytes, not {max_shard_size!r}")
    dtype = normalize_dtype(dtype)
    out_dir = Path(out_dir).expanduser()
    if isinstance(src_model_or_path, Model):
        model = src_model_or_path
    else:
        from ..formats import iter_open_model

        model = yield from iter_open_model(src_model_or_path)

    items, side_text, notes = _plan(model, dtype, raw)
    side: dict[str, Path | str] = dict(side_text)
    if not (model.format == "gguf"):
        side = {**_copied_side_files(model, dtype, out_dir), **side}
    if format == "bin":
        bad = sorted({it.dtype for it in items if it.dtype not in _BIN_DTYPES})
        if bad:
            raise UnsupportedError(f"tensor types {', '.join(bad)} cannot be written to a PyTorch .bin",
                                   path=model.path, hint="Export as safetensors instead.")
    stem, ext = _weights_base(model, format)
    shards = shard_plan(items, max_shard_size)
    shard_files = _shard_names(stem, ext, len(shards))
    index_name = f"{stem}.{ext}.index.json" if len(shards) > 1 else None
    names = [*shard_files, *([index_name] if index_name else []), *side]
    stale = _check_output(out_dir, names, stem, ext, model, overwrite)

    total = sum(it.nbytes for it in items) or 1
    done = 0

    def tick(it: _Item) -> Progress:
        nonlocal done
        done += it.nbytes
        return Progress(done, total, f"Wrote {it.name}")

    with fsutil.partial_dir(out_dir) as tmp:  # locked, probed; removed on failure or cancel
        yield Progress(0, total, f"Exporting {len(items)} tensors to {out_dir.name}")
        for fname, shard in zip(shard_files, shards):
            writer = _write_safetensors_shard if format == "safetensors" else _write_bin_shard
            yield from writer(tmp / fname, model, shard, cancel, tick)
        if index_name:
            _write_text(tmp / index_name, _json(_index(list(zip(shard_files, shards)))))
        write_side_files(tmp, side)
        _check_cancel(cancel)
        _commit(tmp, out_dir, names, stale)
    message = "Export finished" + ("; " + "; ".join(notes) if notes else "")
    yield Progress(total, total, message, warnings=tuple(notes))
    return [out_dir / n for n in names]


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
