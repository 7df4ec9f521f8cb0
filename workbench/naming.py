"""The GGUF file naming convention: ``<BaseName>-<SizeLabel>-<FineTune>-<Version>-<Encoding>-<Type>-<Shard>.gguf``.

Formatting uses gguf-py's ``naming_convention`` and ``size_label``; this module adds the parser and
validator (which components a name has, and whether it keeps the convention) and the shard suffix.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

from gguf.utility import naming_convention, size_label

from .errors import WorkbenchError

_SIZE = re.compile(r"^(?:\d+x)?\d+(?:\.\d+)?[KMBT](?:-[A-Za-z]+\d+(?:\.\d+)?[KMBT])?$")
_VERSION = re.compile(r"^v\d+(?:\.\d+)*$")
_ENCODING = re.compile(r"^(?:F32|F16|BF16|I?Q\d(?:_[0-9A-Z]+)*|TQ\d_\d|MXFP4(?:_MOE)?|Q\d_K(?:_[SML])?|IQ\d_(?:XXS|XS|S|M|NL))$")
_TYPES = ("LoRA", "vocab")
_SHARD = re.compile(r"-(\d{5})-of-(\d{5})$")


@dataclass(frozen=True)
class GGUFName:
    base_name: str
    size_label: str | None = None
    finetune: str | None = None
    version: str | None = None
    encoding: str | None = None
    type: str | None = None  # "LoRA", "vocab" or None for a model
    shard: tuple[int, int] | None = None  # (number, count), 1-based

    def filename(self) -> str:
        stem = naming_convention(None, self.base_name, self.finetune, self.version, self.size_label, self.encoding,
                                 self.type)  # type: ignore[arg-type]
        if self.shard is not None:
            stem += f"-{self.shard[0]:05d}-of-{self.shard[1]:05d}"
        return stem + ".gguf"

    def with_shard(self, number: int, count: int) -> "GGUFName":
        return replace(self, shard=(number, count))

    def problems(self) -> list[str]:
        """What keeps this name from the convention (empty when it conforms)."""
        out = []
        if not self.base_name:
            out.append("no base name")
        if self.size_label is None:
            out.append("no size label (e.g. 7B, 8x7B, 135M)")
        if self.version is None:
            out.append("no version (e.g. v1.0)")
        if self.shard is not None and not 1 <= self.shard[0] <= self.shard[1]:
            out.append(f"shard {self.shard[0]} of {self.shard[1]} is out of range")
        return out


def parse_gguf_name(filename: str) -> GGUFName:
    """Split a GGUF file name into its components.  Raises WorkbenchError if it is not a .gguf name."""
    name = filename.rsplit("/", 1)[-1]
    if not name.endswith(".gguf"):
        raise WorkbenchError(f"{name!r} is not a .gguf file name")
    stem = name[:-5]
    shard = None
    m = _SHARD.search(stem)
    if m:
        shard = (int(m.group(1)), int(m.group(2)))
        stem = stem[:m.start()]
    parts = stem.split("-")
    kind = parts.pop() if len(parts) > 1 and parts[-1] in _TYPES else None
    encoding = version = None
    if len(parts) > 2 and _VERSION.match(parts[-2]):  # after a version, the next part is the encoding
        encoding, version = parts.pop(), parts.pop()
    else:
        if len(parts) > 1 and _ENCODING.match(parts[-1].upper()):
            encoding = parts.pop()
        if len(parts) > 1 and _VERSION.match(parts[-1]):
            version = parts.pop()
    size_at = next((i for i in range(1, len(parts)) if _SIZE.match(parts[i])), None)
    # a size label like 8x7B-A2B spans two parts
    if size_at is None:
        for i in range(1, len(parts) - 1):
            if _SIZE.match(parts[i] + "-" + parts[i + 1]):
                size_at = i
                parts[i:i + 2] = [parts[i] + "-" + parts[i + 1]]
                break
    if size_at is None:
        return GGUFName("-".join(parts), None, None, version, encoding, kind, shard)
    base, size, fine = "-".join(parts[:size_at]), parts[size_at], "-".join(parts[size_at + 1:]) or None
    return GGUFName(base, size, fine, version, encoding, kind, shard)


def validate_gguf_name(filename: str) -> list[str]:
    """Problems of a GGUF file name against the convention (empty list: it conforms)."""
    try:
        return parse_gguf_name(filename).problems()
    except WorkbenchError as exc:
        return [exc.message]


def name_for_model(metadata: dict, encoding: str | None, n_params: int | None = None, kind: str | None = None) -> GGUFName:
    """The conventional name from ``general.*`` metadata (``general.basename``, ``general.size_label``...)."""
    base = metadata.get("general.basename") or metadata.get("general.name") or "model"
    label = metadata.get("general.size_label")
    if label is None and n_params:
        label = size_label(int(n_params), 0, 0, 0)
    version = metadata.get("general.version")
    if version is not None and not str(version).startswith("v"):
        version = f"v{version}"
    return GGUFName(str(base).strip().replace(" ", "-").replace("/", "-"), label,
                    metadata.get("general.finetune"), version, encoding.upper() if encoding else None, kind)
