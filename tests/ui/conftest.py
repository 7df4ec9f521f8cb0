"""pytest-qt fixtures for the GUI: offscreen Qt, isolated settings and cache, small model folders."""
from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import ui_models  # noqa: E402
from PySide6.QtCore import QSettings  # noqa: E402
from PySide6.QtWidgets import QApplication, QMessageBox  # noqa: E402

LOAD_TIMEOUT = 15_000


@pytest.fixture(scope="session", autouse=True)
def _isolated_environment(tmp_path_factory):
    """The demo model is generated into a temporary cache, and even a default-constructed QSettings
    writes to a temporary INI file, never to the user's configuration."""
    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("WORKBENCH_CACHE_DIR")
    os.environ["WORKBENCH_CACHE_DIR"] = str(cache)
    settings_dir = tmp_path_factory.mktemp("qsettings")
    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(settings_dir))
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.SystemScope, str(settings_dir))
    yield cache
    if old is None:
        os.environ.pop("WORKBENCH_CACHE_DIR", None)
    else:
        os.environ["WORKBENCH_CACHE_DIR"] = old


@pytest.fixture(scope="session", autouse=True)
def _collect_on_gui_thread(qapp):
    """As in the app: cyclic garbage is collected on the GUI thread only (ui/gc_guard.py)."""
    from ui.gc_guard import install

    return install(qapp)


@pytest.fixture(scope="session")
def demo_path(_isolated_environment) -> Path:
    from workbench.demo import demo_model_path

    return demo_model_path()


@pytest.fixture
def settings(tmp_path) -> QSettings:
    return QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)


@pytest.fixture
def make_window(qtbot, settings):
    """Factory of main windows; at teardown every worker is stopped and every window/box closed."""
    from ui.main_window import MainWindow
    from ui.worker import stop_all_workers

    windows = []

    def make(**kw):
        kw.setdefault("settings", settings)
        kw.setdefault("confirm", lambda title, question: True)  # never a modal question in tests
        w = MainWindow(**kw)
        qtbot.addWidget(w)
        w.resize(1100, 700)
        w.show()
        windows.append(w)
        return w

    yield make
    for w in windows:
        w.shutdown()
    assert stop_all_workers(5000)
    for top in QApplication.topLevelWidgets():
        if isinstance(top, QMessageBox):
            top.close()
    for w in windows:
        w.close()


@pytest.fixture
def window(make_window):
    return make_window()


@pytest.fixture
def load(qtbot):
    """``load(window, path)``: open a model and wait until it is shown; returns the Model."""
    def _load(window, path, timeout: int = LOAD_TIMEOUT):
        with qtbot.waitSignal(window.model_loaded, timeout=timeout) as blocker:
            window.open_path(path)
        return blocker.args[0]
    return _load


# -- small models ---------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def st_folder(tmp_path_factory) -> Path:
    return ui_models.write_st_folder(tmp_path_factory.mktemp("st") / "tiny-llama")


@pytest.fixture(scope="session")
def st_folder_b(tmp_path_factory) -> Path:
    return ui_models.write_other_folder(tmp_path_factory.mktemp("st_b") / "other-model")


@pytest.fixture(scope="session")
def peft_folder(tmp_path_factory) -> Path:
    return ui_models.write_peft_folder(tmp_path_factory.mktemp("peft") / "adapter")


@pytest.fixture
def errors():
    """The (title, message) of every error dialog the ``win`` window showed."""
    return []


@pytest.fixture
def win(make_window, errors):
    """A main window whose error dialogs are recorded in ``errors`` instead of shown."""
    return make_window(show_error=lambda title, message: errors.append((title, message)))


@pytest.fixture
def drained(qtbot):
    """``drained(*workers)``: wait until every signal the workers' threads sent has been delivered.

    Each job's last signal (``_sig_done``, sent after its result, error or cancel) removes it from the
    worker's task table, so an empty table proves that a superseded job's late result has arrived and been
    handled: the positive control before asserting that it was dropped, instead of a fixed wait."""
    def wait(*workers, timeout: int = 10_000) -> None:
        qtbot.waitUntil(lambda: all(not w._tasks for w in workers), timeout=timeout)
    return wait
