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


def test_set_metadata_and_export_commands(tmp_path, gguf_file, capsys):
    import workbench

    src, expected = gguf_file
    out = tmp_path / "edited.gguf"
    assert main(["set-metadata", str(src), "-o", str(out), "general.name=Renamed Model",
                 "custom.count=uint32:7"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    m = workbench.open_model(out)
    assert m.meta("general.name") == "Renamed Model" and m.meta("custom.count") == 7
    assert main(["set-metadata", str(src), "-o", str(out), "general.name=again"]) == 1  # no overwrite
    assert "already exists" in capsys.readouterr().err
    assert main(["export", str(src), "-o", str(tmp_path / "hf"), "--dtype", "f32"]) == 0
    written = capsys.readouterr().out.split()
    assert str(tmp_path / "hf" / "model.safetensors") in written
    back = workbench.open_model(tmp_path / "hf")
    name = "blk.0.ffn_up.weight"  # an F32 tensor in the fixture: exported unchanged
    assert expected[name][0] == "F32"
    hf_name = next(t.name for t in back.tensors if t.name.endswith("layers.0.mlp.up_proj.weight"))
    np.testing.assert_array_equal(back.tensor(hf_name).to_float32(), expected[name][1])


def test_parse_size():
    from workbench.cli import parse_size

    assert parse_size("2G") == 2 * 2**30 and parse_size("500M") == 500 * 2**20 and parse_size("4096") == 4096
    assert parse_size("1.5GB") == int(1.5 * 2**30)


def test_convert_command(tmp_path, hf_folder, capsys):
    import workbench

    folder, expected = hf_folder
    assert main(["convert", str(folder), "-o", str(tmp_path / "out"), "--type", "Q8_0"]) == 0
    paths = capsys.readouterr().out.split()
    assert len(paths) == 1 and paths[0].endswith("-Q8_0.gguf")
    m = workbench.open_model(paths[0])
    assert m.architecture == "llama" and m.meta("general.file_type") == 7
    assert m.info("blk.0.attn_q.weight").dtype == "Q8_0" and m.info("blk.0.attn_norm.weight").dtype == "F32"
    assert main(["convert", str(folder), "-o", str(tmp_path / "out"), "--type", "Q8_0"]) == 1  # exists
    assert main(["convert", str(folder), "-o", str(tmp_path / "split"), "--split-max-tensors", "8"]) == 0
    shards = capsys.readouterr().out.split()
    assert len(shards) > 1 and all("-of-" in s for s in shards)
    assert len(workbench.open_model(shards[0]).tensors) == len(m.tensors)


def test_merge_lora_command(tmp_path, capsys):
    from builders import build_hf_folder, build_peft_adapter

    import workbench

    base_expected = build_hf_folder(tmp_path / "base")
    adapter = build_peft_adapter(tmp_path / "adapter")
    assert main(["merge-lora", str(tmp_path / "base"), str(tmp_path / "adapter"), "-o", str(tmp_path / "merged"),
                 "--dtype", "f32"]) == 0
    assert str(tmp_path / "merged" / "model.safetensors") in capsys.readouterr().out.split()
    merged = workbench.open_model(tmp_path / "merged")
    name = "model.layers.1.self_attn.v_proj"
    a, b = adapter[f"base_model.model.{name}.lora_A.weight"], adapter[f"base_model.model.{name}.lora_B.weight"]
    want = base_expected[name + ".weight"] + np.float32(8 / 4) * (b @ a)
    np.testing.assert_allclose(merged.tensor(name + ".weight").to_float32(), want, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(merged.tensor("model.norm.weight").to_float32(), base_expected["model.norm.weight"])
    assert (tmp_path / "merged" / "tokenizer.json").is_file() and (tmp_path / "merged" / "config.json").is_file()
