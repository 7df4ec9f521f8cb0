"""File ▸ Convert / Export and Tools ▸ Merge LoRA through their dialogs and the job window: fields, name
preview and size follow the inputs, outputs are read back, cancel leaves nothing, existing outputs are
refused, errors reach the error dialog.  Expectations come from the core functions."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PySide6.QtCore import QSettings

import workbench
import workbench.convert.lora_gguf  # noqa: F401 - the project's own modules: a broken import fails, never skips
import workbench.convert.requantize  # noqa: F401
from builders import build_hf_folder, build_peft_adapter
from workbench.convert import prepare_hf_to_gguf
from workbench.plan import Plan
from ui.dialogs.convert_dialog import GGUF, SAFETENSORS, SETTINGS_DIR
from ui.formatting import human_bytes
from ui.dialogs.lora_dialog import LoraDialog, MERGE

JOB_TIMEOUT = 30_000


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("conv") / "tiny-llama"
    return folder, build_hf_folder(folder)


@pytest.fixture(scope="module")
def adapter_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lora") / "tiny-adapter"
    return folder, build_peft_adapter(folder)


def open_convert(qtbot, window, target=None):
    dlg = window.conversion.convert_dialog(target)
    qtbot.waitUntil(lambda: dlg.current is not None or dlg.prep_error is not None, timeout=JOB_TIMEOUT)
    return dlg


def wait_prepared(qtbot, dlg, change):
    with qtbot.waitSignal(dlg.prepared, timeout=JOB_TIMEOUT):
        change()


def run_dialog(qtbot, window, dlg, signal="succeeded"):
    """Press the dialog's OK and wait for the job window to finish."""
    jobs = window.conversion.jobs
    n = len(jobs.dialogs)
    dlg.ok.click()  # a worker looks for existing output, then the job starts
    qtbot.waitUntil(lambda: len(jobs.dialogs) == n + 1, timeout=JOB_TIMEOUT)
    job = jobs.last()
    qtbot.waitUntil(lambda: not job.is_running(), timeout=JOB_TIMEOUT)
    return job


def test_dialog_fields_preview_and_size_follow_the_inputs(qtbot, win, load, llama_folder, tmp_path):
    folder, _ = llama_folder
    model = load(win, folder)
    dlg = open_convert(qtbot, win)
    assert dlg.target_key() == GGUF and dlg.use_plan.isChecked()
    conv = prepare_hf_to_gguf(None, Plan(model, "Q4_K_M"))
    assert dlg.preview.full_text() == conv.output_name().filename()
    assert dlg.basename.text() == conv.output_name().base_name and dlg.size_label.text() == conv.metadata.size_label
    assert human_bytes(conv.nbytes) in dlg.size_info.text()
    # another preset: size and encoding change
    wait_prepared(qtbot, dlg, lambda: dlg.use_preset.setChecked(True))
    wait_prepared(qtbot, dlg, lambda: dlg.preset.setCurrentIndex(dlg.preset.findData("Q8_0")))
    q8 = prepare_hf_to_gguf(None, Plan(model, "Q8_0"))
    assert q8.nbytes != conv.nbytes and human_bytes(q8.nbytes) in dlg.size_info.text()
    assert dlg.preview.full_text() == q8.output_name().filename() and dlg.preview.full_text().endswith("-Q8_0.gguf")
    # editable parts, validated
    dlg.out_dir.setText(str(tmp_path))
    dlg.basename.setText("My-Model")
    dlg.finetune.setText("Chat")
    dlg.version.setText("v2.1")
    assert dlg.preview.full_text() == f"My-Model-{q8.metadata.size_label}-Chat-v2.1-Q8_0.gguf"
    assert dlg.ok.isEnabled() and not dlg.name_note.text()
    dlg.version.setText("2.1")
    assert "v1" in dlg.name_note.text() and dlg.ok.isEnabled()  # a convention warning, not an error
    dlg.version.setText("v2.1")
    dlg.basename.setText("bad/name")
    assert not dlg.ok.isEnabled() and "character" in dlg.message.text()
    dlg.basename.setText("My-Model")
    dlg.split.setText("lots")
    assert not dlg.ok.isEnabled() and "Split size" in dlg.message.text()
    dlg.split.setText("20K")
    expected_parts = -(-q8.nbytes // 20480)
    assert f"about {expected_parts} parts" in dlg.preview.full_text()
    assert dlg.preview.full_text().startswith(f"My-Model-{q8.metadata.size_label}-Chat-v2.1-Q8_0-00001-of-")
    # a Hugging Face target: dtype and folder name
    wait_prepared(qtbot, dlg, lambda: dlg.set_target(SAFETENSORS))
    assert not dlg.types_box.isVisible() and dlg.dtype_box.isVisible()
    wait_prepared(qtbot, dlg, lambda: dlg.dtype.setCurrentIndex(dlg.dtype.findData("F32")))
    assert human_bytes(model.n_params * 4) in dlg.size_info.text()
    assert dlg.folder_name.text() == "tiny-llama-F32"
    assert dlg.preview.full_text().startswith("tiny-llama-F32/model.safetensors")
    dlg.reject()


def test_convert_through_the_dialog_writes_the_gguf(qtbot, win, load, llama_folder, tmp_path, settings):
    folder, _ = llama_folder
    model = load(win, folder)
    win.plan.set_types(["model.layers.0.mlp.down_proj.weight"], "Q8_0")  # the current plan has an override
    dlg = open_convert(qtbot, win)
    assert "1 override" in dlg.use_plan.text()
    out = tmp_path / "out"
    dlg.out_dir.setText(str(out))
    job = run_dialog(qtbot, win, dlg)
    assert job.state == "done", job.error
    expected = prepare_hf_to_gguf(None, win.plan.plan.copy())
    path = out / expected.output_name().filename()
    assert job.outcome.paths == [path] and path.is_file()
    got = workbench.open_model(path)
    types = {t.name: t.dtype for t in got.tensors}
    assert types == expected.types() and types["blk.0.ffn_down.weight"] == "Q8_0"
    meta = {e.key: e.value for e in got.metadata["GGUF"]}
    assert meta["general.size_label"] == expected.metadata.size_label
    assert settings.value(SETTINGS_DIR) == str(out)  # remembered for the next dialog
    assert job.paths.item(0).text() == str(path) and job.open_button.isVisible()
    # Open in Workbench opens the result in the window
    with qtbot.waitSignal(win.model_loaded, timeout=JOB_TIMEOUT) as blocker:
        job.open_button.click()
    assert blocker.args[0].path == path
    got.close()


def test_cancel_leaves_nothing(qtbot, win, load, llama_folder, tmp_path, monkeypatch):
    import workbench.convert.hf_to_gguf as h2g

    monkeypatch.setattr(h2g, "CHUNK_ELEMENTS", 64)  # many small steps: the cancel lands mid-file
    folder, _ = llama_folder
    load(win, folder)
    dlg = open_convert(qtbot, win)
    out = tmp_path / "out"
    out.mkdir()
    dlg.out_dir.setText(str(out))
    dlg.ok.click()
    qtbot.waitUntil(lambda: len(win.conversion.jobs.dialogs) == 1, timeout=JOB_TIMEOUT)
    job = win.conversion.jobs.last()
    seen = []

    def on_progress(done, total, message):
        seen.append(done)
        if len(seen) == 3:
            job.cancel_button.click()

    job.worker.progress.connect(on_progress)
    with qtbot.waitSignal(job.was_cancelled, timeout=JOB_TIMEOUT):
        pass
    assert len(seen) >= 3 and job.state == "cancelled" and "nothing was written" in job.result_label.text()
    assert list(out.iterdir()) == []  # no output, no temporary file


def test_existing_output_is_refused_unless_allowed(qtbot, win, load, llama_folder, tmp_path, monkeypatch):
    warnings = []
    monkeypatch.setattr("ui.dialogs.job_dialog.QMessageBox.warning",
                        lambda parent, title, text: warnings.append((title, text)))
    folder, _ = llama_folder
    load(win, folder)
    dlg = open_convert(qtbot, win)
    dlg.out_dir.setText(str(tmp_path))
    target = tmp_path / dlg.preview.full_text()
    target.write_bytes(b"keep me")
    dlg.update_preview()  # the existence check runs on a worker; the note follows
    qtbot.waitUntil(lambda: "Already exists" in dlg.name_note.text(), timeout=JOB_TIMEOUT)
    assert target.name in dlg.name_note.text()
    dlg.ok.click()
    qtbot.waitUntil(lambda: len(warnings) == 1, timeout=JOB_TIMEOUT)
    assert str(target) in warnings[0][1] and "Replace existing files" in warnings[0][1]
    assert win.conversion.jobs.dialogs == [] and dlg.isVisible() and target.read_bytes() == b"keep me"
    assert dlg.ok.isEnabled()  # refused: the dialog stays usable
    dlg.overwrite.setChecked(True)
    qtbot.waitUntil(lambda: "will be replaced" in dlg.name_note.text(), timeout=JOB_TIMEOUT)
    target.unlink()  # gone from disk: the next look drops the note
    dlg.update_preview()
    qtbot.waitUntil(lambda: "Already exists" not in dlg.name_note.text(), timeout=JOB_TIMEOUT)
    target.write_bytes(b"keep me")
    job = run_dialog(qtbot, win, dlg)
    assert job.state == "done" and target.read_bytes()[:4] == b"GGUF"


def test_export_a_gguf_to_safetensors(qtbot, win, load, demo_path, tmp_path):
    model = load(win, demo_path)
    dlg = open_convert(qtbot, win, SAFETENSORS)
    wait_prepared(qtbot, dlg, lambda: dlg.dtype.setCurrentIndex(dlg.dtype.findData("F32")))
    dlg.out_dir.setText(str(tmp_path))
    dlg.folder_name.setText("exported")
    job = run_dialog(qtbot, win, dlg)
    assert job.state == "done", job.error
    assert job.open_target() == str(tmp_path / "exported")
    got = workbench.open_model(tmp_path / "exported")
    assert got.format == "safetensors" and {t.dtype for t in got.tensors} == {"F32"}
    # the embedding keeps its values (GGUF token_embd -> model.embed_tokens)
    src = model.tensor("token_embd.weight").to_float32()
    np.testing.assert_array_equal(got.tensor("model.embed_tokens.weight").to_float32(), src)


def test_requantize_a_gguf_through_the_dialog(qtbot, win, load, demo_path, tmp_path):
    model = load(win, demo_path)
    dlg = open_convert(qtbot, win)
    assert dlg.target_key() == GGUF and dlg.current.segments is not None
    wait_prepared(qtbot, dlg, lambda: dlg.use_preset.setChecked(True))
    wait_prepared(qtbot, dlg, lambda: dlg.preset.setCurrentIndex(dlg.preset.findData("Q8_0")))
    plan = Plan(model, "Q8_0")
    assert human_bytes(plan.nbytes) in dlg.size_info.text()
    assert dlg.preview.full_text() == "Workbench-Demo-TINY-v1-Q8_0.gguf"
    dlg.out_dir.setText(str(tmp_path))
    job = run_dialog(qtbot, win, dlg)
    assert job.state == "done", job.error
    got = workbench.open_model(tmp_path / "Workbench-Demo-TINY-v1-Q8_0.gguf")
    assert {t.name: t.dtype for t in got.tensors} == plan.types()
    got.close()


def test_an_adapter_is_exported_not_converted_to_gguf(qtbot, win, load, adapter_folder):
    load(win, adapter_folder[0])
    dlg = open_convert(qtbot, win)
    assert dlg.target_key() == SAFETENSORS
    assert not dlg.target.model().item(dlg.target.findData(GGUF)).isEnabled()
    assert dlg.preview.full_text().startswith("tiny-adapter-F16/adapter_model.safetensors")
    dlg.reject()


def test_errors_are_shown_in_a_dialog(qtbot, win, errors, load, llama_folder, tmp_path):
    folder, _ = llama_folder
    broken = tmp_path / "no-tokenizer"
    shutil.copytree(folder, broken)
    (broken / "tokenizer.json").unlink()  # prepare works; the job fails reading the tokenizer
    load(win, broken)
    dlg = open_convert(qtbot, win)
    dlg.out_dir.setText(str(tmp_path / "out"))
    job = run_dialog(qtbot, win, dlg)
    assert job.state == "failed"
    assert len(errors) == 1 and errors[0][0].endswith("failed") and "tokenizer" in errors[0][1].lower()
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
    assert win.isVisible()  # the app keeps running


def test_a_model_the_converter_refuses_shows_why(qtbot, win, load, st_folder):
    load(win, st_folder)  # its config.json lacks the head counts
    dlg = open_convert(qtbot, win)
    assert dlg.prep_error and "num_attention_heads" in dlg.message.text() and not dlg.ok.isEnabled()
    dlg.reject()


# -- LoRA ------------------------------------------------------------------------------------------

def test_lora_merge_through_the_dialog(qtbot, win, load, llama_folder, adapter_folder, tmp_path):
    base, base_values = llama_folder
    adapter, tensors = adapter_folder
    load(win, adapter)
    dlg = win.conversion.merge_dialog()
    assert dlg.adapter.text() == str(adapter) and dlg.base.text() == ""  # the opened adapter is the adapter
    with qtbot.waitSignal(dlg.inputs_read, timeout=JOB_TIMEOUT):
        dlg.set_paths(base=base)
    summary = dlg.summary.text()
    assert "lora_alpha" in summary and "q_proj, v_proj" in summary
    assert "loftq_config" in dlg.notes.text()  # keys older PEFT releases reject
    dlg.dtype.setCurrentIndex(dlg.dtype.findData("F32"))
    dlg.out_dir.setText(str(tmp_path))
    assert dlg.out_name.text() == "tiny-llama-tiny-adapter-F32" and dlg.ok.isEnabled()
    job = run_dialog(qtbot, win, dlg)
    assert job.state == "done", job.error
    merged = workbench.open_model(tmp_path / "tiny-llama-tiny-adapter-F32")
    name = "model.layers.0.self_attn.q_proj.weight"
    a = tensors[f"base_model.model.{name[:-len('.weight')]}.lora_A.weight"]
    b = tensors[f"base_model.model.{name[:-len('.weight')]}.lora_B.weight"]
    expected = base_values[name] + (8 / 4) * (b @ a)
    np.testing.assert_allclose(merged.tensor(name).to_float32(), expected, rtol=1e-6, atol=1e-5)
    assert json.loads((tmp_path / "tiny-llama-tiny-adapter-F32" / "config.json").read_text())["hidden_size"] == 64


def test_lora_merge_to_gguf_when_available(qtbot, win, load, llama_folder, adapter_folder, tmp_path):
    from ui.dialogs.lora_dialog import merge_to_gguf_available

    if not merge_to_gguf_available():
        pytest.skip("merge_lora(to='gguf') is not in this version of the core")
    base, _ = llama_folder
    adapter, _ = adapter_folder
    load(win, base)
    dlg = win.conversion.merge_dialog()
    assert dlg.base.text() == str(base) and dlg.adapter.text() == ""  # the opened model is the base
    with qtbot.waitSignal(dlg.inputs_read, timeout=JOB_TIMEOUT):
        dlg.set_paths(adapter=adapter)
    dlg.to_gguf.setChecked(True)
    dlg.preset.setCurrentText("Q8_0")
    dlg.out_dir.setText(str(tmp_path))
    assert dlg.out_name.text().endswith("-Q8_0.gguf")
    job = run_dialog(qtbot, win, dlg)
    assert job.state == "done", job.error
    got = workbench.open_model(job.outcome.paths[0])
    assert got.format == "gguf" and got.info("blk.0.attn_q.weight").dtype == "Q8_0"
    got.close()


def test_lora_dialog_defaults_and_wrong_inputs(qtbot, llama_folder, tmp_path):
    base, _ = llama_folder
    model = workbench.open_model(base)
    settings = QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat)
    dlg = LoraDialog(model, settings, MERGE)
    qtbot.addWidget(dlg)
    qtbot.waitUntil(lambda: dlg.inputs is not None, timeout=JOB_TIMEOUT)
    assert dlg.base.text() == str(base) and dlg.adapter.text() == ""
    assert not dlg.ok.isEnabled() and "adapter" in dlg.message.text()
    with qtbot.waitSignal(dlg.inputs_read, timeout=JOB_TIMEOUT):
        dlg.set_paths(adapter=base)  # a model, not an adapter
    assert "not a PEFT adapter" in dlg.message.text() and not dlg.ok.isEnabled()
    dlg.reader.shutdown()


def test_lora_to_gguf_through_the_dialog(qtbot, win, load, llama_folder, adapter_folder, tmp_path, monkeypatch):
    base, _ = llama_folder
    adapter, _ = adapter_folder
    load(win, adapter)
    dlg = win.conversion.lora_gguf_dialog()
    with qtbot.waitSignal(dlg.inputs_read, timeout=JOB_TIMEOUT):
        dlg.set_paths(base=base)
    dlg.out_dir.setText(str(tmp_path))
    assert dlg.out_name.text().endswith("-F16-LoRA.gguf")
    # an existing file of that name is refused (looked for on a worker) until replacing is allowed
    existing = tmp_path / dlg.out_name.text()
    existing.write_bytes(b"keep me")
    warnings = []
    monkeypatch.setattr("ui.dialogs.job_dialog.QMessageBox.warning", lambda parent, title, text: warnings.append(text))
    dlg.ok.click()
    qtbot.waitUntil(lambda: len(warnings) == 1, timeout=JOB_TIMEOUT)
    assert str(existing) in warnings[0] and win.conversion.jobs.dialogs == [] and dlg.ok.isEnabled()
    assert existing.read_bytes() == b"keep me"
    dlg.overwrite.setChecked(True)
    job = run_dialog(qtbot, win, dlg)
    assert job.state == "done", job.error
    got = workbench.open_model(job.outcome.paths[0])
    assert got.format == "gguf" and any("lora_a" in t.name for t in got.tensors)


def test_job_window_eta_and_per_tensor_progress():
    from ui.dialogs.job_dialog import Segment, SegmentTracker, fmt_duration

    tr = SegmentTracker([Segment("a", 100, 10), Segment("b", 300, 90)])
    assert tr.at(0.0) == (0, 0.0, 0)
    i, frac, nbytes = tr.at(0.5)  # 200 of 400 units: a third into b
    assert i == 1 and abs(frac - 1 / 3) < 1e-9 and nbytes == 10 + 30
    assert tr.at(1.0)[0] == 1 and tr.at(1.0)[2] == 100
    assert fmt_duration(75) == "1:15" and fmt_duration(3725) == "1:02:05"


def test_existing_output_is_looked_for_off_the_gui_thread(qtbot, win, load, llama_folder, tmp_path, monkeypatch):
    import pathlib
    import threading

    folder, _ = llama_folder
    load(win, folder)
    dlg = open_convert(qtbot, win)
    dlg.out_dir.setText(str(tmp_path))
    (tmp_path / dlg.preview.full_text()).write_bytes(b"x")
    calls = []
    for name in ("exists", "is_dir", "glob"):
        real = getattr(pathlib.Path, name)

        def spy(self, *a, _real=real, _name=name, **kw):
            calls.append((_name, threading.current_thread() is threading.main_thread()))
            return _real(self, *a, **kw)
        monkeypatch.setattr(pathlib.Path, name, spy)
    original = dlg.basename.text()
    for text in ("a", "ab", "abc", original):  # typing a name: each keystroke looks again
        dlg.basename.setText(text)
    qtbot.waitUntil(lambda: "Already exists" in dlg.name_note.text(), timeout=JOB_TIMEOUT)
    assert calls and not any(on_gui for _name, on_gui in calls), calls
    # a note that arrives after the dialog was laid out: the dialog grows to show it whole
    monkeypatch.undo()
    existing = tmp_path / dlg.preview.full_text()
    existing.unlink()
    dlg.size_label.setText("TINY")  # a second note: the name would read back differently
    existing = tmp_path / dlg.preview.full_text()
    dlg.show()
    dlg.update_preview()
    qtbot.waitUntil(lambda: "Already exists" not in dlg.name_note.text(), timeout=JOB_TIMEOUT)
    from PySide6.QtWidgets import QApplication

    QApplication.processEvents()  # the posted layout requests (no timer involved)
    dlg.resize(dlg.width(), dlg.minimumSizeHint().height())
    QApplication.processEvents()
    existing.write_bytes(b"x")
    dlg.update_preview()
    qtbot.waitUntil(lambda: "Already exists" in dlg.name_note.text(), timeout=JOB_TIMEOUT)
    note = dlg.name_note
    qtbot.waitUntil(lambda: note.isVisible() and note.height() >= note.heightForWidth(note.width()) - 2, timeout=5000)


def test_browse_sets_the_output_folder(qtbot, win, load, llama_folder, tmp_path, monkeypatch):
    from PySide6.QtWidgets import QPushButton

    folder, _ = llama_folder
    load(win, folder)
    picked = []
    monkeypatch.setattr("ui.dialogs.job_dialog.QFileDialog.getExistingDirectory",
                        lambda parent, title, start: picked.append(start) or str(tmp_path / "chosen"))
    for dlg in (open_convert(qtbot, win), win.conversion.merge_dialog()):
        before = dlg.out_dir.text()
        browse = next(b for b in dlg.findChildren(QPushButton) if b.text() == "&Browse…"
                      and b.parent() is dlg.out_dir.parent())
        browse.click()
        assert picked[-1] == before and dlg.out_dir.text() == str(tmp_path / "chosen")
        dlg.reject()


def test_lora_dialog_checks_the_pair_before_merge_is_enabled(qtbot, llama_folder, adapter_folder, tmp_path):
    from builders import write_safetensors

    base, _ = llama_folder
    adapter, tensors = adapter_folder
    settings = QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat)
    dlg = LoraDialog(workbench.open_model(adapter), settings, MERGE)
    qtbot.addWidget(dlg)
    dlg.out_dir.setText(str(tmp_path / "out"))
    with qtbot.waitSignal(dlg.inputs_read, timeout=JOB_TIMEOUT):
        dlg.set_paths(base=base, adapter=adapter)
    assert "4 LoRA modules match the base" in dlg.summary.text() and dlg.ok.isEnabled()  # positive control
    bad = tmp_path / "bad-adapter"  # trained on another shape: lora_B gives 48 rows where q_proj has 64
    shutil.copytree(adapter, bad)
    wrong = dict(tensors)
    name = "base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"
    wrong[name] = np.ones((48, 4), np.float32)
    write_safetensors(bad / "adapter_model.safetensors", {k: ("F32", v) for k, v in wrong.items()})
    with qtbot.waitSignal(dlg.inputs_read, timeout=JOB_TIMEOUT):
        dlg.set_paths(adapter=bad)
    msg = dlg.message.text()
    assert not dlg.ok.isEnabled() and "do not match" in msg and "layers.1.self_attn.q_proj" in msg and "48" in msg
    dlg.reader.shutdown()


def test_lora_dialog_finds_the_base_in_the_hugging_face_cache(qtbot, adapter_folder, tmp_path, monkeypatch):
    adapter, _ = adapter_folder
    hub = tmp_path / "hub"
    snap = hub / "models--org--tiny-llama" / "snapshots" / "abc123"
    build_hf_folder(snap)
    (hub / "models--org--tiny-llama" / "refs").mkdir()
    (hub / "models--org--tiny-llama" / "refs" / "main").write_text("abc123")
    named = tmp_path / "named-adapter"
    shutil.copytree(adapter, named)
    cfg = json.loads((named / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "org/tiny-llama"
    (named / "adapter_config.json").write_text(json.dumps(cfg))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    settings = QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat)
    dlg = LoraDialog(workbench.open_model(named), settings, MERGE)
    qtbot.addWidget(dlg)
    qtbot.waitUntil(lambda: dlg.inputs is not None, timeout=JOB_TIMEOUT)
    assert dlg.base.text() == str(snap) and "match the base" in dlg.summary.text()
    dlg.reader.shutdown()
