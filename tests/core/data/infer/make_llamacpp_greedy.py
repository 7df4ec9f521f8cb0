"""Dev script (not run by the tests): llama.cpp's greedy tokens on the GGUFs our converter writes (issue 14:
"llama.cpp loads our GGUFs and its greedy text equals ours at F32").

Needs a llama.cpp build (libllama.so) and the ctypes bindings of the llama-cpp-python sdist it came from:

    LLAMA_CPP_LIB_PATH=/tmp/lcp/build/bin LLAMA_CPP_PY=/tmp/lcp_src/llama_cpp_python-0.3.36 \\
        .venv/bin/python tests/core/data/infer/make_llamacpp_greedy.py [arch ...]

For each fixture folder (make_arch_fixtures.py) it converts the HF folder to an F32 GGUF with
``workbench.convert.convert_hf_to_gguf``, loads it with llama.cpp (CPU, one thread, one sequence), feeds
PROMPT's token ids (no text: the fixtures' character tokenizer has no byte-level mapping) and takes 8 argmax
steps, one token at a time through llama.cpp's KV cache.  It records the ids in ``llamacpp_greedy.json``
beside this script, with each step's five largest logits ([id, value]), the context size used and the
fixture's transformers greedy for comparison;
tests/core/test_convert_archs.py checks the recorded ids against each folder's greedy.npy.

A fixture may hold something llama.cpp's model cannot express (``variant_for``: gemma3's query_pre_attn_scalar
!= head_dim, Mistral's sliding window under the llama architecture, phi3 longrope's short factors below an
original context that llama.cpp's 256-padded context always exceeds).  For those the same weights are
also run with the config changed to what llama.cpp implements, in transformers (``TORCH_PYTHON``, default
/tmp/torchenv/bin/python) and in llama.cpp, and both greedy lists are recorded; for gemma3 also llama.cpp's
tokens without the ``sliding_window_pattern`` key llama.cpp's own converter omits.
"""
from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _prompt() -> list[int]:
    """make_infer_fixtures.PROMPT, read without importing torch."""
    tree = ast.parse((HERE / "make_infer_fixtures.py").read_text())
    node = next(n for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "PROMPT")
    return ast.literal_eval(node.value)


PROMPT = _prompt()

ARCHS = ["gemma3", "gemma2", "qwen3", "qwen3moe", "phi3", "phi3_longrope", "mistral"]
N_NEW = 8
N_CTX: dict[str, int] = {}  # context per fixture (default 64; llama.cpp pads it to 256 anyway)


def llama_greedy(lib, path: Path, n_ctx: int, top: list | None = None) -> list[int]:
    mparams = lib.llama_model_default_params()
    model = lib.llama_model_load_from_file(str(path).encode(), mparams)
    if not model:
        raise RuntimeError(f"llama.cpp could not load {path}")
    cparams = lib.llama_context_default_params()
    cparams.n_ctx = n_ctx
    cparams.n_batch = n_ctx
    cparams.n_ubatch = n_ctx
    cparams.n_seq_max = 1
    cparams.n_threads = 1
    cparams.n_threads_batch = 1
    cparams.type_k = cparams.type_v = 0  # GGML_TYPE_F32 KV cache (the default F16 cache rounds K and V)
    cparams.flash_attn_type = 0  # disabled: the CPU flash-attention path rounds through F16 (logits off by ~2e-3)
    ctx = lib.llama_init_from_model(model, cparams)
    if not ctx:
        raise RuntimeError(f"llama.cpp could not create a context for {path}")
    n_vocab = lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(model))
    out: list[int] = []
    ids = list(PROMPT)
    try:
        for _ in range(N_NEW):
            arr = (lib.llama_token * len(ids))(*ids)
            if lib.llama_decode(ctx, lib.llama_batch_get_one(arr, len(ids))) != 0:
                raise RuntimeError("llama_decode failed")
            logits = np.ctypeslib.as_array(lib.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
            nxt = int(np.argmax(logits))
            if top is not None:  # the step's 5 largest logits, [id, value]
                best = np.argsort(-logits, kind="stable")[:5]
                top.append([[int(i), round(float(logits[i]), 6)] for i in best])
            out.append(nxt)
            ids = [nxt]
    finally:
        lib.llama_free(ctx)
        lib.llama_model_free(model)
    return out


# A fixture whose transformers config holds something llama.cpp's model for that architecture cannot express
# (no GGUF key exists for it) is also run, same weights, under the config llama.cpp does implement, in
# transformers (TORCH_PYTHON) and llama.cpp, to show the GGUF is right and the difference is the model's.
def variant_for(arch: str, cfg: dict) -> tuple[dict, str] | None:
    positions = len(PROMPT) + N_NEW
    if arch == "gemma3" and cfg.get("query_pre_attn_scalar", 256) != cfg.get("head_dim", 256):
        return ({"query_pre_attn_scalar": cfg.get("head_dim", 256)},
                "llama.cpp scales gemma3 queries by 1/sqrt(head_dim), transformers by 1/sqrt(query_pre_attn_scalar)")
    if arch == "mistral" and cfg.get("sliding_window") and cfg["sliding_window"] < positions:
        return ({"sliding_window": None}, "llama.cpp's llama architecture has no sliding window")
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if arch.startswith("phi3") and rope.get("long_factor") and rope.get("original_max_position_embeddings", 0) < 256:
        return ({"rope_parameters.short_factor": "long_factor"},
                "llama.cpp pads n_ctx to 256 > original_max_position_embeddings and so uses the long factors; "
                "transformers uses the short ones below original_max_position_embeddings positions")
    return None


TF_GREEDY = """
import json, sys, torch
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32, attn_implementation="eager").eval()
with torch.no_grad():
    out = m.generate(torch.tensor([json.loads(sys.argv[2])]), max_new_tokens=8, do_sample=False, eos_token_id=None,
                     pad_token_id=0)
print(json.dumps(out[0, len(json.loads(sys.argv[2])):].tolist()))
"""


def _variant_folder(folder: Path, dest: Path, changes: dict) -> None:
    shutil.copytree(folder, dest, ignore=shutil.ignore_patterns("*.npy"))
    cfg = json.loads((dest / "config.json").read_text())
    for key, value in changes.items():
        if key == "rope_parameters.short_factor":
            cfg["rope_parameters"]["short_factor"] = cfg["rope_parameters"][value]
        else:
            cfg[key] = value
    (dest / "config.json").write_text(json.dumps(cfg, indent=1))


def _transformers_greedy(folder: Path) -> list[int]:
    torch_python = os.environ.get("TORCH_PYTHON", "/tmp/torchenv/bin/python")
    res = subprocess.run([torch_python, "-c", TF_GREEDY, str(folder), json.dumps(PROMPT)], capture_output=True,
                         text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    os.environ.setdefault("LLAMA_CPP_LIB_PATH", "/tmp/lcp/build/bin")
    pkg = types.ModuleType("llama_cpp")  # only the ctypes module, not the package's high-level API
    pkg.__path__ = [str(Path(os.environ.get("LLAMA_CPP_PY", "/tmp/lcp_src/llama_cpp_python-0.3.36")) / "llama_cpp")]
    sys.modules["llama_cpp"] = pkg
    import llama_cpp.llama_cpp as lib

    from workbench.convert import convert_hf_to_gguf, hf_to_gguf
    from workbench.progress import run

    def greedy_of(folder: Path, tmp: Path, n_ctx: int, top: list | None = None) -> list[int]:
        # a neutral folder name: general.name comes from it, and llama.cpp's vocabulary loader requires
        # <|endoftext|> in any model whose name contains "phi3" (the fixtures' tokenizer has none)
        tmp.mkdir(parents=True, exist_ok=True)
        src = tmp / "tiny-model"
        shutil.copytree(folder, src)
        path = run(convert_hf_to_gguf(src, tmp / "model.gguf", "F32", overwrite=True))[0]
        return llama_greedy(lib, path, n_ctx, top)

    lib.llama_backend_init()
    target = HERE / "llamacpp_greedy.json"
    record = json.loads(target.read_text()) if target.is_file() else {}
    for arch in sys.argv[1:] or ARCHS:
        folder = HERE / arch
        n_ctx = N_CTX.get(arch, 64)
        top: list = []
        with tempfile.TemporaryDirectory() as tmp:
            ids = greedy_of(folder, Path(tmp), n_ctx, top)
        ref = np.load(folder / "greedy.npy").tolist()
        entry = {"n_ctx": n_ctx, "greedy": ids, "transformers": ref, "top5": top}
        print(f"{arch}: llama.cpp {ids} transformers {ref} {'MATCH' if ids == ref else 'DIFFER'}", flush=True)
        cfg = json.loads((folder / "config.json").read_text())
        variant = variant_for(arch, cfg)
        with tempfile.TemporaryDirectory() as tmp:
            run_folder = folder  # the config llama.cpp implements
            if variant is not None:
                changes, why = variant
                run_folder = Path(tmp) / "variant"
                _variant_folder(folder, run_folder, changes)
                v_ids = greedy_of(run_folder, Path(tmp) / "v", n_ctx)
                v_ref = _transformers_greedy(run_folder)
                entry["variant"] = {"config": changes, "why": why, "greedy": v_ids, "transformers": v_ref}
                print(f"  variant {changes}: llama.cpp {v_ids} transformers {v_ref}", flush=True)
            if arch == "gemma3":  # what llama.cpp does without the layer pattern key the reference omits
                keep = hf_to_gguf._gemma3_swa_layers
                hf_to_gguf._gemma3_swa_layers = lambda hp: None
                try:
                    entry["greedy_without_swa_pattern"] = greedy_of(run_folder, Path(tmp) / "np", n_ctx)
                finally:
                    hf_to_gguf._gemma3_swa_layers = keep
                print(f"  without the pattern key: {entry['greedy_without_swa_pattern']}")
        record[arch] = entry
    lines = [f" {json.dumps(arch)}: {json.dumps(record[arch])}" for arch in ARCHS if arch in record]
    target.write_text("{\n" + ",\n".join(lines) + "\n}\n")  # one line per fixture


if __name__ == "__main__":
    main()
