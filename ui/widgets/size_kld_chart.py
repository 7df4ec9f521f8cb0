"""The size-versus-KLD chart of the Optimize tab, and the predictions it draws.

x is bits per weight (or the file size), y the mean KL divergence from the base on a log axis.  Points: every
preset and the current plan *predicted* from a :class:`SensitivityTable` (the sum of ``value()`` over the
groups at the plan's types, as the optimizer counts), optimized plans, and the levels the user *measured* in the
Compare tab, and GGUF files of the same model (predicted from their tensor types).  The optimizer's frontier is
a line.  Hovering a point names it; clicking one emits
``point_activated(ChartPoint)`` (the Optimize tab applies that plan as one undoable step).
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from workbench.optimize.sensitivity import SensitivityTable, group_key
from workbench.plan import TYPES, Plan
from workbench.units import human_bytes

from ..controllers.plan_controller import PlanState
from .plots import curve_color, style_plot

KLD_FLOOR = 1e-6  # a predicted KLD of zero (everything at the reference) is drawn here on the log axis

# kind -> (legend name, colour, symbol, size)
KINDS = {
    "preset": ("Presets (predicted)", "#1f77b4", "o", 9),
    "current": ("Current plan (predicted)", "#d62728", "star", 18),
    "optimized": ("Optimized plans (predicted)", "#2ca02c", "d", 13),
    "compared": ("Compared levels (measured)", "#ff7f0e", "s", 10),
    "file": ("GGUF files of this model (predicted)", "#9467bd", "t", 11),
}


@dataclass
class ChartPoint:
    label: str
    kind: str  # a key of KINDS
    nbytes: int
    bpw: float
    kld: float | None  # None: nothing known (the point is not drawn)
    state: PlanState | None = None  # what clicking applies; None: not a plan the window can apply
    missing: int = 0  # groups whose planned type the table has no value for (counted as 0)


def group_types(plan: Plan) -> dict[str, str]:
    """Each group's planned type (the type most of its tensors get)."""
    return majority_types((e.gguf_name, e.type) for e in plan.entries)


def majority_types(typed_names) -> dict[str, str]:
    """Each group's type, from ``(GGUF tensor name, type)`` pairs: the type most of its tensors have."""
    votes: dict[str, Counter] = {}
    for name, qtype in typed_names:
        votes.setdefault(group_key(name), Counter())[qtype] += 1
    return {k: c.most_common(1)[0][0] for k, c in votes.items()}


def group_tensors(plan: Plan) -> dict[str, list[str]]:
    """Each group's tensors (source names, as overrides are keyed)."""
    out: dict[str, list[str]] = {}
    for e in plan.entries:
        out.setdefault(group_key(e.gguf_name), []).append(e.name)
    return out


def _at_least_reference(qtype: str, reference: str) -> bool:
    order = {t: i for i, t in enumerate(TYPES)}  # most bits first
    return qtype in order and reference in order and order[qtype] <= order[reference]


def predict(table: SensitivityTable, types: dict[str, str]) -> tuple[float | None, int]:
    """``(predicted mean KLD, groups without a value)`` of a plan whose groups have ``types``.

    The sum of ``table.value(group, type)`` over the table's groups (plus ``meta["reference_kld"]`` when the table
    records the all-reference level's own KLD); a group at the reference type or above adds nothing.  None when
    not one group has a value yet."""
    total, missing, known = float(table.meta.get("reference_kld") or 0.0), 0, 0
    for g in table.groups:
        qtype = types.get(g.key)
        if qtype is None:
            continue
        v = table.value(g.key, qtype)
        if v is not None:
            total += v
            known += 1
        elif _at_least_reference(qtype, table.reference):
            known += 1
        else:
            missing += 1
    return (total if known else None), missing


class LogAxis(pg.AxisItem):
    """A vertical axis over log10 values: a tick at every power of ten, labelled 0.1, 0.01, 1e-3..."""

    def tickValues(self, minVal, maxVal, size):  # noqa: N802, N803 - pyqtgraph override
        lo, hi = math.floor(minVal), math.ceil(maxVal)
        if hi - lo > 12 or hi < lo:
            return super().tickValues(minVal, maxVal, size)
        major = [float(v) for v in range(lo, hi + 1) if minVal <= v <= maxVal]
        minor = [math.log10(m) + d for d in range(lo, hi) for m in range(2, 10)
                 if minVal <= math.log10(m) + d <= maxVal] if len(major) <= 4 else []
        return [(1.0, major), (0.1, minor)]

    def tickStrings(self, values, scale, spacing):  # noqa: N802 - pyqtgraph override
        out = []
        for v in values:
            if spacing < 1.0 and abs(v - round(v)) > 1e-9:
                out.append("")  # minor ticks: unlabelled
                continue
            x = 10.0 ** v
            out.append(f"{x:g}" if 1e-2 <= x < 1e4 else f"1e{round(v)}")
        return out


def _boxes_overlap(a, b) -> bool:
    return a.left() < b.right() and b.left() < a.right() and a.top() < b.bottom() and b.top() < a.bottom()


class SizeKldChart(QWidget):
    """``point_activated(ChartPoint)`` when a point is clicked."""

    point_activated = Signal(object)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.points: list[ChartPoint] = []
        self.hidden: list[str] = []  # points not drawn (predicted 0)
        self.frontier: list[tuple[int, float]] = []
        self.n_params = 0
        self.plot = pg.PlotWidget(self, axisItems={"left": LogAxis("left")})
        self.plot.setAcceptDrops(False)
        self.plot.setMinimumHeight(200)
        pi = self.plot.getPlotItem()
        pi.showGrid(x=True, y=True, alpha=0.2)
        pi.setMenuEnabled(False)
        pi.getAxis("left").enableAutoSIPrefix(False)  # values are drawn as log10; the axis labels powers of ten
        pi.getAxis("bottom").enableAutoSIPrefix(False)
        pi.setLabel("left", "mean KLD (log)")
        style_plot(self.plot, self.palette())
        self.legend = QLabel(self)  # outside the plot: it never hides a point
        self.legend.setTextFormat(Qt.TextFormat.RichText)
        self.axis_combo = QComboBox(self)
        self.axis_combo.addItem("Bits per weight", "bpw")
        self.axis_combo.addItem("File size", "size")
        self.axis_combo.setToolTip("What the horizontal axis shows")
        self.axis_combo.currentIndexChanged.connect(lambda _i: self.redraw())
        self.hint = QLabel(self)
        self.hint.setWordWrap(True)
        top = QHBoxLayout()
        top.addWidget(self.hint, 1)
        top.addWidget(QLabel("x axis:", self))
        top.addWidget(self.axis_combo)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(top)
        lay.addWidget(self.legend)
        lay.addWidget(self.plot, 1)
        self.scatters: dict[str, pg.ScatterPlotItem] = {}
        self.labels: list[pg.TextItem] = []
        self._relabel = QTimer(self)  # labels are placed again after zooming or resizing (coalesced)
        self._relabel.setSingleShot(True)
        self._relabel.setInterval(30)
        self._relabel.timeout.connect(self._place_labels)
        vb = pi.getViewBox()
        vb.sigRangeChanged.connect(lambda *_: self._relabel.start())
        vb.sigResized.connect(lambda *_: self._relabel.start())

    @property
    def x_mode(self) -> str:
        return self.axis_combo.currentData()

    def set_x_mode(self, mode: str) -> None:
        self.axis_combo.setCurrentIndex(self.axis_combo.findData(mode))

    def set_points(self, points: list[ChartPoint], frontier: list[tuple[int, float]] | None = None,
                   n_params: int = 0) -> None:
        """Draw ``points``: those of one kind at the same place (presets that give the same plan on this model)
        become one point named "A = B"; clicking it applies the first.  Points predicted at 0 (everything at
        or above the reference type: F32, F16) are not drawn on the log axis."""
        merged: dict[tuple, ChartPoint] = {}
        self.hidden = []
        for p in points:
            if p.kld is not None and p.kld <= 0:
                self.hidden.append(p.label)
                continue
            key = (p.kind, p.nbytes, None if p.kld is None else round(p.kld, 12))
            if key in merged:
                q = merged[key]
                merged[key] = ChartPoint(f"{q.label} = {p.label}", q.kind, q.nbytes, q.bpw, q.kld, q.state,
                                         q.missing)
            else:
                merged[key] = p
        self.points = list(merged.values())
        if frontier is not None:
            self.frontier = list(frontier)
        if n_params:
            self.n_params = n_params
        self.redraw()

    def x_of(self, nbytes: float, bpw: float | None = None) -> float:
        if self.x_mode == "size":
            return nbytes / 2**20
        if bpw is None:
            return 8.0 * nbytes / self.n_params if self.n_params else 0.0
        return bpw

    def position(self, point: ChartPoint) -> tuple[float, float]:
        """Where ``point`` is drawn (view coordinates: y is log10 of the KLD)."""
        return self.x_of(point.nbytes, point.bpw), math.log10(max(point.kld or 0.0, KLD_FLOOR))

    def tooltip(self, point: ChartPoint) -> str:
        what = {"preset": "preset", "current": "the current plan", "optimized": "optimized plan",
                "compared": "measured in Compare", "file": "a GGUF file's tensor types"}[point.kind]
        lines = [f"{point.label} ({what})", f"{human_bytes(point.nbytes)}, {point.bpw:.2f} bits per weight",
                 f"mean KLD {point.kld:.4g}" + (" (predicted)" if point.kind != "compared" else "")]
        if point.missing:
            lines.append(f"{point.missing} group(s) not measured at their type: counted as 0")
        if point.state is None:
            lines.append("Not a plan that can be applied")
        else:
            lines.append("Click to plan the same types as this file" if point.kind == "file"
                         else "Click to apply this plan")
        return "\n".join(lines)

    def redraw(self) -> None:
        pi = self.plot.getPlotItem()
        pi.clear()
        self.scatters = {}
        self.labels = []
        pal = self.palette()
        pi.setLabel("bottom", "file size (MiB)" if self.x_mode == "size" else "bits per weight")
        hint = "Hover a point to name it; click it to apply that plan (Ctrl+Z undoes)."
        if self.hidden:
            hint += f" Not drawn (predicted KLD 0, at or above the reference type): {', '.join(self.hidden)}."
        self.hint.setText(hint)
        if len(self.frontier) > 1:
            fx = np.array([self.x_of(b) for b, _k in self.frontier])
            fy = np.log10(np.maximum(np.array([k for _b, k in self.frontier], dtype=float), KLD_FLOOR))
            order = np.argsort(fx)
            pi.plot(fx[order], fy[order], pen=pg.mkPen(curve_color(QColor("#2ca02c"), pal), width=2,
                                                      style=Qt.PenStyle.DashLine))
        fg = pal.color(QPalette.ColorRole.WindowText)
        glyph = {"o": "●", "star": "★", "d": "◆", "s": "■", "t": "▼"}
        shown = {p.kind for p in self.points if p.kld is not None}
        parts = [f"<span style='color:{curve_color(QColor(c), pal).name()}'>{glyph[sym]}</span> {name}"
                 for kind, (name, c, sym, _size) in KINDS.items() if kind in shown]
        if len(self.frontier) > 1:
            parts.append(f"<span style='color:{curve_color(QColor('#2ca02c'), pal).name()}'><b>- - -</b></span> "
                         "optimizer's frontier (the least KLD for each size)")
        self.legend.setText("&nbsp;&nbsp;&nbsp;".join(parts))
        # the current plan drawn on a preset (it is that preset): one label, "current = Q4_K_M"
        at = {(p.nbytes, p.kld): p.label for p in self.points if p.kind == "preset"}
        same = {at[(p.nbytes, p.kld)] for p in self.points if p.kind == "current" and (p.nbytes, p.kld) in at}
        for kind, (_name, color, symbol, size) in KINDS.items():
            pts = [p for p in self.points if p.kind == kind and p.kld is not None]
            if not pts:
                continue
            c = curve_color(QColor(color), pal)
            xy = np.array([self.position(p) for p in pts], dtype=float)
            item = pg.ScatterPlotItem(x=xy[:, 0], y=xy[:, 1], data=[self.points.index(p) for p in pts],
                                      symbol=symbol, size=size, brush=pg.mkBrush(c), pen=pg.mkPen(fg, width=0.5),
                                      hoverable=True, hoverSize=size + 5,
                                      tip=lambda x, y, data: self.tooltip(self.points[data]))
            item.sigClicked.connect(self._on_clicked)
            pi.addItem(item)
            self.scatters[kind] = item
            if kind in ("preset", "current", "optimized", "file"):
                for p, (x, y) in zip(pts, xy):
                    text = p.label
                    if kind == "current":
                        key = (p.nbytes, p.kld)
                        text = f"current = {at[key]}" if key in at else "current"
                    elif kind == "preset" and text in same:
                        continue
                    label = pg.TextItem(text, color=c if kind != "preset" else fg)
                    label.setPos(x, y)
                    label.setZValue(-1 if kind == "preset" else 1)
                    pi.addItem(label)
                    self.labels.append(label)
        pi.getViewBox().setDefaultPadding(0.1)  # room for the labels of the outermost points
        pi.enableAutoRange()
        self._place_labels()

    _ANCHORS = ((0.5, 1.2), (0.5, -0.2), (-0.12, 0.5), (1.12, 0.5))  # above, below, right, left of the point

    def _place_labels(self) -> None:
        """Put each label above, below, right or left of its point where it overlaps no label placed before it
        (the current and optimized plans first); a label with no free place is hidden (hovering names it)."""
        placed = []
        for label in sorted(self.labels, key=lambda lb: -lb.zValue()):
            label.setVisible(True)
            for anchor in self._ANCHORS:
                label.setAnchor(anchor)
                label.updateTransform(force=True)
                box = label.mapRectToScene(label.boundingRect())
                if not any(_boxes_overlap(box, other) for other in placed):
                    placed.append(box)
                    break
            else:
                label.setVisible(False)

    def _on_clicked(self, item, spots, event=None) -> None:
        if not len(spots):
            return
        spot = spots[0]
        if event is not None and len(spots) > 1:  # overlapping symbols: the one nearest the pointer
            at = event.scenePos()
            spot = min(spots, key=lambda s: (item.mapToScene(s.pos()) - at).manhattanLength())
        self.point_activated.emit(self.points[int(spot.data())])
