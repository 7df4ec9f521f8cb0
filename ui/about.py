"""Help ▸ About: what this is and which library versions it runs on."""
from __future__ import annotations

from importlib import metadata

import numpy as np
import PySide6
from PySide6.QtCore import qVersion
from PySide6.QtWidgets import QMessageBox, QWidget

import workbench


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def versions() -> dict[str, str]:
    import pyqtgraph
    return {
        "Model Workbench": workbench.__version__,
        "Qt": qVersion(),
        "PySide6": PySide6.__version__,
        "pyqtgraph": pyqtgraph.__version__,
        "numpy": np.__version__,
        "gguf": _version("gguf"),
    }


def about_text() -> str:
    rows = "".join(f"<tr><td>{k}</td><td>&nbsp;&nbsp;{v}</td></tr>" for k, v in versions().items())
    return (f"<h3>Model Workbench {workbench.__version__}</h3>"
            "<p>Inspect, quantize and convert language-model weights: GGUF, safetensors, "
            "PyTorch .bin and PEFT adapters.</p>"
            f"<table>{rows}</table>")


def show_about(parent: QWidget | None) -> None:
    QMessageBox.about(parent, "About Model Workbench", about_text())
