"""A pyqtgraph histogram plot styled like the rest of the window (palette colours, plain axis numbers).

The plot follows palette changes (the system switching between light and dark): background, axes,
grid and legend are restyled when the application palette changes.
"""
from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtCore import QEvent, QObject
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QWidget

MIN_CONTRAST = 60  # lightness difference a curve needs against the plot background
LIFT = 110  # a curve below that is moved this far from the background's lightness


def is_dark(pal: QPalette) -> bool:
    return pal.color(QPalette.ColorRole.Base).lightness() < 128


def curve_color(color: QColor, pal: QPalette) -> QColor:
    """``color``, lightened (dark theme) or darkened (light theme) when it would vanish into the background."""
    bg = pal.color(QPalette.ColorRole.Base).lightness()
    c = QColor(color)
    if abs(c.lightness() - bg) >= MIN_CONTRAST:
        return c
    h, s, l, a = c.getHsl()
    target = bg + LIFT if bg < 128 else bg - LIFT
    c.setHsl(max(h, 0), s, max(0, min(255, target)), a)
    return c


def style_plot(plot: pg.PlotWidget, pal: QPalette) -> None:
    fg = pal.color(QPalette.ColorRole.WindowText)
    plot.setBackground(pal.color(QPalette.ColorRole.Base))
    pi = plot.getPlotItem()
    for name in ("bottom", "left"):
        ax = pi.getAxis(name)
        ax.setPen(fg)
        ax.setTextPen(fg)
        ax.setLabel(ax.labelText, units=ax.labelUnits or None, color=fg.name())
    legend = pi.legend
    if legend is not None:
        base = pal.color(QPalette.ColorRole.Base)
        base.setAlpha(190)  # translucent: curves behind the legend stay visible
        legend.setBrush(pg.mkBrush(base))
        legend.setPen(pg.mkPen(pal.color(QPalette.ColorRole.Mid)))
        legend.setLabelTextColor(fg)


class _PaletteFollower(QObject):
    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt override
        if event.type() in (QEvent.Type.PaletteChange, QEvent.Type.ApplicationPaletteChange):
            style_plot(obj, obj.palette())
        return False


def histogram_plot(parent: QWidget, x_label: str, tooltip: str, min_height: int = 160) -> pg.PlotWidget:
    plot = pg.PlotWidget(parent)
    plot.setAcceptDrops(False)  # file drops belong to the window
    plot.setMinimumHeight(min_height)
    pi = plot.getPlotItem()
    pi.showGrid(x=True, y=True, alpha=0.15)
    pi.setMenuEnabled(False)
    for name, text in (("bottom", x_label), ("left", "count")):
        ax = pi.getAxis(name)
        ax.enableAutoSIPrefix(False)  # "-0.2", not "-200 (x0.001)"
        ax.setLabel(text)
        ax.setCacheMode(ax.CacheMode.DeviceCoordinateCache)
    style_plot(plot, parent.palette())
    plot.installEventFilter(_PaletteFollower(plot))
    plot.setToolTip(tooltip)
    return plot
