"""Dev script: screenshots of the Optimize tab (size-versus-KLD chart and sensitivity heatmap) at 1280x800.

    QT_QPA_PLATFORM=offscreen python packaging/optimize_screenshots.py [MODEL] [--out /tmp/shots] [--measure]
        [--add GGUF ...]

MODEL defaults to the cached SmolLM2-135M GGUF.  Runs the Optimize dialog's own job (the estimate, or with
``--measure`` the measurement too) at Q4_K_M's size, so the chart shows the presets, the current plan, the
optimized plan and the frontier (and ``--add``: GGUF files of the same model, drawn at their sizes); writes
opt_dialog.png, opt_chart.png and opt_heatmap.png.  Not run by the tests.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _default_model() -> str:
    hits = glob.glob(os.path.expanduser("~/.cache/model-workbench/test-models/**/*SmolLM2*.gguf"), recursive=True)
    if not hits:
        sys.exit("no cached SmolLM2 GGUF: give a model path")
    return hits[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?")
    ap.add_argument("--out", default="/tmp/shots")
    ap.add_argument("--measure", action="store_true")
    ap.add_argument("--add", nargs="*", default=[], help="GGUF files of the same model to draw as points")
    args = ap.parse_args()
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication

    from ui.main_window import MainWindow

    app = QApplication.instance() or QApplication([])
    settings = QSettings(str(Path(args.out) / "settings.ini"), QSettings.Format.IniFormat)
    win = MainWindow(settings=settings, confirm=lambda *_: True)
    win.resize(1280, 800)
    win.show()

    def wait(cond, seconds=600.0):
        end = time.monotonic() + seconds
        while not cond():
            if time.monotonic() > end:
                sys.exit("timed out")
            app.processEvents()
            time.sleep(0.01)

    loaded = []
    win.model_loaded.connect(loaded.append)
    win.open_path(args.model or _default_model())
    wait(lambda: loaded)
    win.tabs.setCurrentWidget(win.optimize_page)  # the presets' sizes are computed once the tab shows
    wait(lambda: bool(win.optimize_view.presets))
    dialog = win.show_optimize()
    dialog.budget_combo.setCurrentIndex(dialog.budget_combo.findData("size"))
    dialog.size_spin.setValue(win.plan.plan.nbytes / 2**20)  # the Q4_K_M preset's size
    (dialog.measure_radio if args.measure else dialog.estimate_radio).setChecked(True)
    os.makedirs(args.out, exist_ok=True)
    dialog.adjustSize()
    dialog.grab().save(os.path.join(args.out, "opt_dialog.png"))
    done = []
    dialog.finished_result.connect(done.append)
    t0 = time.monotonic()
    last = [0.0]

    def report(done, total, message):
        if time.monotonic() - last[0] > 10:
            last[0] = time.monotonic()
            print(f"{time.monotonic() - t0:6.0f} s  {done}/{total}  {message}", flush=True)

    dialog.worker.progress.connect(report)
    dialog.run()
    wait(lambda: done or not dialog.worker.is_busy(), 3600.0)
    print(f"job: {time.monotonic() - t0:.1f} s; {dialog.status.text()}")
    dialog.hide()
    view = win.optimize_view
    if args.add:
        got = []
        view.files_worker.result.connect(got.append)
        view.add_files(args.add)
        wait(lambda: got)
        print(view.files_note)
    os.makedirs(args.out, exist_ok=True)
    def settle(seconds=0.3):  # layout, autorange and the label placement (a coalescing timer)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            app.processEvents()
            time.sleep(0.01)

    view.splitter.setSizes([560, 200])
    settle()
    win.grab().save(os.path.join(args.out, "opt_chart.png"))
    view.splitter.setSizes([200, 560])
    settle()
    win.grab().save(os.path.join(args.out, "opt_heatmap.png"))
    if os.environ.get("SHOTS_DEBUG"):
        for lb in view.chart.labels:
            print(lb.toPlainText(), lb.pos(), lb.isVisible())
    print("wrote", os.path.join(args.out, "opt_chart.png"), os.path.join(args.out, "opt_heatmap.png"))
    win.shutdown()
    win.close()


if __name__ == "__main__":
    main()
