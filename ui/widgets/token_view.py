"""The Compare tab's token views: where in the text a level departs from its base, token by token.

* :class:`TokenKldView`: the scored tokens of the first calibration window, each on a background coloured by
  one level's KL divergence from the base at that token (a log scale from 1e-4, white, to 1 and above, red);
  hovering a token shows the base's and the level's five most likely next tokens with their probabilities.
* :class:`GeneratedTokensTable`: the greedy continuations as a grid, one row per level and one column per
  generated token, so the levels line up token by token against the base; cells that differ from the base's
  token are highlighted.

Both only display what :func:`workbench.infer.compare.compare` computed (``view_ids``, ``top_ids``, ...).
"""
from __future__ import annotations

import math

from PySide6.QtCore import QEvent, Qt
from PySide6.QtGui import QColor, QTextCharFormat, QTextCursor
from PySide6.QtWidgets import (QAbstractItemView, QComboBox, QHBoxLayout, QLabel, QTableWidget, QTableWidgetItem,
                               QTextEdit, QToolTip, QVBoxLayout, QWidget)

from workbench.infer.compare import CompareResult, LevelResult

KLD_LOW, KLD_HIGH = 1e-4, 1.0  # the colour scale's ends (log): white below, full red above


def kld_color(kld: float) -> QColor:
    """White (KLD <= 1e-4) through yellow to red (KLD >= 1), on a log scale."""
    if not math.isfinite(kld) or kld <= KLD_LOW:
        t = 0.0 if math.isfinite(kld) or kld < 0 else 1.0
    else:
        t = min(1.0, math.log(kld / KLD_LOW) / math.log(KLD_HIGH / KLD_LOW))
    if t < 0.5:  # white -> yellow
        return QColor(255, 255, int(round(255 * (1 - 2 * t) + 120 * 2 * t)))
    u = (t - 0.5) * 2  # yellow -> red
    return QColor(255, int(round(255 * (1 - u) + 80 * u)), int(round(120 * (1 - u) + 60 * u)))


def visible(piece: str) -> str:
    """A token's text with its spaces and line breaks shown (for cells and tooltips)."""
    return piece.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥") or "∅"


class TokenKldView(QWidget):
    """The calibration text coloured by one level's per-token KL divergence; hover for the top candidates."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.result: CompareResult | None = None
        self.level = QComboBox(self)
        self.level.setToolTip("The level whose KL divergence from the base colours the tokens")
        self.level.currentIndexChanged.connect(lambda _i: self._render())
        self.note = QLabel(self)
        self.note.setEnabled(False)
        scale = QLabel(self)
        scale.setTextFormat(Qt.TextFormat.RichText)
        stops = "".join(f"<span style='background:{kld_color(v).name()}'>&nbsp;{label}&nbsp;</span>"
                        for v, label in ((1e-5, "≤1e-4"), (1e-3, "1e-3"), (1e-2, "0.01"), (1e-1, "0.1"), (2.0, "≥1")))
        scale.setText(f"KLD {stops}")
        scale.setToolTip("Background of each token: the level's KL divergence from the base's next-token "
                         "distribution at that token, on a log scale")
        head = QHBoxLayout()
        head.setContentsMargins(0, 0, 0, 0)
        head.addWidget(QLabel("Colour by", self))
        head.addWidget(self.level)
        head.addWidget(self.note, 1)
        head.addWidget(scale)
        self.text = QTextEdit(self)
        self.text.setReadOnly(True)
        self.text.setMouseTracking(True)
        self.text.viewport().setMouseTracking(True)
        self.text.viewport().installEventFilter(self)
        self.text.setToolTip("")
        self.spans: list[tuple[int, int]] = []  # document positions [start, end) of each scored token
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(2)
        lay.addLayout(head)
        lay.addWidget(self.text, 1)

    def set_result(self, result: CompareResult | None) -> None:
        self.result = result
        self.level.blockSignals(True)
        self.level.clear()
        if result is not None:
            for r in result.levels:
                self.level.addItem(r.label)
        self.level.blockSignals(False)
        n = len(result.view_ids) if result is not None else 0
        self.note.setText(f"the {n} scored tokens of the first window" if n else "")
        self._render()

    def current_level(self) -> LevelResult | None:
        i = self.level.currentIndex()
        if self.result is None or not 0 <= i < len(self.result.levels):
            return None
        return self.result.levels[i]

    def _render(self) -> None:
        self.text.clear()
        self.spans = []
        res, lv = self.result, self.current_level()
        if res is None or lv is None:
            return
        cur = QTextCursor(self.text.document())
        muted = QTextCharFormat()
        muted.setForeground(self.palette().placeholderText())
        cur.insertText(res.view_context, muted)
        for i, piece in enumerate(res.view_pieces):
            fmt = QTextCharFormat()
            kld = lv.token_kld[i] if i < len(lv.token_kld) else float("nan")
            fmt.setBackground(kld_color(kld))
            fmt.setForeground(QColor("black"))
            start = cur.position()
            cur.insertText(piece or "∅", fmt)
            self.spans.append((start, cur.position()))

    def token_at(self, pos: int) -> int | None:
        """The scored token at document position ``pos`` (None: context or outside)."""
        lo, hi = 0, len(self.spans) - 1
        while lo <= hi:
            mid = (lo + hi) // 2
            a, b = self.spans[mid]
            if pos < a:
                hi = mid - 1
            elif pos >= b:
                lo = mid + 1
            else:
                return mid
        return None

    def tooltip_html(self, i: int) -> str:
        """What hovering token ``i`` shows: its KLD, the base's and the level's top candidates."""
        res, lv = self.result, self.current_level()
        if res is None or lv is None:
            return ""

        def rows(r: LevelResult) -> str:
            ids = r.top_ids[i] if i < len(r.top_ids) else []
            probs = r.top_probs[i] if i < len(r.top_probs) else []
            texts = r.top_texts[i] if i < len(r.top_texts) else [f"#{t}" for t in ids]
            cells = []
            for t, text, p in zip(ids, texts, probs):
                mark = "<b>" if t == res.view_ids[i] else ""
                end = "</b>" if mark else ""
                cells.append(f"<tr><td>{mark}{_esc(visible(text))}{end}</td><td align='right'>{100 * p:.1f}%</td></tr>")
            return "".join(cells)

        kld = lv.token_kld[i] if i < len(lv.token_kld) else float("nan")
        return (f"<b>{_esc(visible(res.view_pieces[i]))}</b> · KLD {kld:.4g}<table><tr><td colspan=2><i>base "
                f"{_esc(res.base.label)}</i></td></tr>{rows(res.base)}<tr><td colspan=2><i>{_esc(lv.label)}</i></td>"
                f"</tr>{rows(lv)}</table>")

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt override
        if obj is self.text.viewport() and event.type() == QEvent.Type.ToolTip:
            i = self.token_at(self.text.cursorForPosition(event.pos()).position())
            if i is None:
                QToolTip.hideText()
            else:
                QToolTip.showText(event.globalPos(), self.tooltip_html(i), self.text)
            return True
        return super().eventFilter(obj, event)


class GeneratedTokensTable(QTableWidget):
    """One row per level (base first), one column per generated token; differing cells highlighted."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.horizontalHeader().setDefaultSectionSize(56)
        self.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 8)
        self.setToolTip("Each level's greedy continuation token by token under the base's; highlighted: a token "
                        "that differs from the base's at the same position")

    def set_result(self, result: CompareResult | None, highlight: QColor | None = None) -> None:
        self.clear()
        if result is None or result.prompt is None:
            self.setRowCount(0)
            self.setColumnCount(0)
            return
        rows = [result.base, *result.levels]
        n = max((len(r.generated_ids) for r in rows), default=0)
        self.setRowCount(len(rows))
        self.setColumnCount(n)
        self.setVerticalHeaderLabels([r.label for r in rows])
        self.setHorizontalHeaderLabels([str(j + 1) for j in range(n)])
        base = result.base.generated_ids
        color = highlight or QColor("#ffd8a8")
        for ri, r in enumerate(rows):
            pieces = r.generated_pieces or [f"#{t}" for t in r.generated_ids]
            for j, (t, piece) in enumerate(zip(r.generated_ids, pieces)):
                item = QTableWidgetItem(visible(piece))
                item.setToolTip(f"token {t}: {piece!r}")
                if ri and (j >= len(base) or base[j] != t):
                    item.setBackground(color)
                    item.setForeground(QColor("black"))
                self.setItem(ri, j, item)
        self.resizeColumnsToContents()
        for j in range(n):
            self.setColumnWidth(j, max(self.columnWidth(j), 28))

    def differing(self, row: int) -> list[int]:
        """Columns of ``row`` whose cell is highlighted (for tests and accessibility)."""
        out = []
        for j in range(self.columnCount()):
            item = self.item(row, j)
            if item is not None and item.background().style() != Qt.BrushStyle.NoBrush:
                out.append(j)
        return out


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
