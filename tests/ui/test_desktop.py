"""Desktop behaviour: a second launch hands its file to the running window, the welcome page (recent
models, Hugging Face cache), the theme following the palette, the About box, the app icon, self-test."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from PySide6.QtCore import QByteArray, QDir, Qt
from PySide6.QtGui import QGuiApplication, QPalette
from PySide6.QtNetwork import QLocalSocket
from PySide6.QtWidgets import QApplication

from ui.formatting import human_bytes

ROOT = Path(__file__).resolve().parents[2]


def _name() -> str:
    return f"wb-test-{uuid.uuid4().hex[:12]}"


# -- single instance ------------------------------------------------------------------------------
def test_second_launch_opens_its_file_in_the_running_window(qtbot, window, demo_path, tmp_path):
    from ui.app import open_forwarded
    from ui.single_instance import InstanceServer, instance_running

    name = _name()
    server = InstanceServer(name, parent=window)
    assert server.listen()
    server.open_requested.connect(lambda paths: open_forwarded(window, paths))
    assert instance_running(name)
    model_file = tmp_path / "double-clicked.gguf"
    shutil.copy(demo_path, model_file)
    env = dict(os.environ, WORKBENCH_INSTANCE_NAME=name, QT_QPA_PLATFORM="offscreen",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    window.showMinimized()
    with qtbot.waitSignal(window.model_loaded, timeout=30_000) as blocker:
        # the second launch, as the desktop runs it for a double-click (Exec=... %F), from another folder
        proc = subprocess.Popen([sys.executable, "-m", "ui", model_file.name], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        qtbot.waitUntil(lambda: proc.poll() is not None, timeout=30_000)
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert "in the running Model Workbench" in out
    assert Path(blocker.args[0].path) == model_file
    assert window.model.path == model_file and window.stack.currentWidget() is window.splitter
    assert not window.isMinimized()
    server.close()
    assert not instance_running(name)


def test_no_instance_means_a_new_window_and_a_stale_socket_is_taken_over(qtbot, tmp_path):
    from ui.single_instance import InstanceServer, send_paths, start_server

    name = _name()
    assert not send_paths([str(tmp_path / "x.gguf")], name)  # nobody listening: the caller opens its own window
    if os.name != "nt":  # a crashed instance leaves its socket file behind
        stale = Path(QDir.tempPath()) / name
        stale.write_text("")
        first = InstanceServer(name)
        assert first.listen()
        first.close()
    server = start_server(name)
    assert server is not None
    assert start_server(name) is None  # a second process while the first runs: no takeover
    server.close()


def test_a_malformed_message_is_refused(qtbot, tmp_path):
    from ui.single_instance import InstanceServer

    server = InstanceServer(_name())
    assert server.listen()
    got = []
    server.open_requested.connect(got.append)
    sock = QLocalSocket()
    sock.connectToServer(server.name)
    qtbot.waitUntil(lambda: sock.state() == QLocalSocket.LocalSocketState.ConnectedState, timeout=5000)
    sock.write(QByteArray(b'{"paths": "not a list"}\n'))
    reply = []
    sock.readyRead.connect(lambda: reply.append(bytes(sock.readAll().data())))
    qtbot.waitUntil(lambda: b"".join(reply).endswith(b"\n"), timeout=5000)
    assert b"".join(reply) == b"error\n" and got == []
    server.close()


# -- welcome page ---------------------------------------------------------------------------------
def _hub(tmp_path: Path, st_folder: Path, demo_path: Path) -> Path:
    hub = tmp_path / "hub"
    for repo_id, src in (("org/tiny-llama", st_folder), ("org/demo-GGUF", demo_path)):
        repo = hub / ("models--" + repo_id.replace("/", "--"))
        snap = repo / "snapshots" / "0123456789abcdef"
        snap.mkdir(parents=True)
        for f in ([p for p in src.iterdir() if p.is_file()] if src.is_dir() else [src]):
            blob = repo / "blobs" / f.name
            blob.parent.mkdir(exist_ok=True)
            shutil.copy(f, blob)
            os.symlink(os.path.join("..", "..", "blobs", f.name), snap / f.name)
    return hub


def _scan(qtbot, window) -> None:
    with qtbot.waitSignal(window.welcome.scanned, timeout=10_000):
        window.welcome.refresh()


def test_welcome_lists_hf_cache_models_scanned_off_the_gui_thread(qtbot, window, st_folder, demo_path,
                                                                  tmp_path, monkeypatch):
    import ui.pages.welcome as welcome_mod

    threads = []
    real_scan = welcome_mod.scan_hub_cache

    def recording_scan(*a, **k):
        threads.append(threading.current_thread())
        return (yield from real_scan(*a, **k))

    monkeypatch.setattr(welcome_mod, "scan_hub_cache", recording_scan)
    monkeypatch.setenv("HF_HUB_CACHE", str(_hub(tmp_path, st_folder, demo_path)))
    _scan(qtbot, window)
    assert threads and threading.main_thread() not in threads
    hf = window.welcome.hf_list
    labels = [hf.topLevelItem(i).text(0) for i in range(hf.topLevelItemCount())]
    assert sorted(labels) == ["org/demo-GGUF · " + demo_path.name, "org/tiny-llama"]
    gguf_item = next(hf.topLevelItem(i) for i in range(2) if "GGUF" in hf.topLevelItem(i).text(0))
    size_text = {hf.topLevelItem(i).text(0): hf.topLevelItem(i).text(1) for i in range(2)}
    assert size_text["org/demo-GGUF · " + demo_path.name] == human_bytes(demo_path.stat().st_size)
    assert "0123456789ab" in gguf_item.toolTip(0)
    rect = hf.visualItemRect(gguf_item)
    with qtbot.waitSignal(window.model_loaded, timeout=15_000) as blocker:
        qtbot.mouseClick(hf.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    model_path = Path(blocker.args[0].path)
    assert model_path.name == demo_path.name and "models--org--demo-GGUF" in str(model_path)
    assert window.recent.paths()[0] == gguf_item.data(0, Qt.ItemDataRole.UserRole)


def test_welcome_recent_models_open_on_click_and_missing_ones_are_greyed(qtbot, window, st_folder, tmp_path):
    gone = tmp_path / "deleted-model.gguf"
    window.welcome.hub_cache = tmp_path / "no-hub"
    window.recent.add(gone)
    window.recent.add(st_folder)
    _scan(qtbot, window)
    lst = window.welcome.recent_list
    assert lst.paths() == [str(st_folder), str(gone)]
    present, missing = lst.item_for(str(st_folder)), lst.item_for(str(gone))
    assert present.text(0) == "tiny-llama" and present.toolTip(0) == str(st_folder)
    assert not (missing.flags() & Qt.ItemFlag.ItemIsEnabled)
    assert missing.toolTip(0).startswith("Not found: ") and str(gone) in missing.toolTip(0)
    assert window.welcome.hf_list.topLevelItem(0).text(0) == "No models found"
    opened = []
    window.welcome.open_path.connect(opened.append)
    qtbot.mouseClick(lst.viewport(), Qt.MouseButton.LeftButton, pos=lst.visualItemRect(missing).center())
    assert opened == []  # greyed: not clickable
    lst.setCurrentItem(present)
    with qtbot.waitSignal(window.model_loaded, timeout=15_000):
        qtbot.keyClick(lst, Qt.Key.Key_Return)
    assert opened == [str(st_folder)] and window.model.path == st_folder


def test_welcome_page_is_the_first_page_without_a_path(qtbot, window):
    assert window.stack.currentWidget() is window.welcome
    assert window.welcome.demo_button.isVisible() and window.welcome.recent_list.isVisible()


# -- look and feel --------------------------------------------------------------------------------
def test_dark_theme_palette_and_plots_follow(qtbot, window):
    from ui.widgets.plots import curve_color
    from ui.theme import apply_theme, is_dark

    app = QApplication.instance()
    try:
        assert apply_theme(app, "dark") == "dark"
        assert is_dark(app.palette()) and app.style().name().lower() == "fusion"
        plot = window.detail.findChild(type(window.error_view.plot))
        qtbot.waitUntil(lambda: plot.backgroundBrush().color() == app.palette().color(QPalette.ColorRole.Base),
                        timeout=3000)
        axis = plot.getPlotItem().getAxis("bottom")
        assert axis.textPen().color() == app.palette().color(QPalette.ColorRole.WindowText)
        from ui.widgets.type_toggles import TYPE_COLORS
        q2k = curve_color(TYPE_COLORS["Q2_K"], app.palette())
        assert q2k.lightness() - app.palette().color(QPalette.ColorRole.Base).lightness() >= 100
        assert curve_color(TYPE_COLORS["Q8_0"], app.palette()) == TYPE_COLORS["Q8_0"]
    finally:
        assert apply_theme(app, "system") == "light"  # offscreen reports no scheme: back to the native palette
    assert not is_dark(app.palette())
    qtbot.waitUntil(lambda: plot.backgroundBrush().color().lightness() > 128, timeout=3000)


def test_about_box_versions_and_copy(qtbot, window):
    from ui.dialogs.about import show_about, versions

    v = versions()
    assert {"Model Workbench", "Python", "Qt", "PySide6", "numpy", "gguf"} <= set(v)
    assert v["Python"] == ".".join(map(str, sys.version_info[:3]))
    box = show_about(window)
    qtbot.waitUntil(box.isVisible, timeout=3000)
    copy = next(b for b in box.buttons() if b.text() == "Copy Versions")
    copy.click()
    text = QGuiApplication.clipboard().text()
    assert f"numpy: {v['numpy']}" in text and f"gguf: {v['gguf']}" in text
    assert box.isVisible()  # copying does not close the box
    assert not box.iconPixmap().isNull()
    box.close()


def test_app_icon_has_every_size():
    from ui.app import ensure_app

    app = ensure_app()
    sizes = {(s.width(), s.height()) for s in app.windowIcon().availableSizes()}
    assert {(16, 16), (32, 32), (48, 48), (256, 256), (512, 512)} <= sizes


def test_shortcuts_for_the_main_actions(window):
    shortcuts = {a.shortcut().toString() for a in window.findChildren(type(window.act_open_file))
                 if not a.shortcut().isEmpty()}
    assert {"Ctrl+O", "Ctrl+Shift+O", "Ctrl+Q", "Ctrl+F", "Ctrl+1", "Ctrl+2", "Ctrl+3", "Ctrl+Z"} <= shortcuts


# -- entry point ----------------------------------------------------------------------------------
def test_several_files_of_one_folder_open_the_folder(tmp_path):
    from ui.app import parse_args

    a = parse_args([str(tmp_path / "m-00001-of-00002.safetensors"), str(tmp_path / "m-00002-of-00002.safetensors")])
    assert a.path == str(tmp_path) and len(a.paths) == 2
    assert parse_args(["--new-window", "x.gguf"]).new_window


def test_self_test_with_a_gguf_writes_a_screenshot(qtbot, demo_path, tmp_path, capsys):
    from ui import app
    from ui.worker import stop_all_workers

    model_file = tmp_path / "tiny.gguf"
    shutil.copy(demo_path, model_file)
    shot = tmp_path / "shot.png"
    assert app.main(["--self-test", str(model_file), "--screenshot", str(shot)]) == 0
    out = capsys.readouterr().out
    assert "self-test: window shown after" in out and "self-test: ok" in out
    from PySide6.QtGui import QImage
    image = QImage(str(shot))
    assert image.width() == 1200 and image.height() == 760
    assert stop_all_workers(5000)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="freedesktop.org desktop entries")
def test_install_desktop_flag_writes_the_entry_for_this_launcher(tmp_path, monkeypatch, capsys):
    from ui import app

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools"))  # leave the user's mime defaults alone
    assert app.main(["--install-desktop"]) == 0
    entry = (tmp_path / "data" / "applications" / "model-workbench.desktop").read_text()
    assert "Exec=" in entry and "%F" in entry
    assert str(tmp_path / "data" / "applications" / "model-workbench.desktop") in capsys.readouterr().out
    assert app.main(["--uninstall-desktop"]) == 0
    assert not (tmp_path / "data" / "applications" / "model-workbench.desktop").exists()
