"""Importance matrices: llama-imatrix's files, read and written, and the weights llama-quantize gives the quantizer.

Two formats hold one (both read; the GGUF one written, as llama-imatrix writes it):

- GGUF (llama-imatrix's default): per weight matrix ``<name>.in_sum2`` (F32 [n_mat, n_cols]: the sum of the
  squared input activations per column, per expert for a 3-D MoE tensor) and ``<name>.counts`` (F32 [n_mat, 1]:
  the tokens each expert saw), and the keys ``imatrix.datasets`` (array of strings), ``imatrix.chunk_count``
  and ``imatrix.chunk_size`` (u32), plus ``general.type = "imatrix"``.
- legacy ``.dat`` (``--output-format dat``): int32 n_entries; per entry int32 name length, the name, int32
  ncall, int32 n_values, n_values float32 (the mean squared activation times ncall); then, optionally, int32
  chunk count, int32 dataset name length and the name.

:meth:`Imatrix.weights_for` gives what llama-quantize passes to ggml's quantizer for a tensor
(``in_sum2 / counts`` per expert, 1 for an expert that saw no token; ``values / ncall`` for the legacy format).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from ..errors import FormatError, UnsupportedError, WorkbenchError, quote, short

SUM_SUFFIX, COUNT_SUFFIX = ".in_sum2", ".counts"
KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE = "imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size"
MAX_NAME = 1 << 16  # a tensor name longer than this is damage, not a name


@dataclass
class ImatrixEntry:
    """One weight matrix: ``sums`` float32 [n_mat, n_cols], ``counts`` int64 [n_mat] (for a legacy file,
    ``sums`` are its values and ``counts`` its ncall)."""

    sums: np.ndarray
    counts: np.ndarray

    @property
    def n_mat(self) -> int:
        return int(self.sums.shape[0])

    @property
    def n_cols(self) -> int:
        return int(self.sums.shape[1])


@dataclass
class Imatrix:
    """An importance matrix: entries by GGUF tensor name, the chunk count and size, the datasets."""

    entries: dict[str, ImatrixEntry] = field(default_factory=dict)
    chunk_count: int = 0
    chunk_size: int = 0
    datasets: list[str] = field(default_factory=list)
    legacy: bool = False
    path: Path | None = None

    # -- reading -------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path) -> "Imatrix":
        """Read a GGUF or legacy ``.dat`` imatrix (told apart by the GGUF magic, as llama.cpp does)."""
        path = Path(path).expanduser()
        try:
            with open(path, "rb") as f:
                magic = f.read(4)
        except FileNotFoundError:
            raise WorkbenchError("the importance matrix file does not exist", path=path) from None
        except OSError as exc:
            raise WorkbenchError(f"cannot read the importance matrix: {exc.strerror or exc}", path=path) from None
        im = _read_gguf(path) if magic == b"GGUF" else _read_legacy(path)
        im.path = path
        return im

    # -- what llama-quantize uses ---------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def weights_for(self, name: str) -> np.ndarray | None:
        """The quant weights llama-quantize passes for tensor ``name``: float32 [n_mat, n_cols] (n_mat = 1,
        or the experts of a 3-D MoE tensor), or None when the imatrix has no entry for it."""
        e = self.entries.get(name)
        if e is None:
            return None
        if self.legacy:
            ncall = int(e.counts[0]) if e.counts.size else 0
            return e.sums / np.float32(ncall) if ncall > 0 else e.sums.copy()
        counts = e.counts.astype(np.float32)[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(counts > 0, e.sums / np.where(counts > 0, counts, np.float32(1)),
                            np.float32(1)).astype(np.float32)

    def meta(self, file: str | None = None) -> dict:
        """``requantize_gguf``'s ``imatrix_meta``: the ``quantize.imatrix.*`` keys llama-quantize writes
        (``file``: the path as the user gave it, which llama-quantize records)."""
        return {"file": file if file is not None else str(self.path or ""), "datasets": list(self.datasets),
                "entries": len(self.entries), "chunks": self.chunk_count}

    # -- writing --------------------------------------------------------------------------------------
    def save(self, path, *, overwrite: bool = True) -> Path:
        """Write llama-imatrix's GGUF format (entries in name order; temp file + fsync + rename).

        An imatrix read from a legacy file is written with its values as sums and ncall as counts, so the
        weights stay the same; its chunk size is 0 unless set."""
        import gguf

        from ..fsutil import atomic_write_path

        path = Path(path)
        if not self.entries:
            raise WorkbenchError("the importance matrix has no entries to write", path=path)
        with atomic_write_path(path, overwrite=overwrite) as tmp:
            w = gguf.GGUFWriter(tmp, "imatrix")
            w.kv_data[0].pop("general.architecture", None)  # llama-imatrix writes none
            w.add_type("imatrix")
            w.add_array(KEY_DATASETS, list(self.datasets))
            w.add_uint32(KEY_CHUNK_COUNT, int(self.chunk_count))
            w.add_uint32(KEY_CHUNK_SIZE, int(self.chunk_size))
            for name in sorted(self.entries):
                e = self.entries[name]
                sums = np.ascontiguousarray(e.sums, dtype=np.float32)
                counts = e.counts.astype(np.float32)
                # ggml writes n_dims without trailing 1s: [n_cols] and [1] for one matrix
                w.add_tensor(name + SUM_SUFFIX, sums.reshape(-1) if e.n_mat == 1 else sums)
                w.add_tensor(name + COUNT_SUFFIX, counts if e.n_mat == 1 else counts.reshape(-1, 1))
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file()
            w.close()
        return path


# -- the two formats ----------------------------------------------------------------------------------

def _read_gguf(path: Path) -> Imatrix:
    from ..formats import gguf as gguf_fmt

    header = gguf_fmt.read_header(path)
    pairs: dict[str, list] = {}
    for t in header.tensors:
        for suffix, slot in ((SUM_SUFFIX, 0), (COUNT_SUFFIX, 1)):
            if t.name.endswith(suffix) and len(t.name) > len(suffix):
                pairs.setdefault(t.name[:-len(suffix)], [None, None])[slot] = t
    if not pairs:
        raise FormatError("this GGUF holds no importance matrix (no <tensor>.in_sum2 / .counts tensors)", path=path,
                          hint="Pass a file written by llama-imatrix or `workbench imatrix`.")
    f = header.fields
    missing = [k for k in (KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE) if k not in f]
    if missing:
        raise FormatError(f"the imatrix metadata key {missing[0]} is missing", path=path,
                          hint="llama-quantize refuses such a file too; compute the imatrix again.")
    datasets = f[KEY_DATASETS].value
    if f[KEY_DATASETS].item_type is None or not isinstance(datasets, list) or \
            not all(isinstance(d, str) for d in datasets):
        raise FormatError(f"{KEY_DATASETS} should be an array of strings but is {f[KEY_DATASETS].type_name}", path=path)
    ints = {}
    for key in (KEY_CHUNK_COUNT, KEY_CHUNK_SIZE):
        v = f[key].value
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= int(v) < 2 ** 32:
            raise FormatError(f"{key} should be an unsigned 32-bit integer but is {quote(v)}", path=path)
        ints[key] = int(v)
    entries: dict[str, ImatrixEntry] = {}
    with open(path, "rb") as fh:
        for name in sorted(pairs):
            s, c = pairs[name]
            if s is None or c is None:
                raise FormatError(f"entry {short(name)} has {'counts' if s is None else 'sums'} but no "
                                  f"{SUM_SUFFIX if s is None else COUNT_SUFFIX} tensor", path=path)
            for t in (s, c):
                if t.dtype != "F32":
                    raise FormatError(f"tensor {short(t.name)} is {t.dtype}; an imatrix holds F32", path=path)
            n_val, n_mat = s.n_params, c.n_params
            if n_mat < 1 or n_val < 1 or n_val % n_mat or len(s.shape) > 2 or len(c.shape) > 2 or \
                    (len(s.shape) == 2 and s.shape[0] != n_mat) or (len(c.shape) == 2 and c.shape[1] != 1):
                raise FormatError(f"entry {short(name)}: sums of shape {quote(s.shape)} do not match counts of "
                                  f"shape {quote(c.shape)}", path=path)
            sums = _read_f32(fh, s.offset, n_val).reshape(n_mat, n_val // n_mat)
            counts = _read_f32(fh, c.offset, n_mat)
            if not np.isfinite(sums).all() or not np.isfinite(counts).all():
                raise FormatError(f"entry {short(name)} holds a NaN or infinite value", path=path,
                                  hint="Compute the imatrix again.")
            if (counts < 0).any() or (counts > 2 ** 62).any():
                raise FormatError(f"entry {short(name)} has a negative or huge token count", path=path)
            # llama.cpp rounds each count to the nearest integer (lround: halves away from zero)
            entries[name] = ImatrixEntry(sums, np.floor(counts.astype(np.float64) + 0.5).astype(np.int64))
    return Imatrix(entries, ints[KEY_CHUNK_COUNT], ints[KEY_CHUNK_SIZE], list(datasets), legacy=False)


def _read_f32(fh, offset: int, n: int) -> np.ndarray:
    fh.seek(offset)
    return np.frombuffer(fh.read(4 * n), dtype="<f4", count=n).astype(np.float32)


class _Reader:
    """Little-endian int32s and byte runs with every length checked against what is left of the file."""

    def __init__(self, data: bytes, path: Path):
        self.data, self.pos, self.path = data, 0, path

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or n > self.left:
            raise FormatError(f"{what}: {n} bytes needed but {self.left} left (truncated or not an imatrix file)",
                              path=self.path)
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def i32(self, what: str) -> int:
        return struct.unpack("<i", self.take(4, what))[0]


def _read_legacy(path: Path) -> Imatrix:
    size = path.stat().st_size
    if size > 1 << 34:
        raise FormatError(f"{size} bytes is too big for a legacy imatrix file", path=path)
    r = _Reader(path.read_bytes(), path)
    if r.left < 4:
        raise FormatError("not an importance matrix (neither GGUF nor llama-imatrix's legacy format)", path=path)
    n = r.i32("the entry count")
    if n < 1 or n > r.left // 12:  # an entry takes at least 12 bytes (name length, ncall, count)
        raise FormatError(f"entry count {n} does not fit a file of {size} bytes: not an importance matrix", path=path,
                          hint="Pass a file written by llama-imatrix (.gguf or .dat).")
    entries: dict[str, ImatrixEntry] = {}
    for i in range(n):
        length = r.i32(f"entry #{i + 1}: the name length")
        if length < 1 or length > min(MAX_NAME, r.left):
            raise FormatError(f"entry #{i + 1}: name length {length} is invalid", path=path)
        raw = r.take(length, f"entry #{i + 1}: the name")
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError(f"entry #{i + 1}: the name is not UTF-8 text", path=path) from None
        ncall = r.i32(f"entry {short(name)}: ncall")
        nval = r.i32(f"entry {short(name)}: the value count")
        if nval < 1 or 4 * nval > r.left:
            raise FormatError(f"entry {short(name)}: {nval} values do not fit the {r.left} bytes left", path=path)
        if name in entries:
            raise FormatError(f"entry {short(name)} appears twice", path=path)
        sums = np.frombuffer(r.take(4 * nval, f"entry {short(name)}: the values"), dtype="<f4").astype(np.float32)
        if not np.isfinite(sums).all():
            raise FormatError(f"entry {short(name)} holds a NaN or infinite value", path=path,
                              hint="Compute the imatrix again.")
        entries[name] = ImatrixEntry(sums.reshape(1, nval), np.array([ncall], dtype=np.int64))
    chunks, datasets = 0, []
    if r.left:  # optional: the chunk count and the dataset name
        chunks = r.i32("the chunk count")
        if r.left:
            length = r.i32("the dataset name length")
            if length > 0:
                datasets.append(r.take(length, "the dataset name").split(b"\0")[0].decode("utf-8", errors="replace"))
        if r.left:
            raise FormatError(f"{r.left} unexpected bytes after the dataset name", path=path)
    return Imatrix(entries, max(chunks, 0), 0, datasets, legacy=True)


# -- what llama-quantize does with it ----------------------------------------------------------------------

def _is_token_embd(name: str) -> bool:
    return name in ("token_embd.weight", "per_layer_token_embd.weight")


def tensor_weights(imatrix: "Imatrix | Mapping[str, np.ndarray] | None", name: str, shape: tuple[int, ...],
                   qtype: str) -> np.ndarray | None:
    """The quant weights for tensor ``name`` (numpy shape ``shape``) quantized to ``qtype``, as llama-quantize
    picks them: None without an entry, for token_embd with a wrong size, or for a type that takes none;
    otherwise float32 [n_expert, n_cols] (n_expert = 1 for a 2-D tensor).  An entry whose size is not
    n_cols x n_expert is refused (llama-quantize aborts too).  ``imatrix``: an :class:`Imatrix` or a mapping
    name -> weights (values used as given)."""
    from .. import kernels

    if imatrix is None:
        return None
    if isinstance(imatrix, Imatrix):
        w = imatrix.weights_for(name)
    else:
        w = imatrix.get(name) if name in imatrix else None
        w = None if w is None else np.asarray(w, dtype=np.float32)
    if w is None:
        return None
    cols = shape[-1] if shape else 1
    n_exp = shape[0] if len(shape) == 3 else 1
    if w.size != cols * n_exp:
        if _is_token_embd(name):
            return None
        where = getattr(imatrix, "path", None)
        raise FormatError(f"importance matrix entry {short(name)} has {w.size} values but the tensor needs "
                          f"{cols * n_exp} ({cols} columns x {n_exp} experts)", path=where,
                          hint="Use an imatrix computed for this model.")
    if qtype not in kernels.Kernel.registry or not kernels.get_kernel(qtype).uses_imatrix:
        return None
    return np.ascontiguousarray(w, dtype=np.float32).reshape(n_exp, cols)


def submit_rows(x: np.ndarray, qtype: str, weights: np.ndarray | None, *, name: str, row0: int,
                rows_per_expert: int):
    """Quantize float32 rows [rows, n] (tensor rows ``row0``...) with their expert's weights: a list of
    (handle, values) for :func:`~workbench.convert.gguf_stream.write_gguf_stream`, one per expert the block
    touches (llama-quantize uses row // rows_per_expert's slice)."""
    from .. import kernels

    if weights is None or weights.shape[0] == 1:
        im = None if weights is None else weights[0]
        return [(kernels.submit(x, qtype, im, name=name, row0=row0), x.size)]
    out, a = [], 0
    while a < x.shape[0]:
        expert = (row0 + a) // rows_per_expert
        b = min(x.shape[0], (expert + 1) * rows_per_expert - row0)
        part = x[a:b]
        out.append((kernels.submit(part, qtype, weights[expert], name=name, row0=row0 + a), part.size))
        a = b
    return out


def requires_imatrix(name: str, qtype: str, preset: str) -> bool:
    """llama-quantize's ``tensor_requires_imatrix`` for the types we write: Q2_K in a Q2_K_S file, except the
    token embedding and the output matrix."""
    if _is_token_embd(name) or name == "output.weight":
        return False
    return qtype == "Q2_K" and preset == "Q2_K_S"


def check_required(plan, imatrix) -> None:
    """Refuse, before anything is written, a plan whose tensors need an importance matrix that is not there
    (no ``imatrix``, or no entry for the tensor): llama-quantize refuses both."""
    from ..plan import allows_quantization

    for e in plan.entries:
        if not allows_quantization(e.gguf_name, e.shape) or not requires_imatrix(e.gguf_name, e.type, plan.preset):
            continue
        if imatrix is None:
            raise UnsupportedError(f"{plan.preset} needs an importance matrix (tensor {short(e.gguf_name)} becomes "
                                   f"{e.type})", hint="Pass --imatrix FILE (computed with llama-imatrix).")
        if e.gguf_name not in imatrix:
            raise UnsupportedError(f"the importance matrix has no entry for tensor {short(e.gguf_name)}, which "
                                   f"{plan.preset} makes {e.type}", path=getattr(imatrix, "path", None),
                                   hint="Use an imatrix computed for this model.")


def source_weights(imatrix, gguf_name: str, source_name: str, shape: tuple[int, ...],
                   qtype: str) -> np.ndarray | None:
    """:func:`tensor_weights` for a tensor as a model stores it: a Hugging Face expert's own 2-D matrix
    (``...experts.<e>....``) of a 3-D GGUF entry gets expert e's weights, [1, n_cols]."""
    import re

    m = re.search(r"\.experts\.(\d+)\.", source_name)
    if m and len(shape) == 2 and isinstance(imatrix, Imatrix) and gguf_name in imatrix:
        e = int(m.group(1))
        entry = imatrix.entries[gguf_name]
        if entry.n_mat > 1:
            if e >= entry.n_mat:
                raise FormatError(f"importance matrix entry {short(gguf_name)} has {entry.n_mat} experts but the "
                                  f"model has expert {e}", path=imatrix.path, hint="Use an imatrix computed for "
                                  "this model.")
            w = imatrix.weights_for(gguf_name)[e:e + 1]
            return tensor_weights({gguf_name: w}, gguf_name, shape, qtype)
    return tensor_weights(imatrix, gguf_name, shape, qtype)


def quantize_rows(x: np.ndarray, qtype: str, weights: np.ndarray | None, *, name: str, row0: int,
                  rows_per_expert: int) -> np.ndarray:
    """Quantize float32 rows [rows, n] (tensor rows ``row0``...) with their expert's weights (as
    :func:`submit_rows`, synchronously): the bytes [rows, row_bytes]."""
    from .. import kernels

    if weights is None or weights.shape[0] == 1:
        return kernels.quantize(x, qtype, None if weights is None else weights[0], name=name, row0=row0)
    parts, a = [], 0
    while a < x.shape[0]:
        expert = (row0 + a) // rows_per_expert
        b = min(x.shape[0], (expert + 1) * rows_per_expert - row0)
        parts.append(kernels.quantize(x[a:b], qtype, weights[expert], name=name, row0=row0 + a))
        a = b
    return np.concatenate(parts)
