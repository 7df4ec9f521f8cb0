"""Render Model Workbench offscreen and save a screenshot.

    python packaging/screenshot.py MODEL_PATH OUT.png [--tensor NAME] [--tab tensor|metadata|error]
                                   [--size 1280x800] [--filter TEXT] [--expand] [--theme light|dark]
                                   [--preset Q4_K_M] [--rule REGEX=TYPE ...] [--override NAME=TYPE ...]
                                   [--types Q8_0,Q4_0,Q2_K] [--analyze plan|PRESET,PRESET...]
                                   [--compare LEVEL,LEVEL...] [--compare-windows 2] [--compare-ctx 512]
                                   [--tree-width PX] [--timeout SECONDS]
    python packaging/screenshot.py --welcome OUT.png [--recent PATH ...] [--hf-cache DIR] [--theme dark]

Opens the model, sets up the plan (preset, rules, overrides), selects a tensor (the given one, else the
first 2-D tensor), waits for its histogram (``--tab error``: for the error histograms of ``--types``;
``--analyze``: for the model analysis in its dock), and saves ``window.grab()``.  ``--welcome``
shows the first-run page instead, with ``--recent`` entries (missing ones are greyed) and the models of a
Hugging Face cache (``--hf-cache``, default the user's), after its background scan.  ``--compare``
compares quantization levels of the model (presets, ``current`` for the plan, or plan files) in the Compare
tab through ``MainWindow.compare_with(levels, ...)`` and waits for ``MainWindow.compared``.
Uses an isolated settings file, never the user's.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PySide6.QtCore import QEventLoop, QSettings, Qt, QTimer  # noqa: E402

TIMEOUT_MS = 120_000


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", nargs="?", help="model file or folder, or 'demo' for the built-in demo model")
    p.add_argument("output", help="PNG file to write")
    p.add_argument("--tensor", help="tensor to select (default: the first 2-D tensor)")
    p.add_argument("--tab", choices=("tensor", "metadata", "error"), default="tensor")
    p.add_argument("--size", default="1280x800", help="window size WxH")
    p.add_argument("--filter", help="text typed into the tensor filter")
    p.add_argument("--expand", action="store_true", help="expand every layer of the tensor tree")
    p.add_argument("--preset", help="plan preset (default: the window's default)")
    p.add_argument("--rule", action="append", default=[], help="plan rule REGEX=TYPE (repeatable)")
    p.add_argument("--override", action="append", default=[], help="plan override TENSOR=TYPE (repeatable)")
    p.add_argument("--types", help="comma-separated types for the error tab")
    p.add_argument("--analyze", help="'plan' (the current plan) or comma-separated presets to compare")
    p.add_argument("--dock-height", type=int, default=260, help="height of the analysis dock")
    p.add_argument("--theme", choices=("system", "light", "dark"), default="light", help="colour scheme")
    p.add_argument("--welcome", action="store_true", help="the welcome page (no model)")
    p.add_argument("--recent", action="append", default=[], help="a recent entry for the welcome page (repeatable)")
    p.add_argument("--hf-cache", help="the Hugging Face hub cache the welcome page lists")
    p.add_argument("--compare", metavar="LEVELS", help="comma-separated levels to compare (Compare tab)")
    p.add_argument("--compare-windows", type=int, default=2, help="calibration windows scored per level")
    p.add_argument("--compare-ctx", type=int, default=512, help="tokens per calibration window")
    p.add_argument("--timeout", type=float, default=TIMEOUT_MS / 1000, help="give up after this many seconds")
    p.add_argument("--tree-width", type=int, help="width of the tensor tree pane (the tabs get the rest)")
    args = p.parse_args(argv)
    if not args.welcome and not args.path:
        p.error("a model path (or --welcome) is required")

    from ui.app import ensure_app
    from ui.main_window import MainWindow

    app = ensure_app(args.theme)
    settings = QSettings(os.path.join(tempfile.mkdtemp(prefix="wb-shot-"), "s.ini"), QSettings.Format.IniFormat)
    if args.recent:
        settings.setValue("recent/paths", [os.path.abspath(r) for r in args.recent])
    window = MainWindow(settings=settings)
    w, h = (int(x) for x in args.size.lower().split("x"))
    window.resize(w, h)
    if args.welcome:
        return welcome_shot(app, window, args)
    window.show()

    loop = QEventLoop()
    state: dict[str, str] = {}
    waiting = {"compare"} if args.compare else {"stats" if args.tab != "error" else "error"}
    if args.analyze:
        waiting.add("analysis")

    def finish(status: str) -> None:
        state.setdefault("status", status)
        loop.quit()

    def done(what: str) -> None:
        waiting.discard(what)
        if not waiting:
            finish("ok")

    def loaded(model) -> None:
        if args.tree_width:
            window.splitter.setSizes([args.tree_width, max(100, window.splitter.width() - args.tree_width)])
        if args.preset:
            window.plan.set_preset(args.preset)
        if args.rule:
            window.plan.set_rules([r.rsplit("=", 1) for r in args.rule])
        for o in args.override:
            name, qtype = o.rsplit("=", 1)
            window.plan.set_types([name], qtype)
        if args.tab == "error":
            window.tabs.setCurrentWidget(window.error_view)
            if args.types:
                window.error_view.set_types(t.strip() for t in args.types.split(","))
        name = args.tensor or next((t.name for t in model.tensors if len(t.shape) == 2), model.tensors[0].name)
        if args.filter:
            window.tree.filter.set_text(args.filter)
        if not window.tree.select(name):
            finish(f"no tensor named {name!r}")
            return
        if args.expand:
            window.tree.expand_all()
            window.tree.select(name)
        if args.compare:
            window.compared.connect(lambda *_a: done("compare"))
            window.compare_view.worker.error.connect(lambda m: finish(f"comparison failed: {m}"))
            window.compare_with([x.strip() for x in args.compare.split(",")], n_ctx=args.compare_ctx,
                                max_windows=args.compare_windows)
        elif args.tab != "error":
            window.tabs.setCurrentIndex(1 if args.tab == "metadata" else 0)
        if args.analyze:
            window.resizeDocks([window.analysis_dock], [args.dock_height], Qt.Orientation.Vertical)
            window.plan_actions.analyze(None if args.analyze == "plan" else args.analyze.split(","))

    window.model_loaded.connect(loaded)
    window.load_failed.connect(lambda m: finish(f"load failed: {m}"))
    window.detail.stats_shown.connect(lambda _s: done("stats"))
    window.detail.worker.error.connect(lambda m: finish(f"statistics failed: {m}"))
    window.error_view.shown.connect(lambda s: done("error") if s else None)
    window.error_view.worker.error.connect(lambda m: finish(f"error view failed: {m}"))
    window.analysis.analyzed.connect(lambda _r: done("analysis"))
    window.analysis.worker.error.connect(lambda m: finish(f"analysis failed: {m}"))
    QTimer.singleShot(int(args.timeout * 1000), lambda: finish("timed out"))
    if args.path == "demo":
        window.open_demo()
    else:
        window.open_path(args.path)
    if "status" not in state:
        loop.exec()
    return _grab(app, window, args.output, state["status"])


def _grab(app, window, output: str, status: str) -> int:
    """Let layouts and plots settle for a few event-loop turns, save the window to ``output``, close it."""
    from ui.worker import stop_all_workers

    for _ in range(5):
        app.processEvents()
    ok = window.grab().save(output)
    window.shutdown()
    window.close()
    stop_all_workers()
    print(f"{status}: {output}" + ("" if ok else " (could not write the PNG)"))
    return 0 if status == "ok" and ok else 1


def welcome_shot(app, window, args) -> int:
    """The first-run page after its background scan of the recent entries and the Hugging Face cache."""

    if args.hf_cache:
        window.welcome.hub_cache = Path(args.hf_cache)
    loop = QEventLoop()
    state: dict[str, str] = {}

    def finish(status: str) -> None:
        state.setdefault("status", status)
        loop.quit()

    window.welcome.scanned.connect(lambda: finish("ok"))
    window.welcome.worker.error.connect(lambda m: finish(f"scan failed: {m}"))
    QTimer.singleShot(TIMEOUT_MS, lambda: finish("timed out"))
    window.show()  # the page scans when shown
    if "status" not in state:
        loop.exec()
    return _grab(app, window, args.output, state["status"])


if __name__ == "__main__":
    sys.exit(main())
