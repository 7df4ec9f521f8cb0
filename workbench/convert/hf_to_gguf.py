"""Hugging Face folder -> GGUF, following llama.cpp's ``convert_hf_to_gguf.py`` for the llama family
(Llama/Mistral: SmolLM2, TinyLlama...), qwen2, bert and t5, with tensor types from a :class:`~workbench.plan.Plan`.

What it writes, as the reference does:

- tensor names from gguf-py's ``TensorNameMap``; llama Q/K rows permuted (``LlamaModel.permute``),
  qwen2 not; rotary ``inv_freq``, ``position_ids``, pooler and MLM heads skipped; the first of T5's
  shared/encoder/decoder embeddings written as ``token_embd``; tied embeddings left tied (no
  ``output.weight`` unless the checkpoint stores ``lm_head``); ``rope_freqs`` for llama3 RoPE scaling;
  tensors in the reference's order (files sorted by name, tensors sorted by name within a file);
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
    "Qwen2ForCausalLM": "qwen2",
    "BertModel": "bert", "BertForMaskedLM": "bert",
    "T5ForConditionalGeneration": "t5", "T5WithLMHeadModel": "t5",
}
CHUNK_ELEMENTS = 1 << 22  # source values quantized per step (bounded memory, progress granularity)

# transformers' config defaults for the keys the converter reads (its config class fills them in)
_DEFAULTS = {
    "llama": {"max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "rope_theta": 10000.0},
    "qwen2": {"max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 10000.0},
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
        raise UnsupportedError(f"architecture {hf_arch!r} {what}", path=config_path,
                               hint="Supported: " + ", ".join(SUPPORTED_ARCHITECTURES) + ".")
    return config, arch, _hparams(config, arch)


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
    if arch in ("llama", "qwen2"):
        for key in ("hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size"):
            if not isinstance(hp.get(key), int):
                raise FormatError(f"config.json has no integer {key!r}", hint="The config is incomplete.")
        hp.setdefault("num_key_value_heads", hp["num_attention_heads"])
        if arch == "llama":  # transformers' LlamaConfig always carries head_dim (the reference writes key_length)
            hp.setdefault("head_dim", hp["hidden_size"] // hp["num_attention_heads"])
    if arch == "t5":
        hp.setdefault("num_decoder_layers", hp.get("num_layers"))
        hp.setdefault("decoder_start_token_id", hp.get("pad_token_id", 0))
    return hp


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
    return rp


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
    t5_shared_found = False
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
        if name.endswith(_SKIP_SUFFIXES):
            skipped.append(info.name)
            continue
        if arch == "t5" and name in _T5_SHARED:
            if t5_shared_found:  # the reference keeps the first of the (tied) copies
                skipped.append(info.name)
                continue
            name, t5_shared_found = "shared.weight", True
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
        entry = entries.get(info.name)
        qtype = entry.type if entry is not None else "F32"
        if entry is not None and entry.gguf_name != gname and gname in by_gguf:
            # written under another name than the plan assumed (T5's shared embedding copies): the plan's
            # choice for that GGUF tensor applies
            qtype = by_gguf[gname]
        if qtype not in kernels.Kernel.registry:  # integer tensors the plan kept as stored: as the reference, F32
            qtype = "F32"
        out.append(OutTensor(gname, info.name, tuple(info.shape), qtype, heads))
    seen: set[str] = set()
    for t in out:
        if t.name in seen:
            raise FormatError(f"two source tensors map to the GGUF tensor {t.name}", path=model.path)
        seen.add(t.name)
    return out, skipped


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
    if (v := _find(hp, ("rms_norm_eps", "norm_eps"))) is not None:
        w.add_layer_norm_rms_eps(v)
    if (v := _find(hp, ("layer_norm_eps", "layer_norm_epsilon", "norm_epsilon"))) is not None:
        w.add_layer_norm_eps(v)
    if (head_dim := hp.get("head_dim")) is not None:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_file_type(conv.file_type)
    if arch == "llama":
        w.add_vocab_size(hp["vocab_size"])
        w.add_rope_dimension_count(hp.get("head_dim") or hp["hidden_size"] // hp["num_attention_heads"])
    elif arch == "qwen2":
        _write_pooling(w, conv.folder, hp)
    elif arch == "bert":
        w.add_causal_attention(False)
        _write_pooling(w, conv.folder, hp)


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
    w.add_type(gguf.GGUFType.MODEL)
    conv.metadata.set_gguf_meta_model(w)
    if conv.arch == "t5":
        _write_t5_params(w, conv)
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
                            done=(lambda n=t.source: model.release(n)) if t.source is not None else None)
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
    tensor = model.tensor(t.source)
    info = tensor.info
    raw = tensor.raw()
    cols = info.shape[-1] if info.shape else 1
    rows = info.n_params // max(cols, 1)
    im = tensor_weights(imatrix, t.name, t.shape, t.type)  # as llama-quantize looks it up, [n_expert, cols]
    if t.permute_heads and len(info.shape) == 1:  # a Q/K bias: permute the elements
        x = dtypes.decode(np.asarray(raw), info.dtype, info.shape)[_qk_permutation(cols, t.permute_heads)]
        yield kernels.quantize(x[None, :], t.type, name=t.name), x.size
        return
    raw2 = raw.reshape(rows, -1) if len(info.shape) != 2 else raw
    perm = _qk_permutation(rows, t.permute_heads) if t.permute_heads else None
    step = max(1, CHUNK_ELEMENTS // max(cols, 1))

    for a in range(0, rows, step):  # each block read and decoded while the kernels quantize earlier ones
        b = min(rows, a + step)
        part = raw2[perm[a:b]] if perm is not None else raw2[a:b]
        x = dtypes.decode(np.asarray(part), info.dtype, (b - a, cols))
        yield from submit_rows(x, t.type, im, name=t.name, row0=a,
                               rows_per_expert=rows // (im.shape[0] if im is not None else 1))


def _qk_permutation(rows: int, heads: int) -> np.ndarray:
    """Source row of each output row of LlamaModel.permute: per head, rows (2, d/2) -> (d/2, 2)."""
    return np.arange(rows).reshape(heads, 2, rows // heads // 2).swapaxes(1, 2).reshape(-1)
