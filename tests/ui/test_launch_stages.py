"""Launch in stages: the window paints its welcome page before the rest is built, then builds the rest in steps;
using a part that is not built yet builds it."""
from __future__ import annotations

import pytest
from PySide6.QtCore import QEvent, QObject

from ui.main_window import MainWindow

TAB_TITLES = ["Tensor", "Metadata", "Quantization error", "Compare", "Generate", "Optimize"]


@pytest.fixture
def new_window(qtbot, settings):
    from ui.worker import stop_all_workers

    made = []

    def make() -> MainWindow:
        w = MainWindow(settings=settings, confirm=lambda _t, _q: True)
        qtbot.addWidget(w)
        made.append(w)
        return w

    yield make
    for w in made:
        w.shutdown()
    assert stop_all_workers(5000)


class PaintSpy(QObject):
    """Records, at the window's first paint, which deferred parts exist."""

    def __init__(self, window: MainWindow):
        super().__init__(window)
        self.window = window
        self.at_first_paint: dict | None = None
        window.installEventFilter(self)  # installed after the window's own: runs before it

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt override
        if event.type() == QEvent.Type.Paint and self.at_first_paint is None:
            w = self.window
            self.at_first_paint = {"built": w.is_built(), "parts": set(w.__dict__) & MainWindow._DEFERRED,
                                   "page": w.stack.currentWidget() is w.welcome}
        return False


def test_first_paint_comes_before_the_deferred_parts_then_they_are_built(qtbot, new_window):
    w = new_window()
    spy = PaintSpy(w)
    w.resize(1100, 700)
    with qtbot.waitSignal(w.built, timeout=30_000):
        w.show()
    seen = spy.at_first_paint
    assert seen == {"built": False, "parts": set(), "page": True}  # the welcome page alone was painted
    assert MainWindow._DEFERRED <= set(w.__dict__)  # then every part came, in steps
    assert [w.tabs.tabText(i) for i in range(w.tabs.count())] == TAB_TITLES
    file_actions = w._menu("&File").actions()
    assert w.act_open_file in file_actions and w.plan_actions.act_save in file_actions
    assert w.conversion.act_convert in file_actions


def test_using_a_deferred_part_builds_it(new_window):
    from ui.pages.compare_view import CompareView

    w = new_window()  # never shown: nothing builds by itself
    assert not w.is_built() and "compare_view" not in w.__dict__
    assert isinstance(w.compare_view, CompareView)
    assert w.is_built()
    assert w.tabs.indexOf(w.compare_page) == TAB_TITLES.index("Compare")
    with pytest.raises(AttributeError):
        w.no_such_part  # noqa: B018 - an unknown name is still an error


def test_opening_a_menu_before_the_window_is_complete_fills_it(new_window):
    w = new_window()
    menu = w._menu("&Tools")
    assert menu.actions() == []
    menu.aboutToShow.emit()
    assert w.is_built() and w.plan_actions.act_analyze in menu.actions()


def test_the_menu_bar_and_actions_read_from_outside_are_complete(new_window):
    w = new_window()
    titles = [a.text() for a in w.menuBar().actions()]
    assert titles == ["&File", "&Edit", "&View", "&Tools", "&Help"] and w.is_built()
    tools = w.menuBar().actions()[3].menu()
    assert w.act_imatrix in tools.actions() and w.plan_actions.act_analyze in tools.actions()


def test_the_saved_layout_comes_back_once_built_and_an_early_close_builds_nothing(qtbot, new_window, settings):
    settings.setValue("window/tab", TAB_TITLES.index("Compare"))
    w = new_window()
    w.resize(1100, 700)
    with qtbot.waitSignal(w.built, timeout=30_000):
        w.show()
    assert w.tabs.currentWidget() is w.compare_page
    assert w.tree_pane.isHidden()  # a wide page: the tree steps aside, as when the user picks it

    early = new_window()
    early.save_settings()
    assert early.shutdown()
    assert not early.is_built()  # closing right after the launch does not build the rest first
    assert settings.value("window/tab") in (3, "3")  # and keeps the saved layout
