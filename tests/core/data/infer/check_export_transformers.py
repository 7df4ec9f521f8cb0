"""Dev script (not run by the tests): do the GGUF -> HF folders of the issue-14 architectures load in transformers
and reproduce the fixtures' logits?

    /tmp/torchenv/bin/python tests/core/data/infer/check_export_transformers.py [name ...]

For each fixture folder (gemma3, gemma2, qwen3, qwen3moe, phi3, phi3_longrope, mistral) the project's Python
(.venv) makes GGUFs -- with the workbench's own HF -> GGUF converter when it supports the architecture, and
with the tests' llama.cpp-convention writer (test_export_archs.write_reference_gguf) -- and exports each to an
HF folder with ``workbench export`` (F32 and F16).  This Python (torch + transformers) then loads every folder
with AutoModelForCausalLM / AutoTokenizer and prints the max |logits - logits.npy| over PROMPT, the greedy
tokens against greedy.npy, and whether the tokenizer loads and encodes a sample like the fixture's.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[3]
NAMES = ("gemma3", "gemma2", "qwen3", "qwen3moe", "phi3", "phi3_longrope", "mistral")
VENV = ROOT / ".venv" / "bin" / "python"

EXPORT = r"""
import json, sys
from pathlib import Path
sys.path[:0] = [str(Path(sys.argv[1]) / "tests"), str(Path(sys.argv[1]) / "tests" / "core")]
from test_export_archs import write_reference_gguf
from workbench.cli import main
from workbench.convert.hf_to_gguf import convert_hf_to_gguf
from workbench.progress import run
out = Path(sys.argv[2])
done = {}
for name in sys.argv[3:]:
    src = Path(sys.argv[1]) / "tests/core/data/infer" / name
    ggufs = {}
    ref = out / f"{name}-ref.gguf"
    write_reference_gguf(src, ref)
    ggufs["ref"] = ref
    try:
        ggufs["ours"] = run(convert_hf_to_gguf(src, out / f"{name}-ours.gguf", "F16"))[0]
    except Exception as exc:  # the converter may not support the architecture yet
        print(f"{name}: workbench convert: {exc}", file=sys.stderr)
    for kind, path in ggufs.items():
        for dtype in ("f32", "f16"):
            folder = out / f"{name}-{kind}-{dtype}"
            rc = main(["export", str(path), "-o", str(folder), "--type", dtype, "--quiet"])
            if rc == 0:
                done.setdefault(name, []).append(str(folder))
print(json.dumps(done))
"""


def main() -> None:
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sys.path.insert(0, str(HERE))
    from make_infer_fixtures import PROMPT

    names = sys.argv[1:] or list(NAMES)
    # no spaces: the fixtures' character BPE has a raw " " token, which a GGUF gpt2 (byte-level) vocabulary
    # cannot express (llama.cpp and the export read it as byte-level, where a space is "Ġ")
    sample = "theotherthingisinthere"
    with tempfile.TemporaryDirectory() as tmp:
        res = subprocess.run([str(VENV), "-c", EXPORT, str(ROOT), tmp, *names], capture_output=True, text=True)
        sys.stderr.write(res.stderr[-3000:])
        folders = json.loads(res.stdout.strip().splitlines()[-1])
        for name in names:
            ref_logits = np.load(HERE / name / "logits.npy")
            ref_greedy = np.load(HERE / name / "greedy.npy")
            ref_tok = AutoTokenizer.from_pretrained(HERE / name)
            for folder in folders.get(name, []):
                model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                             attn_implementation="eager").eval()
                with torch.no_grad():
                    logits = model(torch.tensor([PROMPT])).logits[0].numpy()
                    out = model.generate(torch.tensor([PROMPT]), max_new_tokens=len(ref_greedy), do_sample=False,
                                         eos_token_id=None, pad_token_id=0)
                greedy = out[0, len(PROMPT):].numpy()
                tok = AutoTokenizer.from_pretrained(folder)
                same_ids = tok(sample)["input_ids"] == ref_tok(sample)["input_ids"]
                print(f"{Path(folder).name}: {type(model).__name__}, max|logits - logits.npy| "
                      f"{np.abs(logits - ref_logits).max():.2e}, greedy {'==' if (greedy == ref_greedy).all() else '!='}"
                      f" greedy.npy, tokenizer {type(tok).__name__} ids {'==' if same_ids else '!='} fixture's "
                      f"on {sample!r}", flush=True)


if __name__ == "__main__":
    main()
