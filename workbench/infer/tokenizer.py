"""Tokenizers for test inference: a ``tokenizers.Tokenizer`` from the model's ``tokenizer.json``, or built from a
GGUF's ``tokenizer.ggml.*`` vocabulary the way llama.cpp (``src/llama-vocab.cpp``) reads it.

A GGUF vocabulary becomes a ``tokenizer.json`` document (:func:`gguf_tokenizer_json`), which the GGUF -> HF
export writes out as is, so the exported file and the in-app tokenizer are the same thing:

- ``gpt2``: byte-level BPE (GGUF tokens and merges as they are) with the pre-tokenizer named by
  ``tokenizer.ggml.pre``, written the way the original Hugging Face ``tokenizer.json`` splits (the
  llama.cpp test vectors were made by those tokenizers): regex ``Split`` steps, ``Digits``,
  ``Punctuation``, then ``ByteLevel``; no normalizer, as llama.cpp applies none (the originals of
  qwen2, command-r and the gpt-neox family normalize NFC, which only changes decomposed input).
- ``llama`` (SentencePiece): llama.cpp merges the adjacent pair whose concatenation is the vocabulary
  token with the highest score; that is BPE whose merges are every (left, right) split of a token into two
  tokens, ranked by the merged token's score.  ``▁`` for spaces, a leading ``▁`` when
  ``add_space_prefix`` (every text fragment, also after a special token), byte fallback ``<0xXX>``.
- ``bert``: WordPiece; GGUF keeps word starts as ``▁word`` and pieces bare, we give back ``##piece``;
  normalized as llama.cpp's WPM does (:func:`_wpm_normalizer`), [CLS] ... [SEP] whenever specials are added.
- ``t5``: SentencePiece Unigram over the token scores, the precompiled charsmap as the normalizer when the
  GGUF has one, extra spaces merged as ``remove_extra_whitespaces`` says.  Without a charsmap only the
  spaces are normalized (no NFKC): a documented approximation.
- ``gemma4``: BPE on raw UTF-8 with ``▁`` for spaces and ``<0xXX>`` byte fallback.

Special tokens: CONTROL and UNKNOWN tokens are special added tokens (matched in text only when
``parse_special``), USER_DEFINED tokens are always matched, as in llama.cpp.
"""
from __future__ import annotations

import base64
import heapq
import json
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from gguf import TokenType

from ..errors import FormatError, MissingFileError, UnsupportedError, WorkbenchError, quote, short
from ..formats.hf import hf_type_name, load_json_if_present, load_json_object, parse_json, read_json_bytes
from ..model import Model

SPACE = "\u2581"  # SentencePiece's escaped space

# -- GGUF vocabulary ---------------------------------------------------------------------------------

# token texts llama.cpp treats as end of generation (llama_vocab::impl::load, special_eog_ids)
EOG_TEXTS = frozenset({
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>",
    "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
    "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>", "<\uff5cend\u2581of\u2581sentence\uff5c>", "[e~[",
})
_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>",
              "_<EOT>", "[EOT]", "<\uff5cend\u2581of\u2581sentence\uff5c>", "<end_of_utterance>")

# texts llama.cpp looks for when the GGUF does not name its FIM tokens
_FIM_TEXTS = ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<\uff5cfim\u2581begin\uff5c>", "<PRE>", "\u2581<PRE>",
              "<|code_prefix|>", "<|prefix|>", "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>",
              "<\uff5cfim\u2581hole\uff5c>", "<SUF>", "\u2581<SUF>", "<|code_suffix|>", "<|suffix|>", "<|fim_middle|>",
              "<fim-middle>", "<fim_middle>", "<\uff5cfim\u2581end\uff5c>", "<MID>", "\u2581<MID>", "<|code_middle|>",
              "<|middle|>", "<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]", "<|fim_repo|>", "<|repo_name|>",
              "<fim-repo>", "<REPO>", "<reponame>", "<|file_sep|>")

KINDS = ("gpt2", "llama", "bert", "t5", "gemma4")


@dataclass
class GGUFVocab:
    """What llama.cpp reads from ``tokenizer.ggml.*`` (with its defaults for missing keys)."""

    kind: str  # gpt2, llama, bert, t5, gemma4
    pre: str
    tokens: list[str]
    types: np.ndarray  # int32 TokenType per token
    scores: np.ndarray | None
    merges: list[str]
    special: dict[str, int] = field(default_factory=dict)  # bos, eos, unk, sep, pad, mask, eot, eom, cls
    add_bos: bool = False
    add_eos: bool = False
    add_sep: bool = False
    add_space_prefix: bool = False
    remove_extra_whitespaces: bool = False
    charsmap: bytes | None = None
    lowercase: bool = True
    strip_accents: bool = True
    lstrip: frozenset[int] = frozenset()  # special tokens that swallow the whitespace before them
    rstrip: frozenset[int] = frozenset()  # ... after them
    chat_template: str | None = None
    context_length: int | None = None
    _index: dict[str, int] | None = field(default=None, init=False, repr=False, compare=False)

    def index(self) -> dict[str, int]:
        """Token text -> id (the first of repeated texts), built once."""
        if self._index is None:
            n = len(self.tokens)
            self._index = dict(zip(reversed(self.tokens), range(n - 1, -1, -1)))
        return self._index

    def text(self, tid: int | None) -> str | None:
        return self.tokens[tid] if tid is not None and 0 <= tid < len(self.tokens) else None

    def is_special(self, tid: int) -> bool:
        return int(self.types[tid]) in (TokenType.CONTROL, TokenType.UNKNOWN)

    def eog_ids(self) -> set[int]:
        """End-of-generation ids as llama.cpp collects them: eos, eot, eom and the known end-of-turn texts."""
        out = {self.special[k] for k in ("eos", "eot", "eom") if self.special.get(k) is not None}
        index = self.index()
        for tok in EOG_TEXTS:
            tid = index.get(tok)
            if tid is not None and not (tok == "</s>" and int(self.types[tid]) == TokenType.NORMAL):
                out.add(tid)
        return out


def _meta(model: Model, key: str, default: Any = None) -> Any:
    return model.meta(key, default)


_INTS = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64")
_NUMBERS = (*_INTS, "float32", "float64")
# what each tokenizer key must hold (GGUF value types as MetaEntry.vtype names them)
_VOCAB_TYPES: dict[str, tuple[str, ...]] = {
    "tokenizer.ggml.model": ("string",), "tokenizer.ggml.pre": ("string",),
    "tokenizer.ggml.tokens": ("array[string]",), "tokenizer.ggml.merges": ("array[string]",),
    "tokenizer.ggml.token_type": tuple(f"array[{t}]" for t in _INTS),
    "tokenizer.ggml.scores": tuple(f"array[{t}]" for t in _NUMBERS),
    "tokenizer.ggml.precompiled_charsmap": ("array[uint8]", "array[int8]"),
    "tokenizer.chat_template": ("string",), "general.name": ("string",), "general.architecture": ("string",),
    **{f"tokenizer.ggml.{k}": ("bool",) for k in (
        "add_bos_token", "add_eos_token", "add_sep_token", "add_space_prefix", "remove_extra_whitespaces",
        "normalizer.lowercase", "normalizer.strip_accents")},
}


def _check_vocab_types(model: Model) -> None:
    """Every tokenizer key the vocabulary reads holds the GGUF type llama.cpp expects (a FormatError naming the
    key otherwise): the rest of the reader can then trust the values' types."""
    arch = model.meta("general.architecture")
    ints = {f"{arch}.context_length"} if isinstance(arch, str) else set()
    for entries in model.metadata.values():
        for e in entries:
            want = _VOCAB_TYPES.get(e.key)
            if want is None and (e.key in ints or e.key.startswith("tokenizer.ggml.") and e.key.endswith("_token_id")):
                want = _INTS
            if want is not None and e.vtype not in want:
                raise FormatError(f"metadata key {short(e.key)} should be {' or '.join(want[:2])}"
                                  f"{' ...' if len(want) > 2 else ''} but is {e.vtype} {quote(e.value)}",
                                  path=model.path)


def read_gguf_vocab(model: Model) -> GGUFVocab:
    """The vocabulary of a GGUF model, with llama.cpp's per-kind defaults for missing keys."""
    _check_vocab_types(model)
    kind = _meta(model, "tokenizer.ggml.model")
    tokens = _meta(model, "tokenizer.ggml.tokens")
    if kind is None or tokens is None:
        raise MissingFileError("the GGUF has no tokenizer (tokenizer.ggml.model / tokenizer.ggml.tokens missing)",
                               path=model.path, hint="Use a GGUF converted with its vocabulary, or the HF folder.")
    kind = str(kind)
    if kind not in KINDS:
        raise UnsupportedError(f"tokenizer model {kind!r} is not supported (supported: {', '.join(KINDS)})",
                               path=model.path)
    if "" in tokens:  # llama.cpp renames empty tokens
        tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
    else:
        tokens = list(tokens)
    n = len(tokens)
    types = _meta(model, "tokenizer.ggml.token_type")
    types = np.full(n, int(TokenType.NORMAL), np.int32) if types is None else np.asarray(types, np.int32)[:n]
    if len(types) < n:
        raise FormatError(f"tokenizer.ggml.token_type has {len(types)} entries for {n} tokens", path=model.path)
    scores = _meta(model, "tokenizer.ggml.scores")
    if scores is not None:
        scores = np.asarray(scores, np.float32)[:n]
        if len(scores) < n:
            raise FormatError(f"tokenizer.ggml.scores has {len(scores)} entries for {n} tokens", path=model.path)
    merges = [str(m) for m in (_meta(model, "tokenizer.ggml.merges") or [])]
    pre = str(_meta(model, "tokenizer.ggml.pre", "") or "default")
    if kind in ("gpt2", "gemma4") and not merges:
        raise FormatError(f"the {kind} vocabulary has no tokenizer.ggml.merges", path=model.path)

    # llama.cpp's defaults by kind (llama_vocab::impl::load), then what the file says
    special: dict[str, int | None]
    v = GGUFVocab(kind, pre, tokens, types, scores, merges)
    if kind == "llama":
        special = {"bos": 1, "eos": 2, "unk": 0}
        v.add_bos, v.add_space_prefix = True, True
    elif kind == "bert":
        special = {"bos": 101, "unk": 100, "sep": 102, "pad": 0, "mask": 103}
        v.add_bos, v.add_sep = True, True
    elif kind == "t5":
        special = {"eos": 1, "unk": 2, "pad": 0}
        v.add_eos = True
    elif kind == "gemma4":
        special = {}
        v.pre = "gemma4"
        v.add_bos = True
    else:
        special = {"bos": 11, "eos": 11}
        v.add_bos = _PRE.get(pre, _PRE["default"]).add_bos
    for key, name in (("bos", "bos"), ("eos", "eos"), ("eot", "eot"), ("eom", "eom"), ("unk", "unknown"),
                      ("sep", "seperator"), ("pad", "padding"), ("mask", "mask"), ("cls", "cls"),
                      *((k, k) for k in ("fim_pre", "fim_suf", "fim_mid", "fim_pad", "fim_rep", "fim_sep"))):
        val = _meta(model, f"tokenizer.ggml.{name}_token_id")
        if val is not None and 0 <= int(val) < n:
            special[key] = int(val)
    if special.get("eot") is None:
        index = v.index()
        found = [index[t] for t in _EOT_TEXTS if t in index]
        if found:
            special["eot"] = min(found)
    v.special = {k: int(i) for k, i in special.items() if i is not None and 0 <= int(i) < n}
    v.add_bos = bool(_meta(model, "tokenizer.ggml.add_bos_token", v.add_bos))
    v.add_eos = bool(_meta(model, "tokenizer.ggml.add_eos_token", v.add_eos))
    v.add_sep = bool(_meta(model, "tokenizer.ggml.add_sep_token", v.add_sep))
    v.add_space_prefix = bool(_meta(model, "tokenizer.ggml.add_space_prefix", v.add_space_prefix))
    v.remove_extra_whitespaces = bool(_meta(model, "tokenizer.ggml.remove_extra_whitespaces", False))
    charsmap = _meta(model, "tokenizer.ggml.precompiled_charsmap")
    if charsmap is not None and len(charsmap):
        v.charsmap = np.asarray(charsmap).astype(np.uint8).tobytes()
    v.lowercase = bool(_meta(model, "tokenizer.ggml.normalizer.lowercase", True))
    v.strip_accents = bool(_meta(model, "tokenizer.ggml.normalizer.strip_accents", v.lowercase))
    _llama_cpp_attributes(v, str(_meta(model, "general.name", "") or ""), str(_meta(model, "general.architecture", "")))
    template = _meta(model, "tokenizer.chat_template")
    v.chat_template = str(template) if template else None
    arch = _meta(model, "general.architecture")
    ctx = _meta(model, f"{arch}.context_length")
    v.context_length = int(ctx) if ctx is not None else None
    return v


def _llama_cpp_attributes(v: GGUFVocab, name: str, arch: str) -> None:
    """The token attributes llama.cpp fixes up after loading (llama_vocab::impl::load): end-of-generation and
    FIM texts become control tokens, a few known tokens strip the spaces beside them."""
    types = v.types.copy()
    ids = v.index()
    control = set(EOG_TEXTS) | set(_EOT_TEXTS)
    fim_keys = ("fim_pre", "fim_suf", "fim_mid", "fim_pad", "fim_rep", "fim_sep")
    if not any(k in v.special for k in fim_keys):
        control |= set(_FIM_TEXTS)
    normal_s = "<|tool_response>" in ids or "<|plamo:eos|>" in ids  # gemma4 / plamo: </s> is ordinary text
    for text in control:
        tid = ids.get(text)
        if tid is None or (text == "</s>" and normal_s):
            continue
        if types[tid] not in (TokenType.CONTROL, TokenType.UNKNOWN):
            types[tid] = TokenType.CONTROL
    if all(t in ids for t in ("<|return|>", "<|call|>", "<|end|>")) or \
            all(t in ids for t in ("<|calls|>", "<|flush|>", "<|end|>")):
        types[ids["<|end|>"]] = TokenType.USER_DEFINED  # o200k_harmony / solar-open: <|end|> is not the end
    for text in ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"):  # gpt-oss: always rendered
        if text in ids:
            types[ids[text]] = TokenType.USER_DEFINED
    v.types = types
    special = np.isin(types, [int(TokenType.CONTROL), int(TokenType.USER_DEFINED), int(TokenType.UNKNOWN)])
    name = name.lower()
    if any(p in v.pre for p in ("jina-v2-de", "jina-v2-es", "jina-v2-code")) or \
            any(a in arch for a in ("nomic-bert-moe", "jina-bert-v3")):
        v.lstrip = frozenset({ids["<mask>"]} if "<mask>" in ids else ())
    elif "phi-3" in name or "phi3" in name:
        rstrip = set(np.flatnonzero(special).tolist()) | ({ids["</s>"]} if "</s>" in ids else set())
        v.rstrip = frozenset(rstrip - {ids[t] for t in ("<unk>", "<s>", "<|endoftext|>") if t in ids})
    elif "modern-bert" in name and "[MASK]" in ids:
        v.lstrip = frozenset({ids["[MASK]"]})


# -- pre-tokenizers (by tokenizer.ggml.pre) ------------------------------------------------------------

# The original tokenizer.json regexes (llama.cpp keeps them in comments beside its adapted versions).
GPT2_RE = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
            r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN35_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_DEEPSEEK_LETTERS = (
    "A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373"
    "\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481"
    "\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b"
    "\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b"
    "\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb"
    "\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128"
    "\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4"
    "\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf"
    "\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3"
    "\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943")
_CJK = "\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff"


def _split(regex: str, behavior: str = "Isolated") -> dict:
    return {"type": "Split", "pattern": {"Regex": regex}, "behavior": behavior, "invert": False}


def _digits(individual: bool) -> dict:
    return {"type": "Digits", "individual_digits": individual}


_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}


@dataclass(frozen=True)
class PreSpec:
    """How one ``tokenizer.ggml.pre`` splits text before BPE (all end with the byte-level mapping)."""

    steps: tuple[dict, ...]
    ignore_merges: bool = False
    add_bos: bool = False


_GPT2 = PreSpec((_split(GPT2_RE),))
_PRE: dict[str, PreSpec] = {}
for _names, _spec in (
    (("gpt-2", "gpt2", "phi-2", "jina-es", "jina-de", "jina-v2-es", "jina-v2-de", "gigachat", "mellum", "a.x-4.0",
      "modern-bert", "jais", "trillion", "granite-docling", "exaone4", "roberta-bpe", "jina-v1-en", "jina-v2-code"),
     _GPT2),
    (("mpt", "olmo"), PreSpec((_split(GPT2_RE),))),
    (("starcoder", "refact", "smollm", "codeshell", "exaone", "minerva-7b", "mellum2"),
     PreSpec((_digits(True), _split(GPT2_RE)))),
    (("command-r",), PreSpec((_digits(True), _split(GPT2_RE)))),
    (("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "jina-v5-nano"),
     PreSpec((_split(LLAMA3_RE),), ignore_merges=True, add_bos=True)),
    (("dbrx", "smaug-bpe", "chatglm-bpe"), PreSpec((_split(LLAMA3_RE),))),
    (("qwen2", "deepseek-r1-qwen"), PreSpec((_split(QWEN2_RE),))),
    (("stablelm2", "megrez", "hunyuan", "solar-open", "kormo", "f2llmv2"), PreSpec((_split(QWEN2_RE),))),
    (("qwen35",), PreSpec((_split(QWEN35_RE),))),
    (("deepseek-llm",), PreSpec((_split(r"[\r\n]"), _split(r"\s?[" + _DEEPSEEK_LETTERS + r"]+"),
                                 _split("\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+"),
                                 _split(r"\s+$"), _split("[" + _CJK + "]+"), _digits(False)))),
    (("deepseek-coder",), PreSpec((_split(r"[\r\n]"), _split(r"\s?\p{L}+"), _split(r"\s?\p{P}+"),
                                   _split("[" + _CJK + "]+"), _digits(True)))),
    (("falcon",), PreSpec(({"type": "Punctuation", "behavior": "Contiguous"},
                           {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
                           _digits(False), _split(r"[0-9][0-9][0-9]")))),
    (("default",), PreSpec((_split(r"[\p{P}\$\+<=>\^~\|]+"), _split(GPT2_RE), _split(r"\p{N}+"),
                            _split(r"[0-9][0-9][0-9]")))),
):
    for _n in _names:
        _PRE[_n] = _spec
KNOWN_PRE = frozenset(_PRE)


# -- tokenizer.json from a GGUF vocabulary ---------------------------------------------------------------

def _added(tid: int, content: str, special: bool, **kw) -> dict[str, Any]:
    d = {"id": tid, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": special}
    d.update(kw)
    return d


def _added_tokens(v: GGUFVocab, texts: Sequence[str] | None = None) -> list[dict]:
    texts = v.tokens if texts is None else texts
    keep = (TokenType.CONTROL, TokenType.USER_DEFINED, TokenType.UNKNOWN)
    ids = np.flatnonzero(np.isin(v.types, [int(t) for t in keep]))
    return [_added(int(i), texts[i], int(v.types[i]) != TokenType.USER_DEFINED, lstrip=int(i) in v.lstrip,
                   rstrip=int(i) in v.rstrip) for i in ids]


def _template(v: GGUFVocab, texts: Sequence[str], first: int | None, last: int | None) -> dict | None:
    """A TemplateProcessing post-processor that adds ``first`` before and ``last`` after the text."""
    if first is None and last is None:
        return None

    def tok(tid: int, type_id: int) -> dict:
        return {"SpecialToken": {"id": texts[tid], "type_id": type_id}}

    single, pair = [], []
    if first is not None:
        single.append(tok(first, 0))
        pair.append(tok(first, 0))
    single.append({"Sequence": {"id": "A", "type_id": 0}})
    pair.append({"Sequence": {"id": "A", "type_id": 0}})
    if last is not None:
        single.append(tok(last, 0))
        pair.append(tok(last, 0))
    pair.append({"Sequence": {"id": "B", "type_id": 1}})
    if last is not None:
        pair.append(tok(last, 1))
    specials = {texts[t]: {"id": texts[t], "ids": [t], "tokens": [texts[t]]} for t in (first, last) if t is not None}
    return {"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials}


def _vocab_dict(texts: Sequence[str], notes: list[str]) -> dict[str, int]:
    vocab = dict(zip(texts, range(len(texts))))
    if len(vocab) == len(texts):
        return vocab
    vocab = {}
    for tid, tok in enumerate(texts):
        if tok in vocab:
            notes.append(f"token {tid} {tok!r} repeats token {vocab[tok]}; kept the first")
            continue
        vocab[tok] = tid
    return vocab


def _bpe_model(vocab: dict, merges: list[str], *, byte_fallback: bool, ignore_merges: bool = False,
               unk: str | None = None) -> dict:
    return {"type": "BPE", "dropout": None, "unk_token": unk, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": unk is not None, "byte_fallback": byte_fallback,
            "ignore_merges": ignore_merges, "vocab": vocab, "merges": merges}


def _doc(v: GGUFVocab, *, normalizer, pre_tokenizer, model: dict, decoder, post, added) -> dict:
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
            "normalizer": normalizer, "pre_tokenizer": pre_tokenizer, "post_processor": post,
            "decoder": decoder, "model": model}


def _gpt2_json(v: GGUFVocab, notes: list[str]) -> dict:
    spec = _PRE.get(v.pre)
    if spec is None:
        notes.append(f"pre-tokenizer {v.pre!r} is not known: text is split with llama.cpp's default regexes, "
                     "which may differ from the original tokenizer")
        spec = _PRE["default"]
    vocab = _vocab_dict(v.tokens, notes)
    steps = list(spec.steps)
    if not any(s["type"] == "ByteLevel" for s in steps):
        steps.append(_BYTE_LEVEL)
    bos, eos = v.special.get("bos"), v.special.get("eos")
    return _doc(
        v, normalizer=None,  # llama.cpp's BPE does not normalize
        pre_tokenizer={"type": "Sequence", "pretokenizers": steps},
        model=_bpe_model(vocab, v.merges, byte_fallback=False, ignore_merges=spec.ignore_merges),
        decoder={"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        post=_template(v, v.tokens, bos if v.add_bos else None, eos if v.add_eos else None)
        or {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        added=_added_tokens(v))


def spm_merges(tokens: Sequence[str], scores: np.ndarray) -> list[str]:
    """BPE merges equivalent to llama.cpp's SentencePiece (SPM) tokenizer.

    llama.cpp repeatedly merges the adjacent pair whose concatenation is the vocabulary token with the highest
    score (ties: the leftmost).  As BPE: every split of a token into two vocabulary tokens is a merge, ranked by
    the merged token's score (higher first; equal scores by token id).  Pieces holding a real space cannot be
    written as ``"left right"`` merges and are left out.
    """
    ids = {t: i for i, t in enumerate(tokens)}
    found: list[tuple[float, int, int, str]] = []
    for tid, tok in enumerate(tokens):
        if len(tok) < 2 or " " in tok:
            continue
        score = float(scores[tid])
        for cut in range(1, len(tok)):
            left, right = tok[:cut], tok[cut:]
            if left in ids and right in ids:
                found.append((-score, tid, cut, f"{left} {right}"))
    found.sort()
    return [m for *_k, m in found]


def _spm_decoder(strip_prefix: bool) -> dict:
    steps = [{"type": "Replace", "pattern": {"String": SPACE}, "content": " "}, {"type": "ByteFallback"},
             {"type": "Fuse"}]
    if strip_prefix:
        steps.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    return {"type": "Sequence", "decoders": steps}


def _spm_json(v: GGUFVocab, notes: list[str]) -> dict:
    scores = v.scores if v.scores is not None else np.zeros(len(v.tokens), np.float32)
    vocab = _vocab_dict(v.tokens, notes)
    normalizers = [{"type": "Replace", "pattern": {"String": " "}, "content": SPACE}]
    if v.add_space_prefix:
        normalizers.insert(0, {"type": "Prepend", "prepend": SPACE})
    unk = v.text(v.special.get("unk"))
    if not any(f"<0x{b:02X}>" in vocab for b in (0x0A, 0x20, 0xE2)):
        notes.append("the SentencePiece vocabulary has no <0xXX> byte tokens: characters it lacks become the "
                     "unknown token")
    return _doc(
        v, normalizer={"type": "Sequence", "normalizers": normalizers}, pre_tokenizer=None,
        model=_bpe_model(vocab, spm_merges(v.tokens, scores), byte_fallback=True, unk=unk),
        decoder=_spm_decoder(v.add_space_prefix),
        post=_template(v, v.tokens, v.special.get("bos") if v.add_bos else None,
                       v.special.get("eos") if v.add_eos else None),
        added=_added_tokens(v))


def _gemma4_json(v: GGUFVocab, notes: list[str]) -> dict:
    vocab = _vocab_dict(v.tokens, notes)
    return _doc(
        v, normalizer={"type": "Replace", "pattern": {"String": " "}, "content": SPACE},
        pre_tokenizer={"type": "Split", "pattern": {"Regex": r"[^\n]+|[\n]+"}, "behavior": "Isolated",
                       "invert": False},
        model=_bpe_model(vocab, v.merges, byte_fallback=True),
        decoder=_spm_decoder(False),
        post=_template(v, v.tokens, v.special.get("bos") if v.add_bos else None,
                       v.special.get("eos") if v.add_eos else None),
        added=_added_tokens(v))


UNREACHABLE = -1e6  # the Unigram score of pieces text never produces


def _unigram_json(v: GGUFVocab, notes: list[str]) -> dict:
    scores = v.scores if v.scores is not None else np.zeros(len(v.tokens), np.float32)
    _vocab_dict(v.tokens, notes)  # notes repeats
    normalizers: list[dict] = []
    if v.charsmap:
        normalizers.append({"type": "Precompiled", "precompiled_charsmap": base64.b64encode(v.charsmap).decode()})
    else:
        notes.append("the t5 vocabulary has no precompiled charsmap: text is not NFKC-normalized")
    if v.remove_extra_whitespaces:  # only ' ' counts, as in sentencepiece and llama.cpp (not tabs or newlines)
        normalizers += [{"type": "Replace", "pattern": {"Regex": r"\A +| +\z"}, "content": ""},
                        {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}]
    scheme = "always" if v.add_space_prefix else "never"
    unk = v.special.get("unk")
    # llama.cpp (like sentencepiece) scores user-defined tokens 0, so they win over the log-probabilities of
    # normal tokens, and never matches control, unknown or byte tokens inside text: they get a score no path takes
    vals = np.where(v.types == TokenType.USER_DEFINED, 0.0, scores).astype(np.float64)
    vals[np.isin(v.types, [int(TokenType.CONTROL), int(TokenType.UNKNOWN), int(TokenType.BYTE)])] = UNREACHABLE
    vals = vals.tolist()
    return _doc(
        v, normalizer={"type": "Sequence", "normalizers": normalizers} if normalizers else None,
        pre_tokenizer={"type": "Metaspace", "replacement": SPACE, "prepend_scheme": scheme, "split": True},
        model={"type": "Unigram", "unk_id": unk, "byte_fallback": False,
               "vocab": [[t, s] for t, s in zip(v.tokens, vals)]},
        decoder={"type": "Metaspace", "replacement": SPACE, "prepend_scheme": scheme, "split": True},
        post=_template(v, v.tokens, v.special.get("bos") if v.add_bos else None,
                       v.special.get("eos") if v.add_eos else None),
        added=_added_tokens(v))


def wordpiece_words(v: GGUFVocab) -> list[str]:
    """BERT: GGUF keeps words as '▁word' and pieces bare (convert_hf_to_gguf's phantom space); give back
    'word' and '##piece'."""
    words = []
    for tok, ttype in zip(v.tokens, v.types.tolist()):
        if ttype in (TokenType.CONTROL, TokenType.UNKNOWN, TokenType.USER_DEFINED):
            words.append(tok)
        elif tok.startswith(SPACE):
            words.append(tok[1:])
        else:
            words.append("##" + tok)
    return words


WPM_MAX_WORD = 1 << 30  # llama.cpp's WPM has no word length limit (BERT's tokenizer.json: 100 characters)


def _wpm_normalizer(v: GGUFVocab) -> dict:
    """llama.cpp's WPM normalization (llm_tokenizer_wpm_session::preprocess) in tokenizers' terms.

    With strip_accents llama.cpp maps every character to the first code point of its NFD and drops every
    mark (\\p{M}, also the spacing ones BertNormalizer keeps); as a Hangul syllable's NFD is its jamo, the
    syllable becomes its leading consonant.  Full NFD then dropping the marks is the same for every other
    character (checked over all of Unicode), so: Hangul syllables to their leading jamo, NFD, marks removed,
    then BertNormalizer's cleaning, Chinese-character spacing and lowercasing."""
    bert = {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True, "strip_accents": False,
            "lowercase": v.lowercase}
    if not v.strip_accents:
        return bert
    steps: list[dict] = []
    for lead in range(19):  # the syllables of one leading consonant are a block of 21 * 28
        first = 0xAC00 + lead * 588
        steps.append({"type": "Replace", "pattern": {"Regex": f"[{chr(first)}-{chr(first + 587)}]"},
                      "content": chr(0x1100 + lead)})
    steps += [{"type": "NFD"}, {"type": "Replace", "pattern": {"Regex": r"\p{M}"}, "content": ""}, bert]
    return {"type": "Sequence", "normalizers": steps}


def _wordpiece_json(v: GGUFVocab, notes: list[str]) -> dict:
    words = wordpiece_words(v)
    vocab: dict[str, int] = {}
    for tid, w in enumerate(words):
        vocab.setdefault(w, tid)
    # llama.cpp's WPM tokenizer adds BOS ([CLS]) and SEP whenever special tokens are added, whatever
    # add_bos/add_eos/add_sep say (llm_tokenizer_wpm in llama_vocab::impl::tokenize)
    cls = v.special.get("bos", v.special.get("cls"))
    sep = v.special.get("sep", v.special.get("eos"))
    unk = v.text(v.special.get("unk"))
    return _doc(
        v, normalizer=_wpm_normalizer(v),
        pre_tokenizer={"type": "BertPreTokenizer"},
        model={"type": "WordPiece", "unk_token": unk or "[UNK]", "continuing_subword_prefix": "##",
               "max_input_chars_per_word": WPM_MAX_WORD, "vocab": vocab},
        decoder={"type": "WordPiece", "prefix": "##", "cleanup": True},
        post=_template(v, words, cls, sep),
        added=_added_tokens(v, words))


_BUILDERS = {"gpt2": _gpt2_json, "llama": _spm_json, "t5": _unigram_json, "bert": _wordpiece_json,
             "gemma4": _gemma4_json}


def gguf_tokenizer_json(model_or_vocab: Model | GGUFVocab) -> tuple[dict, list[str]]:
    """The ``tokenizer.json`` document of a GGUF vocabulary, and notes on what it approximates."""
    v = model_or_vocab if isinstance(model_or_vocab, GGUFVocab) else read_gguf_vocab(model_or_vocab)
    notes: list[str] = []
    return _BUILDERS[v.kind](v, notes), notes


# -- the tokenizer ---------------------------------------------------------------------------------------

def gpt2_byte_chars() -> list[str]:
    """GPT-2's byte-level alphabet: the printable character standing for each byte 0..255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars: dict[int, str] = {b: chr(b) for b in printable}
    extra = (b for b in range(256) if b not in chars)
    for n, b in enumerate(extra):
        chars[b] = chr(256 + n)
    return [chars[b] for b in range(256)]


def _bytes_to_unicode() -> dict[str, int]:
    """GPT-2's byte <-> printable character table, as char -> byte."""
    return {c: b for b, c in enumerate(gpt2_byte_chars())}


_BYTE_DECODER = _bytes_to_unicode()


_C_SPACES = " \t\n\v\f\r"  # what C's isspace() strips beside lstrip/rstrip tokens


class _Encoding:
    __slots__ = ("ids",)

    def __init__(self, ids: list[int]):
        self.ids = ids


class SpmModel:
    """llama.cpp's SentencePiece tokenizer (``llm_tokenizer_spm`` with ``tokenizer_st_partition``), in Python.

    Building it costs one dict of the vocabulary (a 262k Gemma vocabulary is ready in a fraction of a
    second, where the equivalent ``tokenizers`` BPE needs every two-token split of every token as a merge);
    encoding is a priority queue over the characters of each text fragment, as llama.cpp does.  It offers the
    part of the ``tokenizers.Tokenizer`` interface :class:`Tokenizer` uses."""

    def __init__(self, v: GGUFVocab):
        self.tokens = v.tokens
        self.ids = v.index()
        scores = v.scores if v.scores is not None else np.zeros(len(v.tokens), np.float32)
        self.scores = scores.astype(np.float64).tolist()  # float32 values, compared as llama.cpp compares them
        self.add_space_prefix = v.add_space_prefix
        self.bos = v.special.get("bos") if v.add_bos else None
        self.eos = v.special.get("eos") if v.add_eos else None
        types = v.types
        special = np.flatnonzero(np.isin(types, [int(TokenType.CONTROL), int(TokenType.UNKNOWN)]))
        self.special_ids = frozenset(special.tolist())
        matched = np.flatnonzero(np.isin(types, [int(TokenType.CONTROL), int(TokenType.UNKNOWN),
                                                 int(TokenType.USER_DEFINED)])).tolist()
        # longest (in UTF-8 bytes) first, as llama.cpp's special-token cache is sorted
        matched.sort(key=lambda i: -len(self.tokens[i].encode("utf-8", "surrogatepass")))
        self._matched = [(i, self.tokens[i], i in v.lstrip, i in v.rstrip, i in self.special_ids)
                         for i in matched if self.tokens[i]]
        self._bytes = [self.ids[f"<0x{b:02X}>"] for b in range(256)]  # gguf_tokenizer checked they exist
        self.encode_special_tokens = False  # True: control tokens written in the text are not parsed

    # -- the tokenizers.Tokenizer interface used by Tokenizer
    def get_vocab_size(self, with_added_tokens: bool = True) -> int:
        return len(self.tokens)

    def get_vocab(self, with_added_tokens: bool = True) -> dict[str, int]:
        return dict(self.ids)

    def token_to_id(self, text: str) -> int | None:
        return self.ids.get(text)

    def id_to_token(self, tid: int) -> str | None:
        return self.tokens[tid] if 0 <= tid < len(self.tokens) else None

    def encode(self, text: str, add_special_tokens: bool = True) -> _Encoding:
        out: list[int] = []
        if add_special_tokens and self.bos is not None:
            out.append(self.bos)
        prev_special = True
        for frag in self._partition(text, not self.encode_special_tokens):
            if isinstance(frag, int):
                out.append(frag)
                prev_special = True
                continue
            if self.add_space_prefix and prev_special:
                frag = " " + frag
            self._spm(frag.replace(" ", SPACE), out)
            prev_special = False
        if add_special_tokens and self.eos is not None:
            out.append(self.eos)
        return _Encoding(out)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """As the tokenizer.json decoder of a SentencePiece model: ``▁`` -> space, byte tokens -> bytes (a run
        that is not valid UTF-8 gives one U+FFFD per byte), the prefix space stripped."""
        parts: list[str] = []
        run = bytearray()
        n_run = 0
        for tid in ids:
            tid = int(tid)
            if skip_special_tokens and tid in self.special_ids:
                continue
            tok = self.tokens[tid] if 0 <= tid < len(self.tokens) else None
            if tok is None:
                continue
            if len(tok) == 6 and tok.startswith("<0x") and tok.endswith(">") and _is_hex(tok[3:5]):
                run.append(int(tok[3:5], 16))
                n_run += 1
                continue
            if n_run:
                parts.append(_bytes_text(run, n_run))
                run, n_run = bytearray(), 0
            parts.append(tok.replace(SPACE, " "))
        if n_run:
            parts.append(_bytes_text(run, n_run))
        text = "".join(parts)
        if self.add_space_prefix and text.startswith(" "):
            text = text[1:]
        return text

    # -- llama.cpp's algorithm
    def _partition(self, text: str, parse_special: bool) -> list:
        """The text cut around the special tokens it contains (tokenizer_st_partition): str fragments and
        int token ids.  Control and unknown tokens only when parse_special; user-defined ones always."""
        frags: list = [text] if text else []
        for tid, tok, lstrip, rstrip, is_special in self._matched:
            if is_special and not parse_special:
                continue
            if not any(isinstance(f, str) and tok in f for f in frags):
                continue
            new: list = []
            for f in frags:
                if not isinstance(f, str) or tok not in f:
                    new.append(f)
                    continue
                pos = 0
                while True:
                    at = f.find(tok, pos)
                    if at < 0:
                        if pos < len(f):
                            new.append(f[pos:])
                        break
                    left = f[pos:at]
                    if lstrip:
                        left = left.rstrip(_C_SPACES)
                    if left:
                        new.append(left)
                    new.append(tid)
                    pos = at + len(tok)
                    if rstrip:
                        while pos < len(f) and f[pos] in _C_SPACES:
                            pos += 1
            frags = new
        return frags

    def _spm(self, text: str, out: list[int]) -> None:
        """llm_tokenizer_spm_session::tokenize: merge the adjacent pair whose text is the highest-scored token
        (ties: the leftmost) until none is left; pieces that are not tokens become byte tokens."""
        n = len(text)
        if not n:
            return
        ids, scores = self.ids, self.scores
        start = list(range(n))
        size = [1] * n
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prev = list(range(-1, n - 1))
        heap: list[tuple[float, int, int, int]] = []

        def bigram(left: int, right: int) -> None:
            if left < 0 or right < 0:
                return
            tid = ids.get(text[start[left]:start[right] + size[right]])
            if tid is not None:
                heapq.heappush(heap, (-scores[tid], left, right, size[left] + size[right]))

        for i in range(1, n):
            bigram(i - 1, i)
        while heap:
            _s, left, right, total = heapq.heappop(heap)
            if not size[left] or not size[right] or size[left] + size[right] != total:
                continue
            size[left] = total
            size[right] = 0
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prev[nxt[right]] = left
            bigram(prev[left], left)
            bigram(left, nxt[left])
        i = 0
        while i != -1:
            piece = text[start[i]:start[i] + size[i]]
            tid = ids.get(piece)
            if tid is not None:
                out.append(tid)
            else:
                out.extend(self._bytes[b] for b in piece.encode("utf-8", "surrogatepass"))
            i = nxt[i]


def _is_hex(s: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in s)


def _bytes_text(run: bytearray, n: int) -> str:
    try:
        return run.decode("utf-8")
    except UnicodeDecodeError:
        return "\ufffd" * n


class Tokenizer:
    """Text <-> token ids for one model (a ``tokenizers.Tokenizer`` and the model's special tokens)."""

    def __init__(self, hf, *, source: str, bos_id: int | None = None, eos_id: int | None = None,
                 eos_ids: Iterable[int] = (), pad_id: int | None = None, unk_id: int | None = None,
                 special_ids: Iterable[int] = (), chat_template: str | None = None, piece_style: str = "plain",
                 add_space_prefix: bool = False, notes: Sequence[str] = ()):
        self.hf = hf
        self.source = source  # "tokenizer.json" or "gguf"
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.eos_ids = frozenset(int(i) for i in eos_ids) | ({eos_id} if eos_id is not None else set())
        self.pad_id = pad_id
        self.unk_id = unk_id
        self.chat_template = chat_template
        self.notes = list(notes)
        self._special = frozenset(int(i) for i in special_ids)
        self._piece_style = piece_style  # bytelevel, spm, wordpiece, wordpiece-gguf, plain
        self.add_space_prefix = add_space_prefix
        self.vocab: GGUFVocab | None = None  # the GGUF vocabulary it was built from

    # -- sizes and ids
    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def is_special(self, token_id: int) -> bool:
        return int(token_id) in self._special

    def token_id(self, text: str) -> int | None:
        return self.hf.token_to_id(text)

    def token_text(self, token_id: int) -> str:
        """The vocabulary entry of a token (as stored: ``Ġ``, ``▁``, ``##``...)."""
        t = self.hf.id_to_token(int(token_id))
        if t is None:
            raise WorkbenchError(f"token id {token_id} is outside the vocabulary (size {self.vocab_size})")
        return t

    @property
    def bos_token(self) -> str:
        return self.token_text(self.bos_id) if self.bos_id is not None else ""

    @property
    def eos_token(self) -> str:
        return self.token_text(self.eos_id) if self.eos_id is not None else ""

    # -- text <-> ids
    def encode(self, text: str, add_special: bool | None = None, parse_special: bool = True) -> list[int]:
        """Token ids of ``text``.  ``add_special`` (default: what the model says) adds BOS/EOS (CLS/SEP);
        ``parse_special`` matches control tokens written in the text (``<|im_start|>``), as llama-tokenize does
        by default; user-defined tokens are always matched."""
        add = True if add_special is None else bool(add_special)
        if parse_special:
            return list(self.hf.encode(text, add_special_tokens=add).ids)
        self.hf.encode_special_tokens = True  # not thread-safe: one Tokenizer per thread when parse_special=False
        try:
            return list(self.hf.encode(text, add_special_tokens=add).ids)
        finally:
            self.hf.encode_special_tokens = False

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def piece_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for, as llama.cpp's token_to_piece (special tokens as their text)."""
        tok = self.token_text(token_id)
        if self.is_special(token_id):
            return tok.encode("utf-8")
        style = self._piece_style
        if style == "bytelevel":
            if all(c in _BYTE_DECODER for c in tok):
                return bytes(_BYTE_DECODER[c] for c in tok)
            return tok.encode("utf-8")  # an added token stored as plain text
        if style in ("spm", "wordpiece-gguf") and len(tok) == 6 and tok.startswith("<0x") and tok.endswith(">"):
            try:
                return bytes([int(tok[3:5], 16)])
            except ValueError:
                pass
        if style == "wordpiece":
            return (tok[2:] if tok.startswith("##") else " " + tok).encode("utf-8")
        return tok.replace(SPACE, " ").encode("utf-8")

    def token_piece(self, token_id: int) -> str:
        """The text of one token (invalid UTF-8 of a partial character shows as U+FFFD)."""
        return self.piece_bytes(token_id).decode("utf-8", errors="replace")

    def apply_chat_template(self, messages: Sequence[dict], add_generation_prompt: bool = True, **extra) -> str:
        from .chat import apply_chat_template

        return apply_chat_template(self.chat_template, messages, add_generation_prompt=add_generation_prompt,
                                   bos_token=self.bos_token, eos_token=self.eos_token, **extra)

    def __repr__(self) -> str:
        return f"<Tokenizer {self.source} vocab={self.vocab_size} bos={self.bos_id} eos={sorted(self.eos_ids)}>"


def _from_json(doc: dict | str):
    from tokenizers import Tokenizer as HFTokenizer

    try:
        return HFTokenizer.from_str(doc if isinstance(doc, str) else json.dumps(doc, ensure_ascii=False))
    except BaseException as exc:  # noqa: BLE001 - the tokenizers library raises plain Exceptions (or panics)
        if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
            raise
        raise FormatError(f"tokenizer.json is not usable by the tokenizers library: {short(str(exc), 120)}") from None


_BPE_KEYS = frozenset({"type", "dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix", "fuse_unk",
                       "byte_fallback", "ignore_merges", "vocab", "merges"})


def _bpe_from_doc(doc: dict):
    """The ``tokenizers.Tokenizer`` of a parsed BPE tokenizer.json built without re-parsing its merges: the
    document without vocabulary, merges and added tokens goes through ``from_str``, then the BPE model is made
    from the Python vocabulary and merge pairs, then the added tokens are added in order, as ``from_str`` adds
    them (so their ids are the same: from_str too gives ids by order, warning when the file says others).
    About half of ``from_str``'s time for a 262k vocabulary with 515k merges.
    None when the document is not such a BPE (or the library refuses a part): ``from_str`` then decides."""
    from tokenizers import AddedToken
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers.models import BPE

    model, added = doc.get("model"), doc.get("added_tokens", [])
    if not isinstance(model, dict) or model.get("type") != "BPE" or not set(model) <= _BPE_KEYS:
        return None
    vocab, merges = model.get("vocab"), model.get("merges")
    if not isinstance(vocab, dict) or not isinstance(merges, list) or not isinstance(added, list):
        return None
    try:
        pairs = list(map(tuple, merges if merges and type(merges[0]) is list else  # the library checks the rest
                         map(str.split, merges, repeat(" "))))
        tokens = [AddedToken(a["content"], single_word=a.get("single_word", False), lstrip=a.get("lstrip", False),
                             rstrip=a.get("rstrip", False), normalized=a.get("normalized", True),
                             special=a.get("special", False)) for a in added]
        options = {k: v for k, v in model.items() if k not in ("type", "vocab", "merges") and v is not None}
        bpe = BPE(vocab=vocab, merges=pairs, **options)
        rest = {**doc, "added_tokens": [], "model": {**model, "vocab": {}, "merges": []}}
        hf = HFTokenizer.from_str(json.dumps(rest, ensure_ascii=False))
        hf.model = bpe
        hf.add_tokens(tokens)
    except Exception:  # noqa: BLE001 - anything odd: from_str reads the file as it always did
        return None
    return hf


def gguf_tokenizer(model_or_vocab: Model | GGUFVocab) -> Tokenizer:
    """A tokenizer built from a GGUF vocabulary."""
    v = model_or_vocab if isinstance(model_or_vocab, GGUFVocab) else read_gguf_vocab(model_or_vocab)
    index = v.index()
    if v.kind == "llama" and all(f"<0x{b:02X}>" in index for b in range(256)):
        # llama.cpp's SentencePiece in Python: no merge table to build.  (Without byte tokens llama.cpp fails on
        # characters the vocabulary lacks; the tokenizer.json below, which fuses them into one unknown token,
        # stays the reference for such vocabularies.)
        notes: list[str] = []
        if len(index) != len(v.tokens):
            _vocab_dict(v.tokens, notes)  # notes the repeats
        hf: Any = SpmModel(v)
    else:
        doc, notes = gguf_tokenizer_json(v)
        hf = _bpe_from_doc(doc) or _from_json(doc)
    style = {"gpt2": "bytelevel", "llama": "spm", "gemma4": "spm", "t5": "spm", "bert": "wordpiece-gguf"}[v.kind]
    special = np.flatnonzero(np.isin(v.types, [int(TokenType.CONTROL), int(TokenType.UNKNOWN)])).tolist()
    bos = v.special.get("bos", v.special.get("cls")) if v.kind == "bert" else v.special.get("bos")
    eos = v.special.get("sep") if v.kind == "bert" else v.special.get("eos")
    tok = Tokenizer(hf, source="gguf", bos_id=bos, eos_id=eos, eos_ids=v.eog_ids() if v.kind != "bert" else (),
                    pad_id=v.special.get("pad"), unk_id=v.special.get("unk"), special_ids=special,
                    chat_template=v.chat_template, piece_style=style,
                    add_space_prefix=v.add_space_prefix, notes=notes)
    tok.vocab = v
    return tok


# -- tokenizer.json folders ------------------------------------------------------------------------------


def _token_content(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _chat_template_of(folder: Path, cfg: dict) -> str | None:
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8", errors="replace")
    tmpl = cfg.get("chat_template")
    if isinstance(tmpl, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in tmpl if isinstance(t, dict) and isinstance(t.get("name"), str)}
        tmpl = named.get("default") or next(iter(named.values()), None)
    if tmpl is None:
        data = load_json_if_present(folder / "chat_template.json")
        tmpl = data.get("chat_template") if isinstance(data, dict) else None
    return tmpl if isinstance(tmpl, str) and tmpl else None


def _check_bpe_merges(doc: dict, path: Path) -> None:
    """The tokenizers library panics (and prints a Rust backtrace) on a BPE merge whose second part is shorter
    than ``continuing_subword_prefix`` or would be cut inside a character: refuse such a file first."""
    model = doc.get("model")
    if not isinstance(model, dict) or model.get("type") != "BPE" or not isinstance(model.get("merges"), list):
        return
    prefix = model.get("continuing_subword_prefix")
    if not isinstance(prefix, str) or not prefix:
        return
    cut = len(prefix.encode("utf-8", "surrogatepass"))
    for i, m in enumerate(model["merges"]):
        second = m.split(" ", 1)[1] if isinstance(m, str) and " " in m else \
            m[1] if isinstance(m, list) and len(m) == 2 and isinstance(m[1], str) else None
        if second is None:
            continue
        raw = second.encode("utf-8", "surrogatepass")
        if len(raw) < cut or raw[cut:cut + 1] and raw[cut] & 0xC0 == 0x80:
            raise FormatError(f"merge {i} {quote(m)} is too short for the continuing_subword_prefix {quote(prefix)}",
                              path=path)


def _read_json_text(path: Path) -> str:
    """A JSON file's text, read once (the size limit checked first, invalid UTF-8 a FormatError)."""
    raw = read_json_bytes(path)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(f"not valid JSON: invalid UTF-8 at byte {exc.start}", path=path) from None


def folder_tokenizer(folder: Path) -> Tokenizer:
    """The tokenizer of a Hugging Face folder (``tokenizer.json`` + ``tokenizer_config.json`` and friends)."""
    folder = Path(folder)
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise MissingFileError("no tokenizer.json in the model folder", path=folder,
                               hint="Test inference needs tokenizer.json (the fast tokenizer file); save it with "
                                    "transformers' tokenizer.save_pretrained.")
    # the files' limits and types are checked first: a FormatError naming the file, never a crash
    text = _read_json_text(path)
    doc = parse_json(text, path)
    if not isinstance(doc, dict):
        raise FormatError(f"expected a JSON object, found {hf_type_name(doc)}", path=path)
    _check_bpe_merges(doc, path)
    cfg, smap, config, gen = (load_json_object(folder / name) for name in (
        "tokenizer_config.json", "special_tokens_map.json", "config.json", "generation_config.json"))
    try:
        hf = _bpe_from_doc(doc) or _from_json(text)
    except FormatError as exc:
        raise FormatError(exc.message, path=path) from None
    hf.no_padding()
    hf.no_truncation()
    n_vocab = hf.get_vocab_size(with_added_tokens=True)

    def token_id(value) -> int | None:  # an id from a config file, if it names a token of this vocabulary
        return value if type(value) is int and 0 <= value < n_vocab else None

    def special_id(name: str) -> int | None:
        text = _token_content(cfg.get(name)) or _token_content(smap.get(name))
        try:
            return hf.token_to_id(text) if text else None
        except Exception:  # noqa: BLE001 - text the tokenizers library cannot take (lone surrogates)
            return None

    bos, eos, pad, unk = (special_id(k) for k in ("bos_token", "eos_token", "pad_token", "unk_token"))
    if bos is None:
        bos = token_id(config.get("bos_token_id"))
    eos_ids: set[int] = set()
    for src in (config, gen):
        val = src.get("eos_token_id")
        for x in (val if isinstance(val, list) else [val]):
            if token_id(x) is not None:
                eos_ids.add(x)
    if eos is None and eos_ids:
        eos = min(eos_ids)
    for eog in EOG_TEXTS:  # (a lookup each: the whole vocabulary as a dict costs ~0.3 s for 262k tokens)
        tid = hf.token_to_id(eog)
        if tid is not None and (eog != "</s>" or eos is not None and tid == eos):
            eos_ids.add(tid)
    added = doc.get("added_tokens") if isinstance(doc.get("added_tokens"), list) else []
    special = [a["id"] for a in added if isinstance(a, dict) and a.get("special") and token_id(a.get("id")) is not None]
    model = doc.get("model") if isinstance(doc.get("model"), dict) else {}
    dec = json.dumps(doc.get("decoder") or {})
    if model.get("type") == "WordPiece":
        style = "wordpiece"
    elif '"ByteLevel"' in dec:
        style = "bytelevel"
    elif model.get("byte_fallback") or SPACE in dec or model.get("type") == "Unigram":
        style = "spm"
    else:
        style = "plain"
    if model.get("type") == "WordPiece" and bos is None:
        bos = special_id("cls_token")
        eos = special_id("sep_token") if eos is None else eos
    return Tokenizer(hf, source="tokenizer.json", bos_id=bos, eos_id=eos, eos_ids=eos_ids, pad_id=pad, unk_id=unk,
                     special_ids=special, chat_template=_chat_template_of(folder, cfg), piece_style=style)


def load_tokenizer(model: Model) -> Tokenizer:
    """The tokenizer of an opened model: its folder's tokenizer.json (HF folders, PEFT adapters that ship one),
    else a GGUF's ``tokenizer.ggml.*`` vocabulary."""
    folder = model.path if model.path.is_dir() else model.path.parent
    if model.format != "gguf" and (folder / "tokenizer.json").is_file():
        return folder_tokenizer(folder)
    if model.format == "gguf":
        return gguf_tokenizer(model)
    raise MissingFileError("the model has no tokenizer.json", path=folder,
                           hint="Put the tokenizer files of the model (tokenizer.json, tokenizer_config.json) "
                                "beside the weights.")


# -- streaming ---------------------------------------------------------------------------------------------

class IncrementalDecoder:
    """Text as tokens arrive, never cutting a multi-byte UTF-8 character (or a byte-fallback sequence) in half.

    ``push(id)`` returns the text that became final with that token ('' while a character is incomplete);
    ``flush()`` returns what is left.  Each step decodes a small window that starts a few tokens back, so
    decoders that look at neighbours (SentencePiece's leading space, WordPiece's ``##``) see them.
    ``context``: ids already shown (the prompt), whose text is not returned; with it the first generated token
    keeps its leading space (``▁Paris`` after a prompt is `` Paris``).  Without context the pieces joined equal
    ``tokenizer.decode(ids)``.
    """

    CONTEXT = 5  # tokens of the prompt kept as the first window's context

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = True, context: Sequence[int] = ()):
        self.tokenizer = tokenizer
        self.skip_special = skip_special
        self.ids: list[int] = [int(i) for i in list(context)[-self.CONTEXT:]]
        self._read = len(self.ids)  # tokens whose text has been returned (or was context)
        self._prefix = 0  # window start: tokens of context before the unread ones

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special=self.skip_special)

    def _delta(self, final: bool) -> str:
        prefix_text = self._decode(self.ids[self._prefix:self._read])
        new_text = self._decode(self.ids[self._prefix:])
        if len(new_text) > len(prefix_text) and (final or not new_text.endswith("\ufffd")):
            self._prefix, self._read = self._read, len(self.ids)
            return new_text[len(prefix_text):]
        if final:
            self._prefix = self._read = len(self.ids)
        return ""

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        return self._delta(final=False)

    def feed(self, ids: Iterable[int]) -> Iterator[str]:
        for i in ids:
            piece = self.push(i)
            if piece:
                yield piece

    def flush(self) -> str:
        """The rest of the text (an incomplete character at the end shows as U+FFFD)."""
        return self._delta(final=True)
