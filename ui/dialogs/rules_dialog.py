"""Edit ▸ Rules…: an ordered table of ``regex -> type`` rules (llama-quantize's --tensor-type)."""
from __future__ import annotations

import re

from PySide6.QtCore import Qt
from PySide6.QtGui import QBrush, QColor, QKeySequence
from PySide6.QtWidgets import (QAbstractItemView, QComboBox, QDialog, QDialogButtonBox, QHBoxLayout, QHeaderView,
                               QLabel, QPushButton, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from workbench.plan import TYPES, Plan, allows_quantization

PATTERN, TYPE_COL, MATCHES = range(3)
INVALID_BG = QColor(255, 215, 215)
HELP = ("Each pattern is a Python regular expression searched in the GGUF tensor name, e.g. "
        "<code>ffn_down</code> or <code>^blk\\.(0|1)\\.attn_v</code>. The first matching rule chooses the "
        "type; overrides set in the Plan column win over rules; a type whose block does not fit a tensor's "
        "rows falls back. Tensors llama-quantize never quantizes (norms, 1-D) are not affected.")


def pattern_error(pattern: str) -> str | None:
    if not pattern:
        return "empty pattern (it would match every tensor)"
    try:
        re.compile(pattern)
    except re.error as exc:
        return str(exc)
    return None


class RulesDialog(QDialog):
    """``rules()`` returns the rows as ``[(pattern, type)]``; OK is disabled while a pattern is invalid."""

    def __init__(self, plan: Plan, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Plan Rules")
        self._names = [e.gguf_name for e in plan.entries if allows_quantization(e.gguf_name, e.shape)]
        self.table = QTableWidget(0, 3, self)
        self.table.setHorizontalHeaderLabels(["Pattern (regex)", "Type", "Decides"])
        self.table.horizontalHeaderItem(MATCHES).setToolTip("Quantizable tensors for which this is the first "
                                                             "matching rule")
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(PATTERN, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(TYPE_COL, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(MATCHES, QHeaderView.ResizeMode.ResizeToContents)
        self.table.itemChanged.connect(lambda _item: self._validate())

        help_label = QLabel(HELP, self)
        help_label.setWordWrap(True)
        help_label.setTextFormat(Qt.TextFormat.RichText)
        self.add_button = self._button("&Add", "Add a rule (Insert)", lambda: self.add_rule("", "Q8_0", edit=True))
        self.add_button.setShortcut(QKeySequence("Insert"))
        self.remove_button = self._button("&Remove", "Remove the selected rule (Delete)", self.remove_current)
        self.remove_button.setShortcut(QKeySequence(QKeySequence.StandardKey.Delete))
        self.up_button = self._button("Move &Up", "Check this rule earlier (the first match wins)",
                                      lambda: self.move_current(-1))
        self.down_button = self._button("Move &Down", "Check this rule later", lambda: self.move_current(1))
        buttons = QHBoxLayout()
        for b in (self.add_button, self.remove_button, self.up_button, self.down_button):
            buttons.addWidget(b)
        buttons.addStretch(1)
        self.message = QLabel(self)
        self.message.setStyleSheet("color: #c0392b;")
        self.box = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel, self)
        self.box.accepted.connect(self.accept)
        self.box.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addWidget(help_label)
        lay.addWidget(self.table, 1)
        lay.addLayout(buttons)
        lay.addWidget(self.message)
        lay.addWidget(self.box)
        self.table.currentCellChanged.connect(lambda *_: self._update_buttons())
        for pattern, qtype in plan.rules:
            self.add_rule(pattern, qtype)
        self._validate()
        self.resize(640, 380)

    def _button(self, text: str, tip: str, slot) -> QPushButton:
        b = QPushButton(text, self)
        b.setToolTip(tip)
        b.setAutoDefault(False)
        b.clicked.connect(slot)
        return b

    # -- rows -----------------------------------------------------------------------------------------
    def add_rule(self, pattern: str, qtype: str, edit: bool = False) -> int:
        row = self.table.rowCount()
        self.table.blockSignals(True)
        self.table.insertRow(row)
        self.table.setItem(row, PATTERN, QTableWidgetItem(pattern))
        combo = QComboBox(self.table)
        combo.addItems(TYPES)
        combo.setCurrentText(qtype.upper())
        combo.setToolTip("Type for the tensors this rule matches")
        self.table.setCellWidget(row, TYPE_COL, combo)
        count = QTableWidgetItem()
        count.setFlags(Qt.ItemFlag.ItemIsEnabled)
        count.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.table.setItem(row, MATCHES, count)
        self.table.blockSignals(False)
        self.table.setCurrentCell(row, PATTERN)
        if edit:
            self.table.editItem(self.table.item(row, PATTERN))
        self._validate()
        return row

    def remove_current(self) -> None:
        row = self.table.currentRow()
        if row >= 0:
            self.table.removeRow(row)
            self._validate()

    def move_current(self, delta: int) -> None:
        row = self.table.currentRow()
        target = row + delta
        if row < 0 or not 0 <= target < self.table.rowCount():
            return
        rules = self.rules()
        rules[row], rules[target] = rules[target], rules[row]
        self._set_rules(rules)
        self.table.setCurrentCell(target, PATTERN)

    def _set_rules(self, rules) -> None:
        self.table.setRowCount(0)
        for pattern, qtype in rules:
            self.add_rule(pattern, qtype)

    def rules(self) -> list[tuple[str, str]]:
        return [(self.table.item(r, PATTERN).text(), self.table.cellWidget(r, TYPE_COL).currentText())
                for r in range(self.table.rowCount())]

    def is_valid(self) -> bool:
        return all(pattern_error(p) is None for p, _ in self.rules())

    # -- feedback -------------------------------------------------------------------------------------
    def _validate(self) -> None:
        self.table.blockSignals(True)
        decided = set()
        errors = []
        for r, (pattern, _t) in enumerate(self.rules()):
            item, count = self.table.item(r, PATTERN), self.table.item(r, MATCHES)
            err = pattern_error(pattern)
            item.setBackground(QBrush(INVALID_BG) if err else QBrush())
            item.setToolTip(f"Invalid: {err}" if err else "Searched in GGUF tensor names (Python regex)")
            if err:
                errors.append(f"Rule {r + 1}: {err}")
                count.setText("–")
                continue
            rx = re.compile(pattern)
            mine = [n for n in self._names if n not in decided and rx.search(n)]
            decided.update(mine)
            count.setText(str(len(mine)))
            count.setToolTip("\n".join(mine[:20]) + ("\n…" if len(mine) > 20 else ""))
        self.table.blockSignals(False)
        self.message.setText("; ".join(errors))
        self.box.button(QDialogButtonBox.StandardButton.Ok).setEnabled(not errors)
        self._update_buttons()

    def _update_buttons(self) -> None:
        row, n = self.table.currentRow(), self.table.rowCount()
        self.remove_button.setEnabled(row >= 0)
        self.up_button.setEnabled(row > 0)
        self.down_button.setEnabled(0 <= row < n - 1)
