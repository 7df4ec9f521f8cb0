"""A pyqtgraph histogram plot styled like the rest of the window (palette colours, plain axis numbers)."""
from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import QWidget


def histogram_plot(parent: QWidget, x_label: str, tooltip: str, min_height: int = 160) -> pg.PlotWidget:
    pal = parent.palette()
    fg = pal.color(QPalette.ColorRole.WindowText)
    plot = pg.PlotWidget(parent, background=pal.color(QPalette.ColorRole.Base))
    plot.setAcceptDrops(False)  # file drops belong to the window
    plot.setMinimumHeight(min_height)
    pi = plot.getPlotItem()
    pi.showGrid(x=True, y=True, alpha=0.15)
    pi.setMenuEnabled(False)
    for name, text in (("bottom", x_label), ("left", "count")):
        ax = pi.getAxis(name)
        ax.setPen(fg)
        ax.setTextPen(fg)
        ax.enableAutoSIPrefix(False)  # "-0.2", not "-200 (x0.001)"
        ax.setLabel(text, color=fg.name())
    plot.setToolTip(tooltip)
    return plot
