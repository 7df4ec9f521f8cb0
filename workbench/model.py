"""The opened model: lazy tensors, grouped metadata, totals and layer grouping."""
from __future__ import annotations

import math
import mmap
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from . import dtypes
from .errors import FormatError, WorkbenchError


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor lives and what it is.  ``shape`` is in numpy (row-major) order."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # F32, F16, BF16, I64, ... or a ggml type name such as Q4_K
    nbytes: int
    file: Path
    offset: int  # absolute byte offset of the data in ``file``
    strides: tuple[int, ...] | None = None  # element strides when the data is not contiguous (.bin)

    @property
    def n_params(self) -> int:
        return math.prod(self.shape)  # (1 for a scalar; Python ints: exact, and ~50x faster than np.prod)

    @property
    def layer(self) -> str | None:
        return layer_of(self.name)


@dataclass(frozen=True)
class MetaEntry:
    """One metadata key.  ``vtype`` is a readable type (``uint32``, ``string``, ``array[string]``,
    ``object``...); ``value`` the Python value; ``decoded`` a readable form of an enum value."""

    key: str
    vtype: str
    value: Any
    decoded: str | None = None

    @property
    def length(self) -> int | None:
        return len(self.value) if isinstance(self.value, (list, tuple, np.ndarray)) else None


_LAYER_RE = re.compile(r"^(.*?(?:^|\.)(?:blk|layers|layer|block|blocks|h)\.(\d+))\.")


def layer_of(name: str) -> str | None:
    """The layer a tensor belongs to (``blk.3``, ``model.layers.3``, ``encoder.block.3``), or None."""
    m = _LAYER_RE.match(name)
    return m.group(1) if m else None


def layer_index(layer: str) -> int:
    return int(layer.rsplit(".", 1)[1])


class Tensor:
    """A lazy handle on one tensor's data (read through the model's memory maps)."""

    def __init__(self, model: "Model", info: TensorInfo):
        self.model = model
        self.info = info

    def raw(self) -> np.ndarray:
        """The stored bytes as a read-only array: elements for plain types (BF16 as uint16 bits),
        uint8 rows for quantized types.  No copy for contiguous data."""
        info = self.info
        mm = self.model._map(info.file)
        if info.strides is not None:
            dt = dtypes.PLAIN_DTYPES[info.dtype]
            span = _strided_span(info.shape, info.strides) * dt.itemsize
            base = mm[info.offset:info.offset + span].view(dt)
            return np.lib.stride_tricks.as_strided(
                base, shape=info.shape, strides=tuple(s * dt.itemsize for s in info.strides), writeable=False)
        data = mm[info.offset:info.offset + info.nbytes]
        if len(data) != info.nbytes:
            raise FormatError(f"tensor {info.name} runs past the end of the file", path=info.file)
        if dtypes.is_quantized(info.dtype):
            block, size = dtypes.block_info(info.dtype)
            row = info.shape[-1] if info.shape else 1
            rows = info.n_params // row if row else 0
            return data.reshape(rows, row // block * size)
        return data.view(dtypes.PLAIN_DTYPES[info.dtype]).reshape(info.shape)

    def to_float32(self) -> np.ndarray:
        """The whole tensor as float32 of ``info.shape`` (dequantized or widened; F32 data comes back as a
        read-only view of the mapped file, so copy it before changing it)."""
        if self.info.n_params == 0:  # a tensor with a zero dimension: nothing to decode
            self.raw()
            return np.zeros(self.info.shape, np.float32)
        return dtypes.decode(self.raw(), self.info.dtype, self.info.shape)

    def iter_float32(self, max_elements: int = 1 << 22) -> Iterator[np.ndarray]:
        """The tensor as flat float32 chunks of whole rows, each at most ~``max_elements`` values."""
        info = self.info
        raw = self.raw()
        if info.n_params == 0:
            return
        row = info.shape[-1] if info.shape else 1
        rows = max(1, info.n_params // max(row, 1))
        raw2 = raw.reshape(rows, -1)
        step = max(1, max_elements // max(row, 1))
        for start in range(0, rows, step):
            part = raw2[start:start + step]
            yield dtypes.decode(part, info.dtype, (part.shape[0], row)).reshape(-1)


def _strided_span(shape: tuple[int, ...], strides: tuple[int, ...]) -> int:
    if any(s == 0 for s in shape):
        return 0
    return 1 + sum((n - 1) * s for n, s in zip(shape, strides))


@dataclass
class Model:
    """A model opened from disk.  Only headers are read; tensor data is mapped lazily."""

    format: str  # "safetensors", "gguf", "pytorch", "peft"
    path: Path  # what the user opened (file or folder)
    files: list[Path]
    tensors: list[TensorInfo]
    metadata: "OrderedDict[str, list[MetaEntry]]" = field(default_factory=OrderedDict)
    architecture: str | None = None
    name: str = ""
    warnings: list[str] = field(default_factory=list)
    # GGUF: where each key's value lies in the first file, and that file's (size, mtime_ns) when it was read
    kv_spans: "dict[str, tuple[int, int]] | None" = field(default=None, repr=False)
    kv_stamp: tuple[int, int] | None = field(default=None, repr=False)
    _maps: dict[Path, np.memmap] = field(default_factory=dict, repr=False)
    _by_name: dict[str, TensorInfo] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._by_name = {t.name: t for t in self.tensors}
        if not self.name:
            self.name = self.path.stem if self.path.is_file() else self.path.name

    # -- tensors -------------------------------------------------------------------------------
    def tensor(self, name: str) -> Tensor:
        try:
            return Tensor(self, self._by_name[name])
        except KeyError:
            raise WorkbenchError(f"no tensor named {name!r} in this model", path=self.path) from None

    def info(self, name: str) -> TensorInfo:
        return self.tensor(name).info

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def _map(self, file: Path) -> np.memmap:
        mm = self._maps.get(file)
        if mm is None:
            mm = np.memmap(file, dtype=np.uint8, mode="r") if file.stat().st_size else np.zeros(0, np.uint8)
            self._maps[file] = mm
        return mm

    def release(self, name: str) -> None:
        """Tell the OS this tensor's mapped pages are not needed any more (they are re-read on next use).

        Streaming jobs call it after each tensor, so the process does not keep a whole model's pages
        resident.  No-op where ``madvise`` is unavailable."""
        info = self._by_name.get(name)
        mm = self._maps.get(info.file) if info is not None else None
        raw = getattr(mm, "_mmap", None)
        if raw is None or not hasattr(mmap, "MADV_DONTNEED") or not info.nbytes:
            return
        page = mmap.PAGESIZE
        start = info.offset // page * page
        end = min(len(mm), info.offset + info.nbytes)
        try:
            raw.madvise(mmap.MADV_DONTNEED, start, end - start)
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        self._maps.clear()

    # -- totals --------------------------------------------------------------------------------
    @property
    def n_params(self) -> int:
        return sum(t.n_params for t in self.tensors)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def bits_per_weight(self) -> float:
        n = self.n_params
        return 8.0 * self.nbytes / n if n else 0.0

    def dtype_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in self.tensors:
            counts[t.dtype] = counts.get(t.dtype, 0) + 1
        return counts

    def layers(self) -> "OrderedDict[str | None, list[TensorInfo]]":
        """Tensors grouped by layer: ``None`` (the non-layer tensors) first, then layers in numeric order."""
        groups: dict[str | None, list[TensorInfo]] = {}
        for t in self.tensors:
            groups.setdefault(t.layer, []).append(t)
        first = {k: i for i, k in enumerate(groups)}

        def key(k: str | None):
            if k is None:
                return (0, "", 0, 0)
            prefix = k.rsplit(".", 1)[0]
            return (1, prefix, layer_index(k), first[k])

        return OrderedDict((k, groups[k]) for k in sorted(groups, key=key))

    # -- metadata ------------------------------------------------------------------------------
    def meta(self, key: str, default: Any = None, group: str | None = None) -> Any:
        """The value of a metadata key (searched in every group unless ``group`` is given)."""
        for gname, entries in self.metadata.items():
            if group is not None and gname != group:
                continue
            for e in entries:
                if e.key == key:
                    return e.value
        return default

    def summary(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "architecture": self.architecture,
            "name": self.name,
            "files": [str(f) for f in self.files],
            "tensor_count": len(self.tensors),
            "parameters": self.n_params,
            "bytes": self.nbytes,
            "bits_per_weight": round(self.bits_per_weight, 4),
            "dtypes": self.dtype_counts(),
        }
