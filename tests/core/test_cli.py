import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from workbench.cli import main
from workbench.progress import Progress, TextProgressBar


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


@pytest.mark.parametrize("as_json", [True, False])
def test_inspect_prints_the_models_warnings_on_stderr(tmp_path, hf_folder, as_json, capsys):
    from builders import build_peft_adapter

    adapter = tmp_path / "adapter"
    build_peft_adapter(adapter)  # its config has keys (loftq_config, ...) older PEFT releases reject
    assert main(["inspect", str(adapter)] + (["--json"] if as_json else [])) == 0
    captured = capsys.readouterr()
    warned = [line for line in captured.err.splitlines() if line.startswith("warning: ")]
    assert len(warned) == 1 and "loftq_config" in warned[0] and "megatron_core" in warned[0]
    if as_json:
        assert json.loads(captured.out)["warnings"] == [warned[0].removeprefix("warning: ")]
    assert main(["inspect", str(hf_folder[0])] + (["--json"] if as_json else [])) == 0
    assert "warning:" not in capsys.readouterr().err  # a model without warnings: none printed


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


# -- one tool: shared option names, --threads, --quiet, progress in logs, warnings, failing fast ------------

def help_text(command: str, capsys) -> str:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    return capsys.readouterr().out


@pytest.fixture
def no_tensor_reads(monkeypatch):
    """Any read of tensor data fails the test (the refusals below must come first)."""
    from workbench.model import Tensor

    def refuse(self, *a, **kw):
        raise AssertionError(f"tensor data of {self.info.name} was read before the refusal")

    for attr in ("raw", "to_float32", "iter_float32"):
        monkeypatch.setattr(Tensor, attr, refuse)


def unwritable_folder(tmp_path: Path) -> Path:
    """A folder nobody may create files in (root ignores permission bits: then a sysfs folder)."""
    ro = tmp_path / "read-only"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        probe = ro / "probe"
        probe.touch()
    except OSError:
        return ro / "out"
    probe.unlink()
    ro.chmod(0o755)
    if not os.access("/sys/kernel", os.F_OK):
        pytest.skip("no folder here refuses writes (running as root without /sys)")
    return Path("/sys/kernel/workbench-test-out")


@pytest.fixture
def lora_pair(tmp_path_factory):
    from builders import build_hf_folder, build_peft_adapter

    root = tmp_path_factory.mktemp("lora")
    build_hf_folder(root / "base")
    build_peft_adapter(root / "adapter")
    return root / "base", root / "adapter"


def test_refusals_come_before_any_tensor_is_read(tmp_path, hf_folder, gguf_file, lora_pair, no_tensor_reads, capsys):
    folder, _ = hf_folder
    gguf_path, _ = gguf_file
    base, adapter = lora_pair
    ro = unwritable_folder(tmp_path)
    existing = tmp_path / "existing.gguf"
    existing.write_bytes(b"keep me")
    (tmp_path / "hf-out").mkdir()
    (tmp_path / "hf-out" / "model.safetensors").write_bytes(b"keep me")
    odd = tmp_path / "gpt2"
    shutil.copytree(folder, odd)
    (odd / "config.json").write_text(json.dumps({**json.loads((folder / "config.json").read_text()),
                                                  "architectures": ["GPT2LMHeadModel"]}))
    cases = [  # (arguments, words the one-line error must hold)
        (["convert", str(folder), "-o", str(existing)], "already exists"),
        (["convert", str(gguf_path), "-o", str(existing), "--type", "Q4_0"], "already exists"),
        (["export", str(gguf_path), "-o", str(tmp_path / "hf-out")], "already holds model.safetensors"),
        (["merge-lora", str(base), str(adapter), "-o", str(tmp_path / "hf-out")], "already holds"),
        (["merge-lora", str(base), str(adapter), "-o", str(existing), "--type", "Q8_0"], "already exists"),
        (["lora-to-gguf", str(adapter), "-o", str(existing), "--base", str(base)], "already exists"),
        (["set-metadata", str(gguf_path), "-o", str(existing), "general.name=x"], "already exists"),
        (["convert", str(folder), "-o", str(tmp_path / "x"), "--type", "Q9_X"], "unknown type 'Q9_X' (--type)"),
        (["merge-lora", str(base), str(adapter), "-o", str(tmp_path / "x"), "--type", "Q9_X"], "unknown type"),
        (["merge-lora", str(base), str(adapter), "-o", str(tmp_path / "x"), "--to", "safetensors", "--type", "Q8_0"],
         "safetensors output is F32, F16 or BF16"),
        (["generate", str(gguf_path), "--prompt", "x", "--type", "Q9_X"], "unknown type"),
        (["plan", str(gguf_path), "--type", "Q9_X"], "unknown type"),
        (["compare", str(gguf_path), "--levels", "Q8_0", "--ctx", "8"], "--ctx 8 is too small"),
        (["convert", str(folder), "-o", str(ro)], "cannot write"),
        (["convert", str(gguf_path), "-o", str(ro / "m.gguf")], "cannot write"),
        (["export", str(gguf_path), "-o", str(ro)], "cannot write"),
        (["merge-lora", str(base), str(adapter), "-o", str(ro)], "cannot write"),
        (["lora-to-gguf", str(adapter), "-o", str(ro), "--base", str(base)], "cannot write"),
        (["set-metadata", str(gguf_path), "-o", str(ro / "m.gguf"), "general.name=x"], "cannot write"),
        (["export", str(gguf_path), "-o", str(existing / "sub")], "not a folder"),
        (["convert", str(odd), "-o", str(tmp_path / "x")], "GPT2LMHeadModel"),
        (["lora-to-gguf", str(adapter), "-o", str(tmp_path / "x"), "--base", str(odd)], "GPT2LMHeadModel"),
        (["merge-lora", str(odd), str(adapter), "-o", str(tmp_path / "x"), "--type", "Q8_0"], "GPT2LMHeadModel"),
    ]
    for argv, words in cases:
        assert main(argv) == 1, argv
        lines = capsys.readouterr().err.splitlines()  # (the adapter's warnings may come first)
        assert lines[-1].startswith("error: ") and words in lines[-1], (argv, lines)
        assert all(line.startswith("warning: ") for line in lines[:-1]), (argv, lines)
    assert existing.read_bytes() == b"keep me" and (tmp_path / "hf-out" / "model.safetensors").read_bytes() == b"keep me"
    assert not (tmp_path / "x").exists()


def test_force_and_the_old_overwrite_name_replace(tmp_path, gguf_file, capsys):
    import workbench

    src, _ = gguf_file
    out = tmp_path / "m.gguf"
    out.write_bytes(b"old")
    assert main(["convert", str(src), "-o", str(out), "--type", "Q8_0", "--force", "-q"]) == 0
    assert workbench.open_model(out).meta("general.file_type") == 7
    assert main(["set-metadata", str(out), "-o", str(tmp_path / "e.gguf"), "general.name=A"]) == 0
    assert main(["set-metadata", str(out), "-o", str(tmp_path / "e.gguf"), "general.name=B", "--overwrite"]) == 0
    assert workbench.open_model(tmp_path / "e.gguf").meta("general.name") == "B"
    assert "--force" in help_text("convert", capsys) and "--overwrite" not in help_text("convert", capsys)


def test_type_is_the_one_name_and_old_names_still_work(tmp_path, gguf_file, lora_pair, capsys):
    import workbench

    src, _ = gguf_file
    base, adapter = lora_pair
    assert main(["export", str(src), "-o", str(tmp_path / "a"), "--type", "BF16", "-q"]) == 0
    assert main(["export", str(src), "-o", str(tmp_path / "b"), "--dtype", "bf16", "-q"]) == 0  # hidden alias
    for d in ("a", "b"):
        assert set(workbench.open_model(tmp_path / d).dtype_counts()) == {"BF16"}
    assert main(["lora-to-gguf", str(adapter), "-o", str(tmp_path / "l1.gguf"), "--base", str(base), "--type", "f32"]) == 0
    assert main(["lora-to-gguf", str(adapter), "-o", str(tmp_path / "l2.gguf"), "--base", str(base),
                 "--outtype", "F32"]) == 0
    for f in ("l1.gguf", "l2.gguf"):
        assert set(workbench.open_model(tmp_path / f).dtype_counts()) == {"F32"}
    # merge-lora: --type F16 is the safetensors folder's type; a quantized type means a GGUF
    assert main(["merge-lora", str(base), str(adapter), "-o", str(tmp_path / "m1"), "--type", "f16"]) == 0
    assert main(["merge-lora", str(base), str(adapter), "-o", str(tmp_path / "m2"), "--dtype", "f16"]) == 0
    for d in ("m1", "m2"):
        m = workbench.open_model(tmp_path / d)
        assert m.format == "safetensors" and set(m.dtype_counts()) == {"F16"}
    assert main(["merge-lora", str(base), str(adapter), "-o", str(tmp_path / "m3"), "--type", "q8_0"]) == 0
    out = capsys.readouterr().out.split()
    assert out[-1].endswith("-Q8_0.gguf") and workbench.open_model(out[-1]).info("blk.0.attn_q.weight").dtype == "Q8_0"
    for cmd in ("export", "lora-to-gguf", "merge-lora"):
        text = help_text(cmd, capsys)
        assert "--type" in text and "--dtype" not in text and "--outtype" not in text, cmd


def test_threads_reach_the_kernels_and_blas(tmp_path, gguf_file, monkeypatch, capsys):
    from workbench import threads
    from workbench.kernels.base import default_threads

    src, _ = gguf_file
    monkeypatch.setenv("WORKBENCH_THREADS", "")  # restored after the test
    before = threads.blas_threads()
    try:
        assert main(["convert", str(src), "-o", str(tmp_path / "t.gguf"), "--type", "Q8_0", "--threads", "1"]) == 0
        assert default_threads() == 1 and os.environ["WORKBENCH_THREADS"] == "1"
        if before is not None:  # numpy's BLAS is one we know (OpenBLAS in numpy's wheels)
            assert threads.blas_threads() == 1
        with pytest.raises(SystemExit) as exit_:
            main(["compare", "x", "--levels", "Q8_0", "--threads", "0"])
        assert exit_.value.code == 2
        assert "not a positive whole number" in capsys.readouterr().err
    finally:
        if before is not None:
            threads.set_blas_threads(before)
    for cmd in ("convert", "export", "merge-lora", "lora-to-gguf", "generate", "compare"):
        assert "--threads" in help_text(cmd, capsys), cmd


def test_progress_lines_when_not_on_a_terminal():
    import io

    now = [100.0]
    out = io.StringIO()
    bar = TextProgressBar(out, interval=5.0, clock=lambda: now[0])
    for i in range(13):  # one event a second, 12 s of work on 12 units
        bar(Progress(i, 12, "Writing m.gguf"))
        now[0] += 1.0
    bar.close()
    lines = out.getvalue().splitlines()
    # at 5 s and 10 s, then the final state on close
    assert lines == ["Writing m.gguf: 5/12 (41.7%), 5 s elapsed, ETA 7 s",
                     "Writing m.gguf: 10/12 (83.3%), 10 s elapsed, ETA 2 s",
                     "Writing m.gguf: 12/12 (100.0%), 13 s elapsed, ETA 0 s"]
    quiet = io.StringIO()
    bar = TextProgressBar(quiet, interval=0.0, quiet=True)
    bar(Progress(1, 2, "x"))
    bar.close()
    assert quiet.getvalue() == ""


def test_cli_progress_lines_and_quiet(tmp_path, gguf_file, monkeypatch, capsys):
    src, _ = gguf_file
    monkeypatch.setattr(TextProgressBar, "INTERVAL", 0.0)  # a line for every event
    assert main(["convert", str(src), "-o", str(tmp_path / "a.gguf"), "--type", "Q8_0"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert any(line.startswith("blk.0.ffn_up.weight") and "ETA" in line for line in err), err
    assert err[-2].startswith("Requantized to Q8_0") and "(100.0%)" in err[-2], err
    assert err[-1].startswith("warning: the source is already quantized"), err
    assert main(["convert", str(src), "-o", str(tmp_path / "b.gguf"), "--type", "Q8_0", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(tmp_path / "b.gguf")
    assert captured.err.splitlines() == [err[-1]]  # no progress, the warning still


def test_warnings_reach_the_user(tmp_path, gguf_file, monkeypatch, capsys):
    src, _ = gguf_file
    # export: notes on what could not be rebuilt (here: a vocabulary without byte tokens)
    assert main(["export", str(src), "-o", str(tmp_path / "hf"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "warning: the SentencePiece vocabulary has no <0xXX> byte tokens" in err
    # requantizing an already quantized source
    q = tmp_path / "q.gguf"
    assert main(["convert", str(src), "-o", str(q), "--type", "Q8_0", "-q"]) == 0
    capsys.readouterr()
    assert main(["convert", str(q), "-o", str(tmp_path / "q4.gguf"), "--type", "Q4_0", "-q"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == ["warning: the source is already quantized (Q8_0), so the result carries both quantization errors; "
                   "requantize from an F32/F16/BF16 model when you can"]
    # Python warnings raised while a command runs: one line each, no source excerpt
    import workbench.cli as cli

    real = cli.iter_open_model

    def warns(path):
        warnings.warn("something odd in the header", UserWarning)
        warnings.warn("something odd in the header", UserWarning)
        return real(path)

    monkeypatch.setattr(cli, "iter_open_model", warns)
    assert main(["inspect", str(src), "-q"]) == 0
    assert capsys.readouterr().err == "warning: something odd in the header\n"
    # a library's log warning (gguf-py logs some): the same kind of line
    import logging

    def logs(path):
        logging.getLogger("gguf.gguf_reader").warning("odd alignment %d", 7)
        return real(path)

    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # as in a plain `workbench` run
    monkeypatch.setattr(cli, "iter_open_model", logs)
    assert main(["inspect", str(src), "-q"]) == 0
    assert capsys.readouterr().err == "warning: odd alignment 7\n"


@pytest.mark.parametrize("command, kind", [("generate", "adapter"), ("compare", "adapter"), ("generate", "encoder")])
def test_run_commands_refuse_what_the_engine_cannot_run_before_reading_anything(tmp_path, monkeypatch, capsys,
                                                                                command, kind):
    from builders import build_peft_adapter
    import workbench.infer.engines as engines  # imported before patching: it binds load_weights at import
    import workbench.infer.tokenizer as tokenizer
    import workbench.infer.weights as weights

    def must_not_run(*a, **k):
        raise AssertionError("read weights or tokenizer before refusing")

    monkeypatch.setattr(tokenizer, "load_tokenizer", must_not_run)
    monkeypatch.setattr(weights, "load_weights", must_not_run)
    monkeypatch.setattr(engines, "load_weights", must_not_run)
    if kind == "adapter":
        path = tmp_path / "adapter"
        build_peft_adapter(path)
        want = ["PEFT LoRA adapter", "merge-lora", "lora-to-gguf"]
    else:
        path = Path(__file__).parent / "data" / "infer" / "bert"
        want = ["encoder", "sentence embeddings"]
    args = [command, str(path)] + (["--prompt", "hi"] if command == "generate" else ["--levels", "Q8_0"])
    assert main(args) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("warning: ")]
    assert len(err) == 1 and err[0].startswith("error: ")
    assert all(w in err[0] for w in want), err[0]


def test_plan_refuses_a_lora_adapter(tmp_path, capsys):
    from builders import build_peft_adapter

    build_peft_adapter(tmp_path / "adapter")
    assert main(["plan", str(tmp_path / "adapter")]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(err) == 1 and "has no quantization plan" in err[0] and "merge-lora" in err[0]
