#!/usr/bin/env python3
"""Make the llama.cpp reference fixtures of the tokenizer tests (run once by hand; not run by the tests).

    python tests/core/data/tokenizer_vectors/make_fixtures.py [--bin /tmp/lcp/build/bin]

- ``smollm2.json``: token ids llama-tokenize gives for a few sentences of the SmolLM2-135M-Instruct GGUF
  (with the model's add_bos, with and without parsing special tokens), and the chat prompts llama-completion
  renders with ``--jinja`` (read back from ``--verbose-prompt``: the token ids and their joined pieces).
- ``ugm_spm_bpe.json``: llama-tokenize ids (no special parsing, no BOS) on the llama-spm test inputs for the
  vocab GGUFs of the llama-cpp-python sdist that come without test vectors (nomic-bert-moe: t5 Unigram with
  a charsmap; baichuan: SentencePiece; aquila and gpt-neox: gpt2 BPE with the default pre-tokenizer), and for
  ``t5-lora``: the t5 tokenizer.json of the T5 LoRA adapter written as a GGUF vocabulary by our own
  ``hf_vocab`` (:func:`write_t5_vocab`, which the tests call too).
- ``mixed.json``: one vocabulary of each kind (gpt2 BPE, llama SentencePiece, bert WordPiece, t5 Unigram) on
  MIXED_TEXTS (code, digits, accents, decomposed accents, CJK, Hangul, Devanagari, emoji, right-to-left
  scripts, special-token texts), each with
  ``tool``: what ``llama-tokenize`` prints by default (special tokens added when the vocabulary's add_bos
  says so, special-token texts parsed), ``special``: ``llama_tokenize(add_special=true, parse_special=true)``,
  what llama-completion and llama-embedding use (called through a small C program compiled here against the
  built libllama), and ``plain``: ``llama-tokenize --no-bos`` (nothing added).  The bert vocabularies are
  ggml-vocab-bert-bge and all-MiniLM-L6-v2 written by our converter's ``hf_vocab`` (the converter writes
  add_sep_token false for it, and llama.cpp still closes with [SEP]); the t5 ones nomic-bert-moe and t5-lora.
  Also the vocabularies of issue 14's architectures: qwen35 (qwen3), phi-3 (phi3), gemma-4 (the gemma4 BPE
  model) and ``gemma3``: a Gemma 3 style 262,144-token SentencePiece GGUF that :func:`gemma3_vocab_path`
  makes once from ggml-vocab-gemma-4.gguf into the test cache (~6 MB, not committed; the tests make it too).
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))
from fetch_models import ensure  # noqa: E402

SENTENCES = [
    "The capital of France is Paris.",
    "Hello world! It's 2024, and I've got 3.14159 apples.",
    "  spaces   and\ttabs\nand new lines\n\n",
    "Ünïcödé, 日本語, emoji 🦙😀 and ﬁ ligatures",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "def f(x):\n    return x ** 2  # square",
]
CHATS = [
    {"messages": [{"role": "user", "content": "What is the capital of France?"}]},
    {"messages": [{"role": "system", "content": "You are terse."},
                  {"role": "user", "content": "Name a prime number.\nJust one."}]},
]
OTHER_VOCABS = ("nomic-bert-moe", "baichuan", "aquila", "gpt-neox")

MIXED_TEXTS = [
    "def add(a, b):\n    return a + b  # 42\n\nprice = 1234567.89; x = 0x1F; y=3.14e-10\n"
    "Café naïve résumé — Ñandú, Straße, ÀÉÎÕÜ\n日本語のテキスト、中文字符和한국어\n"
    "Emoji: 🦙🚀👩‍💻 ✅ ❤️\nעברית: שלום עולם, العربية: مرحبا بالعالم\n",
    "  Leading spaces,\ttabs and <s> </s> [CLS] [SEP] <|endoftext|> <pad> specials 12345 ١٢٣ "
    "decomposed cafe\u0301 n\u0303 हिन्दी İstanbul ",
    "Hello world",
    "<start_of_turn>user\nWrite   code:\n\n\n\tif x:\n\t\treturn '<|im_start|>'  <end_of_turn>\n"
    "<start_of_turn>model\n<bos><eos><unk>\u00a0\u3000\u200b x\r\n",
]
# name -> (test-model key of a vocab GGUF or of a folder converted by hf_vocab, GGUF architecture for a folder)
MIXED_VOCABS = {
    "gpt-2": ("llama-vocabs", None), "llama-bpe": ("llama-vocabs", None), "qwen2": ("llama-vocabs", None),
    "llama-spm": ("llama-vocabs", None),
    "bert-bge": ("llama-vocabs", None), "all-minilm": ("minilm", "bert"),
    "nomic-bert-moe": ("llama-vocabs", None), "t5-lora": ("t5-lora", "t5"),
    # the architectures of issue 14: qwen3 (qwen2 above, qwen35), phi3, mistral (llama-spm above), gemma3 (a
    # 262k SentencePiece vocabulary made from Gemma 4's by gemma3_vocab_path), gemma4 (its own BPE model)
    "qwen35": ("llama-vocabs", None), "phi-3": ("llama-vocabs", None), "gemma-4": ("llama-vocabs", None),
    "gemma3": ("llama-vocabs", "gemma3"),
}


def write_vocab(folder: Path, path: Path, arch: str) -> Path:
    """A vocabulary-only GGUF of a tokenizer folder, written by workbench.convert.hf_vocab (as the converter
    writes the vocabulary of that architecture, with the folder's config.json)."""
    import gguf

    from workbench.convert import hf_vocab

    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    w = gguf.GGUFWriter(path, arch)
    hf_vocab.read_vocab(folder, arch, config).add_to(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_t5_vocab(folder: Path, path: Path) -> Path:
    """A vocabulary-only GGUF of a t5 tokenizer folder, written by workbench.convert.hf_vocab."""
    return write_vocab(folder, path, "t5")


def mixed_vocab_path(name: str, folder: Path) -> Path:
    """The GGUF of a MIXED_VOCABS entry (a folder's is written into ``folder``)."""
    key, arch = MIXED_VOCABS[name]
    if name == "gemma3":
        return gemma3_vocab_path()
    if arch is None:
        return ensure(key) / f"ggml-vocab-{name}.gguf"
    return write_vocab(ensure(key), folder / f"{name}.gguf", arch)


def gemma3_vocab_path() -> Path:
    """A Gemma 3 style vocabulary-only GGUF (262,144-entry SentencePiece, tokenizer.ggml.model "llama"), made once
    from llama.cpp's ggml-vocab-gemma-4.gguf into the test cache (~5 MB, not committed): see write_gemma3_vocab."""
    from fetch_models import models_dir

    path = models_dir() / "derived" / "ggml-vocab-gemma3-spm.gguf"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")  # two test processes may make it at once
        write_gemma3_vocab(ensure("llama-vocabs") / "ggml-vocab-gemma-4.gguf", tmp)
        tmp.replace(path)
    return path


def write_gemma3_vocab(gemma4: Path, path: Path) -> Path:
    """Gemma 4's 262,144 tokens (the Gemma 3 vocabulary with renamed specials) as convert_hf_to_gguf writes a
    Gemma 3 tokenizer.model: model "llama", pre "default", the Gemma 3 names of ids 6..106, scores as a
    SentencePiece BPE model has them (0 for user-defined, byte and control pieces, minus the id for learned
    ones), types (control <pad> <eos> <bos> <mask> and image markers, unknown <unk>, user-defined <unusedN>,
    markup and whitespace runs, byte <0xXX>), bos 2, eos 1, unk 3, pad 0, add_bos, no space prefix."""
    import gguf
    import numpy as np

    import workbench

    src = workbench.open_model(gemma4)  # our reader: gguf-py's takes ~40 s on the 514k merges
    tokens = list(src.meta("tokenizer.ggml.tokens"))
    types = np.asarray(src.meta("tokenizer.ggml.token_type"), np.int32)
    assert len(tokens) == 262144 and tokens[:5] == ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    tokens[5] = "[@BOS@]"
    tokens[6:105] = [f"<unused{i}>" for i in range(99)]
    tokens[105:107] = ["<start_of_turn>", "<end_of_turn>"]
    tokens[255999:256001] = ["<start_of_image>", "<end_of_image>"]
    tail = [i for i in range(256001, len(tokens)) if tokens[i].startswith("<unused")]
    for n, i in enumerate(tail, start=99):  # the tail of <unusedN> numbered after Gemma 3's first 99
        tokens[i] = f"<unused{n}>"
    assert len(set(tokens)) == len(tokens)
    t = gguf.TokenType
    types = np.where(types == t.BYTE, t.BYTE, t.NORMAL).astype(np.int32)
    types[5:238] = t.USER_DEFINED
    types[[0, 1, 2, 4, 255999, 256000]] = t.CONTROL
    types[3] = t.UNKNOWN
    types[np.char.startswith(np.array(tokens, dtype=object).astype(str), "<unused")] = t.USER_DEFINED
    scores = np.where(types == t.NORMAL, -np.arange(len(tokens), dtype=np.float32), 0).astype(np.float32)
    w = gguf.GGUFWriter(path, "gemma3")
    w.add_name("gemma3-vocab-from-gemma4")
    w.add_context_length(131072)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores.tolist())
    w.add_token_types(types.tolist())
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_pad_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# llama_tokenize through libllama (llama-tokenize itself adds special tokens only when the vocabulary's add_bos)
_TOKENIZE_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include "llama.h"
static void quiet(enum ggml_log_level level, const char * text, void * data) { (void) level; (void) text; (void) data; }
int main(int argc, char ** argv) {
    if (argc != 4) return 2;
    llama_log_set(quiet, NULL);
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    mp.vocab_only = true;
    struct llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (!model) return 1;
    const struct llama_vocab * vocab = llama_model_get_vocab(model);
    static char text[1 << 20];
    size_t n = fread(text, 1, sizeof(text), stdin);
    int32_t cap = (int32_t) n + 16;
    llama_token * ids = malloc(sizeof(llama_token) * cap);
    int32_t k = llama_tokenize(vocab, text, (int32_t) n, ids, cap, atoi(argv[2]) != 0, atoi(argv[3]) != 0);
    if (k < 0) return 3;
    for (int32_t i = 0; i < k; i++) printf(i ? " %d" : "%d", ids[i]);
    printf("\n");
    llama_model_free(model);
    return 0;
}
"""


def build_tokenize_helper(binary: Path, src: Path, out: Path) -> Path:
    """Compile _TOKENIZE_C against the llama.cpp source tree ``src`` and its built libllama in ``binary``."""
    c = out.with_suffix(".c")
    c.write_text(_TOKENIZE_C)
    subprocess.run(["cc", "-O1", "-o", str(out), str(c), f"-I{src / 'include'}", f"-I{src / 'ggml' / 'include'}",
                    f"-L{binary}", "-lllama", f"-Wl,-rpath,{binary}"], check=True)
    return out


def library_tokenize(helper: Path, model: Path, text: str, add_special: bool, parse_special: bool) -> list[int]:
    out = subprocess.run([str(helper), str(model), str(int(add_special)), str(int(parse_special))],
                         input=text.encode(), capture_output=True, check=True).stdout.decode()
    return [int(x) for x in out.split()]


def read_inputs(path: Path) -> list[str]:
    """The test inputs of a llama.cpp ``.inp`` file (test-tokenizer-0's read_tests)."""
    raw, sep, out, pos = path.read_text(encoding="utf-8"), "\n__ggml_vocab_test__\n", [], 0
    while pos < len(raw):
        nxt = raw.find(sep, pos)
        if nxt < 0:
            out.append(raw[pos:])
            break
        out.append(raw[pos:nxt])
        pos = nxt + len(sep)
    return out


def tokenize(binary: Path, model: Path, text: str, parse_special: bool, bos: bool) -> list[int]:
    args = [str(binary / "llama-tokenize"), "-m", str(model), "--ids", "--log-disable", "--stdin"]
    if not parse_special:
        args.append("--no-parse-special")
    if not bos:
        args.append("--no-bos")
    out = subprocess.run(args, input=text.encode(), capture_output=True, check=True).stdout.decode()
    return ast.literal_eval(out.strip().splitlines()[-1])


_PIECE = re.compile(r" I +(\d+) -> '(.*?)'\n(?=\d+\.\d+\.\d+\.\d+ I )", re.S)


def render(binary: Path, model: Path, messages: list[dict]) -> tuple[list[int], str]:
    """llama-completion --jinja: the chat prompt's ids and the text of their pieces."""
    args = [str(binary / "llama-completion"), "-m", str(model), "--jinja", "-cnv", "-st", "-n", "1",
            "--verbose-prompt", "--temp", "0", "-t", "1", "--no-warmup"]
    for m in messages:
        args += ["-sys" if m["role"] == "system" else "-p", m["content"]]
    err = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, check=True).stderr.decode()
    block = err[err.index("number of tokens in prompt"):]
    block = block[:block.index("sampler seed")]
    pairs = _PIECE.findall(block)
    return [int(i) for i, _ in pairs], "".join(p for _, p in pairs)


def write(path: Path, obj: dict) -> None:
    """JSON with one line per list of ids."""
    text = json.dumps(obj, ensure_ascii=False, indent=1)
    text = re.sub(r"\[\s*((?:-?\d+,\s*)*-?\d+)\s*\]", lambda m: "[" + re.sub(r"\s+", " ", m.group(1)) + "]", text)
    path.write_text(text + "\n", encoding="utf-8")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", type=Path, default=Path("/tmp/lcp/build/bin"))
    ap.add_argument("--src", type=Path, default=Path("/tmp/lcp"), help="llama.cpp source tree (include/llama.h)")
    ap.add_argument("--only", choices=("smollm2", "ugm_spm_bpe", "mixed"), help="make one fixture file")
    args = ap.parse_args()
    if args.only in (None, "smollm2"):
        make_smollm2(args)
    if args.only in (None, "ugm_spm_bpe"):
        make_ugm_spm_bpe(args)
    if args.only in (None, "mixed"):
        make_mixed(args)
    return 0


def make_smollm2(args) -> None:
    model = ensure("smollm2")
    fixture = {"model": "smollm2", "tokenize": [], "chat": []}
    for text in SENTENCES:
        fixture["tokenize"].append({
            "text": text,
            "ids": tokenize(args.bin, model, text, parse_special=True, bos=True),
            "ids_no_parse_special": tokenize(args.bin, model, text, parse_special=False, bos=True)})
    for chat in CHATS:
        ids, text = render(args.bin, model, chat["messages"])
        fixture["chat"].append({"messages": chat["messages"], "ids": ids, "text": text})
    write(HERE / "smollm2.json", fixture)


def make_ugm_spm_bpe(args) -> None:
    models = ensure("llama-vocabs")
    texts = read_inputs(models / "ggml-vocab-llama-spm.gguf.inp")
    other = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {name: models / f"ggml-vocab-{name}.gguf" for name in OTHER_VOCABS}
        paths["t5-lora"] = write_t5_vocab(ensure("t5-lora"), Path(tmp) / "t5.gguf")
        for name, path in paths.items():
            other[name] = [tokenize(args.bin, path, t, parse_special=False, bos=False) for t in texts]
    write(HERE / "ugm_spm_bpe.json", {"inputs": "ggml-vocab-llama-spm.gguf.inp", "ids": other})


def make_mixed(args) -> None:
    mixed: dict = {"texts": MIXED_TEXTS, "vocabs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        helper = build_tokenize_helper(args.bin, args.src, Path(tmp) / "tokenize")
        for name in MIXED_VOCABS:
            path = mixed_vocab_path(name, Path(tmp))
            mixed["vocabs"][name] = [{
                "tool": tokenize(args.bin, path, t, parse_special=True, bos=True),
                "special": library_tokenize(helper, path, t, add_special=True, parse_special=True),
                "plain": tokenize(args.bin, path, t, parse_special=True, bos=False)} for t in MIXED_TEXTS]
    write(HERE / "mixed.json", mixed)


if __name__ == "__main__":
    sys.exit(main())
