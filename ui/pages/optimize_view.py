"""The Optimize tab: the size-versus-KLD chart above the sensitivity heatmap, and the Optimize… dialog.

GGUF files of the same model are points too: every GGUF the user opens in this session is remembered, and
"Add GGUF…" reads more; a file whose tensors are the opened model's (same names, same sizes) is drawn at its
size with the KLD the table predicts for its tensor types, and clicking it plans those types.

The view holds the model's :class:`SensitivityTable` (measured or estimated by the dialog's job, or loaded from a
file) and the window's :class:`PlanController`.  Every change it makes to the plan (clicking a chart point,
raising or lowering a heatmap cell) is one undoable step on the controller's stack.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QFileDialog, QHBoxLayout, QLabel, QPushButton, QSplitter, QVBoxLayout, QWidget

from workbench import Progress, WorkbenchError
from workbench.fsutil import atomic_write_path
from workbench.optimize.sensitivity import SensitivityTable
from workbench.plan import PRESETS, TYPES, Plan
from workbench.units import human_bytes

from ..controllers.plan_controller import PlanController, PlanState
from ..widgets.sensitivity_heatmap import SensitivityHeatmap
from ..models.tensor_tree_model import is_editable
from ..widgets.size_kld_chart import ChartPoint, SizeKldChart, group_types, majority_types, predict
from ..worker import Worker

TABLE_FILTER = "Sensitivity tables (*.json);;All files (*)"
GGUF_FILTER = "GGUF files (*.gguf);;All files (*)"
FLOAT_PRESETS = ("F32", "F16", "BF16")  # not drawn


@dataclass
class PresetInfo:
    nbytes: int
    bpw: float
    types: dict[str, str]  # group -> type


@dataclass
class FileInfo:
    """What the chart needs of a GGUF file to draw it beside the plans of the same model."""
    path: str
    nbytes: int  # tensor data, as plans count it
    n_params: int
    tensors: dict[str, tuple[str, int]]  # GGUF tensor name -> (type, parameters)

    @classmethod
    def of(cls, model) -> "FileInfo | None":
        if model.format != "gguf":
            return None
        return cls(str(model.path), model.nbytes, model.n_params,
                   {t.name: (t.dtype, t.n_params) for t in model.tensors})

    @property
    def name(self) -> str:
        return Path(self.path).stem

    def mismatch(self, plan: Plan) -> str | None:
        """Why this file is not a GGUF of ``plan``'s model (None: it is: every planned tensor is in it, with the
        same number of parameters)."""
        for e in plan.entries:
            got = self.tensors.get(e.gguf_name)
            if got is None:
                return f"it has no tensor {e.gguf_name!r}"
            if got[1] != e.n_params:
                return f"its {e.gguf_name!r} has {got[1]:,} parameters, the opened model's {e.n_params:,}"
        return None

    def point(self, plan: Plan, table: SensitivityTable) -> ChartPoint | None:
        """This file as a chart point (None when it is not a GGUF of ``plan``'s model): its size, the KLD the
        table predicts for its tensors' types, and the plan that gives every tensor the file's type."""
        if self.mismatch(plan) is not None:
            return None
        typed = [(e, self.tensors[e.gguf_name][0]) for e in plan.entries]
        overrides = {e.name: qtype for e, qtype in typed if qtype in TYPES and is_editable(e)}
        kld, missing = predict(table, majority_types((e.gguf_name, qtype) for e, qtype in typed))
        state = PlanState(plan.preset, (), tuple(overrides.items()))
        bpw = 8.0 * self.nbytes / self.n_params if self.n_params else 0.0
        return ChartPoint(self.name, "file", self.nbytes, bpw, kld, state, missing)


def presets_job(model) -> dict[str, PresetInfo]:
    """Worker job: every preset's size and group types for ``model`` (presets that cannot plan it are left out)."""
    out = {}
    for preset in PRESETS:
        try:
            plan = Plan(model, preset)
            out[preset] = PresetInfo(plan.nbytes, plan.bits_per_weight, group_types(plan))
        except WorkbenchError:
            continue
    return out


def read_files_job(paths: list[str]):
    """Worker job: the :class:`FileInfo` of each GGUF in ``paths``, and one line for each that could not be read."""
    from workbench.formats import open_model

    infos, problems = [], []
    for i, path in enumerate(paths):
        yield Progress(i, len(paths), f"Reading {Path(path).name}")
        try:
            model = open_model(path)
        except WorkbenchError as exc:
            problems.append(f"{Path(path).name}: {exc}")
            continue
        try:
            info = FileInfo.of(model)
        finally:
            model.close()
        if info is None:
            problems.append(f"{Path(path).name}: not a GGUF file")
        else:
            infos.append(info)
    return infos, problems


class OptimizeView(QWidget):
    """``optimize_requested()`` when the user asks for the Optimize… dialog."""

    optimize_requested = Signal()

    def __init__(self, controller: PlanController, parent: QWidget | None = None):
        super().__init__(parent)
        self.controller = controller
        self.table: SensitivityTable | None = None
        self.presets: dict[str, PresetInfo] = {}
        self.optimized: list[ChartPoint] = []
        self.compared: list[ChartPoint] = []
        self.frontier: list[tuple[int, float]] = []
        self.files: dict[str, FileInfo] = {}  # GGUF files opened or added this session, by path
        self.files_note = ""  # what became of the last files added
        self.last_dir = ""
        self.preset_worker = Worker(self, name="optimize-presets")
        self.preset_worker.result.connect(self._on_presets)
        self.files_worker = Worker(self, name="optimize-files")
        self.files_worker.result.connect(self._on_files)
        self.files_worker.error.connect(lambda message: self._set_files_note(f"Could not read the files: {message}"))
        self._presets_for = None  # the model whose preset sizes are still to be computed (when the tab shows)
        self._stale = False  # something changed while the tab was hidden: shown when it is

        self.summary = QLabel(self)
        self.summary.setWordWrap(True)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.optimize_button = QPushButton("Optimize…", self)
        self.optimize_button.setToolTip("Measure or estimate how sensitive each tensor group is and find the plan "
                                        "with the lowest predicted KLD for a size budget")
        self.optimize_button.clicked.connect(self.optimize_requested)
        self.load_button = QPushButton("Load Table…", self)
        self.load_button.setToolTip("Load a sensitivity table saved before (JSON)")
        self.load_button.clicked.connect(self.load_dialog)
        self.save_button = QPushButton("Save Table…", self)
        self.save_button.setToolTip("Save the sensitivity table (JSON) to load it again later")
        self.save_button.clicked.connect(self.save_dialog)
        self.add_files_button = QPushButton("Add GGUF…", self)
        self.add_files_button.setToolTip("Draw GGUF files of this model on the chart: each at its size, with the KLD "
                                         "the table predicts for its tensor types (GGUFs you open are added too)")
        self.add_files_button.clicked.connect(self.add_files_dialog)
        top = QHBoxLayout()
        top.addWidget(self.summary, 1)
        for b in (self.optimize_button, self.load_button, self.save_button, self.add_files_button):
            top.addWidget(b, 0, Qt.AlignmentFlag.AlignTop)
        self.chart = SizeKldChart(self)
        self.chart.point_activated.connect(self.apply_point)
        self.heatmap = SensitivityHeatmap(self)
        self.heatmap.change_requested.connect(self.controller.set_types)
        self.splitter = QSplitter(Qt.Orientation.Vertical, self)
        self.splitter.addWidget(self.chart)
        self.splitter.addWidget(self.heatmap)
        self.splitter.setChildrenCollapsible(False)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 2)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 4, 6, 6)
        lay.addLayout(top)
        lay.addWidget(self.splitter, 1)
        controller.changed.connect(self.refresh)
        self.refresh()

    # -- inputs ------------------------------------------------------------------------------------------
    def set_model(self, model) -> int | None:
        """A newly opened model: drop the table and the points, remember it when it is a GGUF file; the presets'
        sizes are computed on a worker once the tab is shown or a table is set (not while the model opens: the
        job is pure Python and would compete with the window for the interpreter lock)."""
        self.table, self.presets, self.optimized, self.compared, self.frontier = None, {}, [], [], []
        self.files_note = ""
        self.preset_worker.cancel()
        self._presets_for = None
        if model is not None:
            info = FileInfo.of(model)
            if info is not None:
                self.files[info.path] = info
            if self.controller.plan is not None:
                self._presets_for = model
        self.refresh()
        return self._start_presets() if self.isVisible() else None

    def _start_presets(self) -> int | None:
        model, self._presets_for = self._presets_for, None
        return self.preset_worker.start(presets_job, model) if model is not None else None

    def showEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        self._start_presets()
        if self._stale:
            self.refresh()

    def _on_presets(self, presets: dict[str, PresetInfo]) -> None:
        self.presets = presets
        self.refresh()

    def add_files(self, paths) -> int | None:
        """Read the GGUF files at ``paths`` on a worker; each becomes a point when it is a GGUF of this model."""
        paths = [str(p) for p in paths]
        if not paths:
            return None
        self._set_files_note(f"Reading {len(paths)} file(s)…")
        return self.files_worker.start(read_files_job, paths)

    def _on_files(self, result) -> None:
        infos, problems = result
        plan = self.controller.plan
        notes = list(problems)
        for info in infos:
            self.files[info.path] = info
            why = info.mismatch(plan) if plan is not None else None
            if why is not None:
                notes.append(f"{Path(info.path).name} is not a GGUF of the opened model: {why}")
        added = len(infos) - sum(1 for n in notes if " is not a GGUF of " in n)
        self._set_files_note(f"{added} GGUF file(s) added." + (" " + " ".join(notes) if notes else ""))

    def _set_files_note(self, text: str) -> None:
        self.files_note = text
        self.refresh()

    def set_table(self, table: SensitivityTable | None) -> None:
        self.table = table
        if table is not None:
            self._start_presets()
        self.refresh()

    def _is_ours(self, table) -> bool:
        plan = self.controller.plan
        return plan is not None and table is not None and table.model == str(plan.model.path)

    def add_streamed(self, item) -> None:
        """One item of a running job: a whole table, or a measured ``(group, type, ΔKLD)``."""
        if isinstance(item, SensitivityTable):
            if not self._is_ours(item):
                return  # a job started on the model opened before
            self.table = item
            self._start_presets()
        elif isinstance(item, tuple) and len(item) == 3 and self.table is not None:
            key, qtype, value = item
            self.table.measured[(str(key), str(qtype))] = float(value)
        self.refresh()

    def add_run(self, run) -> None:
        """The dialog finished: its table, and the optimized plan as a point (plus the frontier)."""
        if not self._is_ours(run.table):
            return
        self.table = run.table
        self._start_presets()
        res = run.result
        if res is not None and getattr(res, "plan", None) is not None:
            plan = res.plan
            n = len(self.optimized) + 1
            self.optimized.append(ChartPoint(f"optimized #{n}", "optimized", int(res.nbytes), plan.bits_per_weight,
                                             float(res.predicted_kld), PlanState.of(plan)))
            self.frontier = [(int(b), float(k)) for b, k in (getattr(res, "frontier", None) or [])]
        self.refresh()

    def add_comparison(self, result) -> None:
        """A Compare result: its levels as measured points (a level named after a preset applies it)."""
        for lv in result.levels:
            kld = (lv.stats or {}).get("kld_mean")
            if kld is None:
                continue
            plan = self.controller.plan
            label = lv.label.upper()
            state = None
            if label in PRESETS and plan is not None:
                state = PlanState(label, (), ())
            self.compared = [p for p in self.compared if p.label != lv.label]
            self.compared.append(ChartPoint(lv.label, "compared", int(lv.nbytes), float(lv.bits_per_weight),
                                            float(kld), state))
        self.refresh()

    # -- outputs -----------------------------------------------------------------------------------------
    def points(self) -> list[ChartPoint]:
        out: list[ChartPoint] = []
        plan = self.controller.plan
        if self.table is not None:
            for name, info in self.presets.items():
                if name in FLOAT_PRESETS:
                    continue  # at or above every table's reference: nothing to predict, and they stretch the axis
                kld, missing = predict(self.table, info.types)
                out.append(ChartPoint(name, "preset", info.nbytes, info.bpw, kld, PlanState(name, (), ()), missing))
            if plan is not None:
                kld, missing = predict(self.table, group_types(plan))
                out.append(ChartPoint("Current plan", "current", plan.nbytes, plan.bits_per_weight, kld, None,
                                      missing))
                for info in self.files.values():
                    if info.path != str(plan.model.path):  # the opened file itself is what the plan starts from
                        point = info.point(plan, self.table)
                        if point is not None:
                            out.append(point)
        return out + self.optimized + self.compared

    def refresh(self) -> None:
        if not self.isVisible():  # a plan edited or a model opened elsewhere: drawn when the tab shows
            self._stale = True
            return
        self._stale = False
        plan = self.controller.plan
        self.chart.set_points(self.points(), self.frontier, plan.n_params if plan is not None else 0)
        self.heatmap.set_data(self.table, plan)
        self.save_button.setEnabled(self.table is not None)
        self.optimize_button.setEnabled(plan is not None)
        self.load_button.setEnabled(plan is not None)
        self.add_files_button.setEnabled(plan is not None)
        self.summary.setText(self._summary() + (f" {self.files_note}" if self.files_note else ""))

    def _summary(self) -> str:
        t, plan = self.table, self.controller.plan
        if plan is None:
            return "Open a model to optimize its plan."
        if t is None:
            return ("No sensitivity table yet. Optimize… measures (or estimates) what each layer's tensors do to the "
                    "output at each type and finds the plan with the lowest KLD for a size budget.")
        kld, missing = predict(t, group_types(plan))
        parts = [f"{len(t.groups)} groups × {len(t.types)} types ({', '.join(t.types)}), reference {t.reference}",
                 f"{len(t.measured)} (group, type) pairs measured"
                 + (f", {len(t.estimate)} estimated" if t.estimate else ""),
                 f"{t.n_tokens} tokens" if t.n_tokens else ""]
        if t.rank_correlation is not None:
            parts.append(f"estimate vs measurement rank correlation {t.rank_correlation:.2f}")
        line = "Sensitivity: " + "; ".join(p for p in parts if p) + "."
        if kld is not None:
            line += (f" Current plan: {human_bytes(plan.nbytes)}, {plan.bits_per_weight:.2f} bpw, "
                     f"predicted mean KLD {kld:.4g}.")
        return line

    def apply_point(self, point: ChartPoint) -> None:
        """Apply the plan of a chart point as one undoable step."""
        plan = self.controller.plan
        if point.state is None or plan is None:
            return
        target = Plan(plan.model, point.state.preset, list(point.state.rules), dict(point.state.overrides),
                      plan.has_imatrix)
        if PlanState.of(target) != PlanState.of(plan):
            self.controller.replace(target, f"Apply {point.label}")

    # -- files ---------------------------------------------------------------------------------------------
    def load(self, path) -> SensitivityTable:
        """Show a saved table; refused (WorkbenchError) when it names tensors the opened model does not have."""
        table = SensitivityTable.from_json(Path(path).read_text(encoding="utf-8"))
        plan = self.controller.plan
        if plan is not None:
            missing = [n for g in table.groups for n in g.tensors if n not in plan.model]
            if missing:
                raise WorkbenchError(f"the sensitivity table names tensor {missing[0]!r}, which the opened model "
                                     "does not have", path=path, hint="Load the table made for this model.")
            table.model = str(plan.model.path)
        self.set_table(table)
        return table

    def save(self, path) -> None:
        if self.table is not None:
            with atomic_write_path(path) as tmp:
                Path(tmp).write_text(self.table.to_json() + "\n", encoding="utf-8")

    def load_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load Sensitivity Table", self.last_dir, TABLE_FILTER)
        if path:
            self.last_dir = str(Path(path).parent)
            try:
                self.load(path)
            except (OSError, WorkbenchError) as exc:
                self.summary.setText(f"Could not load {Path(path).name}: {exc}")

    def add_files_dialog(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Add GGUF Files of This Model", self.last_dir, GGUF_FILTER)
        if paths:
            self.last_dir = str(Path(paths[0]).parent)
            self.add_files(paths)

    def save_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save Sensitivity Table", self.last_dir, TABLE_FILTER)
        if path:
            self.last_dir = str(Path(path).parent)
            try:
                self.save(path)
            except (OSError, WorkbenchError) as exc:
                self.summary.setText(f"Could not save {Path(path).name}: {exc}")

    def shutdown(self, timeout_ms: int = 5000) -> bool:
        files_done = self.files_worker.shutdown(timeout_ms)
        return self.preset_worker.shutdown(timeout_ms) and files_done
