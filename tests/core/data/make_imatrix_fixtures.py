#!/usr/bin/env python3
"""Dev script: make importance matrices with llama-imatrix and record what llama-quantize ``--imatrix`` writes
with them (run once by hand; needs llama.cpp binaries, which are not a test dependency):

    python tests/core/data/make_imatrix_fixtures.py [--bin /tmp/lcp/build/bin]

The model: :func:`build_model`, a 2-layer llama with rows of 256 (so every K and IQ4 type applies), the
deterministic weights of tests/builders.py and a byte-level BPE vocabulary of 256 tokens (so llama-imatrix
can tokenize any text and the files stay small: the tinycoder GGUF has rows of 16, where no imatrix-using type
applies, and SmolLM2's imatrix is ~600 KB per format).  llama-imatrix runs it over :data:`TEXT`
(``-c 128 --chunks 2``) and writes ``imatrix/tiny.imatrix.gguf`` (the GGUF format) and
``imatrix/tiny.imatrix.dat`` (``--output-format dat``, the legacy format) beside this script.  For every preset of
:data:`PRESETS`, ``llama-quantize --imatrix FILE IN OUT PRESET 2`` (run in the fixture folder, so
``quantize.imatrix.file`` is the bare file name) is recorded in ``llama_quantize_imatrix.json`` as
make_requant_fixtures.py records its outputs (sha256, size, types, per-tensor digests).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE.parents[2]), str(HERE)]

FOLDER = HERE / "imatrix"
GGUF_FILE, DAT_FILE = "tiny.imatrix.gguf", "tiny.imatrix.dat"
FIXTURE = HERE / "llama_quantize_imatrix.json"
PRESETS = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q2_K_S", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M",
           "Q5_K_S", "Q5_K_M", "Q6_K", "IQ4_NL", "IQ4_XS")
TEXT = ("The quick brown fox jumps over the lazy dog while the five boxing wizards jump quickly. "
        "Pack my box with five dozen liquor jugs; how vexingly quick daft zebras jump! 0123456789 ") * 4


def _byte_tokens() -> list[str]:
    """GPT-2's bytes_to_unicode: one printable character per byte (the byte-level BPE vocabulary)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, n = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + n)
            n += 1
    return [chars[b] for b in range(256)]


def build_model(path: Path, *, name: str | None = "Tiny Imatrix Llama", merged_token: bool = False,
                scale: float = 0.05) -> Path:
    """The F32 llama GGUF the imatrix is computed on and the presets quantize (deterministic, ~2.6 MB).
    ``merged_token``: the vocabulary also holds the merge's result (a tokenizer our engine loads); ``scale``:
    of the matrices (small enough that activations stay finite through the layers)."""
    import gguf
    from builders import add_llama_hparams, exact_values, llama_gguf_tensors

    n_layer, n_embd, n_ff, n_head, n_head_kv = 2, 256, 512, 4, 2
    tokens = _byte_tokens()
    if merged_token:
        tokens = tokens + [tokens[ord("t")] + tokens[ord("h")]]
    w = gguf.GGUFWriter(path, "llama")
    if name is not None:
        w.add_name(name)
    add_llama_hparams(w, n_layer, n_embd, n_ff, n_head, n_head_kv)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([1] * len(tokens))
    w.add_token_merges([f"{tokens[ord('t')]} {tokens[ord('h')]}"])
    for i, (tname, shape) in enumerate(llama_gguf_tensors(n_layer, n_embd, n_ff, n_head, n_head_kv, len(tokens), False)):
        x = exact_values(shape, 7000 + i)
        if len(shape) == 2:
            x *= scale
        w.add_tensor(tname, x)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def main() -> int:
    from make_requant_fixtures import summary, write

    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", type=Path, default=Path("/tmp/lcp/build/bin"))
    args = ap.parse_args()
    FOLDER.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = build_model(tmp / "tiny.gguf")
        (tmp / "calibration.txt").write_text(TEXT, encoding="utf-8")
        for fmt, out in (("gguf", GGUF_FILE), ("dat", DAT_FILE)):
            subprocess.run([str(args.bin / "llama-imatrix"), "-m", str(model), "-f", "calibration.txt", "-c", "128",
                            "--chunks", "2", "--no-ppl", "-t", "2", "--output-format", fmt, "-o", out],
                           check=True, capture_output=True, cwd=tmp)
            shutil.copyfile(tmp / out, FOLDER / out)
        out: dict = {"command": "llama-quantize --imatrix FILE IN OUT PRESET 2", "imatrix": {}}
        for im in (GGUF_FILE, DAT_FILE):
            cases, keys, names = {}, None, None
            for preset in PRESETS if im == GGUF_FILE else ("Q4_K_M", "IQ4_XS"):
                dst = tmp / f"out-{preset}.gguf"
                subprocess.run([str(args.bin / "llama-quantize"), "--imatrix", im, str(model), str(dst), preset, "2"],
                               check=True, capture_output=True, cwd=tmp)
                s = summary(dst)
                cases[preset] = {k: s[k] for k in ("sha256", "size", "types", "digests")}
                keys, names = s["keys"], s["tensors"]
                dst.unlink()
                print(f"{im} {preset}: {s['sha256'][:16]} {s['size']} bytes")
            out["imatrix"][im] = {"keys": keys, "tensors": names, "presets": cases}
    write(out, FIXTURE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
