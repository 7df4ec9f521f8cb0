"""Model Workbench desktop GUI (PySide6 + pyqtgraph) over the :mod:`workbench` core."""

APP_NAME = "Model Workbench"
ORG_NAME = "ModelWorkbench"
