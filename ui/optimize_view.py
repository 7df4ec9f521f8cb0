"""The Optimize tab: the size-versus-KLD chart above the sensitivity heatmap, and the Optimize… dialog.

The view holds the model's :class:`SensitivityTable` (measured or estimated by the dialog's job, or loaded from a
file) and the window's :class:`PlanController`.  Every change it makes to the plan (clicking a chart point,
raising or lowering a heatmap cell) is one undoable step on the controller's stack.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QFileDialog, QHBoxLayout, QLabel, QPushButton, QSplitter, QVBoxLayout, QWidget

from workbench import WorkbenchError
from workbench.fsutil import atomic_write_path
from workbench.optimize.sensitivity import SensitivityTable
from workbench.plan import PRESETS, Plan
from workbench.units import human_bytes

from .plan_controller import PlanController, PlanState
from .sensitivity_heatmap import SensitivityHeatmap
from .size_kld_chart import ChartPoint, SizeKldChart, group_types, predict
from .worker import Worker

TABLE_FILTER = "Sensitivity tables (*.json);;All files (*)"
FLOAT_PRESETS = ("F32", "F16", "BF16")  # not drawn


@dataclass
class PresetInfo:
    nbytes: int
    bpw: float
    types: dict[str, str]  # group -> type


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
        self.last_dir = ""
        self.preset_worker = Worker(self, name="optimize-presets")
        self.preset_worker.result.connect(self._on_presets)

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
        top = QHBoxLayout()
        top.addWidget(self.summary, 1)
        for b in (self.optimize_button, self.load_button, self.save_button):
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
        """A newly opened model: drop the table and the points; the presets' sizes are computed on a worker."""
        self.table, self.presets, self.optimized, self.compared, self.frontier = None, {}, [], [], []
        self.refresh()
        if model is None or self.controller.plan is None:
            self.preset_worker.cancel()
            return None
        return self.preset_worker.start(presets_job, model)

    def _on_presets(self, presets: dict[str, PresetInfo]) -> None:
        self.presets = presets
        self.refresh()

    def set_table(self, table: SensitivityTable | None) -> None:
        self.table = table
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
        elif isinstance(item, tuple) and len(item) == 3 and self.table is not None:
            key, qtype, value = item
            self.table.measured[(str(key), str(qtype))] = float(value)
        self.refresh()

    def add_run(self, run) -> None:
        """The dialog finished: its table, and the optimized plan as a point (plus the frontier)."""
        if not self._is_ours(run.table):
            return
        self.table = run.table
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
        return out + self.optimized + self.compared

    def refresh(self) -> None:
        plan = self.controller.plan
        self.chart.set_points(self.points(), self.frontier, plan.n_params if plan is not None else 0)
        self.heatmap.set_data(self.table, plan)
        self.save_button.setEnabled(self.table is not None)
        self.optimize_button.setEnabled(plan is not None)
        self.load_button.setEnabled(plan is not None)
        self.summary.setText(self._summary())

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

    def save_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save Sensitivity Table", self.last_dir, TABLE_FILTER)
        if path:
            self.last_dir = str(Path(path).parent)
            try:
                self.save(path)
            except (OSError, WorkbenchError) as exc:
                self.summary.setText(f"Could not save {Path(path).name}: {exc}")

    def shutdown(self, timeout_ms: int = 5000) -> bool:
        return self.preset_worker.shutdown(timeout_ms)
