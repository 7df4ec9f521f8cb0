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
"""
from __future__ import annotations

import argparse
import ast
import json
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


def write_t5_vocab(folder: Path, path: Path) -> Path:
    """A vocabulary-only GGUF of a t5 tokenizer folder, written by workbench.convert.hf_vocab."""
    import gguf

    from workbench.convert import hf_vocab

    w = gguf.GGUFWriter(path, "t5")
    hf_vocab.read_vocab(folder, "t5", {}).add_to(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


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
    args = ap.parse_args()
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

    models = ensure("llama-vocabs")
    texts = read_inputs(models / "ggml-vocab-llama-spm.gguf.inp")
    other = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {name: models / f"ggml-vocab-{name}.gguf" for name in OTHER_VOCABS}
        paths["t5-lora"] = write_t5_vocab(ensure("t5-lora"), Path(tmp) / "t5.gguf")
        for name, path in paths.items():
            other[name] = [tokenize(args.bin, path, t, parse_special=False, bos=False) for t in texts]
    write(HERE / "ugm_spm_bpe.json", {"inputs": "ggml-vocab-llama-spm.gguf.inp", "ids": other})
    return 0


if __name__ == "__main__":
    sys.exit(main())
