"""The window's conversion actions: File ▸ Convert… / Export…, Tools ▸ Merge LoRA… / LoRA to GGUF….

Each action opens its dialog (window-modal, not blocking); the dialog's request runs in a job window
(:class:`~ui.dialogs.job_dialog.JobManager`), and *Open in Workbench* there opens the result in the window.
The window is reached only through :class:`ConversionHost`; this module never imports the window.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Protocol

from PySide6.QtCore import QObject, QSettings, SignalInstance
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QDialog

from workbench import Model

from ..dialogs.convert_dialog import GGUF, SAFETENSORS, ConvertDialog, requantize_available
from ..dialogs.job_dialog import JobDialog, JobManager, JobRequest
from ..dialogs.lora_dialog import MERGE, TO_GGUF, LoraDialog

if TYPE_CHECKING:
    from ..widgets.plan_bar import PlanBar
    from .plan_controller import PlanController


class ConversionHost(Protocol):
    """What :class:`ConversionActions` uses of the window that composes it.  The host is also the QWidget
    that parents the dialogs and the job windows."""

    model: Model | None
    plan: PlanController
    plan_bar: PlanBar
    settings: QSettings
    model_loaded: SignalInstance  # (Model)
    show_error: Callable[[str, str], None]  # (title, message)

    def make_action(self, text: str, tip: str, slot, shortcut=None) -> QAction: ...

    def open_path(self, path) -> int: ...


class ConversionActions(QObject):
    def __init__(self, window: ConversionHost):
        super().__init__(window)
        self.w = window
        self.dialog: QDialog | None = None  # the open dialog (tests reach it here)
        self.jobs = JobManager(window, lambda title, message: self.w.show_error(title, message))
        self.jobs.open_requested.connect(window.open_path)
        act = window.make_action
        self.act_convert = act("&Convert…", "Write the model as GGUF (current plan or a preset) or as a Hugging Face "
                               "folder", lambda: self.convert_dialog(), "Ctrl+Shift+E")
        self.act_export = act("E&xport…", "Write the model as a Hugging Face folder (safetensors or PyTorch .bin, "
                              "F32/F16/BF16)", lambda: self.convert_dialog(SAFETENSORS))
        self.act_merge = act("&Merge LoRA…", "Merge a PEFT LoRA adapter into its base model", self.merge_dialog)
        self.act_lora_gguf = act("LoRA to &GGUF…", "Write a PEFT LoRA adapter as a GGUF LoRA for llama.cpp --lora",
                                 self.lora_gguf_dialog)
        window.model_loaded.connect(lambda _m: self.update_enabled())
        self.update_enabled()

    def update_enabled(self) -> None:
        has_model = self.w.model is not None
        self.act_convert.setEnabled(has_model)
        self.act_export.setEnabled(has_model)

    def _open(self, dlg: QDialog) -> QDialog:
        self.dialog = dlg
        dlg.request_ready.connect(self.run)
        dlg.finished.connect(dlg.deleteLater)
        dlg.open()
        return dlg

    def convert_dialog(self, target: str | None = None) -> ConvertDialog | None:
        model = self.w.model
        if model is None:
            return None
        if target is None and (model.format == "peft" or model.format == "gguf" and not requantize_available()):
            target = SAFETENSORS
        elif target is None and model.format in ("safetensors", "pytorch"):
            target = GGUF
        plan = self.w.plan.plan
        dlg = ConvertDialog(model, plan, self.w.settings, preset_sizes=self.w.plan_bar.preset_sizes, target=target,
                            parent=self.w)
        if target == SAFETENSORS:
            dlg.setWindowTitle("Export Model")
        return self._open(dlg)

    def merge_dialog(self) -> LoraDialog:
        return self._open(LoraDialog(self.w.model, self.w.settings, MERGE, self.w))

    def lora_gguf_dialog(self) -> LoraDialog:
        return self._open(LoraDialog(self.w.model, self.w.settings, TO_GGUF, self.w))

    def run(self, request: JobRequest) -> JobDialog:
        return self.jobs.start(request)

    def shutdown(self, timeout_ms: int = 5000) -> bool:
        return self.jobs.shutdown(timeout_ms)
