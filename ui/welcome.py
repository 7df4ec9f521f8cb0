"""The page shown before any model is loaded: a drop hint and the three ways to open something."""
from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFont
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

WELCOME_TEXT = "Drop a model file or folder here, or use File ▸ Open"


class WelcomeWidget(QWidget):
    open_file = Signal()
    open_folder = Signal()
    open_demo = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        panel = QFrame(self)
        panel.setObjectName("welcomePanel")
        panel.setFrameShape(QFrame.Shape.StyledPanel)
        panel.setStyleSheet("#welcomePanel { border: 2px dashed palette(mid); border-radius: 12px; }")
        title = QLabel("Model Workbench", panel)
        f = QFont(title.font())
        f.setPointSizeF(f.pointSizeF() * 1.8)
        f.setBold(True)
        title.setFont(f)
        title.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.label = QLabel(WELCOME_TEXT, panel)
        self.label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.label.setWordWrap(True)
        formats = QLabel("GGUF · safetensors (single or sharded) · PyTorch .bin · Hugging Face folders · "
                         "PEFT adapters", panel)
        formats.setAlignment(Qt.AlignmentFlag.AlignCenter)
        formats.setWordWrap(True)
        formats.setEnabled(False)  # drawn greyed: a secondary line

        self.file_button = QPushButton("Open File…", panel)
        self.file_button.setToolTip("Open a .gguf, .safetensors or .bin file (Ctrl+O)")
        self.folder_button = QPushButton("Open Folder…", panel)
        self.folder_button.setToolTip("Open a Hugging Face model or PEFT adapter folder (Ctrl+Shift+O)")
        self.demo_button = QPushButton("Open Demo Model", panel)
        self.demo_button.setToolTip("Open a tiny built-in llama-style GGUF to explore the app")
        self.file_button.clicked.connect(self.open_file)
        self.folder_button.clicked.connect(self.open_folder)
        self.demo_button.clicked.connect(self.open_demo)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        for b in (self.file_button, self.folder_button, self.demo_button):
            b.setMinimumWidth(140)
            buttons.addWidget(b)
        buttons.addStretch(1)

        inner = QVBoxLayout(panel)
        inner.setContentsMargins(48, 40, 48, 40)
        inner.setSpacing(14)
        inner.addWidget(title)
        inner.addWidget(self.label)
        inner.addWidget(formats)
        inner.addSpacing(8)
        inner.addLayout(buttons)

        outer = QVBoxLayout(self)
        outer.setContentsMargins(40, 40, 40, 40)
        outer.addStretch(1)
        row = QHBoxLayout()
        row.addStretch(1)
        row.addWidget(panel, 4)
        row.addStretch(1)
        outer.addLayout(row)
        outer.addStretch(2)
