"""Open any supported model: detect the format and build a :class:`~workbench.model.Model`."""
from __future__ import annotations

import os

from collections import OrderedDict
from pathlib import Path
from typing import Generator

from ..errors import FormatError, MissingFileError, UnsupportedError, WorkbenchError, quote, short
from ..model import MetaEntry, Model, TensorInfo
from ..progress import Progress, run
from . import gguf as gguf_fmt
from . import hf
from . import safetensors as st_fmt

MODEL_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth")


def open_model(path) -> Model:
    """Open a model file or folder.  Reads headers only; tensors are mapped lazily."""
    return run(iter_open_model(path))


def iter_open_model(path) -> Generator[Progress, None, Model]:
    """:func:`open_model` as a job generator (progress per file read)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise MissingFileError("no such file or folder", path=p)
    try:
        if p.is_dir():
            model = yield from _open_folder(p)
        else:
            model = yield from _open_file(p)
    except WorkbenchError:
        raise
    except (OSError, ValueError, OverflowError, MemoryError) as exc:
        raise FormatError(f"could not be read: {short(str(exc) or type(exc).__name__, 120)}", path=p) from exc
    return model


def _sniff(p: Path) -> str | None:
    with open(p, "rb") as f:
        head = f.read(9)
    if head[:4] == b"GGUF":
        return "gguf"
    if head[:2] == b"PK":
        return "pytorch"
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    return None


def _open_file(p: Path) -> Generator[Progress, None, Model]:
    suffix = p.suffix.lower()
    if p.name.endswith(".safetensors.index.json") or p.name.endswith(".bin.index.json"):
        return (yield from _open_folder(p.parent, index=p))
    if suffix == ".json":  # config.json, adapter_config.json...: the user means the model folder
        if p.name in hf.JSON_FILES:
            hf.load_json(p)  # a broken file is named as such
        return (yield from _open_folder(p.parent))
    kind = {".safetensors": "safetensors", ".gguf": "gguf", ".bin": "pytorch", ".pt": "pytorch",
            ".pth": "pytorch"}.get(suffix) or _sniff(p)
    if kind == "gguf":
        return (yield from _open_gguf(p))
    if kind == "safetensors":
        yield Progress(0, 1, f"Reading {p.name}")
        tensors, meta = st_fmt.read_header(p)
        yield Progress(1, 1, f"Read {p.name}")
        return _hf_model("safetensors", p, [p], tensors, meta, p.parent if _looks_like_hf(p.parent) else None)
    if kind == "pytorch":
        return (yield from _open_bin([p], p))
    raise UnsupportedError("not a model file Model Workbench can open", path=p,
                           hint="Open a .gguf, .safetensors or PyTorch .bin file, or a Hugging Face model folder.")


def _looks_like_hf(folder: Path) -> bool:
    return (folder / "config.json").is_file() or (folder / "adapter_config.json").is_file()


def _open_folder(folder: Path, index: Path | None = None) -> Generator[Progress, None, Model]:
    entries = [e for e in folder.iterdir() if not e.name.startswith(".")]
    if not entries:
        raise WorkbenchError("the folder is empty", path=folder, hint="Choose the folder that holds the model files.")
    if index is None and (folder / "adapter_config.json").is_file():
        return (yield from _open_peft(folder))
    if index is None and (folder / "model.safetensors.index.json").is_file():
        index = folder / "model.safetensors.index.json"
    if index is not None and index.name.endswith(".safetensors.index.json"):
        yield Progress(0, 1, f"Reading {index.name}")
        files, tensors, meta, index_meta = st_fmt.open_sharded(index)
        yield Progress(1, 1, "Read shards")
        model = _hf_model("safetensors", folder, [index, *files], tensors, meta, folder)
        if index_meta:
            model.metadata["index"] = hf.json_entries(index_meta)
        return model
    st_files = sorted(folder.glob("*.safetensors"))
    if st_files:
        tensors: list[TensorInfo] = []
        meta: dict[str, str] = {}
        for i, f in enumerate(st_files):
            yield Progress(i, len(st_files), f"Reading {f.name}")
            part, m = st_fmt.read_header(f)
            tensors.extend(part)
            meta.update(m)
        _check_unique(tensors, folder)
        return _hf_model("safetensors", folder, st_files, tensors, meta, folder)
    if index is None and (folder / "pytorch_model.bin.index.json").is_file():
        index = folder / "pytorch_model.bin.index.json"
    if index is not None and index.name.endswith(".bin.index.json"):
        from .torchbin import read_bin_index

        files, _ = read_bin_index(index)
        return (yield from _open_bin(files, folder, extra_files=[index]))
    bins = sorted(f for f in folder.iterdir() if f.suffix in (".bin", ".pt", ".pth") and f.is_file()
                  and f.name not in ("training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth"))
    if bins:
        return (yield from _open_bin(bins, folder))
    ggufs = sorted(folder.glob("*.gguf"))
    if ggufs:
        sets = {tuple(gguf_fmt.split_files(g)) if gguf_fmt.SPLIT_RE.match(g.name) else (g,) for g in ggufs}
        if len(sets) == 1:
            return (yield from _open_gguf(ggufs[0]))
        names = ", ".join(sorted(s[0].name for s in sets))
        raise WorkbenchError(f"the folder holds {len(sets)} different GGUF models ({names})", path=folder,
                             hint="Open one of the .gguf files directly.")
    raise WorkbenchError("no model files in this folder (.safetensors, .gguf, .bin, .pt)", path=folder,
                         hint="Choose a Hugging Face model folder or a model file.")


def _check_unique(tensors: list[TensorInfo], where: Path) -> None:
    seen: set[str] = set()
    for t in tensors:
        if t.name in seen:
            raise FormatError(f"tensor {short(t.name)} appears in more than one file", path=where)
        seen.add(t.name)


def _hf_model(fmt: str, path: Path, files: list[Path], tensors: list[TensorInfo], st_meta: dict,
              folder: Path | None) -> Model:
    groups: OrderedDict[str, list[MetaEntry]] = OrderedDict()
    arch = None
    if folder is not None:
        groups.update(hf.folder_metadata(folder))
        cfg = folder / "config.json"
        if cfg.is_file():
            arch = hf.architecture_from_config(hf.load_json(cfg))
    if st_meta:
        groups["safetensors"] = [MetaEntry(k, "string", v) for k, v in st_meta.items()]
    return Model(fmt, path, files, tensors, groups, arch)


def _open_gguf(p: Path) -> Generator[Progress, None, Model]:
    files = gguf_fmt.split_files(p)
    yield Progress(0, len(files), f"Reading {p.name}")
    st = os.stat(files[0])  # before the read: a change after it shows in the stamp
    headers, tensors = gguf_fmt.read_split(p)
    yield Progress(len(files), len(files), "Read GGUF header")
    fields = headers[0].fields
    groups = hf.gguf_metadata(fields)
    groups["GGUF"].insert(0, MetaEntry("GGUF.version", "uint32", headers[0].version))
    arch = fields["general.architecture"].value if "general.architecture" in fields else None
    if arch is not None and not isinstance(arch, str):
        raise FormatError(f"general.architecture should be a string but is {fields['general.architecture'].type_name} "
                          f"{quote(arch)}", path=p)
    name = fields["general.name"].value if "general.name" in fields else ""
    return Model("gguf", p, [h.path for h in headers], tensors, groups, arch, name if isinstance(name, str) else "",
                 kv_spans={k: f.span for k, f in fields.items()}, kv_stamp=(st.st_size, st.st_mtime_ns))


def _open_bin(files: list[Path], path: Path, extra_files: list[Path] = ()) -> Generator[Progress, None, Model]:
    from .torchbin import read_bin

    tensors: list[TensorInfo] = []
    for i, f in enumerate(files):
        yield Progress(i, len(files), f"Reading {f.name}")
        part, _extra = read_bin(f)
        tensors.extend(part)
    _check_unique(tensors, path)
    folder = path if path.is_dir() else path.parent
    return _hf_model("pytorch", path, [*extra_files, *files], tensors, {}, folder if _looks_like_hf(folder) else None)


def _open_peft(folder: Path) -> Generator[Progress, None, Model]:
    from . import peft

    yield Progress(0, 1, "Reading adapter")
    adapter = peft.read_adapter(folder)
    yield Progress(1, 1, "Read adapter")
    return adapter
