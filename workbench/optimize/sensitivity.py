"""Sensitivity: what putting one group of tensors at one type does to the model's output.

A *group* is the same kind of tensor in one layer (``blk.3.attn_v``: the tensors of that layer whose GGUF names
end in ``attn_v.weight``, or ``token_embd`` / ``output`` outside the layers).  For each group and each candidate
type, :class:`SensitivityTable` holds

* ``measured[(group, type)]``: the increase of the mean KL divergence from the base on calibration text when
  only that group is put at that type and every other tensor stays at the table's ``reference`` type (measured
  by running the engine);
* ``estimate[(group, type)]``: a cheap prediction of the same quantity from the weights alone (the
  importance-weighted quantization error of the group's tensors; no forward pass), used to rank candidates
  before measuring and reported beside the measurement (``rank_correlation``).

The optimizer (:mod:`workbench.optimize.optimizer`) treats the effects as additive: a plan's predicted KLD is
the sum of its groups' entries (``value()`` prefers the measurement and falls back to the estimate).

This module holds the data types and their JSON form (the on-disk cache, keyed by model, text and types); the
measuring jobs are added beside them.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import WorkbenchError

_LAYER = re.compile(r"^blk\.(\d+)\.(.+?)(?:\.weight|\.bias)?$")
FORMAT = 1


def group_key(gguf_name: str) -> str:
    """``blk.3.attn_v.weight`` -> ``blk.3.attn_v``; ``token_embd.weight`` -> ``token_embd``."""
    m = _LAYER.match(gguf_name)
    if m:
        return f"blk.{m.group(1)}.{m.group(2)}"
    return re.sub(r"\.(weight|bias)$", "", gguf_name)


def group_layer_kind(key: str) -> tuple[int | None, str]:
    """``blk.3.attn_v`` -> (3, "attn_v"); ``output`` -> (None, "output")."""
    m = re.match(r"^blk\.(\d+)\.(.+)$", key)
    return (int(m.group(1)), m.group(2)) if m else (None, key)


@dataclass
class Group:
    key: str  # "blk.3.attn_v"
    tensors: list[str]  # the source tensor names (as the model names them) in the group
    n_params: int

    @property
    def layer(self) -> int | None:
        return group_layer_kind(self.key)[0]

    @property
    def kind(self) -> str:
        return group_layer_kind(self.key)[1]


@dataclass
class SensitivityTable:
    model: str  # the model's path (or a stable identity)
    reference: str  # the type every other group stays at while one group is swapped (e.g. "Q8_0")
    types: list[str]  # the candidate types
    groups: list[Group]
    measured: dict[tuple[str, str], float] = field(default_factory=dict)  # (group key, type) -> ΔKLD
    estimate: dict[tuple[str, str], float] = field(default_factory=dict)  # (group key, type) -> predicted ΔKLD
    text_sha256: str = ""  # the calibration text measured on
    n_tokens: int = 0  # tokens scored per measurement
    rank_correlation: float | None = None  # Spearman correlation of estimate and measurement, where both exist
    meta: dict[str, Any] = field(default_factory=dict)

    def value(self, key: str, qtype: str) -> float | None:
        """The measured ΔKLD of putting group ``key`` at ``qtype``, else the estimate, else None."""
        if (key, qtype) in self.measured:
            return self.measured[(key, qtype)]
        return self.estimate.get((key, qtype))

    def group(self, key: str) -> Group:
        for g in self.groups:
            if g.key == key:
                return g
        raise KeyError(key)

    # -- JSON (the cache) ----------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps({
            "format": FORMAT, "model": self.model, "reference": self.reference, "types": self.types,
            "groups": [{"key": g.key, "tensors": g.tensors, "n_params": g.n_params} for g in self.groups],
            "measured": [[k, t, v] for (k, t), v in sorted(self.measured.items())],
            "estimate": [[k, t, v] for (k, t), v in sorted(self.estimate.items())],
            "text_sha256": self.text_sha256, "n_tokens": self.n_tokens,
            "rank_correlation": self.rank_correlation, "meta": self.meta}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "SensitivityTable":
        try:
            d = json.loads(text)
            if not isinstance(d, dict) or d.get("format") != FORMAT:
                raise ValueError("not a sensitivity table of this version")
            return cls(model=str(d["model"]), reference=str(d["reference"]), types=[str(t) for t in d["types"]],
                       groups=[Group(str(g["key"]), [str(t) for t in g["tensors"]], int(g["n_params"]))
                               for g in d["groups"]],
                       measured={(str(k), str(t)): float(v) for k, t, v in d["measured"]},
                       estimate={(str(k), str(t)): float(v) for k, t, v in d["estimate"]},
                       text_sha256=str(d.get("text_sha256", "")), n_tokens=int(d.get("n_tokens", 0)),
                       rank_correlation=(None if d.get("rank_correlation") is None
                                         else float(d["rank_correlation"])),
                       meta=dict(d.get("meta") or {}))
        except (ValueError, KeyError, TypeError) as exc:
            raise WorkbenchError(f"the sensitivity cache is not readable: {exc}",
                                 hint="Delete it; it is measured again.") from None
