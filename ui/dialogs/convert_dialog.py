"""File ▸ Convert… / Export…: write the opened model as GGUF or as a Hugging Face folder.

The dialog chooses the target (GGUF from an HF folder or from a GGUF; HF safetensors or PyTorch
``.bin`` from anything), the tensor types (the window's current plan or a preset; a float type for
HF), the output folder (remembered), the file name from the GGUF naming convention with editable
parts, the split size and whether existing files may be replaced.  Whatever needs file I/O or a
resolved plan (``prepare_hf_to_gguf`` reads config, model card and headers) runs on a worker; the
dialog shows the exact output size and default name when it arrives.  OK builds a
:class:`~ui.dialogs.job_dialog.JobRequest`; the caller runs it in a job window.
"""
from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QSettings, Signal
from PySide6.QtWidgets import (QButtonGroup, QCheckBox, QComboBox, QDialog, QDialogButtonBox, QFormLayout,
                               QGridLayout, QGroupBox, QHBoxLayout, QLabel, QLineEdit, QRadioButton, QSizePolicy,
                               QStackedWidget, QVBoxLayout, QWidget)

from workbench import Model, WorkbenchError, dtypes
from workbench.naming import GGUFName, name_for_model, parse_gguf_name
from workbench.plan import PRESETS, Plan

from ..widgets.elided_label import ElidedLabel
from ..formatting import human_bytes
from .job_dialog import ExistingCheck, JobRequest, Segment, hand_over, output_folder_row
from ..widgets.leftovers import LeftoverNote
from ..worker import Worker

GGUF, SAFETENSORS, BIN = "gguf", "safetensors", "bin"
TARGET_LABELS = {GGUF: "GGUF (llama.cpp)", SAFETENSORS: "Hugging Face folder: safetensors",
                 BIN: "Hugging Face folder: PyTorch .bin"}
HF_DTYPES = ("F16", "BF16", "F32", "keep")
DTYPE_LABELS = {"F16": "F16", "BF16": "BF16", "F32": "F32", "keep": "Keep each tensor's type"}
DEFAULT_SHARD = "5G"  # save_pretrained's default
BAD_CHARS = re.compile(r'[<>:"/\\|?*\x00-\x1f]')
SETTINGS_DIR = "convert/output_dir"
ERROR_STYLE = "color: #b00020;"
WARN_STYLE = "color: #b35900;"


def module_available(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def requantize_available() -> bool:
    """GGUF -> GGUF needs ``workbench.convert.requantize``."""
    return module_available("workbench.convert.requantize")


def gguf_metadata(model: Model) -> dict:
    return {e.key: e.value for e in model.metadata.get("GGUF", [])}


def encoding_of(preset: str) -> str:
    """The file name's encoding part of a preset (MOSTLY_Q4_K_M -> Q4_K_M, ALL_F32 -> F32), as the converter."""
    return PRESETS[preset][0].name.partition("_")[2]


def hf_nbytes(model: Model, dtype: str) -> list[Segment]:
    """Per tensor, the bytes an HF export writes: float and quantized tensors in ``dtype`` (quantized ones
    in F32 with "keep"), integer tensors as they are."""
    out = []
    for t in model.tensors:
        if dtypes.is_quantized(t.dtype):
            d = "F32" if dtype == "keep" else dtype
        elif t.dtype in ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"):
            d = (("F32" if t.dtype.startswith("F8") else t.dtype) if dtype == "keep" else dtype)
        else:
            d = t.dtype
        n = t.n_params * dtypes.PLAIN_DTYPES[d].itemsize
        out.append(Segment(t.name, n, n))
    return out


@dataclass
class Prepared:
    """What the worker worked out for the current choices."""

    target: str
    nbytes: int
    n_params: int
    default_name: GGUFName | None  # GGUF targets
    default_folder: str | None  # HF targets
    segments: list[Segment] | None
    job: object | None = None  # HfToGguf (HF -> GGUF) or Plan (GGUF -> GGUF)
    encoding: str | None = None  # the GGUF file name's encoding part


def prepare(model: Model, target: str, plan_or_preset, dtype: str) -> Prepared:
    """Background: resolve the plan, read what the converter reads, size the output."""
    if target == GGUF:
        plan = plan_or_preset if isinstance(plan_or_preset, Plan) else Plan(model, plan_or_preset)
        plan.entries  # noqa: B018 - resolve on this thread
        if model.format == "gguf":
            from workbench.convert.requantize import plan_file_type

            encoding = plan_file_type(plan).name.partition("_")[2]  # as the requantizer names the file
            name = name_for_model(gguf_metadata(model), encoding, plan.n_params)
            # the requantizer counts progress in values, tensor by tensor in file order (as the plan's entries)
            segments = [Segment(e.name, e.n_params, e.nbytes) for e in plan.entries]
            return Prepared(target, plan.nbytes, plan.n_params, name, None, segments, plan, encoding)
        from workbench.convert import prepare_hf_to_gguf

        conv = prepare_hf_to_gguf(None, plan)
        segments = [Segment(t.name, t.n_params, t.nbytes) for t in conv.tensors]
        return Prepared(target, conv.nbytes, conv.n_params, conv.output_name(), None, segments, conv, conv.encoding)
    segments = hf_nbytes(model, dtype)
    suffix = "hf" if dtype == "keep" else dtype
    if model.format == "gguf":
        folder = name_for_model(gguf_metadata(model), suffix, model.n_params).filename()[:-len(".gguf")]
    else:
        folder = f"{model.name}-{suffix}"
    return Prepared(target, sum(s.nbytes for s in segments), model.n_params, None, folder, segments)


def parse_size_text(text: str) -> int:
    """``2G``, ``500M``, ``1.5G``, ``4096`` -> bytes; empty -> 0."""
    from workbench.cli import parse_size

    text = text.strip()
    if not text:
        return 0
    n = parse_size(text)
    if n <= 0:
        raise WorkbenchError(f"{text!r} is not a positive size")
    return n


class ConvertDialog(QDialog):
    """``request_ready(JobRequest)`` after Convert (validated, no conflicting output unless allowed);
    ``prepared(object)`` whenever the background preparation delivers (tests wait on it)."""

    request_ready = Signal(object)
    prepared = Signal(object)

    def __init__(self, model: Model, plan: Plan | None, settings: QSettings, *,
                 preset_sizes: dict[str, tuple[int, float]] | None = None, target: str | None = None,
                 parent: QWidget | None = None):
        super().__init__(parent)
        self.model = model
        self.plan = plan
        self.settings = settings
        self.preset_sizes = preset_sizes or {}
        self.current: Prepared | None = None
        self.prep_error: str | None = None
        self.setWindowTitle("Convert Model")
        self.prep = Worker(self, name="convert-prepare")
        self.prep.result.connect(self._on_prepared)
        self.prep.error.connect(self._on_prep_error)
        self.exists = ExistingCheck(self)
        self.exists.done.connect(lambda _found: self._show_notes())
        self._warnings: list[str] = []
        self._errors = False

        # source and target
        source = QLabel(f"<b>{_esc(model.name)}</b> &nbsp;({model.format}, {len(model.tensors)} tensors, "
                        f"{human_bytes(model.nbytes)})", self)
        source.setToolTip(str(model.path))
        self.target = QComboBox(self)
        self.target.setToolTip("What to write: a GGUF file for llama.cpp, or a Hugging Face folder "
                               "(safetensors or a legacy PyTorch .bin)")
        for key in (GGUF, SAFETENSORS, BIN):
            self.target.addItem(TARGET_LABELS[key], key)
        self._restrict_targets()

        # GGUF types: plan or preset
        self.types_box = QGroupBox("Tensor types", self)
        self.use_plan = QRadioButton(self._plan_text(), self.types_box)
        self.use_plan.setToolTip("Every tensor gets the type of the window's plan (preset, rules and overrides)")
        self.use_preset = QRadioButton("Preset:", self.types_box)
        self.use_preset.setToolTip("A llama-quantize recipe, without the plan's rules and overrides")
        group = QButtonGroup(self)
        group.addButton(self.use_plan)
        group.addButton(self.use_preset)
        self.preset = QComboBox(self.types_box)
        self.preset.setToolTip("The preset and the size it gives this model")
        for p in PRESETS:
            size = self.preset_sizes.get(p)
            self.preset.addItem(f"{p}   ({human_bytes(size[0])}, {size[1]:.2f} bpw)" if size else p, p)
        self.preset.setCurrentIndex(max(0, self.preset.findData(plan.preset if plan else "Q8_0")))
        types_lay = QGridLayout(self.types_box)
        types_lay.addWidget(self.use_plan, 0, 0, 1, 2)
        types_lay.addWidget(self.use_preset, 1, 0)
        types_lay.addWidget(self.preset, 1, 1)
        types_lay.setColumnStretch(1, 1)
        self.use_plan.setEnabled(plan is not None)
        (self.use_plan if plan is not None else self.use_preset).setChecked(True)

        # HF dtype
        self.dtype_box = QGroupBox("Data type", self)
        self.dtype = QComboBox(self.dtype_box)
        self.dtype.setToolTip("Type of every floating-point tensor (quantized tensors are dequantized; "
                              "integer tensors are kept)")
        for d in HF_DTYPES:
            self.dtype.addItem(DTYPE_LABELS[d], d)
        dl = QHBoxLayout(self.dtype_box)
        dl.addWidget(self.dtype, 1)

        # output
        out_box = QGroupBox("Output", self)
        self.out_dir, dir_row = output_folder_row(out_box, self._initial_dir(),
                                                  "Folder the output is written to (created if it does not exist)")
        self.name_stack = QStackedWidget(out_box)
        gguf_page = QWidget(self.name_stack)
        self.basename = self._part("Base name, e.g. SmolLM2 or Mistral", gguf_page)
        self.size_label = self._part("Size label: parameters, e.g. 135M, 7B or 8x7B", gguf_page)
        self.finetune = self._part("Fine-tune, e.g. Instruct or Chat (optional)", gguf_page)
        self.version = self._part("Version, e.g. v1.0 (optional)", gguf_page)
        self.basename.setPlaceholderText("base name")
        self.size_label.setPlaceholderText("size")
        self.finetune.setPlaceholderText("fine-tune")
        self.version.setPlaceholderText("version")
        parts = QHBoxLayout(gguf_page)
        parts.setContentsMargins(0, 0, 0, 0)
        parts.addWidget(self.basename, 3)
        for w in (self.size_label, self.finetune, self.version):
            parts.addWidget(w, 1)
        hf_page = QWidget(self.name_stack)
        self.folder_name = self._part("Name of the folder written inside the output folder", hf_page)
        self.folder_name.setPlaceholderText("folder name")
        hl = QHBoxLayout(hf_page)
        hl.setContentsMargins(0, 0, 0, 0)
        hl.addWidget(self.folder_name)
        self.name_stack.addWidget(gguf_page)
        self.name_stack.addWidget(hf_page)
        self.preview = ElidedLabel("", out_box)
        bold = self.preview.font()
        bold.setBold(True)
        self.preview.setFont(bold)
        self.preview.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.name_note = QLabel("", out_box)
        self.name_note.setWordWrap(True)
        self.name_note.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.split = QLineEdit(out_box)
        self.split.setClearButtonEnabled(True)
        self.split_label = QLabel("Split at:", out_box)
        self.overwrite = QCheckBox("&Replace existing files", out_box)
        self.overwrite.setToolTip("Unchecked: an existing output is never touched (you are told before anything "
                                  "starts). Checked: it is replaced when the new output is complete.")
        form = QFormLayout(out_box)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.ExpandingFieldsGrow)
        folder_label = QLabel("&Folder:", out_box)
        folder_label.setBuddy(self.out_dir)
        form.addRow(folder_label, dir_row)
        self.name_label = QLabel("&Name:", out_box)
        self.name_label.setBuddy(self.basename)
        form.addRow(self.name_label, self.name_stack)
        form.addRow("Writes:", self.preview)
        form.addRow(self.name_note)
        self.out_form = form
        form.addRow(self.split_label, self.split)
        form.addRow("", self.overwrite)
        self.leftovers = LeftoverNote(out_box)  # partial files of killed runs in the folder, with a Remove button
        self.leftovers.scanned.connect(lambda _found: self._fit_height())
        form.addRow(self.leftovers)

        self.size_info = QLabel("", self)
        self.size_info.setToolTip("The size of the tensor data written (metadata adds a little)")
        self.message = QLabel("", self)
        self.message.setWordWrap(True)
        self.message.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.box = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel, self)
        self.ok = self.box.button(QDialogButtonBox.StandardButton.Ok)
        self.ok.setText("&Convert")
        self.box.accepted.connect(self.convert)
        self.box.rejected.connect(self.reject)

        top = QFormLayout()
        top.addRow("Source:", source)
        top.addRow("&Target:", self.target)
        lay = QVBoxLayout(self)
        lay.addLayout(top)
        lay.addWidget(self.types_box)
        lay.addWidget(self.dtype_box)
        lay.addWidget(out_box)
        lay.addWidget(self.size_info)
        lay.addWidget(self.message)
        lay.addStretch(1)
        lay.addWidget(self.box)

        self.set_target(target or GGUF)
        if not self.target.model().item(self.target.currentIndex()).isEnabled():
            self.set_target(SAFETENSORS)  # GGUF is not possible for this model
        self.target.currentIndexChanged.connect(lambda _i: self._choices_changed())
        self.use_plan.toggled.connect(lambda _on: self._choices_changed())
        self.preset.currentIndexChanged.connect(lambda _i: self._choices_changed())
        self.dtype.currentIndexChanged.connect(lambda _i: self._choices_changed())
        for w in (self.out_dir, self.basename, self.size_label, self.finetune, self.version, self.folder_name,
                  self.split):
            w.textChanged.connect(lambda _t: self.update_preview())
        self.overwrite.toggled.connect(lambda _on: self.update_preview())
        self.out_dir.textChanged.connect(lambda _t: self.leftovers.check(self.out_dir.text().strip()
                                                                         and self.output_dir()))
        self.leftovers.check(self.out_dir.text().strip() and self.output_dir())
        self._choices_changed()
        self.resize(640, self.sizeHint().height())

    # -- construction helpers ---------------------------------------------------------------------
    def _part(self, tip: str, parent: QWidget) -> QLineEdit:
        e = QLineEdit(parent)
        e.setToolTip(tip)
        return e

    def _plan_text(self) -> str:
        plan = self.plan
        if plan is None:
            return "The current plan (none for this model)"
        extra = []
        if plan.rules:
            extra.append(f"{len(plan.rules)} rule{'s' if len(plan.rules) != 1 else ''}")
        if plan.overrides:
            extra.append(f"{len(plan.overrides)} override{'s' if len(plan.overrides) != 1 else ''}")
        more = f" + {', '.join(extra)}" if extra else ""
        return f"The current plan: {plan.preset}{more}   ({human_bytes(plan.nbytes)}, {plan.bits_per_weight:.2f} bpw)"

    def _restrict_targets(self) -> None:
        items = self.target.model()
        fmt = self.model.format
        gguf = items.item(self.target.findData(GGUF))
        if fmt == "peft":
            gguf.setEnabled(False)
            gguf.setToolTip("An adapter becomes a GGUF LoRA with Tools ▸ LoRA to GGUF")
        elif fmt == "gguf" and not requantize_available():
            gguf.setEnabled(False)
            gguf.setToolTip("GGUF to GGUF requantization is not available in this version")

    def _initial_dir(self) -> str:
        saved = str(self.settings.value(SETTINGS_DIR, "") or "")
        if saved:
            return saved
        p = Path(self.model.path)
        return str(p.parent)

    # -- state --------------------------------------------------------------------------------------
    def target_key(self) -> str:
        return self.target.currentData()

    def set_target(self, key: str) -> None:
        self.target.setCurrentIndex(self.target.findData(key))

    def dtype_key(self) -> str:
        return self.dtype.currentData()

    def plan_choice(self):
        """The window plan (a snapshot) or the chosen preset name."""
        if self.use_plan.isChecked() and self.plan is not None:
            return self.plan.copy()
        return self.preset.currentData()

    def encoding(self) -> str:
        if self.current is not None and self.current.encoding:
            return self.current.encoding
        if self.use_plan.isChecked() and self.plan is not None:
            return encoding_of(self.plan.preset)
        return encoding_of(self.preset.currentData())

    def _choices_changed(self) -> None:
        gguf = self.target_key() == GGUF
        self.types_box.setVisible(gguf)
        self.dtype_box.setVisible(not gguf)
        self.preset.setEnabled(self.use_preset.isChecked())
        self.name_stack.setCurrentIndex(0 if gguf else 1)
        self.name_label.setBuddy(self.basename if gguf else self.folder_name)
        self.split_label.setText("&Split at:" if gguf else "&Shard size:")
        self.split_label.setBuddy(self.split)
        if gguf:
            self.split.setPlaceholderText("one file (or e.g. 2G to split like llama-gguf-split)")
            self.split.setToolTip("Largest part of a split GGUF (2G, 500M…); empty writes one file")
            if self.split.text() == DEFAULT_SHARD:
                self.split.clear()
        else:
            self.split.setPlaceholderText(f"{DEFAULT_SHARD} (save_pretrained's default)")
            self.split.setToolTip("Largest safetensors/.bin shard (e.g. 5G); larger models get an index file")
        self.start_prepare()

    def start_prepare(self) -> int:
        """(Re)compute the output size and default name in the background."""
        self.current = None
        self.prep_error = None
        self.ok.setEnabled(False)
        self.size_info.setText("Estimated size: working it out…")
        return self.prep.start(prepare, self.model, self.target_key(), self.plan_choice(), self.dtype_key())

    def _on_prepared(self, prep: Prepared) -> None:
        self.current = prep
        if prep.default_name is not None:
            n = prep.default_name
            for edit, value in ((self.basename, n.base_name), (self.size_label, n.size_label),
                                (self.finetune, n.finetune), (self.version, n.version)):
                if not edit.isModified():  # the user's own text is kept
                    edit.setText(value or "")
        if prep.default_folder is not None and not self.folder_name.isModified():
            self.folder_name.setText(prep.default_folder)
        bpw = 8.0 * prep.nbytes / prep.n_params if prep.n_params else 0.0
        where = "from the plan" if prep.target == GGUF else f"as {DTYPE_LABELS[self.dtype_key()]}"
        self.size_info.setText(f"Estimated size: <b>{human_bytes(prep.nbytes)}</b> ({prep.nbytes:,} bytes, "
                               f"{bpw:.2f} bits per weight, {where})")
        self.update_preview()
        self.prepared.emit(prep)

    def _on_prep_error(self, message: str) -> None:
        self.prep_error = message
        self.size_info.setText("Estimated size: –")
        self.update_preview()
        self.prepared.emit(None)

    # -- names and validation ---------------------------------------------------------------------
    def gguf_name(self) -> GGUFName:
        def part(e: QLineEdit) -> str | None:
            return e.text().strip() or None

        return GGUFName(self.basename.text().strip(), part(self.size_label), part(self.finetune), part(self.version),
                        self.encoding())

    def split_bytes(self) -> int:
        """The split / shard size in bytes (0: one GGUF file).  Raises WorkbenchError on bad text."""
        if self.target_key() != GGUF and not self.split.text().strip():
            return parse_size_text(DEFAULT_SHARD)
        return parse_size_text(self.split.text())

    def output_dir(self) -> Path:
        return Path(os.path.expanduser(self.out_dir.text().strip()))

    def output_paths(self) -> list[Path]:
        """The main output: the GGUF file (first part when split) or the HF folder's weights file."""
        if self.target_key() == GGUF:
            name = self.gguf_name()
            if self.split_bytes() and self.current is not None and self.current.nbytes > self.split_bytes():
                name = name.with_shard(1, self.estimated_parts())
            return [self.output_dir() / name.filename()]
        return [self.output_dir() / self.folder_name.text().strip()]

    def estimated_parts(self) -> int:
        size = self.split_bytes()
        if not size or self.current is None:
            return 1
        return max(1, -(-self.current.nbytes // size))

    def problems(self) -> tuple[list[str], list[str]]:
        """(errors that block Convert, warnings about the naming convention)."""
        errors: list[str] = []
        warnings: list[str] = []
        if not self.out_dir.text().strip():
            errors.append("Choose an output folder.")
        try:
            self.split_bytes()
        except WorkbenchError as exc:
            errors.append(f"Split size: {exc.message} (examples: 2G, 500M).")
        if self.target_key() == GGUF:
            name = self.gguf_name()
            if not name.base_name:
                errors.append("The base name is empty.")
            for label, edit in (("base name", self.basename), ("size label", self.size_label),
                                ("fine-tune", self.finetune), ("version", self.version)):
                if BAD_CHARS.search(edit.text()):
                    errors.append(f"The {label} contains a character file names cannot hold (/ \\ : * ? \" < > |).")
            if not errors:
                warnings += [f"Naming convention: {p}." for p in name.problems()]
                if name.version and not re.fullmatch(r"v\d+(\.\d+)*", name.version):
                    warnings.append("Naming convention: versions look like v1 or v1.0.")
                back = parse_gguf_name(name.filename())
                differ = [f"{what} “{b}”" if b else f"no {what}"
                          for what, a, b in (("base name", name.base_name, back.base_name),
                                             ("size label", name.size_label, back.size_label),
                                             ("fine-tune", name.finetune, back.finetune),
                                             ("version", name.version, back.version)) if a != b]
                if differ:
                    warnings.append("Tools reading this name back would see " + ", ".join(differ)
                                    + " (size labels need digits, e.g. 135M or 7B).")
        else:
            folder = self.folder_name.text().strip()
            if not folder:
                errors.append("The folder name is empty.")
            elif BAD_CHARS.search(folder):
                errors.append("The folder name contains a character file names cannot hold.")
        if self.prep_error:
            errors.append(self.prep_error)
        return errors, warnings

    def existing_key(self) -> tuple:
        return (self.target_key(), tuple(self.output_paths()), bool(self.split_bytes()))

    def existing_probe(self):
        """A function of plain values (run on a worker) listing the outputs that already exist."""
        paths = self.output_paths()
        if self.target_key() == GGUF:
            folder = self.output_dir()
            stem = self.gguf_name().filename()[:-len(".gguf")] if self.split_bytes() else None

            def probe() -> list[Path]:
                found = [p for p in paths if p.exists()]
                if stem is not None and folder.is_dir():
                    found += sorted(p for p in folder.glob(f"{glob_escape(stem)}-*-of-*.gguf") if p not in found)
                return found
            return probe
        folder = paths[0]
        weights = "model*.safetensors*" if self.target_key() == SAFETENSORS else "pytorch_model*.bin*"
        if self.model.format == "peft":
            weights = "adapter_model*"

        def probe() -> list[Path]:
            if not folder.is_dir():
                return [folder] if folder.exists() else []
            return sorted(folder.glob(weights)) + [p for p in (folder / "config.json",) if p.exists()]
        return probe

    def existing_outputs(self) -> list[Path]:
        """The outputs that exist now, checked on the calling thread (for scripts and tests)."""
        return self.existing_probe()()

    def update_preview(self) -> None:
        errors, warnings = self.problems() if self.out_dir is not None else ([], [])
        try:
            paths = self.output_paths()
        except WorkbenchError:
            paths = []
        if self.target_key() == GGUF:
            text = paths[0].name if paths and self.basename.text().strip() else "–"
            parts = self.estimated_parts() if not any(e.startswith("Split") for e in errors) else 1
            if parts > 1:
                text += f"  (about {parts} parts)"
        else:
            weights = "adapter_model" if self.model.format == "peft" else \
                ("model" if self.target_key() == SAFETENSORS else "pytorch_model")
            ext = "safetensors" if self.target_key() == SAFETENSORS else "bin"
            folder = self.folder_name.text().strip() or "–"
            text = f"{folder}/{weights}.{ext} + config and tokenizer files"
        self.preview.setText(text)
        self.preview.setToolTip(str(paths[0]) if paths else "")
        self._warnings, self._errors = list(warnings), bool(errors)
        if not errors:  # the note on existing files follows when the worker has looked
            self.exists.check(self.existing_key(), self.existing_probe())
        self._show_notes()
        self.message.setText("\n".join(errors))
        self.message.setStyleSheet(ERROR_STYLE)
        self.message.setVisible(bool(errors))
        self.ok.setEnabled(not errors and self.current is not None)

    def _show_notes(self) -> None:
        notes = list(self._warnings)
        existing = self.exists.found if self.exists.known and not self._errors else []
        if existing:
            what = ", ".join(p.name for p in existing[:3]) + (", …" if len(existing) > 3 else "")
            notes.insert(0, f"Already exists: {what}. " + ("It will be replaced." if self.overwrite.isChecked()
                                                          else "Tick “Replace existing files” or change the name."))
        self.name_note.setText("\n".join(notes))
        self.name_note.setStyleSheet(WARN_STYLE)
        self.out_form.setRowVisible(self.name_note, bool(notes))
        self._fit_height()

    def _fit_height(self) -> None:
        """Grow to fit notes that appear while the dialog is shown (never shrink what the user sized)."""
        layout = self.layout()
        if layout is not None:
            layout.activate()
            need = max(self.sizeHint().height(), self.minimumSizeHint().height())
            if self.isVisible() and self.height() < need:
                self.resize(self.width(), need)

    # -- actions ------------------------------------------------------------------------------------
    def convert(self) -> None:
        """Validate, then (once a worker has looked for existing output, refused unless allowed) emit
        ``request_ready``."""
        errors, _warnings = self.problems()
        if errors or self.current is None:
            self.update_preview()
            return
        hand_over(self, SETTINGS_DIR)

    def request(self) -> JobRequest:
        prep = self.current
        assert prep is not None
        overwrite = self.overwrite.isChecked()
        out_dir = self.output_dir()
        if self.target_key() == GGUF:
            name = self.gguf_name()
            split = self.split_bytes()
            if self.model.format == "gguf":
                from workbench.convert.requantize import requantize_gguf

                fn, args = requantize_gguf, (self.model.path, out_dir, prep.job)
            else:
                from workbench.convert import convert_hf_to_gguf

                fn, args = convert_hf_to_gguf, (None, out_dir, prep.job)
            return JobRequest(f"Convert to GGUF {name.encoding}", f"{self.model.name} → {out_dir / name.filename()}",
                              fn, args, dict(name=name, split_max_size=split, overwrite=overwrite),
                              segments=prep.segments, total_bytes=prep.nbytes, done_title="Conversion finished")
        from workbench.convert import export_hf

        folder = out_dir / self.folder_name.text().strip()
        dtype = None if self.dtype_key() == "keep" else self.dtype_key()
        return JobRequest(f"Export to {TARGET_LABELS[self.target_key()].split(': ')[-1]}",
                          f"{self.model.name} → {folder}", export_hf, (self.model, folder),
                          dict(dtype=dtype, format=self.target_key(), max_shard_size=self.split_bytes(),
                               overwrite=overwrite),
                          segments=prep.segments, total_bytes=prep.nbytes, open_folder=True,
                          done_title="Export finished")

    def done(self, r: int) -> None:  # noqa: D401 - Qt override: stop the preparation with the dialog
        self.prep.cancel()
        self.leftovers.worker.cancel()
        super().done(r)


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
