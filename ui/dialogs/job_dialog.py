"""The progress window of a conversion job (convert, export, LoRA merge, metadata Save As).

One modeless :class:`JobDialog` per job, each with its own :class:`~ui.worker.Worker`: the current
tensor with its own progress bar, overall progress, bytes written, elapsed time and ETA, and Cancel.
Cancel is cooperative: the core job gets ``cancel=`` and raises ``Cancelled`` at its next step, its
writers remove their temporary files, and only then does the window say "Cancelled" (so a cancelled
job has left nothing behind by the time the user reads it).  On success the window lists the written
paths with *Open in Workbench* and *Show Folder*; on error the window's error dialog shows the
message.  :class:`JobManager` owns the running windows (shutdown on exit).
"""
from __future__ import annotations

import bisect
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from PySide6.QtCore import QObject, Qt, QTimer, QUrl, Signal
from PySide6.QtGui import QCloseEvent, QDesktopServices
from PySide6.QtWidgets import (QDialog, QDialogButtonBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QLineEdit,
                               QListWidget, QMessageBox, QProgressBar, QPushButton, QVBoxLayout, QWidget)

from workbench import Cancelled

from ..widgets.elided_label import ElidedLabel
from ..formatting import human_bytes
from ..worker import Worker

ETA_MIN_SECONDS = 1.5   # no ETA before this much time has passed...
ETA_MIN_FRACTION = 0.01  # ...or before this much of the job is done


@dataclass(frozen=True)
class Segment:
    """One output tensor: ``units`` of the job's progress count (values or bytes) and the bytes it writes."""

    name: str
    units: int
    nbytes: int


@dataclass
class JobRequest:
    """What to run: ``fn(*args, cancel=..., **kwargs)`` is a core job generator returning the written path(s)."""

    title: str  # window title, e.g. "Convert to GGUF"
    description: str  # one line: what goes where
    fn: Callable
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    segments: list[Segment] | None = None  # the tensors in the order the job writes them (per-tensor progress)
    total_bytes: int | None = None  # expected output size (shown as "x of y")
    open_folder: bool = False  # "Open in Workbench" opens the output folder (HF) instead of the first file
    done_title: str = "Finished"


@dataclass
class JobOutcome:
    paths: list[Path]
    message: str  # the job's last progress message (summary, warnings)


def run_job(request: JobRequest, cancel: threading.Event):
    """The background job: runs the core generator, stops it at once when ``cancel`` is set (closing it,
    so its writers clean up before ``Cancelled`` is reported) and keeps its last progress message."""
    job = request.fn(*request.args, cancel=cancel.is_set, **request.kwargs)
    last = ""
    try:
        while True:
            if cancel.is_set():
                raise Cancelled()
            try:
                p = next(job)
            except StopIteration as stop:
                result = stop.value
                break
            last = p.message or last
            yield p
    finally:
        job.close()  # no-op when finished; otherwise the job's cleanup runs now, on this thread
    if cancel.is_set():
        raise Cancelled()
    paths = [Path(p) for p in result] if isinstance(result, (list, tuple)) else [Path(result)]
    return JobOutcome(paths, last)


def refuse_existing(parent, existing: list[Path], overwrite: bool) -> bool:
    """True (after telling the user) when ``existing`` outputs would be replaced without ``overwrite``."""
    if not existing or overwrite:
        return False
    shown = "\n".join(str(p) for p in existing[:5])
    QMessageBox.warning(parent, "Output already exists",
                        f"The output already exists:\n{shown}\n\nNothing was written. Choose another "
                        "name or folder, or tick “Replace existing files”.")
    return True


def output_folder_row(parent: QWidget, text: str, tooltip: str) -> tuple[QLineEdit, QHBoxLayout]:
    """The output folder's line edit beside a Browse… button that picks a folder (starting at the text)."""
    edit = QLineEdit(text, parent)
    edit.setToolTip(tooltip)
    edit.setClearButtonEnabled(True)
    browse = QPushButton("&Browse…", parent)
    browse.setToolTip("Choose the output folder")

    def pick() -> None:
        folder = QFileDialog.getExistingDirectory(parent, "Output Folder", edit.text())
        if folder:
            edit.setText(folder)

    browse.clicked.connect(pick)
    row = QHBoxLayout()
    row.addWidget(edit, 1)
    row.addWidget(browse)
    return edit, row


class ExistingCheck(QObject):
    """Finds the outputs that already exist on a worker thread: even a stat or a glob can block for seconds on
    a network folder, and the GUI thread never touches the disk.  ``check(key, probe)`` runs ``probe`` (a
    function of plain values returning the existing paths); ``found`` holds the last result for the current
    ``key``, and ``done`` is emitted with it."""

    done = Signal(object)  # list[Path]

    def __init__(self, parent: QObject):
        super().__init__(parent)
        self.worker = Worker(self, name="existing-outputs")
        self.worker.result.connect(self._on_result)
        self.worker.error.connect(lambda _message: self._on_result((self.key, [])))
        self.key = None
        self.found: list[Path] = []
        self.known = False  # whether ``found`` answers the current key
        self._then: Callable[[list[Path]], None] | None = None

    def check(self, key, probe: Callable[[], list[Path]], then: Callable[[list[Path]], None] | None = None) -> None:
        if key != self.key:
            self.found, self.known = [], False
        self.key, self._then = key, then

        def job():
            try:
                return key, probe()
            except OSError:  # unreadable folder: nothing to protect there
                return key, []

        self.worker.start(job)

    def _on_result(self, result) -> None:
        key, found = result
        if key != self.key:
            return
        self.found, self.known = list(found), True
        then, self._then = self._then, None
        self.done.emit(self.found)
        if then is not None:
            then(self.found)


def hand_over(dialog, settings_key: str) -> None:
    """End a job dialog: look for existing output (on a worker), refuse to replace it unless allowed, remember
    the output folder, close the dialog and emit its ``request_ready`` with its ``request()``.

    The dialog provides ``exists`` (an :class:`ExistingCheck`), ``existing_key()`` and ``existing_probe()``."""
    overwrite = dialog.overwrite.isChecked()
    dialog.ok.setEnabled(False)  # one hand-over at a time

    def finish(found: list[Path]) -> None:
        dialog.ok.setEnabled(True)
        if refuse_existing(dialog, found, overwrite):
            return
        request = dialog.request()
        dialog.settings.setValue(settings_key, dialog.out_dir.text().strip())
        dialog.accept()
        dialog.request_ready.emit(request)

    dialog.exists.check(dialog.existing_key(), dialog.existing_probe(), then=finish)


def fmt_duration(seconds: float) -> str:
    seconds = int(round(max(0.0, seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class SegmentTracker:
    """Maps overall progress (a fraction of the job's units) to the current tensor and bytes written."""

    def __init__(self, segments: list[Segment]):
        self.segments = segments
        self.ends: list[int] = []
        self.byte_starts: list[int] = []
        u = b = 0
        for s in segments:
            self.byte_starts.append(b)
            u += s.units
            b += s.nbytes
            self.ends.append(u)
        self.total_units = u
        self.total_bytes = b

    def at(self, fraction: float) -> tuple[int, float, int]:
        """(index of the current tensor, its fraction done, bytes written so far)."""
        if not self.segments:
            return 0, 0.0, 0
        units = fraction * self.total_units
        i = min(bisect.bisect_right(self.ends, units), len(self.segments) - 1)
        start = self.ends[i] - self.segments[i].units
        seg = self.segments[i]
        frac = min(1.0, max(0.0, (units - start) / seg.units)) if seg.units else 1.0
        return i, frac, int(self.byte_starts[i] + frac * seg.nbytes)


class JobDialog(QDialog):
    """``succeeded(JobOutcome)``, ``failed(str)``, ``was_cancelled()`` when the job ends;
    ``open_requested(str)`` from the Open in Workbench button."""

    succeeded = Signal(object)
    failed = Signal(str)
    was_cancelled = Signal()
    open_requested = Signal(str)

    def __init__(self, request: JobRequest, show_error: Callable[[str, str], None],
                 parent: QWidget | None = None):
        super().__init__(parent)
        self.request = request
        self.show_error = show_error
        self.outcome: JobOutcome | None = None
        self.error: str | None = None
        self.state = "idle"  # running, cancelling, done, failed, cancelled
        self.cancel_event = threading.Event()
        self.tracker = SegmentTracker(request.segments) if request.segments else None
        self._t0 = 0.0
        self._fraction = 0.0
        self._bytes_done: int | None = None
        self.setWindowTitle(request.title)
        self.setModal(False)
        self.setMinimumWidth(560)

        self.description = ElidedLabel(request.description, self)
        font = self.description.font()
        font.setBold(True)
        self.description.setFont(font)
        self.current = ElidedLabel("Starting…", self)
        self.current.setToolTip("What the job is doing now")
        self.tensor_bar = QProgressBar(self)
        self.tensor_bar.setToolTip("Progress of the current tensor")
        self.tensor_bar.setFormat("%p%")
        self.overall_bar = QProgressBar(self)
        self.overall_bar.setToolTip("Progress of the whole job")
        self.overall_bar.setRange(0, 0)
        self.amount = QLabel("", self)
        self.amount.setToolTip("Output written so far and the expected total")
        self.timing = QLabel("", self)
        self.timing.setToolTip("Time since the start, and the time left at the current speed")
        self.result_label = QLabel("", self)
        self.result_label.setWordWrap(True)
        self.result_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.paths = QListWidget(self)
        self.paths.setToolTip("The files written")
        self.paths.itemDoubleClicked.connect(lambda item: self.open_requested.emit(item.text()))

        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.ExpandingFieldsGrow)
        self.tensor_label = QLabel("Tensor:", self)
        form.addRow(self.tensor_label, self.tensor_bar)
        form.addRow("Overall:", self.overall_bar)
        form.addRow("Written:", self.amount)
        form.addRow("Time:", self.timing)

        self.open_button = QPushButton("&Open in Workbench", self)
        self.open_button.setToolTip("Open the result in this window")
        self.open_button.clicked.connect(self._open_result)
        self.folder_button = QPushButton("Show &Folder", self)
        self.folder_button.setToolTip("Show the output folder in the file manager")
        self.folder_button.clicked.connect(self.show_folder)
        self.cancel_button = QPushButton("Cancel", self)
        self.cancel_button.setToolTip("Stop the job; nothing is left behind (Esc)")
        self.cancel_button.clicked.connect(self.cancel)
        self.close_button = QPushButton("Close", self)
        self.close_button.clicked.connect(self.close)
        self.box = QDialogButtonBox(self)
        self.box.addButton(self.cancel_button, QDialogButtonBox.ButtonRole.RejectRole)
        self.box.addButton(self.close_button, QDialogButtonBox.ButtonRole.AcceptRole)
        result_row = QHBoxLayout()
        result_row.addWidget(self.open_button)
        result_row.addWidget(self.folder_button)
        result_row.addStretch(1)

        lay = QVBoxLayout(self)
        lay.addWidget(self.description)
        lay.addWidget(self.current)
        lay.addLayout(form)
        lay.addWidget(self.result_label)
        lay.addWidget(self.paths)
        lay.addLayout(result_row)
        lay.addStretch(1)
        lay.addWidget(self.box)
        for w in (self.open_button, self.folder_button, self.close_button, self.paths, self.result_label):
            w.setVisible(False)
        self.tensor_bar.setVisible(self.tracker is not None)
        self.tensor_label.setVisible(self.tracker is not None)

        self.worker = Worker(self, name="job")
        self.worker.progress.connect(self._on_progress)
        self.worker.result.connect(self._on_result)
        self.worker.error.connect(self._on_error)
        self.worker.cancelled.connect(self._on_cancelled)
        self.timer = QTimer(self)
        self.timer.setInterval(500)
        self.timer.timeout.connect(self._update_timing)

    # -- running -----------------------------------------------------------------------------------
    def start(self) -> int:
        self.state = "running"
        self._t0 = time.monotonic()
        self.timer.start()
        self._update_timing()
        return self.worker.start(run_job, self.request, self.cancel_event)

    def is_running(self) -> bool:
        return self.state in ("running", "cancelling")

    def cancel(self) -> None:
        """Ask the job to stop; "Cancelled" is shown once it has stopped and cleaned up."""
        if self.state != "running":
            return
        self.state = "cancelling"
        self.cancel_event.set()
        self.cancel_button.setEnabled(False)
        self.current.setText("Cancelling…")

    def shutdown(self, timeout_ms: int = 5000) -> bool:
        self.cancel_event.set()
        return self.worker.shutdown(timeout_ms)

    def _on_progress(self, done: int, total: int, message: str) -> None:
        if self.state != "running":
            return
        if total > 0:
            self._fraction = min(1.0, done / total)
            self.overall_bar.setRange(0, 1000)
            self.overall_bar.setValue(int(self._fraction * 1000))
        text = message
        if self.tracker is not None:
            i, frac, nbytes = self.tracker.at(self._fraction)
            seg = self.tracker.segments[i]
            self.tensor_bar.setRange(0, 1000)
            self.tensor_bar.setValue(int(frac * 1000))
            self.tensor_label.setText(f"Tensor {i + 1}/{len(self.tracker.segments)}:")
            self._bytes_done = nbytes
            text = message or seg.name
        self.current.setText(text)
        self._update_amount()

    def _update_amount(self) -> None:
        total = self.request.total_bytes or (self.tracker.total_bytes if self.tracker else None)
        if not total:
            self.amount.setText(f"{self._fraction:.0%}")
            return
        done = self._bytes_done if self._bytes_done is not None else int(self._fraction * total)
        self.amount.setText(f"{human_bytes(done)} of {human_bytes(total)}  ({self._fraction:.0%})")

    def eta_seconds(self) -> float | None:
        elapsed = time.monotonic() - self._t0
        f = self._fraction
        if elapsed < ETA_MIN_SECONDS or f < ETA_MIN_FRACTION or f >= 1.0:
            return None
        return elapsed * (1.0 - f) / f

    def _update_timing(self) -> None:
        elapsed = time.monotonic() - self._t0
        text = f"{fmt_duration(elapsed)} elapsed"
        if self.state == "running":
            eta = self.eta_seconds()
            text += f" · about {fmt_duration(eta)} left" if eta is not None else " · estimating time left…"
        self.timing.setText(text)

    # -- endings -----------------------------------------------------------------------------------
    def _finish(self, state: str) -> None:
        self.state = state
        self.timer.stop()
        self._update_timing()
        self.cancel_button.setVisible(False)
        self.close_button.setVisible(True)
        self.close_button.setDefault(True)
        self.result_label.setVisible(True)
        QTimer.singleShot(0, self.adjustSize)  # room for the result rows

    def _on_result(self, outcome: JobOutcome) -> None:
        self.outcome = outcome
        self._finish("done")
        self.overall_bar.setRange(0, 1000)
        self.overall_bar.setValue(1000)
        if self.tracker is not None:
            self.tensor_bar.setRange(0, 1000)
            self.tensor_bar.setValue(1000)
            n = len(self.tracker.segments)
            self.tensor_label.setText(f"Tensor {n}/{n}:")
        sizes = sum(_size(p) for p in outcome.paths)
        self.current.setText(self.request.done_title)
        self.amount.setText(human_bytes(sizes))
        text = f"Wrote {len(outcome.paths)} file{'s' if len(outcome.paths) != 1 else ''} ({human_bytes(sizes)})."
        notes = _notes(outcome.message)
        if notes:
            text += "\n" + notes
        self.result_label.setText(text)
        self.paths.clear()
        self.paths.addItems([str(p) for p in outcome.paths])
        rows = min(max(1, len(outcome.paths)), 5)
        self.paths.setFixedHeight(rows * self.paths.sizeHintForRow(0) + 2 * self.paths.frameWidth() + 4)
        self.paths.setVisible(True)
        self.open_button.setVisible(bool(outcome.paths))
        self.folder_button.setVisible(bool(outcome.paths))
        self.open_button.setDefault(True)
        self.succeeded.emit(outcome)

    def _on_error(self, message: str) -> None:
        self.error = message
        self._finish("failed")
        self.current.setText("Failed")
        self.amount.setText("nothing kept")
        self.result_label.setText(f"The job failed; nothing was written.\n{message}")
        self.result_label.setStyleSheet("color: #b00020;")
        self.show_error(f"{self.request.title} failed", message)
        self.failed.emit(message)

    def _on_cancelled(self) -> None:
        self._finish("cancelled")
        self.current.setText("Cancelled")
        self.amount.setText("nothing kept")
        self.result_label.setText("Cancelled; nothing was written.")
        self.was_cancelled.emit()

    # -- results -----------------------------------------------------------------------------------
    def open_target(self) -> str | None:
        """What Open in Workbench opens: the output folder (HF) or the first file (GGUF, first shard)."""
        if self.outcome is None or not self.outcome.paths:
            return None
        first = self.outcome.paths[0]
        return str(first.parent) if self.request.open_folder else str(first)

    def output_folder(self) -> str | None:
        return str(self.outcome.paths[0].parent) if self.outcome and self.outcome.paths else None

    def _open_result(self) -> None:
        target = self.open_target()
        if target is not None:
            self.open_requested.emit(target)

    def show_folder(self) -> None:
        folder = self.output_folder()
        if folder is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(folder))

    # -- closing -------------------------------------------------------------------------------------
    def reject(self) -> None:  # Esc
        if self.is_running():
            self.cancel()
        else:
            super().reject()

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt override
        if self.is_running():  # closing a running job's window cancels it (as QProgressDialog does)
            self.cancel()
            event.ignore()
            return
        super().closeEvent(event)


def _size(p: Path) -> int:
    try:
        return os.path.getsize(p)
    except OSError:
        return 0


def _notes(message: str) -> str:
    """The interesting tail of a job's final message (warnings, notes), if any."""
    _head, sep, tail = message.partition("; ")
    return tail if sep else ""


class JobManager(QObject):
    """Starts job windows and keeps the running ones (``shutdown`` on exit).  ``open_requested(str)``
    when the user asks to open a result."""

    open_requested = Signal(str)
    finished = Signal(object)  # the JobDialog

    def __init__(self, parent: QWidget, show_error: Callable[[str, str], None]):
        super().__init__(parent)
        self._parent = parent
        self.show_error = show_error
        self.dialogs: list[JobDialog] = []

    def start(self, request: JobRequest) -> JobDialog:
        dlg = JobDialog(request, self.show_error, self._parent)
        dlg.open_requested.connect(self.open_requested)
        dlg.open_requested.connect(lambda _p: dlg.close())
        for sig in (dlg.succeeded, dlg.failed, dlg.was_cancelled):
            sig.connect(lambda *_a, d=dlg: self.finished.emit(d))
        self.dialogs = [d for d in self.dialogs if d.is_running() or d.isVisible()] + [dlg]
        dlg.show()
        dlg.start()
        return dlg

    def running(self) -> list[JobDialog]:
        return [d for d in self.dialogs if d.is_running()]

    def last(self) -> JobDialog | None:
        return self.dialogs[-1] if self.dialogs else None

    def shutdown(self, timeout_ms: int = 5000) -> bool:
        ok = True
        for d in self.dialogs:
            ok = d.shutdown(timeout_ms) and ok
        return ok

