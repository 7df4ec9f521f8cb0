"""Light or dark, following the system.

Qt 6.5+ reports the desktop's colour scheme (``QStyleHints.colorScheme()``).  Where the platform
style already draws dark (Windows 11, macOS, KDE/GNOME with their Qt integration) nothing changes.
Where the scheme is dark but the palette is still light (plain X11/Wayland without a platform theme)
the app switches to the Fusion style with a dark palette, and back when the scheme changes.
``WORKBENCH_THEME=light|dark`` (or ``--theme``) forces one.
"""
from __future__ import annotations

import os

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QGuiApplication, QPalette
from PySide6.QtWidgets import QApplication, QStyleFactory

ENV_THEME = "WORKBENCH_THEME"
CHOICES = ("system", "light", "dark")

_state: dict[str, object] = {}


def is_dark(palette: QPalette) -> bool:
    return palette.color(QPalette.ColorRole.Window).lightness() < 128


def dark_palette() -> QPalette:
    """A neutral dark palette (Fusion), with readable disabled/placeholder text and links."""
    R, G = QPalette.ColorRole, QPalette.ColorGroup
    p = QPalette()
    window, base, alt, text = QColor(45, 46, 50), QColor(32, 33, 36), QColor(40, 41, 45), QColor(230, 230, 232)
    button, highlight = QColor(55, 56, 61), QColor(76, 110, 245)
    for group in (G.Active, G.Inactive):
        p.setColor(group, R.Window, window)
        p.setColor(group, R.WindowText, text)
        p.setColor(group, R.Base, base)
        p.setColor(group, R.AlternateBase, alt)
        p.setColor(group, R.ToolTipBase, QColor(60, 61, 66))
        p.setColor(group, R.ToolTipText, text)
        p.setColor(group, R.PlaceholderText, QColor(140, 141, 146))
        p.setColor(group, R.Text, text)
        p.setColor(group, R.Button, button)
        p.setColor(group, R.ButtonText, text)
        p.setColor(group, R.BrightText, QColor(255, 90, 90))
        p.setColor(group, R.Highlight, highlight)
        p.setColor(group, R.HighlightedText, QColor(255, 255, 255))
        p.setColor(group, R.Link, QColor(116, 143, 252))
        p.setColor(group, R.LinkVisited, QColor(151, 117, 250))
        p.setColor(group, R.Light, QColor(80, 81, 87))
        p.setColor(group, R.Midlight, QColor(66, 67, 72))
        p.setColor(group, R.Mid, QColor(88, 89, 95))
        p.setColor(group, R.Dark, QColor(24, 25, 27))
        p.setColor(group, R.Shadow, QColor(0, 0, 0))
    p.setColor(G.Inactive, R.Highlight, QColor(64, 80, 140))
    disabled = QColor(120, 121, 126)
    for role in (R.WindowText, R.Text, R.ButtonText, R.PlaceholderText):
        p.setColor(G.Disabled, role, disabled)
    for role, color in ((R.Window, window), (R.Base, base), (R.Button, button), (R.AlternateBase, alt),
                        (R.Highlight, QColor(70, 71, 76)), (R.HighlightedText, disabled)):
        p.setColor(G.Disabled, role, color)
    return p


def system_scheme() -> str:
    """'dark', 'light' or 'unknown' as the platform reports it."""
    app = QGuiApplication.instance()
    if app is None:
        return "unknown"
    scheme = app.styleHints().colorScheme()
    return {Qt.ColorScheme.Dark: "dark", Qt.ColorScheme.Light: "light"}.get(scheme, "unknown")


def wanted_scheme(choice: str | None = None) -> str:
    choice = (choice or os.environ.get(ENV_THEME) or "system").lower()
    if choice not in CHOICES:
        choice = "system"
    return system_scheme() if choice == "system" else choice


def apply_theme(app: QApplication, choice: str | None = None) -> str:
    """Make the palette match the wanted scheme; returns the scheme in effect ('light' or 'dark').

    Follows later system changes (``colorSchemeChanged``) unless a scheme is forced."""
    if "style" not in _state:  # what the platform gave us, to return to
        _state["style"] = app.style().name()
        _state["palette"] = QPalette(app.palette())
    if choice is not None:
        _state["choice"] = choice
    choice = str(_state.get("choice") or os.environ.get(ENV_THEME) or "system")
    scheme = wanted_scheme(choice)
    native = _state["palette"]
    if scheme == "dark" and not is_dark(native):
        app.setStyle(QStyleFactory.create("Fusion"))
        app.setPalette(dark_palette())
        _state["overridden"] = True
    elif scheme == "light" and is_dark(native):
        app.setStyle(QStyleFactory.create("Fusion"))
        app.setPalette(QStyleFactory.create("Fusion").standardPalette())
        _state["overridden"] = True
    elif _state.get("overridden"):
        app.setStyle(QStyleFactory.create(str(_state["style"])))
        app.setPalette(native)
        _state["overridden"] = False
    if not _state.get("connected") and choice == "system":
        app.styleHints().colorSchemeChanged.connect(lambda _s: _on_scheme_changed(app))
        _state["connected"] = True
    return "dark" if is_dark(app.palette()) else "light"


def _on_scheme_changed(app: QApplication) -> None:
    if not _state.get("overridden"):  # the platform may have switched its own palette: that is native now
        _state["palette"] = QPalette(app.palette())
    apply_theme(app)
