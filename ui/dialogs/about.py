"""Help ▸ About: what this is and which library versions it runs on (selectable, and copyable as text)."""
from __future__ import annotations

import platform
import sys
from importlib import metadata

import numpy as np
import PySide6
from PySide6.QtCore import Qt, qVersion
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QApplication, QMessageBox, QWidget

import workbench


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        import importlib

        try:  # a frozen bundle may carry the module without its distribution metadata
            return str(getattr(importlib.import_module(dist), "__version__", "unknown"))
        except ImportError:
            return "not installed"


def versions() -> dict[str, str]:
    import pyqtgraph
    return {
        "Model Workbench": workbench.__version__,
        "Python": platform.python_version(),
        "Qt": qVersion(),
        "PySide6": PySide6.__version__,
        "pyqtgraph": pyqtgraph.__version__,
        "numpy": np.__version__,
        "gguf": _version("gguf"),
        "Platform": f"{platform.system()} {platform.machine()}"
                    + (f" ({QGuiApplication.platformName()})" if QGuiApplication.instance() else "")
                    + (" · bundle" if getattr(sys, "frozen", False) else ""),
    }


def versions_text() -> str:
    return "\n".join(f"{k}: {v}" for k, v in versions().items())


def about_text() -> str:
    rows = "".join(f"<tr><td>{k}</td><td>&nbsp;&nbsp;{v}</td></tr>" for k, v in versions().items())
    return (f"<h3>Model Workbench {workbench.__version__}</h3>"
            "<p>Inspect, quantize and convert language-model weights: GGUF, safetensors, "
            "PyTorch .bin and PEFT adapters.</p>"
            f"<table>{rows}</table>")


def about_box(parent: QWidget | None) -> QMessageBox:
    box = QMessageBox(parent)
    box.setWindowTitle("About Model Workbench")
    box.setTextFormat(Qt.TextFormat.RichText)
    box.setText(about_text())
    box.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    icon = QApplication.windowIcon()
    if icon.isNull():
        from ..app import app_icon

        icon = app_icon()
    if not icon.isNull():
        box.setIconPixmap(icon.pixmap(64, 64))
    copy = box.addButton("Copy Versions", QMessageBox.ButtonRole.ActionRole)
    copy.setToolTip("Copy these versions to the clipboard (for a bug report)")
    copy.clicked.disconnect()  # keep the box open after copying
    copy.clicked.connect(lambda: QGuiApplication.clipboard().setText(versions_text()))
    box.addButton(QMessageBox.StandardButton.Ok)
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    return box


def show_about(parent: QWidget | None) -> QMessageBox:
    box = about_box(parent)
    box.open()
    return box
