"""Hugging Face tokenizer files -> GGUF vocabulary keys (``tokenizer.ggml.*``), the way llama.cpp's
``convert_hf_to_gguf.py`` writes them, without torch, transformers or sentencepiece.

Four kinds, chosen by the architecture and the files present (the reference's choice; gemma2/gemma3/qwen3
take SentencePiece from ``tokenizer.model`` when there is one, else byte-level BPE; phi3 has its own
SentencePiece variant, see :func:`_phi3_vocab`):

- ``gpt2``: byte-level BPE from ``tokenizer.json`` (Llama 3, SmolLM, Qwen2...): tokens, token types,
  merges, and ``tokenizer.ggml.pre`` named like the reference does (it hashes the token ids of a fixed
  check text; we do the same with the ``tokenizers`` library, then fall back to the pre-tokenizer's
  regex, then to ``"default"``).
- ``llama``: SentencePiece. From ``tokenizer.model`` (read here with a small protobuf reader) exactly
  like the reference's ``_set_vocab_sentencepiece``; or from a ``tokenizer.json`` BPE with byte
  fallback like gguf-py's ``LlamaHfVocab`` (scores -1000, as the reference writes them).
- ``t5``: SentencePiece Unigram from ``spiece.model`` / ``tokenizer.model``, or from a Unigram
  ``tokenizer.json`` (scores, unknown/control/user-defined types, space prefix, charsmap).
- ``bert``: WordPiece from ``tokenizer.json`` with the reference's phantom-space (``▁``) tokens.

Special token ids, ``add_*_token`` flags, merges and the chat template come from gguf-py's
``SpecialVocab`` (tokenizer.json, tokenizer_config.json, config.json), as in the reference; ids it
leaves unset are looked up in ``special_tokens_map.json``.
"""
from __future__ import annotations

import base64
import hashlib
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
from gguf import TokenType

from ..errors import FormatError, MissingFileError, UnsupportedError
from ..formats.hf import load_json_if_present

# the text the reference tokenizes to identify a BPE pre-tokenizer (convert_hf_to_gguf.py, get_vocab_base_pre)
CHKTXT = ('\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ '
          '🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ '
          '------======= нещо на Български \'\'\'\'\'\'```````""""......!!!!!!?????? I\'ve been \'told he\'s there, '
          '\'RE you sure? \'M not sure I\'ll make it, \'D you like some tea? We\'Ve a\'lL')

# sha256(str(token ids of CHKTXT)) -> tokenizer.ggml.pre, for the tokenizers of the families we convert
# (the reference's table, where a later entry for the same hash wins)
KNOWN_PRE_HASHES = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Meta-Llama-3-8B
    "c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d": "smaug-bpe",  # Smaug-Llama-3-70B
    "d353350c764d8c3b39c763113960e4fb4919bea5fbf208a0e3b22e8469dc7406": "llama4",  # Llama-4-Scout
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # SmolLM-135M
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",  # openai-community/gpt2
    "0fe1cf6eda062318a1af7270f3331a85c539a01778ff948e24388e949c5282f4": "gpt-2",  # ruGPT3XL
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",  # Mistral-Nemo
    "0e9433cbbb161f89e264eb32e8e64bfe69e834973ffca5d41d3948a604a3e2a3": "pixtral",  # pixtral-12b
    "9d032fcbd5501f4a38150912590928bfb36091efb5df11b8e2124b0390e3fb1e": "falcon3",  # Falcon3-7B
    "049ecf7629871e3041641907f3de7c733e4dbfdc736f57d882ba0b0845599754": "deepseek-llm",  # deepseek-llm-7b
    "347715f544604f9118bb75ed199f68779f423cabb20db6de6f31b908d04d7821": "deepseek-coder",  # deepseek-coder-6.7b
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen1.5-7B
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",  # Qwen3-Embedding-0.6B
    "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5": "deepseek-r1-qwen",  # R1-Distill-Qwen
    "ccc2ef013c104be7bae2965776d611e1d7a8a2a9c547dd93a682c9a9fc80352e": "gpt-4o",  # Xenova/gpt-4o
    "d5f1dd6f980fec569fb218a81a7658ac45fc56b38c5a0adeb1c232fbe04ef5ec": "seed-coder",  # Seed-Coder-8B
    "35d91631860c815f952d711435f48d356ebac988362536bed955d43bfa436e34": "starcoder",  # starcoder2-3b
    "6221ad2852e85ce96f791f476e0b390cf9b474c9e3d1362f53a24a06dc8220ff": "refact",  # Refact-1_6-base
    "b6dc8df998e1cfbdc4eac8243701a65afe638679230920b50d6f17d81c098166": "olmo",  # OLMo-1.7-7B (and mpt-7b)
    "0876d13b50744004aa9aeae05e7b0647eac9d801b5ba4668afc01e709c15e19f": "jina-v2-en",  # jina-v2-base-en (and bge-small)
    "8e62295832751ca1e8f92f2226f403dea30dc5165e448b5bfa05af5340c64ec7": "bert-bge-large",  # bge-large-zh-v1.5
    "8b5a93ed704057481f240da0be7e7dca721d7f8f4755263b6807227a2cbeae65": "roberta-bpe",  # stsb-roberta-base
    "a0b64b4385f123663873756336c085744376d015ff328bb1d901598f63c44152": "modern-bert",  # ModernBERT-base
}

# pre-tokenizer regexes llama.cpp implements under a name (HF tokenizer.json spelling)
_LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_REGEX_PRE = {_LLAMA3_REGEX: "llama-bpe", _QWEN2_REGEX: "qwen2"}

SPECIAL_TYPES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


@dataclass
class GGUFVocab:
    """Everything written under ``tokenizer.*``, in the order the reference writes it."""

    model: str  # "gpt2", "llama", "t5", "bert"
    pre: str
    tokens: list[str | bytes]
    types: list[int]
    scores: list[float] | None = None
    special: gguf.SpecialVocab | None = None
    add_space_prefix: bool | None = None  # written first for llama (from tokenizer_config), after the types for t5
    remove_extra_whitespaces: bool | None = None
    precompiled_charsmap: bytes | None = None
    token_type_count: int | None = None  # bert: written before the tokenizer model
    extra: list[tuple[str, Any]] = field(default_factory=list)  # (writer method, value) written last
    source: str = ""  # which file the tokens came from

    def add_to(self, w: gguf.GGUFWriter) -> None:
        if self.token_type_count is not None:
            w.add_token_type_count(self.token_type_count)
        if self.add_space_prefix is not None and self.model != "t5":
            w.add_add_space_prefix(self.add_space_prefix)
        w.add_tokenizer_model(self.model)
        w.add_tokenizer_pre(self.pre)
        w.add_token_list(self.tokens)
        if self.scores is not None:
            w.add_token_scores(self.scores)
        w.add_token_types(self.types)
        if self.model == "t5":
            if self.add_space_prefix is not None:
                w.add_add_space_prefix(self.add_space_prefix)
            if self.remove_extra_whitespaces is not None:
                w.add_remove_extra_whitespaces(self.remove_extra_whitespaces)
            if self.precompiled_charsmap:
                w.add_precompiled_charsmap(self.precompiled_charsmap)
        if self.special is not None:
            for typ in [t for t in self.special.special_token_ids if not hasattr(w, f"add_{t}_token_id")]:
                del self.special.special_token_ids[typ]  # no GGUF key (cls): the reference skips it too
            self.special.add_to_gguf(w, quiet=True)
        # the reference's own values (e.g. add_bos_token False for SmolLM-size vocabularies) replace what
        # tokenizer_config.json gave, in place
        for method, value in self.extra:
            set_in_place(w, method, value)


def set_in_place(w: gguf.GGUFWriter, method: str, value: Any) -> None:
    """Add keys with GGUFWriter's ``method``; a key already written (add_bos_token from the tokenizer_config.json
    an export wrote) takes the new value where it stands, as the reference's writer leaves it, without gguf-py's
    "Duplicated key name" warning."""
    scratch = gguf.GGUFWriter(None, "scratch")
    scratch.kv_data[0].clear()
    getattr(scratch, method)(value)
    for key, v in scratch.kv_data[0].items():
        w.kv_data[0][key] = v


# -- entry point -------------------------------------------------------------------------------

def read_vocab(folder, arch: str, hparams: dict) -> GGUFVocab:
    """The GGUF vocabulary of the model in ``folder`` for GGUF architecture ``arch``."""
    folder = Path(folder)
    if arch == "llama":
        return _llama_vocab(folder, hparams)
    if arch in ("qwen2", "qwen3"):  # Qwen2Model.set_vocab: SentencePiece if there is a tokenizer.model
        if (folder / "tokenizer.model").is_file():
            return _spm_llama_vocab(folder, hparams)
        return _gpt2_vocab(folder, hparams)
    if arch == "qwen3moe":  # TextModel.set_vocab
        return _gpt2_vocab(folder, hparams)
    if arch in ("gemma2", "gemma3"):
        # Gemma3Model: SentencePiece from tokenizer.model, else byte-level BPE from tokenizer.json; Gemma2Model
        # requires tokenizer.model (we fall back to tokenizer.json like gemma3); both then say no space prefix
        vocab = _spm_llama_vocab(folder, hparams) if (folder / "tokenizer.model").is_file() \
            else _gpt2_vocab(folder, hparams)
        vocab.extra.append(("add_add_space_prefix", False))
        return vocab
    if arch == "phi3":
        return _phi3_vocab(folder, hparams)
    if arch == "bert":
        return _bert_vocab(folder, hparams)
    if arch == "t5":
        return _t5_vocab(folder, hparams)
    raise UnsupportedError(f"no tokenizer conversion for architecture {arch!r}")


def _llama_vocab(folder: Path, hparams: dict) -> GGUFVocab:
    tc = load_json_if_present(folder / "tokenizer_config.json") or {}
    if (folder / "tokenizer.model").is_file():
        vocab = _spm_llama_vocab(folder, hparams)
    else:
        tj = _tokenizer_json(folder)
        m = tj.get("model") or {}
        llama3 = m.get("type") == "BPE" and m.get("ignore_merges", False) and not m.get("byte_fallback", True)
        spm_bpe = (m.get("type") == "BPE" and m.get("byte_fallback", False)
                   and (tj.get("decoder") or {}).get("type") == "Sequence")
        vocab = _llama_hf_vocab(folder, tj) if spm_bpe and not llama3 else _gpt2_vocab(folder, hparams, tj)
    if isinstance(tc.get("add_prefix_space"), bool):
        vocab.add_space_prefix = tc["add_prefix_space"]
    n_vocab = hparams.get("vocab_size", 32000)
    if n_vocab == 32016:  # CodeLlama infill tokens
        vocab.extra += [("add_prefix_token_id", 32007), ("add_suffix_token_id", 32008),
                        ("add_middle_token_id", 32009), ("add_eot_token_id", 32010)]
    if n_vocab == 49152:  # the reference's rule for small granite / SmolLM vocabularies
        vocab.extra.append(("add_add_bos_token", False))
    return vocab


# -- byte-level BPE (gpt2) and WordPiece (bert): the reference's get_vocab_base ------------------

def _vocab_base(folder: Path, hparams: dict, tj: dict | None = None) -> tuple[list[str], list[int], dict]:
    tj = tj if tj is not None else _tokenizer_json(folder)
    model = tj.get("model") or {}
    vocab = model.get("vocab")
    if not isinstance(vocab, dict):
        raise FormatError("tokenizer.json has no token vocabulary (model.vocab)", path=folder / "tokenizer.json")
    added = [a for a in tj.get("added_tokens") or [] if isinstance(a, dict) and "content" in a and "id" in a]
    reverse = {int(i): t for t, i in vocab.items()}
    for a in added:  # added tokens win over the model vocabulary (tokenizers' get_vocab)
        reverse[int(a["id"])] = a["content"]
    added_by_content = {a["content"]: a for a in added}
    vocab_size = int(hparams.get("vocab_size") or len(reverse))
    if reverse and max(reverse) >= vocab_size:
        raise FormatError(f"tokenizer.json has token id {max(reverse)} but config.json says vocab_size is {vocab_size}",
                          path=folder, hint="Check that the tokenizer belongs to this model.")
    roundtrip = _TokenRoundTrip(folder)
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        token = reverse.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
            continue
        a = added_by_content.get(token)
        if a is not None:
            if not a.get("normalized", True):  # llama.cpp expects CONTROL/USER_DEFINED text pre-normalized
                token = roundtrip(token)
            if a.get("special") or looks_special(token):
                types.append(TokenType.CONTROL)
            else:
                token = token.replace("\u2581", " ")  # pre-normalize user-defined spaces
                types.append(TokenType.USER_DEFINED)
        else:
            types.append(TokenType.NORMAL)
        tokens.append(token)
    return tokens, types, tj


def _gpt2_vocab(folder: Path, hparams: dict, tj: dict | None = None) -> GGUFVocab:
    tokens, types, tj = _vocab_base(folder, hparams, tj)
    if (tj.get("model") or {}).get("type") != "BPE":
        raise UnsupportedError(f"tokenizer.json holds a {(tj.get('model') or {}).get('type')} model, not the BPE "
                               "this architecture needs", path=folder / "tokenizer.json")
    special = _special_vocab(folder, load_merges=True)
    return GGUFVocab("gpt2", detect_pre_tokenizer(folder, tj), tokens, types, special=special, source="tokenizer.json")


def _bert_vocab(folder: Path, hparams: dict) -> GGUFVocab:
    tokens, types, tj = _vocab_base(folder, hparams)
    if (tj.get("model") or {}).get("type") != "WordPiece":
        raise UnsupportedError("BERT conversion needs a WordPiece tokenizer.json", path=folder / "tokenizer.json")

    def phantom(tok: str, ttype: int) -> str:  # llama.cpp's WPM vocabulary marks word starts with ▁
        if ttype == TokenType.CONTROL:
            return tok
        return tok[2:] if tok.startswith("##") else "\u2581" + tok

    tokens = [phantom(t, ty) for t, ty in zip(tokens, types)]
    return GGUFVocab("bert", detect_pre_tokenizer(folder, tj), tokens, types,
                     special=_special_vocab(folder, n_vocab=len(tokens)),
                     token_type_count=int(hparams.get("type_vocab_size", 1)), source="tokenizer.json")


def looks_special(token: str) -> bool:
    """The reference's does_token_look_special: added tokens some models forget to mark special."""
    return (token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<\uff5c") and token.endswith("\uff5c>"))
            or (token.startswith("<unused") and token.endswith(">")))


class _TokenRoundTrip:
    """decode(encode(token)) with the model's own tokenizer (what the reference does to added tokens)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._tok: Any = None

    def __call__(self, token: str) -> str:
        if self._tok is None:
            self._tok = _load_tokenizer(self.folder) or False
        if not self._tok:
            return token
        return self._tok.decode(self._tok.encode(token, add_special_tokens=False).ids, skip_special_tokens=False)


def _load_tokenizer(folder: Path):
    try:
        from tokenizers import Tokenizer
    except ImportError:  # pragma: no cover - tokenizers is a dependency
        return None
    try:
        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    except Exception:  # noqa: BLE001 - a tokenizer the library cannot load: fall back to the regex check
        return None
    tok.no_padding()  # transformers' encode() neither pads nor truncates
    tok.no_truncation()
    return tok


def detect_pre_tokenizer(folder, tj: dict | None = None) -> str:
    """``tokenizer.ggml.pre`` for a BPE/WordPiece tokenizer.json.

    Like the reference: hash the token ids of the check text and look the hash up; if unknown, name the
    pre-tokenizer by its split regex; otherwise ``"default"``.
    """
    folder = Path(folder)
    tok = _load_tokenizer(folder)
    if tok is not None:
        try:
            ids = tok.encode(CHKTXT).ids
        except Exception:  # noqa: BLE001
            ids = None
        if ids is not None:
            name = KNOWN_PRE_HASHES.get(hashlib.sha256(str(ids).encode()).hexdigest())
            if name:
                return name
    tj = tj if tj is not None else _tokenizer_json(folder)
    return pre_from_structure(tj.get("pre_tokenizer"))


def pre_from_structure(pre: Any) -> str:
    """Name a tokenizer.json ``pre_tokenizer`` by the llama.cpp pre-tokenizer implementing it."""
    parts = (pre.get("pretokenizers") or []) if isinstance(pre, dict) and pre.get("type") == "Sequence" else [pre]
    parts = [p for p in parts if isinstance(p, dict)]
    kinds = [p.get("type") for p in parts]
    for p in parts:
        if p.get("type") == "Split":
            pattern = p.get("pattern") or {}
            regex = pattern.get("Regex") if isinstance(pattern, dict) else None
            if regex in _REGEX_PRE:
                return _REGEX_PRE[regex]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if (kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits")
            and parts[1].get("use_regex", True)):
        return "smollm"
    return "default"


# -- SentencePiece ---------------------------------------------------------------------------

@dataclass
class SentencePieceModel:
    pieces: list[tuple[str, float, int]]  # (piece, score, sentencepiece type: 1 normal, 2 unk, 3 control, 4 user, 5 unused, 6 byte)
    model_type: int  # 1 unigram, 2 bpe, 3 word, 4 char
    add_dummy_prefix: bool
    remove_extra_whitespaces: bool
    precompiled_charsmap: bytes


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes):
    """(field number, wire type, value) of one protobuf message; value is int, bytes or a 4/8-byte blob."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wt = key >> 3, key & 7
        if wt == 0:
            val, pos = _varint(buf, pos)
        elif wt == 1:
            val, pos = buf[pos:pos + 8], pos + 8
        elif wt == 2:
            n, pos = _varint(buf, pos)
            val, pos = buf[pos:pos + n], pos + n
        elif wt == 5:
            val, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wt}")
        if pos > len(buf):
            raise ValueError("truncated field")
        yield num, wt, val


def read_sentencepiece_model(path) -> SentencePieceModel:
    """Parse a SentencePiece ``.model`` (ModelProto) without the sentencepiece library."""
    path = Path(path)
    try:
        data = path.read_bytes()
        pieces: list[tuple[str, float, int]] = []
        model_type, add_prefix, remove_ws, charsmap = 1, True, True, b""
        for num, wt, val in _fields(data):
            if num == 1 and wt == 2:  # SentencePiece {piece=1, score=2, type=3}
                piece, score, ptype = "", 0.0, 1
                for n2, w2, v2 in _fields(val):
                    if n2 == 1 and w2 == 2:
                        piece = v2.decode("utf-8")
                    elif n2 == 2 and w2 == 5:
                        score = struct.unpack("<f", v2)[0]
                    elif n2 == 3 and w2 == 0:
                        ptype = v2
                pieces.append((piece, score, ptype))
            elif num == 2 and wt == 2:  # TrainerSpec {model_type=3}
                for n2, w2, v2 in _fields(val):
                    if n2 == 3 and w2 == 0:
                        model_type = v2
            elif num == 3 and wt == 2:  # NormalizerSpec {precompiled_charsmap=2, add_dummy_prefix=3, remove_extra_whitespaces=4}
                for n2, w2, v2 in _fields(val):
                    if n2 == 2 and w2 == 2:
                        charsmap = bytes(v2)
                    elif n2 == 3 and w2 == 0:
                        add_prefix = bool(v2)
                    elif n2 == 4 and w2 == 0:
                        remove_ws = bool(v2)
    except (ValueError, UnicodeDecodeError, struct.error) as exc:
        raise FormatError(f"not a valid SentencePiece model: {exc}", path=path) from None
    if not pieces:
        raise FormatError("the SentencePiece model has no pieces", path=path)
    return SentencePieceModel(pieces, model_type, add_prefix, remove_ws, charsmap)


def _spm_types(ptype: int) -> int:
    # the reference checks IsUnknown, IsControl, IsUnused, IsByte; anything else (user-defined too) is NORMAL
    return {2: TokenType.UNKNOWN, 3: TokenType.CONTROL, 5: TokenType.UNUSED, 6: TokenType.BYTE}.get(ptype, TokenType.NORMAL)


def _spm_pieces(folder: Path, spm: SentencePieceModel, vocab_size: int) -> tuple[list, list, list]:
    """(tokens, scores, types) of a SentencePiece model padded to ``vocab_size`` ([PADi], unused), with the
    folder's added_tokens.json entries as user-defined tokens (the reference's _create_vocab_sentencepiece)."""
    tokens: list[str | bytes] = [f"[PAD{i}]" for i in range(vocab_size)]
    scores = [-10000.0] * vocab_size
    types = [int(TokenType.UNUSED)] * vocab_size
    for i, (piece, score, ptype) in enumerate(spm.pieces[:vocab_size]):
        tokens[i], scores[i], types[i] = piece, score, _spm_types(ptype)
    added = load_json_if_present(folder / "added_tokens.json")
    if isinstance(added, dict):
        for text, tid in added.items():
            if isinstance(tid, int) and 0 <= tid < vocab_size:
                tokens[tid], scores[tid], types[tid] = text, -1000.0, TokenType.USER_DEFINED
    return tokens, scores, types


def _spm_llama_vocab(folder: Path, hparams: dict) -> GGUFVocab:
    """The reference's _create_vocab_sentencepiece + _set_vocab_sentencepiece."""
    spm = read_sentencepiece_model(folder / "tokenizer.model")
    vocab_size = int(hparams.get("vocab_size") or len(spm.pieces))
    tokens, scores, types = _spm_pieces(folder, spm, vocab_size)
    tc = load_json_if_present(folder / "tokenizer_config.json") or {}
    for tid_s, data in (tc.get("added_tokens_decoder") or {}).items():
        tid = int(tid_s)
        if not 0 <= tid < vocab_size or not isinstance(data, dict) or "content" not in data:
            continue
        text = data["content"]
        if data.get("special") or looks_special(text):
            types[tid] = TokenType.CONTROL
        else:
            text = text.replace("\u2581", " ")
            types[tid] = TokenType.USER_DEFINED
        scores[tid], tokens[tid] = -1000.0, text
    return GGUFVocab("llama", "default", tokens, types, scores,
                     special=_special_vocab(folder, n_vocab=len(tokens)), source="tokenizer.model")


def _phi3_vocab(folder: Path, hparams: dict) -> GGUFVocab:
    """Phi3MiniModel.set_vocab: byte-level BPE for a GPT2Tokenizer (Phi-4-mini), else tokenizer.model with the
    added tokens of added_tokens.json, tokenizer_config.json and tokenizer.json as user-defined or control
    tokens.  A folder with neither (tokenizer.json only) falls back to tokenizer.json's BPE."""
    tc = load_json_if_present(folder / "tokenizer_config.json") or {}
    if tc.get("tokenizer_class") == "GPT2Tokenizer" or not (folder / "tokenizer.model").is_file():
        return _gpt2_vocab(folder, hparams)
    spm = read_sentencepiece_model(folder / "tokenizer.model")
    vocab_size = int(hparams.get("vocab_size") or len(spm.pieces))
    tokens, scores, types = _spm_pieces(folder, spm, vocab_size)
    tj = load_json_if_present(folder / "tokenizer.json") or {}
    overrides = [(int(k), v) for k, v in (tc.get("added_tokens_decoder") or {}).items() if isinstance(v, dict)]
    overrides += [(int(a["id"]), a) for a in tj.get("added_tokens") or [] if isinstance(a, dict) and "id" in a]
    for tid, data in overrides:
        if 0 <= tid < vocab_size and "content" in data:
            tokens[tid], scores[tid] = data["content"], -1000.0
            types[tid] = TokenType.CONTROL if data.get("special") else TokenType.USER_DEFINED
    return GGUFVocab("llama", "default", tokens, types, scores,
                     special=_special_vocab(folder, n_vocab=len(tokens)), source="tokenizer.model")


def _llama_hf_vocab(folder: Path, tj: dict) -> GGUFVocab:
    """gguf-py's LlamaHfVocab from a tokenizer.json BPE with byte fallback (scores -1000 as it writes them)."""
    model = tj.get("model") or {}
    vocab = model.get("vocab") or {}
    base = {int(i): t for t, i in vocab.items()}
    n_base = len(base)
    added = sorted((a for a in tj.get("added_tokens") or [] if isinstance(a, dict)), key=lambda a: int(a["id"]))
    extra = [a for a in added if int(a["id"]) >= n_base]
    extra_ids = {int(a["id"]) for a in extra}
    special_ids = _config_special_ids(folder, tj)  # transformers' all_special_ids, as LlamaHfVocab uses
    tokens: list[str | bytes] = []
    scores: list[float] = []
    types: list[int] = []
    for i in range(n_base):
        if i in extra_ids:
            continue
        text = base[i]
        tokens.append(text)
        scores.append(-1000.0)
        types.append(TokenType.BYTE if _BYTE_TOKEN.fullmatch(text) else
                     TokenType.CONTROL if i in special_ids else TokenType.NORMAL)
    for a in extra:
        tokens.append(a["content"])
        scores.append(-1000.0)
        types.append(TokenType.CONTROL if int(a["id"]) in special_ids else TokenType.USER_DEFINED)
    return GGUFVocab("llama", "default", tokens, types, scores,
                     special=_special_vocab(folder, n_vocab=len(tokens)), source="tokenizer.json")


def _t5_vocab(folder: Path, hparams: dict) -> GGUFVocab:
    spm_path = next((folder / n for n in ("tokenizer.model", "spiece.model") if (folder / n).is_file()), None)
    if spm_path is not None:
        spm = read_sentencepiece_model(spm_path)
        if spm.model_type == 2:  # Pile-T5 style BPE: the reference writes a llama vocabulary
            if spm_path.name != "tokenizer.model":
                raise UnsupportedError("a BPE SentencePiece model must be named tokenizer.model", path=spm_path)
            return _spm_llama_vocab(folder, hparams)
        if spm.model_type != 1:
            raise UnsupportedError("the SentencePiece model is neither Unigram nor BPE", path=spm_path)
        return _t5_from_spm(folder, hparams, spm)
    return _t5_from_json(folder, hparams)


def _t5_from_spm(folder: Path, hparams: dict, spm: SentencePieceModel) -> GGUFVocab:
    vocab_size = int(hparams.get("vocab_size") or len(spm.pieces))
    tokens, scores, types = _spm_pieces(folder, spm, vocab_size)
    return GGUFVocab("t5", "default", tokens, types, scores, special=_special_vocab(folder, n_vocab=len(tokens)),
                     add_space_prefix=spm.add_dummy_prefix, remove_extra_whitespaces=spm.remove_extra_whitespaces,
                     precompiled_charsmap=spm.precompiled_charsmap, source="spiece.model")


def _t5_from_json(folder: Path, hparams: dict) -> GGUFVocab:
    """A Unigram tokenizer.json read the way the reference reads the SentencePiece model it came from."""
    tj = _tokenizer_json(folder)
    model = tj.get("model") or {}
    if model.get("type") != "Unigram":
        raise UnsupportedError(f"T5 conversion needs a Unigram tokenizer (spiece.model or tokenizer.json); this "
                               f"tokenizer.json holds {model.get('type')!r}", path=folder / "tokenizer.json")
    pieces = model.get("vocab") or []
    vocab_size = int(hparams.get("vocab_size") or len(pieces))
    unk_id = model.get("unk_id")
    added = {int(a["id"]): a for a in tj.get("added_tokens") or [] if isinstance(a, dict) and "id" in a}
    byte_fallback = bool(model.get("byte_fallback"))
    tokens: list[str | bytes] = [f"[PAD{i}]" for i in range(vocab_size)]
    scores = [-10000.0] * vocab_size
    types = [int(TokenType.UNUSED)] * vocab_size
    for i, entry in enumerate(pieces[:vocab_size]):
        piece, score = str(entry[0]), float(entry[1])
        a = added.get(i)
        if i == unk_id:
            ttype = TokenType.UNKNOWN
        elif a is not None and a.get("content") == piece:
            ttype = TokenType.CONTROL if a.get("special") else TokenType.USER_DEFINED
        elif byte_fallback and _BYTE_TOKEN.fullmatch(piece):
            ttype = TokenType.BYTE
        else:
            ttype = TokenType.NORMAL
        tokens[i], scores[i], types[i] = piece, score, int(ttype)
    add_prefix, remove_ws, charsmap = _spm_normalization(tj)
    return GGUFVocab("t5", "default", tokens, types, scores, special=_special_vocab(folder, n_vocab=len(tokens)),
                     add_space_prefix=add_prefix, remove_extra_whitespaces=remove_ws, precompiled_charsmap=charsmap,
                     source="tokenizer.json")


def _spm_normalization(tj: dict) -> tuple[bool, bool, bytes]:
    """SentencePiece's add_dummy_prefix, remove_extra_whitespaces and charsmap as HF's converter encodes them."""
    def flat(node):
        if not isinstance(node, dict):
            return []
        subs = node.get("normalizers") or node.get("pretokenizers")
        return [x for s in subs for x in flat(s)] if node.get("type") == "Sequence" and subs else [node]

    norms, pres = flat(tj.get("normalizer")), flat(tj.get("pre_tokenizer"))
    add_prefix = True
    for p in pres:
        if p.get("type") == "Metaspace":
            if "prepend_scheme" in p:
                add_prefix = p["prepend_scheme"] != "never"
            elif "add_prefix_space" in p:
                add_prefix = bool(p["add_prefix_space"])
    if any(n.get("type") == "Prepend" for n in norms):
        add_prefix = True
    remove_ws = any(p.get("type") == "WhitespaceSplit" for p in pres) or any(
        n.get("type") == "Replace" and (n.get("pattern") or {}).get("Regex") == " {2,}" for n in norms)
    charsmap = b""
    for n in norms:
        if n.get("type") == "Precompiled" and n.get("precompiled_charsmap"):
            charsmap = base64.b64decode(n["precompiled_charsmap"])
    return add_prefix, remove_ws, charsmap


# -- special tokens ----------------------------------------------------------------------------

class _CompatSpecialVocab(gguf.SpecialVocab):
    """gguf-py's SpecialVocab plus what the reference's (newer) gguf-py also reads from tokenizer.json: a
    ByteLevel post-processor means no BOS/EOS is added, and the normalizer's lowercase / strip-accents
    flags (``tokenizer.ggml.normalizer.*``, which llama.cpp's BERT tokenizer needs to lowercase)."""

    def __init__(self, *args, **kw):
        self.normalizer_lowercase: bool | None = None
        self.normalizer_strip_accents: bool | None = None
        super().__init__(*args, **kw)

    def _try_load_from_tokenizer_json(self, path: Path) -> bool:
        tj = load_json_if_present(path / "tokenizer.json")
        if isinstance(tj, dict):
            post = tj.get("post_processor") or {}
            if any(isinstance(p, dict) and p.get("type") == "ByteLevel" for p in post.get("processors", [post])):
                self.add_special_token.setdefault("bos", False)
                self.add_special_token.setdefault("eos", False)
            if isinstance(tj.get("normalizer"), dict):
                self._parse_normalizer(tj["normalizer"])
        return super()._try_load_from_tokenizer_json(path)

    def _parse_normalizer(self, norm: dict) -> None:
        kind = norm.get("type")
        if kind == "Lowercase":
            self.normalizer_lowercase = True
        elif kind == "StripAccents":
            self.normalizer_strip_accents = True
        elif kind == "BertNormalizer":
            if "lowercase" in norm:
                self.normalizer_lowercase = norm["lowercase"]
            if "strip_accents" in norm:
                self.normalizer_strip_accents = norm["strip_accents"]
        elif kind == "Sequence":
            for sub in norm.get("normalizers") or []:
                if isinstance(sub, dict):
                    self._parse_normalizer(sub)

    def add_to_gguf(self, gw: gguf.GGUFWriter, quiet: bool = False) -> None:
        super().add_to_gguf(gw, quiet=quiet)
        if self.normalizer_lowercase is not None:
            gw.add_bool("tokenizer.ggml.normalizer.lowercase", bool(self.normalizer_lowercase))
        if self.normalizer_strip_accents is not None:
            gw.add_bool("tokenizer.ggml.normalizer.strip_accents", bool(self.normalizer_strip_accents))


# the installed gguf-py already reads them when it has _parse_normalizer
_SPECIAL_VOCAB = gguf.SpecialVocab if hasattr(gguf.SpecialVocab, "_parse_normalizer") else _CompatSpecialVocab


def _special_vocab(folder: Path, *, load_merges: bool = False, n_vocab: int | None = None) -> gguf.SpecialVocab:
    sv = _SPECIAL_VOCAB(folder, load_merges=load_merges, n_vocab=n_vocab)
    stm = load_json_if_present(folder / "special_tokens_map.json")
    if isinstance(stm, dict):
        ids = _token_ids(folder)
        for typ in SPECIAL_TYPES:
            if typ in sv.special_token_ids:
                continue
            entry = stm.get(f"{typ}_token")
            content = entry.get("content") if isinstance(entry, dict) else entry
            if isinstance(content, str) and content in ids:
                sv._set_special_token(typ, ids[content])  # the reference's own helper (range-checked)
    return sv


def _token_ids(folder: Path) -> dict[str, int]:
    tj = load_json_if_present(folder / "tokenizer.json") or {}
    vocab = (tj.get("model") or {}).get("vocab")
    ids: dict[str, int] = {}
    if isinstance(vocab, dict):
        ids.update({str(t): int(i) for t, i in vocab.items()})
    elif isinstance(vocab, list):
        ids.update({str(e[0]): i for i, e in enumerate(vocab)})
    for a in tj.get("added_tokens") or []:
        if isinstance(a, dict) and "content" in a and "id" in a:
            ids[a["content"]] = int(a["id"])
    return ids


def _config_special_ids(folder: Path, tj: dict) -> set[int]:
    """Ids of the tokens tokenizer_config.json / special_tokens_map.json name (transformers' all_special_ids)."""
    ids = {a["content"]: int(a["id"]) for a in tj.get("added_tokens") or [] if isinstance(a, dict) and "id" in a}
    vocab = (tj.get("model") or {}).get("vocab") or {}
    out: set[int] = set()
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        cfg = load_json_if_present(folder / name)
        if not isinstance(cfg, dict):
            continue
        names = [cfg.get(k) for k in ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token",
                                      "mask_token")]
        for key in ("additional_special_tokens", "extra_special_tokens"):
            if isinstance(cfg.get(key), list):
                names += cfg[key]
        for v in names:
            v = v.get("content") if isinstance(v, dict) else v
            if isinstance(v, str):
                tid = ids.get(v, vocab.get(v) if isinstance(vocab, dict) else None)
                if tid is not None:
                    out.add(int(tid))
    return out


# -- files -------------------------------------------------------------------------------------


def _tokenizer_json(folder: Path) -> dict:
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise MissingFileError("the model folder has no tokenizer.json (needed for the GGUF vocabulary)", path=folder,
                               hint="Copy the model's tokenizer files (tokenizer.json, tokenizer_config.json) into "
                                    "the folder.")
    data = load_json_if_present(path)
    if not isinstance(data, dict):
        raise FormatError("tokenizer.json is not a JSON object", path=path)
    return data
