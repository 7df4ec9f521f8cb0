"""A filter box: plain case-insensitive substring, or a regular expression (checkbox or ``/re/``)."""
from __future__ import annotations

from PySide6.QtCore import QRegularExpression, QTimer, Signal
from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QLineEdit, QWidget

_INVALID_STYLE = "QLineEdit { border: 2px solid #d0312d; border-radius: 3px; }"
_TOOLTIP = ("Show only rows containing this text (case-insensitive).\n"
            "Write /pattern/ or tick Regex for a regular expression, e.g. /^blk\\.1\\d\\./")


def build_regex(text: str, regex_mode: bool) -> QRegularExpression:
    """The expression the filter text stands for.  ``/pattern/`` always means a regex."""
    if len(text) >= 2 and text.startswith("/") and text.endswith("/"):
        pattern = text[1:-1]
    elif regex_mode:
        pattern = text
    else:
        pattern = QRegularExpression.escape(text)
    return QRegularExpression(pattern, QRegularExpression.PatternOption.CaseInsensitiveOption)


class FilterEdit(QWidget):
    """Emits ``changed(QRegularExpression)`` with a valid expression (debounced while typing);
    an invalid regex turns the border red and keeps the previous filter."""

    changed = Signal(QRegularExpression)

    def __init__(self, placeholder: str = "Filter", parent: QWidget | None = None, delay_ms: int = 120):
        super().__init__(parent)
        self.edit = QLineEdit(self)
        self.edit.setPlaceholderText(placeholder)
        self.edit.setClearButtonEnabled(True)
        self.edit.setAcceptDrops(False)  # file drops go to the window (open model), not into the text
        self.edit.setToolTip(_TOOLTIP)
        self.regex_box = QCheckBox("Regex", self)
        self.regex_box.setToolTip("Interpret the filter as a regular expression")
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(6)
        lay.addWidget(self.edit, 1)
        lay.addWidget(self.regex_box)
        self.error: str | None = None
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(delay_ms)
        self._timer.timeout.connect(self.apply)
        self.edit.textChanged.connect(lambda _t: self._timer.start())
        self.edit.returnPressed.connect(self.apply)
        self.regex_box.toggled.connect(lambda _on: self.apply())

    def text(self) -> str:
        return self.edit.text()

    def set_text(self, text: str, regex: bool | None = None) -> None:
        """Set the filter and apply it at once (no typing delay)."""
        if regex is not None:
            self.regex_box.blockSignals(True)
            self.regex_box.setChecked(regex)
            self.regex_box.blockSignals(False)
        self.edit.setText(text)
        self.apply()

    def is_valid(self) -> bool:
        return self.error is None

    def apply(self) -> None:
        self._timer.stop()
        rx = build_regex(self.edit.text(), self.regex_box.isChecked())
        if not rx.isValid():
            self.error = rx.errorString()
            self.edit.setStyleSheet(_INVALID_STYLE)
            self.edit.setToolTip(f"Invalid regular expression: {self.error}")
            return
        if self.error is not None:
            self.error = None
            self.edit.setStyleSheet("")
            self.edit.setToolTip(_TOOLTIP)
        self.changed.emit(rx)

    def focus(self) -> None:
        self.edit.setFocus()
        self.edit.selectAll()
