"""Application entry point: ``python -m ui [PATH...]`` / ``model-workbench [PATH...]``.

Without a path the window opens on the welcome page.  With paths (a double-click in the file
manager runs ``model-workbench FILE``) they go to the already running instance, which opens them
and comes to the front; when no instance answers, this process opens its own window.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Sequence

from . import APP_NAME, ORG_NAME

NO_DISPLAY_MESSAGE = (
    "No display found: DISPLAY and WAYLAND_DISPLAY are not set, so the window cannot be shown.\n"
    "Run Model Workbench on a desktop session, or set QT_QPA_PLATFORM=offscreen to run without a "
    "screen (for example with --self-test)."
)
SELF_TEST_TIMEOUT_MS = 60_000
DESKTOP_ID = "model-workbench"
GUI_SWITCH_INTERVAL_S = 0.0005  # how soon a worker thread hands the interpreter lock to the GUI thread
_T0 = time.perf_counter()  # when this module was imported: the start of the app for start-up timing


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="model-workbench", description="Inspect language-model weight files.")
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="model files or a folder to open (several files of one folder: that folder)")
    p.add_argument("--empty", action="store_true", help="start on the welcome page (the default without PATH)")
    p.add_argument("--demo", action="store_true", help="open the built-in demo model (when no PATH is given)")
    p.add_argument("--new-window", action="store_true",
                   help="open PATH in a new window instead of the running Model Workbench")
    p.add_argument("--theme", choices=("system", "light", "dark"),
                   help="colour scheme (default: follow the system; also WORKBENCH_THEME)")
    p.add_argument("--self-test", action="store_true",
                   help="offscreen: open the demo model (and PATH if given), render the window, exit (0 = OK)")
    p.add_argument("--screenshot", metavar="PNG", help="with --self-test: save the rendered window here")
    p.add_argument("--install-desktop", action="store_true",
                   help="add the app to the desktop menu and open .gguf/.safetensors files with it (Linux), then exit")
    p.add_argument("--uninstall-desktop", action="store_true", help="undo --install-desktop, then exit")
    args = p.parse_args(list(argv))
    args.path = _path_to_open(args.paths)
    return args


def _path_to_open(paths: list[str]) -> str | None:
    from .drop import path_to_open

    return path_to_open([os.path.abspath(p) for p in paths]) if len(paths) > 1 else (paths[0] if paths else None)


def display_available(env=None, platform: str | None = None) -> bool:
    """False on Linux/BSD when neither X11 nor Wayland nor an explicit Qt platform is configured
    (Qt would abort with a cryptic xcb error)."""
    env = os.environ if env is None else env
    platform = sys.platform if platform is None else platform
    if not (platform.startswith("linux") or "bsd" in platform):
        return True
    return bool(env.get("DISPLAY") or env.get("WAYLAND_DISPLAY") or env.get("QT_QPA_PLATFORM"))


def app_icon():
    """The application icon: every rendered size from resources/icons (the SVG if none is there)."""
    from PySide6.QtCore import QSize
    from PySide6.QtGui import QIcon

    from workbench.desktop import ICON_SIZES, icon_png, icon_svg

    icon = QIcon()
    for s in ICON_SIZES:
        if icon_png(s).is_file():
            icon.addFile(str(icon_png(s)), QSize(s, s))
    if icon.isNull() and icon_svg().is_file():
        icon.addFile(str(icon_svg()))
    return icon


def ensure_app(theme: str | None = None):
    from PySide6.QtWidgets import QApplication

    from .theme import apply_theme

    app = QApplication.instance()
    if app is None:
        app = QApplication([sys.argv[0] if sys.argv else DESKTOP_ID])
    # Every call from Qt into Python (a model's data(), a slot, a paint) takes the interpreter lock; while a
    # worker runs Python code, each take waits for the worker to be asked to let go, by default 5 ms: a
    # repaint with a hundred such calls froze the window for up to a second.  Asked sooner, the GUI waits
    # ~0.5 ms per call; workers lose only the extra switches, which happen only while the GUI wants the lock.
    sys.setswitchinterval(min(sys.getswitchinterval(), GUI_SWITCH_INTERVAL_S))
    # ...and the search-heavy kernels (K and IQ types), whose many small numpy calls keep retaking the lock
    # (the GUI kept losing the hand-over during an analysis: gaps of 40+ ms), run in the worker processes
    from workbench import kernels

    kernels.keep_interpreter_free()
    from .gc_guard import install as collect_on_gui_thread

    collect_on_gui_thread(app)  # cyclic garbage holding Qt objects must never be destroyed on a worker thread
    app.setApplicationName(APP_NAME)
    app.setOrganizationName(ORG_NAME)
    app.setApplicationDisplayName(APP_NAME)
    app.setDesktopFileName(DESKTOP_ID)  # Wayland app id / the .desktop entry the shell matches
    if app.windowIcon().isNull() or app.property("workbenchIcon") is None:
        app.setWindowIcon(app_icon())
        app.setProperty("workbenchIcon", True)
    apply_theme(app, theme)
    return app


def open_forwarded(window, paths: list[str]) -> None:
    """A later launch handed us ``paths``: open them here and bring the window to the front."""
    from .single_instance import raise_window

    path = _path_to_open(paths)
    if path:
        window.open_path(path)
    raise_window(window)


def _wait_for_tensor(window, opener, select_2d: bool) -> str:
    """Run ``opener()``, then select a tensor of the loaded model and wait for its statistics."""
    from PySide6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    outcome: dict[str, str] = {}

    def done(status: str) -> None:
        outcome.setdefault("status", status)
        loop.quit()

    def loaded(model) -> None:
        tensors = model.tensors
        pick = next((t for t in tensors if len(t.shape) == 2), tensors[0]) if select_2d else tensors[0]
        if not window.tree.select(pick.name):
            done(f"could not select tensor {pick.name}")

    conns = [(window.model_loaded, loaded), (window.load_failed, lambda msg: done(f"load failed: {msg}")),
             (window.detail.stats_shown, lambda _s: done("ok")),
             (window.detail.worker.error, lambda msg: done(f"statistics failed: {msg}"))]
    for sig, slot in conns:
        sig.connect(slot)
    timer = QTimer()
    timer.setSingleShot(True)
    timer.timeout.connect(lambda: done("timed out"))
    timer.start(SELF_TEST_TIMEOUT_MS)
    try:
        opener()
        if "status" not in outcome:
            loop.exec()
    finally:
        timer.stop()
        for sig, slot in conns:
            sig.disconnect(slot)
    return outcome["status"]


def self_test(window, path: str | None = None, screenshot: str | None = None) -> int:
    """Check the app works (used on the frozen bundle): icon resources present, the demo model opens and
    a tensor's histogram is computed, the same for ``path``, and the window renders (to ``screenshot``)."""
    from PySide6.QtWidgets import QApplication

    print(f"self-test: window shown after {time.perf_counter() - _T0:.2f} s", flush=True)
    status = "ok"
    if QApplication.windowIcon().isNull():
        status = "the application icon is missing (resources/icons)"
    if status == "ok":
        status = _wait_for_tensor(window, window.open_demo, select_2d=False)
        if status != "ok":
            status = f"demo model: {status}"
    if status == "ok" and path:
        status = _wait_for_tensor(window, lambda: window.open_path(path), select_2d=True)
        if status == "ok" and (window.model is None or os.path.abspath(str(window.model.path)) != os.path.abspath(path)):
            status = f"{path} was not the model shown"
        elif status != "ok":
            status = f"{path}: {status}"
    for _ in range(5):  # let layouts and plots settle
        QApplication.processEvents()
    image = window.grab()
    if status == "ok" and image.isNull():
        status = "rendering the window gave an empty image"
    if status == "ok" and screenshot and not image.save(screenshot):
        status = f"could not write the screenshot {screenshot}"
    if status == "ok":
        shown = f" ({window.model.name}, {len(window.model.tensors)} tensors)" if window.model else ""
        print(f"self-test: ok{shown} in {time.perf_counter() - _T0:.2f} s", flush=True)
    else:
        print(f"self-test: {status}", file=sys.stderr, flush=True)
    return 0 if status == "ok" else 1


def _desktop_command(args) -> int:
    from workbench import WorkbenchError
    from workbench.desktop import install_desktop, supported, uninstall_desktop

    if not supported():
        print("Desktop entries are a Linux/BSD feature; on Windows and macOS the installer or the app bundle "
              "registers the app.", file=sys.stderr)
        return 1
    try:
        report = uninstall_desktop() if args.uninstall_desktop else install_desktop()
    except WorkbenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for p in report.files:
        print(p)
    for text in report.failed:
        print(f"warning: {text}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the GUI.  Returns the exit code (2: no display)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.install_desktop or args.uninstall_desktop:
        return _desktop_command(args)
    if args.self_test:
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    if not display_available():
        print(NO_DISPLAY_MESSAGE, file=sys.stderr)
        return 2
    single = not (args.self_test or args.new_window)
    if single and args.path:
        from .single_instance import send_paths

        if send_paths(args.paths):
            print(f"Opened {args.path} in the running {APP_NAME}.")
            return 0
    from .deferred import Preloader

    # the core (numpy, gguf, the readers) is imported on a thread while Qt starts: the window needs it to paint
    Preloader(("workbench",)).start()
    app = ensure_app(args.theme)
    from PySide6.QtCore import QSettings

    from .main_window import MainWindow
    from .worker import stop_all_workers

    settings = None
    if args.self_test:  # never touch the user's settings
        import tempfile

        tmp = tempfile.mkdtemp(prefix="workbench-selftest-")
        settings = QSettings(os.path.join(tmp, "settings.ini"), QSettings.Format.IniFormat)
    window = MainWindow(settings=settings)
    server = None
    if single:
        from .single_instance import start_server

        server = start_server(parent=window)
        if server is not None:
            server.open_requested.connect(lambda paths: open_forwarded(window, paths))
    try:
        if args.self_test:
            window.resize(1200, 760)
            window.show()
            return self_test(window, args.path, args.screenshot)
        window.show()
        if args.path:
            window.open_path(args.path)
        elif args.demo:
            window.open_demo()
        return app.exec()
    finally:
        if server is not None:
            server.close()
        window.shutdown()
        window.close()
        stop_all_workers()
