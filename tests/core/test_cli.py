import json
import subprocess
import sys

import numpy as np

from workbench.cli import main


def test_inspect_table(gguf_file, capsys):
    path, expected = gguf_file
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Format:       gguf" in out and "Architecture: llama" in out
    assert f"Tensors:      {len(expected)}" in out
    assert "blk.0.ffn_up.weight" in out and "general.file_type" in out and "MOSTLY_Q8_0 (7)" in out


def test_inspect_json(hf_folder, capsys):
    folder, expected = hf_folder
    assert main(["inspect", str(folder), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["format"] == "safetensors"
    names = [t["name"] for t in data["tensors"]]
    assert names == list(expected)
    first = data["tensors"][0]
    assert first["shape"] == list(expected[names[0]].shape) and first["dtype"] == "F32"
    assert first["nbytes"] == expected[names[0]].size * 4
    assert data["metadata"]["config.json"]["hidden_size"] == {"type": "int", "value": 64}
    assert data["parameters"] == sum(int(np.prod(a.shape)) for a in expected.values())


def test_inspect_json_summarizes_long_arrays(tmp_path, capsys):
    from builders import gguf_string, raw_gguf
    import struct

    kv = gguf_string("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 20) + b"".join(gguf_string(f"t{i}") for i in range(20))
    p = tmp_path / "v.gguf"
    p.write_bytes(raw_gguf(kv=kv, n_kv=1))
    assert main(["inspect", str(p), "--json"]) == 0
    tokens = json.loads(capsys.readouterr().out)["metadata"]["GGUF"]["tokenizer.ggml.tokens"]["value"]
    assert tokens == {"length": 20, "head": [f"t{i}" for i in range(8)]}
    assert main(["inspect", str(p), "--json", "--full-arrays"]) == 0
    tokens = json.loads(capsys.readouterr().out)["metadata"]["GGUF"]["tokenizer.ggml.tokens"]["value"]
    assert tokens == [f"t{i}" for i in range(20)]


def test_bad_input_exits_nonzero_with_message_and_no_traceback(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\xff" * 40)
    proc = subprocess.run([sys.executable, "-m", "workbench", "inspect", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and "broken.gguf" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_usage_error_exits_2():
    proc = subprocess.run([sys.executable, "-m", "workbench"], capture_output=True, text=True)
    assert proc.returncode == 2 and "usage:" in proc.stderr


def test_plan_command(tmp_path, capsys):
    from builders import PLAN_MODELS, write_llama_gguf

    src = tmp_path / "m.gguf"
    write_llama_gguf(src, PLAN_MODELS[2])
    assert main(["plan", str(src), "--type", "Q4_K_M", "--rule", "attn_q=Q8_0", "--save", str(tmp_path / "p.json"),
                 "--tensor-type-file", str(tmp_path / "types.txt"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    types = {t["name"]: t["type"] for t in data["tensors"]}
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["blk.0.attn_norm.weight"] == "F32"
    assert json.loads((tmp_path / "p.json").read_text())["rules"] == [["attn_q", "Q8_0"]]
    assert r"^blk\.0\.attn_q\.weight$=q8_0" in (tmp_path / "types.txt").read_text().split()
    assert main(["plan", str(src), "--plan", str(tmp_path / "p.json")]) == 0
    out = capsys.readouterr().out
    assert "Preset Q4_K_M:" in out and "rule attn_q" in out
    assert main(["plan", str(src), "--rule", "no-equals-sign"]) == 1
