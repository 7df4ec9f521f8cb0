"""Tools ▸ Merge LoRA… and Tools ▸ LoRA to GGUF…: a PEFT adapter merged into its base model, or
written as a GGUF LoRA for llama.cpp's ``--lora``.

Base and adapter default to the opened model (the adapter when a PEFT adapter is open, else the base).
Both are opened on a worker (headers only) whenever a path changes, and the dialog shows the adapter
summary (rank, alpha, scale, targets, LoRA pairs) and its warnings (config keys the merge ignores).
OK builds a :class:`~ui.dialogs.job_dialog.JobRequest` run in a job window.
"""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path

from PySide6.QtCore import QSettings, Qt, Signal
from PySide6.QtWidgets import (QButtonGroup, QCheckBox, QComboBox, QDialog, QDialogButtonBox, QFileDialog,
                               QFormLayout, QGridLayout, QGroupBox, QHBoxLayout, QLabel, QLineEdit,
                               QPushButton, QRadioButton, QSizePolicy, QVBoxLayout, QWidget)

from workbench import Model, WorkbenchError, open_model
from workbench.naming import name_for_model
from workbench.plan import PRESETS

from .convert_dialog import (BAD_CHARS, DTYPE_LABELS, ERROR_STYLE, HF_DTYPES, SETTINGS_DIR, WARN_STYLE, _esc,
                             hf_nbytes, module_available)
from .job_dialog import ExistingCheck, JobRequest, hand_over, output_folder_row
from ..widgets.leftovers import LeftoverNote
from ..worker import Worker

MERGE, TO_GGUF = "merge", "gguf-lora"
LORA_OUTTYPES = ("F16", "BF16", "F32", "Q8_0")
SUMMARY_KEYS = ("r", "lora_alpha", "scale", "use_rslora", "target_modules", "modules_to_save", "LoRA pairs",
                "base_model_name_or_path", "task_type")


def merge_to_gguf_available() -> bool:
    """``merge_lora(..., to="gguf")`` exists in this version of the core."""
    from workbench.convert import merge_lora

    return "to" in inspect.signature(merge_lora).parameters


def lora_gguf_available() -> bool:
    return module_available("workbench.convert.lora_gguf")


@dataclass
class Inputs:
    """What the worker found at the two paths."""

    base: Model | None = None
    adapter: Model | None = None
    summary: list[tuple[str, str]] = field(default_factory=list)  # (key, value text) of the adapter
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    match: str = ""  # "12 LoRA modules match the base" when the pair was checked and fits
    found_base: str = ""  # the base found from the adapter's base_model_name_or_path (no base path given)


def _buddy(text: str, buddy: QWidget, parent: QWidget) -> QLabel:
    label = QLabel(text, parent)
    label.setBuddy(buddy)
    return label


def _value_text(v) -> str:
    if isinstance(v, (list, tuple)):
        return ", ".join(str(x) for x in v)
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def read_inputs(base_path: str, adapter_path: str) -> Inputs:
    """Background: open both (headers only) and check they are what the dialog needs."""
    out = Inputs()
    if adapter_path:
        try:
            adapter = open_model(adapter_path)
        except WorkbenchError as exc:
            out.errors.append(f"Adapter: {exc}")
        else:
            if adapter.format != "peft":
                out.errors.append(f"Adapter: {adapter_path} is a {adapter.format} model, not a PEFT adapter folder "
                                  "(adapter_config.json + adapter_model.safetensors).")
            else:
                out.adapter = adapter
                entries = {e.key: e for e in adapter.metadata.get("adapter", [])}
                out.summary = [(k, _value_text(entries[k].value)) for k in SUMMARY_KEYS if k in entries]
                out.warnings += adapter.warnings
    if not base_path and out.adapter is not None:
        base_path = out.found_base = _find_base(out.adapter)
    if base_path:
        try:
            base = open_model(base_path)
        except WorkbenchError as exc:
            out.errors.append(f"Base model: {exc}")
        else:
            if base.format in ("peft", "gguf"):
                out.errors.append(f"Base model: {base_path} is a {base.format} model; choose the Hugging Face "
                                  "folder (safetensors or .bin) the adapter was trained on.")
            else:
                out.base = base
    if out.base is not None and out.adapter is not None:
        from workbench.convert.lora import check_merge

        try:
            out.match = check_merge(out.base, out.adapter)
        except WorkbenchError as exc:
            out.errors.append(f"Base and adapter do not match: {exc.message}")
    return out


def _find_base(adapter: Model) -> str:
    """The adapter's ``base_model_name_or_path``: a local folder, or that repository in the Hugging Face cache."""
    from workbench.hfcache import find_cached_folder

    entries = {e.key: e.value for e in adapter.metadata.get("adapter", [])}
    name = entries.get("base_model_name_or_path")
    if not isinstance(name, str) or not name.strip():
        return ""
    local = Path(os.path.expanduser(name.strip()))
    if not local.is_absolute():
        local = adapter.path / local
    if local.is_dir():
        return str(local)
    found = find_cached_folder(name.strip())
    return str(found) if found is not None else ""


class LoraDialog(QDialog):
    """``mode`` MERGE (adapter merged into the base: HF folder or GGUF) or TO_GGUF (the adapter as a GGUF LoRA).
    ``request_ready(JobRequest)`` after OK; ``inputs_read(Inputs)`` when the worker has looked at the paths."""

    request_ready = Signal(object)
    inputs_read = Signal(object)

    def __init__(self, model: Model | None, settings: QSettings, mode: str = MERGE, parent: QWidget | None = None):
        super().__init__(parent)
        self.mode = mode
        self.settings = settings
        self.inputs: Inputs | None = None
        self.setWindowTitle("Merge LoRA Adapter" if mode == MERGE else "LoRA Adapter to GGUF")
        self.reader = Worker(self, name="lora-inputs")
        self.exists = ExistingCheck(self)
        self.reader.result.connect(self._on_inputs)
        self.reader.error.connect(lambda msg: self._on_inputs(Inputs(errors=[msg])))

        intro = QLabel("Merge a PEFT LoRA adapter into its base model: every target weight becomes "
                       "W + scale·(B·A)." if mode == MERGE else
                       "Write a PEFT LoRA adapter as a GGUF LoRA for llama.cpp (<code>--lora</code>). The base "
                       "model supplies the architecture and tensor names.", self)
        intro.setWordWrap(True)
        is_adapter = model is not None and model.format == "peft"
        self.base = QLineEdit(str(model.path) if model is not None and not is_adapter
                              and model.format != "gguf" else "", self)
        self.base.setToolTip("The Hugging Face model folder (or weights file) the adapter was trained on")
        self.base.setPlaceholderText("base model folder")
        self.adapter = QLineEdit(str(model.path) if is_adapter else "", self)
        self.adapter.setToolTip("The PEFT adapter folder: adapter_config.json + adapter_model.safetensors")
        self.adapter.setPlaceholderText("adapter folder")
        base_row = self._path_row(self.base, "Choose the base model folder", "Choose a base weights file")
        adapter_row = self._path_row(self.adapter, "Choose the adapter folder", None)

        self.summary = QLabel("", self)
        self.summary.setWordWrap(True)
        self.summary.setTextFormat(Qt.TextFormat.RichText)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.summary.setToolTip("Read from adapter_config.json and the adapter's tensors")
        self.notes = QLabel("", self)
        self.notes.setWordWrap(True)
        self.notes.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.adapter_box = QGroupBox("Adapter", self)
        ab = QVBoxLayout(self.adapter_box)
        ab.addWidget(self.summary)
        ab.addWidget(self.notes)

        # the result's form
        self.target_box = QGroupBox("Result", self)
        grid = QGridLayout(self.target_box)
        self.to_hf = QRadioButton("Hugging Face folder (safetensors), type:", self.target_box)
        self.to_hf.setToolTip("The merged model as safetensors shards with config and tokenizer files")
        self.dtype = QComboBox(self.target_box)
        self.dtype.setToolTip("Type of every float tensor of the merged model")
        for d in HF_DTYPES:
            self.dtype.addItem(DTYPE_LABELS[d], d)
        self.to_gguf = QRadioButton("GGUF, preset:", self.target_box)
        self.preset = QComboBox(self.target_box)
        self.preset.addItems(list(PRESETS))
        self.preset.setCurrentText("Q8_0")
        self.preset.setToolTip("The quantization preset of the merged GGUF")
        self.outtype = QComboBox(self.target_box)
        self.outtype.addItems(list(LORA_OUTTYPES))
        self.outtype.setToolTip("Type of the LoRA A/B tensors in the GGUF (llama.cpp's convert_lora_to_gguf "
                                "--outtype)")
        group = QButtonGroup(self)
        group.addButton(self.to_hf)
        group.addButton(self.to_gguf)
        if mode == MERGE:
            grid.addWidget(self.to_hf, 0, 0)
            grid.addWidget(self.dtype, 0, 1)
            grid.addWidget(self.to_gguf, 1, 0)
            grid.addWidget(self.preset, 1, 1)
            self.to_hf.setChecked(True)
            if not merge_to_gguf_available():
                self.to_gguf.setEnabled(False)
                self.to_gguf.setToolTip("Merging straight to GGUF is not available in this version: merge to a "
                                        "folder, open it and use File ▸ Convert")
            else:
                self.to_gguf.setToolTip("The merged model quantized into one GGUF file")
            self.outtype.hide()
        else:
            grid.addWidget(QLabel("Tensor type:", self.target_box), 0, 0)
            grid.addWidget(self.outtype, 0, 1)
            for w in (self.to_hf, self.dtype, self.to_gguf, self.preset):
                w.hide()
        grid.setColumnStretch(1, 1)

        self.out_dir, out_row = output_folder_row(self, str(settings.value(SETTINGS_DIR, "") or self._default_dir(model)),
                                                  "Folder the result is written to (created if it does not exist)")
        self.out_name = QLineEdit(self)
        self.out_name.setToolTip("The folder (Hugging Face) or file (GGUF) written inside the output folder")
        self.overwrite = QCheckBox("&Replace existing files", self)
        self.overwrite.setToolTip("Unchecked: an existing output is never touched")
        self.message = QLabel("", self)
        self.message.setWordWrap(True)
        self.message.setStyleSheet(ERROR_STYLE)

        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.ExpandingFieldsGrow)
        form.addRow(_buddy("&Base model:", self.base, self), base_row)
        form.addRow(_buddy("&Adapter:", self.adapter, self), adapter_row)
        out_form = QFormLayout()
        out_form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.ExpandingFieldsGrow)
        out_form.addRow(_buddy("&Folder:", self.out_dir, self), out_row)
        out_form.addRow("&Name:", self.out_name)
        out_form.addRow("", self.overwrite)
        self.leftovers = LeftoverNote(self)  # partial files of killed runs in the folder, with a Remove button
        self.leftovers.scanned.connect(lambda _found: self.height() < self.sizeHint().height()
                                       and self.resize(self.width(), self.sizeHint().height()))
        out_form.addRow(self.leftovers)
        out_box = QGroupBox("Output", self)
        out_box.setLayout(out_form)
        self.box = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel, self)
        self.ok = self.box.button(QDialogButtonBox.StandardButton.Ok)
        self.ok.setText("&Merge" if mode == MERGE else "&Convert")
        self.box.accepted.connect(self.run)
        self.box.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addWidget(intro)
        lay.addLayout(form)
        lay.addWidget(self.adapter_box)
        lay.addWidget(self.target_box)
        lay.addWidget(out_box)
        lay.addWidget(self.message)
        lay.addStretch(1)
        lay.addWidget(self.box)

        self.base.editingFinished.connect(self.read_inputs)
        self.adapter.editingFinished.connect(self.read_inputs)
        for sig in (self.to_hf.toggled, self.dtype.currentIndexChanged, self.preset.currentIndexChanged,
                    self.outtype.currentIndexChanged):
            sig.connect(lambda *_a: self._update_name())
        for w in (self.out_dir, self.out_name):
            w.textChanged.connect(lambda _t: self.validate())
        self.out_dir.textChanged.connect(lambda _t: self.leftovers.check(self.output_dir()))
        self.leftovers.check(self.output_dir())
        self.read_inputs()
        self.resize(640, self.sizeHint().height())

    # -- construction -------------------------------------------------------------------------------
    def _path_row(self, edit: QLineEdit, folder_title: str, file_title: str | None) -> QHBoxLayout:
        row = QHBoxLayout()
        row.addWidget(edit, 1)
        folder = QPushButton("Folder…", self)
        folder.setToolTip(folder_title)
        folder.clicked.connect(lambda: self._pick(edit, folder_title, folder=True))
        row.addWidget(folder)
        if file_title is not None:
            file = QPushButton("File…", self)
            file.setToolTip(file_title)
            file.clicked.connect(lambda: self._pick(edit, file_title, folder=False))
            row.addWidget(file)
        return row

    @staticmethod
    def _default_dir(model: Model | None) -> str:
        return str(Path(model.path).parent) if model is not None else str(Path.home())

    def _pick(self, edit: QLineEdit, title: str, folder: bool) -> None:
        start = edit.text() or self.out_dir.text()
        if folder:
            path = QFileDialog.getExistingDirectory(self, title, start)
        else:
            path, _ = QFileDialog.getOpenFileName(self, title, start, "Weights (*.safetensors *.bin *.json);;All (*)")
        if path:
            edit.setText(path)
            self.read_inputs()

    # -- inputs ---------------------------------------------------------------------------------------
    def set_paths(self, base: str | os.PathLike | None = None, adapter: str | os.PathLike | None = None) -> int:
        if base is not None:
            self.base.setText(os.fspath(base))
        if adapter is not None:
            self.adapter.setText(os.fspath(adapter))
        return self.read_inputs()

    def read_inputs(self) -> int:
        self.inputs = None
        self.ok.setEnabled(False)
        base = self.base.text().strip()
        return self.reader.start(read_inputs, base, self.adapter.text().strip())

    def _on_inputs(self, inputs: Inputs) -> None:
        self.inputs = inputs
        if inputs.found_base and not self.base.text().strip():
            self.base.blockSignals(True)  # already read with this base: no second read
            self.base.setText(inputs.found_base)
            self.base.blockSignals(False)
            self.base.setToolTip(f"Found from the adapter's base_model_name_or_path: {inputs.found_base}")
        summary = list(inputs.summary) + ([("base match", "✓ " + inputs.match)] if inputs.match else [])
        if summary:
            rows = "".join(f"<tr><td style='padding-right:10px'>{_esc(k)}</td><td>{_esc(v)}</td></tr>"
                           for k, v in summary)
            self.summary.setText(f"<table>{rows}</table>")
        else:
            self.summary.setText("")
        self.notes.setText("\n".join(f"⚠ {w}" for w in inputs.warnings))
        self.notes.setStyleSheet(WARN_STYLE)
        self.notes.setVisible(bool(inputs.warnings))
        self.adapter_box.setVisible(bool(inputs.summary or inputs.warnings))
        self._update_name()
        if self.height() < self.sizeHint().height():
            self.resize(self.width(), self.sizeHint().height())
        self.inputs_read.emit(inputs)

    def _update_name(self) -> None:
        """The default output name, until the user types their own."""
        if not self.out_name.isModified():
            self.out_name.setText(self.default_name())
        self.validate()

    def default_name(self) -> str:
        adapter = Path(self.adapter.text().strip() or "adapter").name
        base = Path(self.base.text().strip() or "base").name
        if self.mode == TO_GGUF:
            return name_for_model({"general.name": adapter}, self.outtype.currentText(), kind="LoRA").filename()
        if self.to_gguf.isChecked():
            return name_for_model({"general.name": f"{base}-{adapter}"}, self.preset.currentText()).filename()
        d = self.dtype.currentData()
        return f"{base}-{adapter}" + ("" if d == "keep" else f"-{d}")

    def output_dir(self) -> Path | None:
        text = self.out_dir.text().strip()
        return Path(os.path.expanduser(text)) if text else None

    def output_path(self) -> Path:
        return Path(os.path.expanduser(self.out_dir.text().strip())) / self.out_name.text().strip()

    def problems(self) -> list[str]:
        errors = []
        if self.inputs is not None:
            errors += self.inputs.errors
            if self.inputs.adapter is None and not any(e.startswith("Adapter") for e in errors):
                errors.append("Choose the adapter folder.")
            if self.inputs.base is None and not any(e.startswith("Base") for e in errors):
                errors.append("Choose the base model the adapter was trained on.")
        if self.mode == TO_GGUF and not lora_gguf_available():
            errors.append("Writing GGUF LoRA adapters is not available in this version.")
        if not self.out_dir.text().strip():
            errors.append("Choose an output folder.")
        name = self.out_name.text().strip()
        if not name:
            errors.append("The output name is empty.")
        elif BAD_CHARS.search(name):
            errors.append("The output name contains a character file names cannot hold (/ \\ : * ? \" < > |).")
        return errors

    def validate(self) -> bool:
        errors = self.problems()
        self.message.setText("\n".join(errors))
        self.message.setVisible(bool(errors))
        ok = self.inputs is not None and not errors
        self.ok.setEnabled(ok)
        return ok

    def gguf_output(self) -> bool:
        return self.mode == TO_GGUF or self.to_gguf.isChecked()

    def existing_key(self) -> tuple:
        return (self.gguf_output(), self.output_path())

    def existing_probe(self):
        """A function of plain values (run on a worker) listing the outputs that already exist."""
        out = self.output_path()
        gguf = self.gguf_output()
        if gguf and not out.name.lower().endswith(".gguf"):
            out = out.with_name(out.name + ".gguf")

        def probe() -> list[Path]:
            if not gguf and out.is_dir():
                return sorted(out.glob("model*.safetensors*")) + [p for p in (out / "config.json",) if p.exists()]
            return [out] if out.exists() else []
        return probe

    def existing_outputs(self) -> list[Path]:
        """The outputs that exist now, checked on the calling thread (for scripts and tests)."""
        return self.existing_probe()()

    # -- running ------------------------------------------------------------------------------------
    def run(self) -> None:
        if self.validate():
            hand_over(self, SETTINGS_DIR)

    def request(self) -> JobRequest:
        assert self.inputs is not None and self.inputs.base is not None and self.inputs.adapter is not None
        base, adapter = self.inputs.base.path, self.inputs.adapter.path
        out = self.output_path()
        overwrite = self.overwrite.isChecked()
        what = f"{adapter.name} + {base.name} → {out}"
        if self.mode == TO_GGUF:
            from workbench.convert.lora_gguf import lora_to_gguf

            if not out.name.lower().endswith(".gguf"):
                out = out.with_name(out.name + ".gguf")
            return JobRequest("LoRA to GGUF", f"{adapter.name} → {out}", lora_to_gguf, (adapter, out),
                              dict(base=base, outtype=self.outtype.currentText(), overwrite=overwrite),
                              done_title="Conversion finished")
        from workbench.convert import merge_lora

        if self.to_gguf.isChecked():
            if not out.name.lower().endswith(".gguf"):
                out = out.with_name(out.name + ".gguf")
            return JobRequest("Merge LoRA to GGUF", what, merge_lora, (base, adapter, out),
                              dict(to="gguf", plan_or_preset=self.preset.currentText(), overwrite=overwrite),
                              done_title="Merge finished")
        dtype = self.dtype.currentData()
        segments = hf_nbytes(self.inputs.base, dtype)  # tensor infos only: no I/O
        return JobRequest("Merge LoRA", what, merge_lora, (base, adapter, out),
                          dict(dtype=None if dtype == "keep" else dtype, overwrite=overwrite),
                          segments=segments, total_bytes=sum(s.nbytes for s in segments) if segments else None,
                          open_folder=True, done_title="Merge finished")

    def done(self, r: int) -> None:  # noqa: D401 - Qt override
        self.reader.cancel()
        self.leftovers.worker.cancel()
        super().done(r)
