"""Hugging Face folder -> GGUF, following llama.cpp's ``convert_hf_to_gguf.py`` for the llama family
(Llama/Mistral: SmolLM2, TinyLlama...), qwen2, qwen3, qwen3moe, gemma2, gemma3 (text), phi3, bert and t5, with
tensor types from a :class:`~workbench.plan.Plan`.

What it writes, as the reference does:

- tensor names from gguf-py's ``TensorNameMap``; llama Q/K rows permuted (``LlamaModel.permute``),
  qwen2 not; rotary ``inv_freq``, ``position_ids``, pooler and MLM heads skipped; the first of T5's
  shared/encoder/decoder embeddings written as ``token_embd``; tied embeddings left tied (no
  ``output.weight`` unless the checkpoint stores ``lm_head``); ``rope_freqs`` for llama3 RoPE scaling;
  tensors in the reference's order (files sorted by name, tensors sorted by name within a file);
- per architecture as the reference's model classes: Gemma's RMSNorm weights written as 1 + w (computed in
  float32, as transformers applies them; the reference adds 1 in the source dtype), gemma2 never writes
  ``lm_head``, gemma3 drops embedding rows past the tokenizer's size; qwen3moe's per-expert
  ``experts.E.{gate,up,down}_proj`` stacked into 3-D ``ffn_{gate,up,down}_exps`` (read one expert at a
  time); phi3 keeps its fused ``qkv_proj`` / ``gate_up_proj`` and writes ``rope_factors_long/short`` for
  longrope; only llama/mistral permute Q/K rows;
- ``general.*`` from gguf-py's ``Metadata`` (model card, config, size label from the parameter count),
  the architecture keys from config.json, ``general.file_type`` from the plan's preset,
  ``general.quantization_version``, and the tokenizer (:mod:`.hf_vocab`);
- shards named ``-0000k-of-0000n`` with ``split.*`` keys (gguf-py's writer, as llama-gguf-split).

Unlike the reference, any plan type can be written (K-quants, IQ4...), quantized by
:mod:`workbench.kernels` in row chunks, and nothing but the tensor being written is in memory.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Generator

import gguf
import numpy as np
from gguf import LlamaFileType

from .. import dtypes, kernels
from ..errors import FormatError, MissingFileError, UnsupportedError, WorkbenchError
from ..model import Model
from ..naming import GGUFName, name_for_model
from ..optimize.imatrix import check_required, submit_rows, tensor_weights
from ..plan import PRESETS, Plan
from ..progress import Progress
from .gguf_stream import Sized, StreamTensor, new_writer, target_path, write_gguf_stream
from .hf_vocab import GGUFVocab, read_vocab

# Hugging Face architectures[0] -> GGUF architecture, the ones this converter supports
SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama", "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3", "Qwen3MoeForCausalLM": "qwen3moe",
    "Gemma2ForCausalLM": "gemma2", "Gemma3ForCausalLM": "gemma3",
    "Phi3ForCausalLM": "phi3",
    "BertModel": "bert", "BertForMaskedLM": "bert",
    "T5ForConditionalGeneration": "t5", "T5WithLMHeadModel": "t5",
}
CHUNK_ELEMENTS = 1 << 22  # source values quantized per step (bounded memory, progress granularity)

# transformers' config defaults for the keys the converter reads (its config class fills them in)
_DEFAULTS = {
    "llama": {"max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "rope_theta": 10000.0},
    "qwen2": {"max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 10000.0},
    "qwen3": {"max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "head_dim": 128},
    "qwen3moe": {"max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
                 "num_experts": 128, "num_experts_per_tok": 8, "moe_intermediate_size": 768},
    "gemma2": {"max_position_embeddings": 8192, "rms_norm_eps": 1e-6, "head_dim": 256, "sliding_window": 4096,
               "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0},
    "gemma3": {"max_position_embeddings": 131072, "rms_norm_eps": 1e-6, "head_dim": 256, "sliding_window": 4096,
               "num_attention_heads": 8, "num_key_value_heads": 4, "rope_theta": 1_000_000.0,
               "rope_local_base_freq": 10000.0},
    "phi3": {"max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0},
    "bert": {"max_position_embeddings": 512, "layer_norm_eps": 1e-12, "type_vocab_size": 2},
    "t5": {"relative_attention_num_buckets": 32, "layer_norm_epsilon": 1e-6, "d_kv": 64},
}
_SKIP_SUFFIXES = (".attention.masked_bias", ".attention.bias", ".rotary_emb.inv_freq")
_T5_SHARED = ("decoder.embed_tokens.weight", "encoder.embed_tokens.weight", "shared.weight")


@dataclass(frozen=True)
class OutTensor(Sized):
    """One tensor of the output file."""

    name: str  # GGUF name
    source: str | None  # source tensor name (None: computed from the config, e.g. rope_freqs)
    shape: tuple[int, ...]  # numpy order
    type: str  # ggml type written
    permute_heads: int = 0  # llama Q/K: rows are permuted in groups of this many heads
    data: np.ndarray | None = field(default=None, compare=False, repr=False)  # computed tensors
    shift: float = 0.0  # added to every value (Gemma's RMSNorm weights: the GGUF stores 1 + w)
    sources: tuple[str, ...] = ()  # stacked 3-D tensor (qwen3moe experts): one source per expert, in order

    @property
    def source_names(self) -> tuple[str, ...]:
        """Every source tensor read for this tensor."""
        return self.sources or ((self.source,) if self.source is not None else ())


@dataclass
class HfToGguf:
    """A prepared conversion: what will be written (shown before writing; ``convert_hf_to_gguf`` runs it)."""

    folder: Path
    hf_arch: str
    arch: str  # GGUF architecture
    hparams: dict
    plan: Plan
    tensors: list[OutTensor]
    skipped: list[str]  # source tensors not written
    metadata: gguf.Metadata
    file_type: LlamaFileType

    @property
    def model(self) -> Model:
        return self.plan.model

    @property
    def n_params(self) -> int:
        return sum(t.n_params for t in self.tensors)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def encoding(self) -> str:
        return self.file_type.name.partition("_")[2]  # MOSTLY_Q4_K_M -> Q4_K_M, as the reference names files

    def output_name(self) -> GGUFName:
        """The conventional file name (workbench.naming) from the general.* metadata and the preset."""
        md = self.metadata
        meta = {"general.name": md.name, "general.basename": md.basename, "general.size_label": md.size_label,
                "general.finetune": md.finetune, "general.version": md.version}
        return name_for_model({k: v for k, v in meta.items() if v is not None}, self.encoding, self.n_params)

    def types(self) -> dict[str, str]:
        """GGUF tensor name -> type written."""
        return {t.name: t.type for t in self.tensors}


# -- preparing ---------------------------------------------------------------------------------

def prepare_hf_to_gguf(src, plan_or_preset: Plan | str = "F16") -> HfToGguf:
    """Read the source folder's config and headers and decide every output tensor (no tensor data read)."""
    if isinstance(plan_or_preset, Plan):
        plan = plan_or_preset
        folder = _model_folder(plan.model.path)
        if src is not None and _model_folder(Path(src)).resolve() != folder.resolve():
            raise WorkbenchError("the plan was made for another model", path=src,
                                 hint=f"Make the plan on {folder} or convert the model the plan was made for.")
    else:
        from ..formats import open_model

        folder = _model_folder(Path(src))
        preset = str(plan_or_preset).upper()
        if preset not in PRESETS:
            raise WorkbenchError(f"unknown preset {plan_or_preset!r}", hint="Choose one of: " + ", ".join(PRESETS))
        model = open_model(folder)
        plan = Plan(model, preset)
    model = plan.model
    if model.format not in ("safetensors", "pytorch"):
        raise UnsupportedError(f"a {model.format} model cannot be converted to GGUF here", path=model.path,
                               hint="Open a Hugging Face model folder (config.json with .safetensors or .bin weights).")
    config, arch, hparams = read_config(folder)
    hf_arch = _hf_architecture(config)
    tensors, skipped = _plan_tensors(model, plan, arch, hparams)
    total = sum(t.n_params for t in tensors)
    md = gguf.Metadata.load(None, folder, None, total)
    if md.name is None:
        md.name = folder.name
    if md.size_label is None and total > 0:
        md.size_label = gguf.size_label(total, total, 0, 0)
    return HfToGguf(folder, hf_arch, arch, hparams, plan, tensors, skipped, md, PRESETS[plan.preset][0])


def read_config(folder: Path, *, missing_hint: str = "GGUF conversion needs the model's config.json beside the "
                "weights.", what: str = "cannot be converted to GGUF yet") -> tuple[dict, str, dict]:
    """(config.json, GGUF architecture, hyperparameters) of an HF model folder, or a clear error."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise MissingFileError("the model folder has no config.json", path=folder, hint=missing_hint)
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"not valid JSON: {exc}", path=config_path) from None
    if not isinstance(config, dict):
        raise FormatError("config.json is not a JSON object", path=config_path)
    hf_arch = _hf_architecture(config)
    arch = SUPPORTED_ARCHITECTURES.get(hf_arch or "")
    if arch is None:
        raise UnsupportedError(f"architecture {hf_arch!r} {what}", path=config_path, hint=supported_hint())
    return config, arch, _hparams(config, arch)


def supported_hint() -> str:
    """The supported config.json architectures, compactly (the ...ForCausalLM ones by family)."""
    causal = [a.removesuffix("ForCausalLM") for a in SUPPORTED_ARCHITECTURES if a.endswith("ForCausalLM")]
    others = [a for a in SUPPORTED_ARCHITECTURES if not a.endswith("ForCausalLM")]
    return f"Supported: {'/'.join(causal)} ForCausalLM, " + ", ".join(others) + "."


def _model_folder(path: Path) -> Path:
    path = Path(path).expanduser()
    return path if path.is_dir() else path.parent


def _hf_architecture(config: dict) -> str | None:
    archs = config.get("architectures")
    if isinstance(archs, list) and archs:
        return str(archs[0])
    return None


def _hparams(config: dict, arch: str) -> dict:
    hp = dict(config)
    if isinstance(hp.get("text_config"), dict):
        hp = {**hp, **hp["text_config"]}
    for k, v in _DEFAULTS[arch].items():
        hp.setdefault(k, v)
    if arch in _DECODERS:
        for key in ("hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size"):
            if not isinstance(hp.get(key), int):
                raise FormatError(f"config.json has no integer {key!r}", hint="The config is incomplete.")
        hp.setdefault("num_key_value_heads", hp["num_attention_heads"])
        if arch == "llama":  # transformers' LlamaConfig always carries head_dim (the reference writes key_length)
            hp.setdefault("head_dim", hp["hidden_size"] // hp["num_attention_heads"])
        if arch == "qwen3moe" and not isinstance(_find(hp, ("num_local_experts", "num_experts")), int):
            raise FormatError("config.json has no integer 'num_experts'", hint="The config is incomplete.")
        if arch == "phi3":
            rp = _rope_params(hp)
            if rp.get("original_max_position_embeddings") is None:
                hp.setdefault("original_max_position_embeddings", hp["max_position_embeddings"])
    if arch == "t5":
        hp.setdefault("num_decoder_layers", hp.get("num_layers"))
        hp.setdefault("decoder_start_token_id", hp.get("pad_token_id", 0))
    return hp


_DECODERS = ("llama", "qwen2", "qwen3", "qwen3moe", "gemma2", "gemma3", "phi3")


def _block_count(hp: dict) -> int:
    for key in ("n_layers", "num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(hp.get(key), int):
            return hp[key]
    raise FormatError("config.json has no layer count (num_hidden_layers / num_layers)")


def _rope_params(hp: dict) -> dict:
    rp = dict(hp.get("rope_parameters") or hp.get("rope_scaling") or {})
    rp = dict(rp.get("full_attention", rp))
    if "rope_type" not in rp and rp.get("type") is not None:
        rp["rope_type"] = rp["type"]
    if "rope_theta" not in rp and hp.get("rope_theta") is not None:
        rp["rope_theta"] = hp["rope_theta"]
    if "original_max_position_embeddings" not in rp and hp.get("original_max_position_embeddings") is not None:
        rp["original_max_position_embeddings"] = hp["original_max_position_embeddings"]
    if "partial_rotary_factor" not in rp and hp.get("partial_rotary_factor") is not None:
        rp["partial_rotary_factor"] = hp["partial_rotary_factor"]
    return rp


def _swa_rope_theta(hp: dict) -> float | None:
    """The local (sliding-window) RoPE base: rope_parameters.sliding_attention, or the older config keys
    (the reference's TextModel mirrors ``rope_local_base_freq`` & co into it)."""
    rp = hp.get("rope_parameters") or hp.get("rope_scaling") or {}
    if "full_attention" in rp or "sliding_attention" in rp:
        return (rp.get("sliding_attention") or {}).get("rope_theta")
    return _find(hp, ("local_rope_theta", "rope_local_theta", "rope_theta_local", "swa_rope_theta",
                      "rope_local_base_freq"))


def _source_order(model: Model) -> list:
    # the reference reads the weight files in name order and each file's tensors in name order
    return sorted(model.tensors, key=lambda t: (t.file.name, t.name))


def _plan_tensors(model: Model, plan: Plan, arch: str, hp: dict) -> tuple[list[OutTensor], list[str]]:
    n_blocks = _block_count(hp)
    tmap = gguf.get_tensor_name_map(_model_arch(arch), n_blocks)
    entries = {e.name: e for e in plan.entries}
    by_gguf = {e.gguf_name: e.type for e in plan.entries}
    out: list[OutTensor] = []
    skipped: list[str] = []
    if arch == "llama":
        rope = _llama3_rope_factors(hp)
        if rope is not None:
            out.append(OutTensor("rope_freqs.weight", None, rope.shape, "F32", data=rope))
    if arch == "phi3":
        for gname, factors in _phi3_rope_factors(hp):
            out.append(OutTensor(gname, None, factors.shape, "F32", data=factors))
    n_vocab_real = _gemma3_vocab_rows(_model_folder(model.path)) if arch == "gemma3" else None
    experts = _ExpertStacks(hp) if arch == "qwen3moe" else None
    t5_shared_found = False

    def qtype_for(source: str, gname: str) -> str:
        entry = entries.get(source)
        qtype = entry.type if entry is not None else "F32"
        if (entry is None or entry.gguf_name != gname) and gname in by_gguf:
            # written under another name than the plan assumed (T5's shared embedding copies, stacked experts):
            # the plan's choice for that GGUF tensor applies
            qtype = by_gguf[gname]
        if qtype not in kernels.Kernel.registry:  # integer tensors the plan kept as stored: as the reference, F32
            qtype = "F32"
        return qtype

    for info in _source_order(model):
        name = info.name
        if arch == "bert":
            name = _bert_name(name)
            if name is None:
                skipped.append(info.name)
                continue
        name = name.replace("language_model.", "")
        if arch == "llama":
            name = name.replace("text_model.", "")
        if name.endswith(_SKIP_SUFFIXES) or (arch == "gemma2" and name == "lm_head.weight"):
            skipped.append(info.name)  # GemmaModel / Gemma2Model.filter_tensors: lm_head is never written
            continue
        if arch == "t5" and name in _T5_SHARED:
            if t5_shared_found:  # the reference keeps the first of the (tied) copies
                skipped.append(info.name)
                continue
            name, t5_shared_found = "shared.weight", True
        if experts is not None and (m := _EXPERT.fullmatch(name)) is not None:
            for stacked in experts.add(m, info):  # the layer's three 3-D tensors once its last expert is seen
                gname = tmap.get_name(stacked.hf_name, try_suffixes=(".weight",))
                out.append(OutTensor(gname, None, stacked.shape, qtype_for(stacked.sources[0], gname),
                                     sources=stacked.sources))
            continue
        gname = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
        if gname is None:
            raise UnsupportedError(f"tensor {info.name} has no GGUF name for architecture {arch}", path=info.file,
                                   hint="The checkpoint holds tensors this converter does not know; it may be a "
                                        "different model class than config.json says.")
        heads = 0
        if arch == "llama":
            n_head, n_kv = hp["num_attention_heads"], hp["num_key_value_heads"]
            if name.endswith(("q_proj.weight", "q_proj.bias")):
                heads = n_head
            elif name.endswith(("k_proj.weight", "k_proj.bias")):
                heads = n_kv
            if heads and info.shape[0] % (2 * heads):
                raise FormatError(f"tensor {info.name} has {info.shape[0]} rows, not a multiple of 2 x {heads} heads",
                                  path=info.file, hint="config.json's head counts do not match the weights.")
        shape = tuple(info.shape)
        if n_vocab_real is not None and "embed_tokens.weight" in name and len(shape) == 2:
            shape = (min(shape[0], n_vocab_real), shape[1])  # Gemma3Model: out-of-vocabulary rows removed
        shift = 1.0 if arch in ("gemma2", "gemma3") and name.endswith("norm.weight") else 0.0
        out.append(OutTensor(gname, info.name, shape, qtype_for(info.name, gname), heads, shift=shift))
    if experts is not None:
        experts.check_complete(model.path)
    seen: set[str] = set()
    for t in out:
        if t.name in seen:
            raise FormatError(f"two source tensors map to the GGUF tensor {t.name}", path=model.path)
        seen.add(t.name)
    return out, skipped


_EXPERT = re.compile(r"model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight")


@dataclass
class _Stacked:
    hf_name: str  # the merged name the reference maps (model.layers.N.mlp.experts.W.weight)
    shape: tuple[int, ...]
    sources: tuple[str, ...]


class _ExpertStacks:
    """Qwen2MoeModel.modify_tensors: a layer's per-expert matrices become three 3-D tensors [n_expert, rows,
    cols] (down, gate, up), emitted where the layer's last expert tensor comes in the reading order."""

    def __init__(self, hp: dict):
        self.n_expert = int(_find(hp, ("num_local_experts", "num_experts")))
        self.layers: dict[int, dict[tuple[str, int], object]] = {}
        self.done: set[int] = set()

    def add(self, m: re.Match, info) -> list[_Stacked]:
        bid, xid, kind = int(m.group(1)), int(m.group(2)), m.group(3)
        if xid >= self.n_expert:
            raise FormatError(f"tensor {info.name} is expert {xid} but config.json says {self.n_expert} experts",
                              path=info.file, hint="config.json's num_experts does not match the weights.")
        layer = self.layers.setdefault(bid, {})
        layer[(kind, xid)] = info
        if len(layer) < 3 * self.n_expert:
            return []
        self.done.add(bid)
        stacked = []
        for kind in ("down_proj", "gate_proj", "up_proj"):
            infos = [layer[(kind, x)] for x in range(self.n_expert)]
            shapes = {tuple(i.shape) for i in infos}
            if len(shapes) != 1:
                raise FormatError(f"the experts of layer {bid} have different {kind} shapes: {sorted(shapes)}",
                                  path=infos[0].file)
            stacked.append(_Stacked(f"model.layers.{bid}.mlp.experts.{kind}.weight",
                                    (self.n_expert, *infos[0].shape), tuple(i.name for i in infos)))
        del self.layers[bid]
        return stacked

    def check_complete(self, path) -> None:
        for bid, layer in self.layers.items():
            have = sorted({x for _, x in layer})
            raise FormatError(f"layer {bid} has {len(layer)} expert tensors, not {3 * self.n_expert} "
                              f"(experts {have[:8]}{'...' if len(have) > 8 else ''})", path=path,
                              hint="Every expert needs gate_proj, up_proj and down_proj; the checkpoint is incomplete.")


def _gemma3_vocab_rows(folder: Path) -> int | None:
    """Gemma3Model.modify_tensors: the token count of the tokenizer (SentencePiece pieces, else tokenizer.json's
    vocabulary + added tokens); the embedding keeps that many rows."""
    if (folder / "tokenizer.model").is_file():
        return None  # the reference pads the SentencePiece vocabulary to vocab_size: nothing is removed
    tj_path = folder / "tokenizer.json"
    if not tj_path.is_file():
        return None
    try:
        tj = json.loads(tj_path.read_text(encoding="utf-8"))
        return len((tj.get("model") or {}).get("vocab") or {}) + len(tj.get("added_tokens") or [])
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None  # read_vocab reports the broken file


def _phi3_rope_factors(hp: dict) -> list[tuple[str, np.ndarray]]:
    """Phi3MiniModel.generate_extra_tensors: rope_factors_long / rope_factors_short of longrope scaling."""
    rp = _rope_params(hp)
    long, short = rp.get("long_factor"), rp.get("short_factor")
    if not long:
        return []
    n_embd, n_head = hp["hidden_size"], hp["num_attention_heads"]
    rope_dims = int(rp.get("partial_rotary_factor", 1.0) * n_embd) // n_head
    if short is None or len(long) != len(short) or len(long) * 2 != rope_dims:
        raise FormatError(f"rope_scaling long_factor/short_factor must both have {rope_dims // 2} values "
                          f"(have {len(long)} and {len(short or [])})", hint="The config's RoPE scaling is damaged.")
    return [("rope_factors_long.weight", np.asarray(long, dtype=np.float32)),
            ("rope_factors_short.weight", np.asarray(short, dtype=np.float32))]


def _phi3_attn_factor(hp: dict) -> float | None:
    rp = _rope_params(hp)
    if not rp.get("long_factor"):
        return None
    rope_type = str(rp.get("rope_type", "")).lower()
    scale = hp["max_position_embeddings"] / rp["original_max_position_embeddings"]
    orig = rp["original_max_position_embeddings"]
    if rope_type in ("su", "longrope"):
        return math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1.0 else 1.0
    if rope_type == "yarn":
        return 0.1 * math.log(scale) + 1.0 if scale > 1.0 else 1.0
    raise UnsupportedError(f"phi3 RoPE scaling type {rope_type!r} cannot be converted",
                           hint="Supported: longrope (su) and yarn.")


def _bert_name(name: str) -> str | None:
    if name.startswith("bert."):
        name = name[5:]
    if name.endswith(".gamma"):
        name = name[:-6] + ".weight"
    if name.endswith(".beta"):
        name = name[:-5] + ".bias"
    if name in ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"):
        return None
    if name.startswith(("cls.predictions", "cls.seq_relationship")):
        return None
    return name


def _model_arch(arch: str) -> gguf.MODEL_ARCH:
    return next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)


def _llama3_rope_factors(hp: dict) -> np.ndarray | None:
    """LlamaModel.generate_extra_tensors: the rope_freqs factors of llama3-type RoPE scaling."""
    rp = _rope_params(hp)
    if str(rp.get("rope_type", "")).lower() != "llama3":
        return None
    base = rp.get("rope_theta", 10000.0)
    dim = hp.get("head_dim") or hp["hidden_size"] // hp["num_attention_heads"]
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor = rp.get("factor", 8.0)
    low, high = rp.get("low_freq_factor", 1.0), rp.get("high_freq_factor", 4.0)
    old_ctx = rp.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    factors = []
    for f in freqs.astype(np.float32):
        wavelen = 2 * math.pi / f
        if wavelen < high_wavelen:
            factors.append(1)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


# -- metadata ----------------------------------------------------------------------------------

def _find(hp: dict, keys):
    return next((hp[k] for k in keys if k in hp and hp[k] is not None), None)


def _write_text_params(w: gguf.GGUFWriter, conv: HfToGguf) -> None:
    """TextModel.set_gguf_parameters and the llama / qwen2 / bert additions."""
    hp, arch = conv.hparams, conv.arch
    w.add_block_count(_block_count(hp))
    if (v := _find(hp, ("max_position_embeddings", "n_ctx", "n_positions", "max_length", "max_sequence_length",
                        "model_max_length"))) is not None:
        w.add_context_length(v)
    if (v := _find(hp, ("hidden_size", "n_embd", "dim"))) is not None:
        w.add_embedding_length(v)
    if (v := _find(hp, ("prefix_dense_intermediate_size", "dense_intermediate_size", "intermediate_size", "n_inner",
                        "hidden_dim"))) is not None:
        w.add_feed_forward_length(v)
    if (v := _find(hp, ("num_attention_heads", "n_head", "n_heads"))) is not None:
        w.add_head_count(v)
    if (v := _find(hp, ("num_key_value_heads", "n_kv_heads"))) is not None:
        w.add_head_count_kv(v)
    if hp.get("is_causal") is False:
        w.add_causal_attention(False)
    rp = _rope_params(hp)
    rope_type, factor = rp.get("rope_type"), rp.get("factor")
    if rope_type == "linear" and factor is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(factor)
    elif rope_type == "yarn" and factor is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(factor)
        w.add_rope_scaling_orig_ctx_len(rp["original_max_position_embeddings"])
        for key, add in (("extrapolation_factor", w.add_rope_scaling_yarn_ext_factor),
                         ("beta_fast", w.add_rope_scaling_yarn_beta_fast),
                         ("beta_slow", w.add_rope_scaling_yarn_beta_slow)):
            if rp.get(key) is not None:
                add(rp[key])
        if (attn := rp.get("attention_factor", rp.get("attn_factor"))) is not None:
            w.add_rope_scaling_yarn_attn_factor(attn)
    elif rope_type in ("su", "longrope"):
        w.add_rope_scaling_type(gguf.RopeScalingType.LONGROPE)
    if (theta := rp.get("rope_theta")) is not None:
        w.add_rope_freq_base(theta)
    if (swa_theta := _swa_rope_theta(hp)) is not None:
        w.add_rope_freq_base_swa(swa_theta)
    if (v := _find(hp, ("rms_norm_eps", "norm_eps"))) is not None:
        w.add_layer_norm_rms_eps(v)
    if (v := _find(hp, ("layer_norm_eps", "layer_norm_epsilon", "norm_epsilon"))) is not None:
        w.add_layer_norm_eps(v)
    if (v := _find(hp, ("num_local_experts", "num_experts", "n_routed_experts"))) is not None:
        w.add_expert_count(v)
    if (v := _find(hp, ("num_experts_per_tok", "num_experts_per_token", "top_k_experts"))) is not None:
        w.add_expert_used_count(v)
    if (head_dim := hp.get("head_dim")) is not None:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_file_type(conv.file_type)
    if arch == "llama":
        w.add_vocab_size(hp["vocab_size"])
        w.add_rope_dimension_count(hp.get("head_dim") or hp["hidden_size"] // hp["num_attention_heads"])
        if conv.hf_arch == "MistralForCausalLM" and hp.get("sliding_window"):
            # not written by the reference (llama.cpp's llama model has no window): our engine reads it, llama.cpp
            # ignores it, so a windowed Mistral is run as transformers runs it
            w.add_sliding_window(hp["sliding_window"])
    elif arch in ("qwen2", "qwen3"):
        _write_pooling(w, conv.folder, hp)
    elif arch == "qwen3moe":  # Qwen2MoeModel
        if (v := hp.get("moe_intermediate_size")) is not None:
            w.add_expert_feed_forward_length(v)
        if (v := hp.get("shared_expert_intermediate_size")) is not None:
            w.add_expert_shared_feed_forward_length(v)
    elif arch == "gemma3":  # Gemma3Model.set_gguf_parameters (after TextModel's: same keys keep their place)
        for method, value in (("add_context_length", hp["max_position_embeddings"]),
                              ("add_head_count", hp["num_attention_heads"]),
                              ("add_layer_norm_rms_eps", hp["rms_norm_eps"]),
                              ("add_key_length", hp["head_dim"]), ("add_value_length", hp["head_dim"]),
                              ("add_rope_freq_base", rp.get("rope_theta", 1_000_000.0))):
            _set_in_place(w, method, value)
        if hp.get("final_logit_softcapping"):
            w.add_final_logit_softcapping(hp["final_logit_softcapping"])
        if hp.get("sliding_window_pattern") != 1:
            w.add_sliding_window(hp["sliding_window"])
            if (pattern := _gemma3_swa_layers(hp)) is not None:
                w.add_sliding_window_pattern(pattern)
        _set_in_place(w, "add_head_count_kv", hp["num_key_value_heads"])
    elif arch == "bert":
        w.add_causal_attention(False)
        _write_pooling(w, conv.folder, hp)


def _set_in_place(w: gguf.GGUFWriter, method: str, value) -> None:
    """GGUFWriter's ``method`` for a key written before: the new value where the key stands (gguf-py's writer
    overwrites in place too, with a "Duplicated key name" warning we do not want)."""
    scratch = gguf.GGUFWriter(None, w.arch)
    scratch.kv_data[0].clear()
    getattr(scratch, method)(value)
    w.kv_data[0].update(scratch.kv_data[0])


def _gemma3_swa_layers(hp: dict) -> list[bool] | None:
    """Which layers slide, when config.json's ``layer_types`` differ from what llama.cpp assumes without the key
    (every 6th layer global).  The reference writes no pattern; we add it only then, so llama.cpp runs such
    a model as transformers does (real Gemma 3 checkpoints follow the 6-layer pattern and get no key)."""
    types = hp.get("layer_types")
    if not isinstance(types, list) or len(types) != _block_count(hp):
        return None
    slides = [t == "sliding_attention" for t in types]
    default = [i % 6 < 5 for i in range(len(types))]  # llama_hparams::set_swa_pattern(6)
    return None if slides == default else slides


def _write_gemma2_params(w: gguf.GGUFWriter, conv: HfToGguf) -> None:
    """Gemma2Model.set_gguf_parameters (TextModel's is not called: no RoPE base, no vocab size)."""
    hp = conv.hparams
    w.add_context_length(hp["max_position_embeddings"])
    w.add_embedding_length(hp["hidden_size"])
    w.add_block_count(_block_count(hp))
    w.add_feed_forward_length(hp["intermediate_size"])
    w.add_head_count(hp["num_attention_heads"])
    w.add_head_count_kv(hp.get("num_key_value_heads") or hp["num_attention_heads"])
    w.add_layer_norm_rms_eps(hp["rms_norm_eps"])
    w.add_key_length(hp["head_dim"])
    w.add_value_length(hp["head_dim"])
    w.add_file_type(conv.file_type)
    if hp.get("attn_logit_softcapping") is not None:
        w.add_attn_logit_softcapping(hp["attn_logit_softcapping"])
    if hp.get("final_logit_softcapping") is not None:
        w.add_final_logit_softcapping(hp["final_logit_softcapping"])
    w.add_sliding_window(hp["sliding_window"])


def _write_phi3_params(w: gguf.GGUFWriter, conv: HfToGguf) -> None:
    """Phi3MiniModel.set_gguf_parameters (TextModel's is not called: no RoPE scaling type)."""
    hp = conv.hparams
    rp = _rope_params(hp)
    n_embd, n_head = hp["hidden_size"], hp["num_attention_heads"]
    w.add_context_length(_find(hp, ("n_positions", "max_position_embeddings")))
    w.add_rope_scaling_orig_ctx_len(rp["original_max_position_embeddings"])
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(hp["intermediate_size"])
    w.add_block_count(_block_count(hp))
    w.add_head_count(n_head)
    w.add_head_count_kv(_find(hp, ("num_key_value_heads", "n_head_kv")))
    w.add_layer_norm_rms_eps(hp["rms_norm_eps"])
    w.add_rope_dimension_count(int(rp.get("partial_rotary_factor", 1.0) * n_embd) // n_head)
    w.add_rope_freq_base(rp["rope_theta"])
    w.add_file_type(conv.file_type)
    w.add_sliding_window(hp.get("sliding_window") or 0)  # 0 tells Phi-4 from the other phi3 models


def _write_t5_params(w: gguf.GGUFWriter, conv: HfToGguf) -> None:
    """T5Model.set_gguf_parameters."""
    hp = conv.hparams
    w.add_context_length(hp.get("n_positions") or 512)
    w.add_embedding_length(hp["d_model"])
    w.add_feed_forward_length(hp["d_ff"])
    w.add_block_count(_block_count(hp))
    if hp.get("num_decoder_layers") is not None:
        w.add_decoder_block_count(hp["num_decoder_layers"])
    w.add_head_count(hp["num_heads"])
    w.add_key_length(hp["d_kv"])
    w.add_value_length(hp["d_kv"])
    w.add_layer_norm_eps(hp["layer_norm_epsilon"])
    w.add_relative_attn_buckets_count(hp["relative_attention_num_buckets"])
    w.add_layer_norm_rms_eps(hp["layer_norm_epsilon"])
    w.add_decoder_start_token_id(hp["decoder_start_token_id"])
    w.add_file_type(conv.file_type)


def _write_pooling(w: gguf.GGUFWriter, folder: Path, hp: dict) -> None:
    """The reference's _try_set_pooling_type (sentence-transformers modules.json)."""
    modules = folder / "modules.json"
    path = None
    if modules.is_file():
        try:
            for mod in json.loads(modules.read_text(encoding="utf-8")):
                if str(mod.get("type", "")).endswith("Pooling"):
                    path = mod.get("path")
                    break
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
            raise FormatError(f"modules.json is not valid: {exc}", path=modules) from None
    modes = {"mean": gguf.PoolingType.MEAN, "cls": gguf.PoolingType.CLS, "lasttoken": gguf.PoolingType.LAST}
    if path is not None:
        cfg_path = folder / path / "config.json"
        if not cfg_path.is_file():
            raise MissingFileError("the pooling module's config.json named in modules.json is missing", path=cfg_path)
        pooling = json.loads(cfg_path.read_text(encoding="utf-8"))
        if pooling.get("pooling_mode_mean_tokens"):
            ptype = gguf.PoolingType.MEAN
        elif pooling.get("pooling_mode_cls_token"):
            ptype = gguf.PoolingType.CLS
        elif pooling.get("pooling_mode_lasttoken"):
            ptype = gguf.PoolingType.LAST
        elif pooling.get("pooling_mode") in modes:
            ptype = modes[pooling["pooling_mode"]]
        else:
            raise UnsupportedError("only mean, CLS and last-token pooling can be converted", path=cfg_path)
        w.add_pooling_type(ptype)
    if (cp := hp.get("classifier_pooling")) is not None:
        if cp not in ("cls", "mean"):
            raise UnsupportedError(f"classifier_pooling {cp!r} cannot be converted")
        w.add_classifier_pooling_type(modes[cp])


def _write_metadata(w: gguf.GGUFWriter, conv: HfToGguf, vocab: GGUFVocab) -> None:
    if conv.arch == "phi3" and (attn := _phi3_attn_factor(conv.hparams)) is not None:
        w.add_rope_scaling_attn_factors(attn)  # the reference writes it while preparing tensors, before the rest
    w.add_type(gguf.GGUFType.MODEL)
    conv.metadata.set_gguf_meta_model(w)
    if conv.arch == "t5":
        _write_t5_params(w, conv)
    elif conv.arch == "gemma2":
        _write_gemma2_params(w, conv)
    elif conv.arch == "phi3":
        _write_phi3_params(w, conv)
    else:
        _write_text_params(w, conv)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    vocab.add_to(w)


# -- writing -----------------------------------------------------------------------------------

def convert_hf_to_gguf(src, out_dir_or_file, plan_or_preset: Plan | str | HfToGguf = "F16", *,
                       name: str | GGUFName | None = None, split_max_size: int = 0, split_max_tensors: int = 0,
                       overwrite: bool = False, cancel: Callable[[], bool] | None = None,
                       imatrix: dict[str, np.ndarray] | None = None) -> Generator[Progress, None, list[Path]]:
    """Convert a Hugging Face model folder to GGUF (a job generator); returns the written file paths.

    ``out_dir_or_file``: a ``.gguf`` path, or a folder in which the file gets ``name`` (a file name or a
    :class:`GGUFName`) or else the conventional name (:meth:`HfToGguf.output_name`).
    ``plan_or_preset``: a :class:`Plan` made on the source model, a preset name (``"F16"``, ``"Q4_K_M"``...)
    or a prepared :class:`HfToGguf`.  ``split_max_size`` (bytes) / ``split_max_tensors`` split the output
    like llama-gguf-split.  ``imatrix``: an :class:`~workbench.optimize.imatrix.Imatrix` or importance per
    GGUF tensor name (used as given).
    """
    conv = plan_or_preset if isinstance(plan_or_preset, HfToGguf) else prepare_hf_to_gguf(src, plan_or_preset)
    if conv.plan is not None:
        check_required(conv.plan, imatrix)
    kernels.start_workers({t.type for t in conv.tensors})  # K/IQ types: the workers start while we set up
    yield Progress(0, 1, "Reading the tokenizer")
    vocab = read_vocab(conv.folder, conv.arch, conv.hparams)
    target = _target_path(conv, out_dir_or_file, name)
    w = new_writer(conv.arch, split_max_tensors=split_max_tensors, split_max_size=split_max_size)
    _write_metadata(w, conv, vocab)
    model = conv.model
    tensors = [StreamTensor(t.name, t.shape, t.type, lambda t=t: _tensor_chunks(model, t, imatrix),
                            done=(lambda ns=t.source_names: [model.release(n) for n in ns]) if t.source_names else None)
               for t in conv.tensors]
    return (yield from write_gguf_stream(w, target, tensors, sources=model.files, overwrite=overwrite, cancel=cancel))


def _target_path(conv: HfToGguf, out, name) -> Path:
    return target_path(out, name, conv.output_name)


def _tensor_chunks(model: Model, t: OutTensor, imatrix):
    """(quantized bytes or a handle giving them, values) for row chunks of the output tensor."""
    if t.data is not None:
        x = t.data.reshape(-1, t.shape[-1] if t.shape else 1)
        yield kernels.quantize(x, t.type, name=t.name), x.size
        return
    im = tensor_weights(imatrix, t.name, t.shape, t.type)  # as llama-quantize looks it up, [n_expert, cols]
    if t.sources:  # stacked experts: each expert's matrix in turn, rows numbered through the 3-D tensor
        rows_per_expert = t.n_params // max(t.shape[-1], 1) // t.shape[0]
        for e, source in enumerate(t.sources):
            yield from _source_chunks(model, t, source, im, e * rows_per_expert, rows_per_expert)
            model.release(source)
        return
    yield from _source_chunks(model, t, t.source, im, 0, None)


def _source_chunks(model: Model, t: OutTensor, source: str, im, row_offset: int, rows_per_expert: int | None):
    tensor = model.tensor(source)
    info = tensor.info
    raw = tensor.raw()
    cols = info.shape[-1] if info.shape else 1
    rows = info.n_params // max(cols, 1)
    if t.permute_heads and len(info.shape) == 1:  # a Q/K bias: permute the elements
        x = dtypes.decode(np.asarray(raw), info.dtype, info.shape)[_qk_permutation(cols, t.permute_heads)]
        yield kernels.quantize(x[None, :], t.type, name=t.name), x.size
        return
    if t.shift:  # Gemma's norm weights (1-D): 1 + w in float32, as transformers applies them
        x = dtypes.decode(np.asarray(raw), info.dtype, info.shape).astype(np.float32) + np.float32(t.shift)
        yield kernels.quantize(x.reshape(1, -1), t.type, name=t.name), x.size
        return
    raw2 = raw.reshape(rows, -1) if len(info.shape) != 2 else raw
    if t.sources == () and t.shape and len(t.shape) == 2 and t.shape[0] < rows:
        rows = t.shape[0]  # rows the reference drops (gemma3's out-of-vocabulary embeddings)
    perm = _qk_permutation(rows, t.permute_heads) if t.permute_heads else None
    step = max(1, CHUNK_ELEMENTS // max(cols, 1))
    if rows_per_expert is None:
        rows_per_expert = rows // (im.shape[0] if im is not None else 1)

    for a in range(0, rows, step):  # each block read and decoded while the kernels quantize earlier ones
        b = min(rows, a + step)
        part = raw2[perm[a:b]] if perm is not None else raw2[a:b]
        x = dtypes.decode(np.asarray(part), info.dtype, (b - a, cols))
        yield from submit_rows(x, t.type, im, name=t.name, row0=row_offset + a, rows_per_expert=rows_per_expert)


def _qk_permutation(rows: int, heads: int) -> np.ndarray:
    """Source row of each output row of LlamaModel.permute: per head, rows (2, d/2) -> (d/2, 2)."""
    return np.arange(rows).reshape(heads, 2, rows // heads // 2).swapaxes(1, 2).reshape(-1)
