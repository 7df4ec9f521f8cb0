"""Application entry point: ``python -m ui [PATH]`` / ``model-workbench-gui [PATH]``."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from . import APP_NAME, ORG_NAME

NO_DISPLAY_MESSAGE = (
    "No display found: DISPLAY and WAYLAND_DISPLAY are not set, so the window cannot be shown.\n"
    "Run Model Workbench on a desktop session, or set QT_QPA_PLATFORM=offscreen to run without a "
    "screen (for example with --self-test)."
)
SELF_TEST_TIMEOUT_MS = 60_000


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="model-workbench-gui", description="Inspect language-model weight files.")
    p.add_argument("path", nargs="?", help="a model file or folder to open (default: the demo model)")
    p.add_argument("--empty", action="store_true", help="start without opening anything")
    p.add_argument("--self-test", action="store_true",
                   help="open the demo model offscreen, render the window and exit (0 = OK)")
    return p.parse_args(list(argv))


def display_available(env=None, platform: str | None = None) -> bool:
    """False on Linux/BSD when neither X11 nor Wayland nor an explicit Qt platform is configured
    (Qt would abort with a cryptic xcb error)."""
    env = os.environ if env is None else env
    platform = sys.platform if platform is None else platform
    if not (platform.startswith("linux") or "bsd" in platform):
        return True
    return bool(env.get("DISPLAY") or env.get("WAYLAND_DISPLAY") or env.get("QT_QPA_PLATFORM"))


def ensure_app():
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance()
    if app is None:
        app = QApplication([sys.argv[0] if sys.argv else "model-workbench"])
    app.setApplicationName(APP_NAME)
    app.setOrganizationName(ORG_NAME)
    app.setApplicationDisplayName(APP_NAME)
    return app


def self_test(window) -> int:
    """Open the demo model, select a tensor, wait for its histogram and render the window."""
    from PySide6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    outcome: dict[str, str] = {}

    def done(status: str) -> None:
        outcome.setdefault("status", status)
        loop.quit()

    def loaded(model) -> None:
        first = model.tensors[0].name
        if not window.tree.select(first):
            done(f"could not select tensor {first}")

    window.model_loaded.connect(loaded)
    window.load_failed.connect(lambda msg: done(f"load failed: {msg}"))
    window.detail.stats_shown.connect(lambda _s: done("ok"))
    window.detail.worker.error.connect(lambda msg: done(f"statistics failed: {msg}"))
    QTimer.singleShot(SELF_TEST_TIMEOUT_MS, lambda: done("timed out"))
    window.open_demo()
    if "status" not in outcome:
        loop.exec()
    image = window.grab()
    if outcome["status"] == "ok" and image.isNull():
        outcome["status"] = "rendering the window gave an empty image"
    status = outcome["status"]
    print(f"self-test: {status}", file=sys.stderr if status != "ok" else sys.stdout)
    return 0 if status == "ok" else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the GUI.  Returns the exit code (2: no display)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.self_test:
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    if not display_available():
        print(NO_DISPLAY_MESSAGE, file=sys.stderr)
        return 2
    app = ensure_app()
    from PySide6.QtCore import QSettings

    from .main_window import MainWindow
    from .worker import stop_all_workers

    settings = None
    if args.self_test:  # never touch the user's settings
        import tempfile

        tmp = tempfile.mkdtemp(prefix="workbench-selftest-")
        settings = QSettings(os.path.join(tmp, "settings.ini"), QSettings.Format.IniFormat)
    window = MainWindow(settings=settings)
    try:
        if args.self_test:
            window.resize(1200, 760)
            window.show()
            return self_test(window)
        window.show()
        if args.path:
            window.open_path(args.path)
        elif not args.empty:
            window.open_demo()
        return app.exec()
    finally:
        window.shutdown()
        window.close()
        stop_all_workers()
