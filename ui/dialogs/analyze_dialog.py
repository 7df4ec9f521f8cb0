"""Tools ▸ Analyze Model…: analyze the current plan, or compare a set of presets."""
from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QButtonGroup, QDialog, QDialogButtonBox, QFileDialog, QHBoxLayout, QLabel, QLineEdit,
                               QPushButton, QRadioButton, QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget)

from workbench.plan import PRESETS, Plan

from ..formatting import human_bytes

DEFAULT_PRESETS = ("Q8_0", "Q5_K_M", "Q4_K_M", "Q4_0")


class AnalyzeDialog(QDialog):
    """``presets()`` is None for "the current plan", else the checked presets in :data:`PRESETS` order."""

    def __init__(self, plan: Plan, preset_sizes: dict[str, tuple[int, float]] | None = None,
                 parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Analyze Model")
        intro = QLabel("Quantize every tensor and measure its error (RMSE, SNR, cosine). "
                       "This reads the whole model; it runs in the background and can be cancelled.", self)
        intro.setWordWrap(True)
        extra = []
        if plan.rules:
            extra.append(f"{len(plan.rules)} rules")
        if plan.overrides:
            extra.append(f"{len(plan.overrides)} overrides")
        self.current = QRadioButton(f"The current plan: {plan.preset}" + (f" + {', '.join(extra)}" if extra else "")
                                    + f"  ({human_bytes(plan.nbytes)}, {plan.bits_per_weight:.2f} bpw)", self)
        self.current.setToolTip("Every tensor with the type the plan gives it (preset, rules and overrides)")
        self.compare = QRadioButton("Compare presets:", self)
        self.compare.setToolTip("Every tensor under each checked preset (no rules or overrides)")
        group = QButtonGroup(self)
        group.addButton(self.current)
        group.addButton(self.compare)
        self.list = QTreeWidget(self)
        self.list.setToolTip("Presets to analyze one after the other")
        self.list.setHeaderLabels(["Preset", "Size", "Bits/weight"])
        self.list.setRootIsDecorated(False)
        self.list.setUniformRowHeights(True)
        sizes = preset_sizes or {}
        right = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
        for preset in PRESETS:
            if sizes and preset not in sizes:  # (sizes not computed yet: every preset is offered)
                continue
            nbytes, bpw = sizes.get(preset, (None, None))
            item = QTreeWidgetItem(self.list, [preset, human_bytes(nbytes) if nbytes is not None else "",
                                               f"{bpw:.2f}" if bpw is not None else ""])
            item.setTextAlignment(1, right)
            item.setTextAlignment(2, right)
            item.setData(0, Qt.ItemDataRole.UserRole, preset)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(0, Qt.CheckState.Checked if preset in DEFAULT_PRESETS else Qt.CheckState.Unchecked)
        self.list.header().setStretchLastSection(False)
        for col in range(3):
            self.list.resizeColumnToContents(col)
        self.list.setColumnWidth(0, self.list.columnWidth(0) + 24)
        self.current.setChecked(True)
        self.current.toggled.connect(self._update)
        self.list.itemChanged.connect(lambda *_: self._update())
        self.imatrix = QLineEdit(self)
        self.imatrix.setPlaceholderText("none: unweighted, as llama-quantize without --imatrix")
        self.imatrix.setToolTip("An importance matrix (llama-imatrix's .gguf or .dat, or one computed with Tools ▸ "
                                "Importance Matrix…): quantize as convert --imatrix does")
        browse = QPushButton("Browse…", self)
        browse.setToolTip("Choose an importance matrix file")
        browse.clicked.connect(self._browse)
        im_row = QHBoxLayout()
        im_row.addWidget(QLabel("Importance matrix:", self))
        im_row.addWidget(self.imatrix, 1)
        im_row.addWidget(browse)
        self.box = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel, self)
        self.box.button(QDialogButtonBox.StandardButton.Ok).setText("Analyze")
        self.box.accepted.connect(self.accept)
        self.box.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addWidget(intro)
        lay.addWidget(self.current)
        lay.addWidget(self.compare)
        lay.addWidget(self.list, 1)
        lay.addLayout(im_row)
        lay.addWidget(self.box)
        self._update()
        self.resize(460, 520)

    def set_presets(self, presets) -> None:
        """Choose "compare presets" with exactly ``presets`` checked."""
        self.compare.setChecked(True)
        for i in range(self.list.topLevelItemCount()):
            item = self.list.topLevelItem(i)
            on = item.data(0, Qt.ItemDataRole.UserRole) in presets
            item.setCheckState(0, Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)

    def checked_presets(self) -> list[str]:
        items = [self.list.topLevelItem(i) for i in range(self.list.topLevelItemCount())]
        return [it.data(0, Qt.ItemDataRole.UserRole) for it in items if it.checkState(0) == Qt.CheckState.Checked]

    def imatrix_path(self) -> str | None:
        """The importance matrix file chosen (None: unweighted)."""
        text = self.imatrix.text().strip()
        return text or None

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose an importance matrix", self.imatrix.text().strip(),
                                              "Importance matrices (*.gguf *.dat);;All files (*)")
        if path:
            self.imatrix.setText(path)

    def presets(self) -> list[str] | None:
        return None if self.current.isChecked() else self.checked_presets()

    def _update(self) -> None:
        self.list.setEnabled(self.compare.isChecked())
        ok = self.current.isChecked() or bool(self.checked_presets())
        self.box.button(QDialogButtonBox.StandardButton.Ok).setEnabled(ok)
