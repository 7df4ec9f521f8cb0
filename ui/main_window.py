"""The main window: assembles the widgets, menus, drag-and-drop, settings and the loading worker."""
from __future__ import annotations

import importlib
import logging
import os
import sys
from collections import deque
from typing import Callable

from PySide6.QtCore import QByteArray, QEvent, QSettings, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QCloseEvent, QDragEnterEvent, QDropEvent, QKeySequence
from PySide6.QtWidgets import (QDockWidget, QFileDialog, QFrame, QMainWindow, QMenu, QMessageBox, QScrollArea,
                               QSplitter, QStackedWidget, QTabWidget, QVBoxLayout, QWidget)

from workbench import Model, WorkbenchError, iter_open_model

from . import APP_NAME, ORG_NAME
# only what the first paint needs; the other parts import their modules in their build step
from .deferred import FirstPaint, Preloader
from .drop import DropForwarder, local_paths, path_to_open
from .gc_guard import install as collect_on_gui_thread
from .controllers.recent_files import RecentFiles, RecentFilesMenu
from .widgets.status_bar import StatusBar
from .pages.welcome import WelcomeWidget
from .worker import Worker

log = logging.getLogger(__name__)

FIRST_PAINT_WAIT_MS = 300  # the staged build starts at the first paint, or this long after the window is shown
FILE_FILTER = ("Model files (*.gguf *.safetensors *.bin *.pt *.pth *.index.json);;"
               "GGUF (*.gguf);;safetensors (*.safetensors *.safetensors.index.json);;All files (*)")


def open_demo_job():
    """Background job: generate the demo model on first use (file I/O), then open it."""
    from workbench.demo import demo_model_path

    return (yield from iter_open_model(demo_model_path()))


class _WidePage(QScrollArea):
    """A tab page that scrolls sideways when its content is wider than the pane (instead of forcing the
    pane, and so squeezing the tensor tree); the content always gets the pane's height."""

    def __init__(self, widget: QWidget, parent: QWidget):
        super().__init__(parent)
        self.setWidget(widget)
        self.setWidgetResizable(False)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        widget.installEventFilter(self)

    def _fit(self) -> None:
        w = self.widget()
        if w is not None:
            view = self.viewport().size()
            w.resize(max(view.width(), w.minimumSizeHint().width()), view.height())

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().resizeEvent(event)
        self._fit()

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt override
        if obj is self.widget() and event.type() == QEvent.Type.LayoutRequest:
            QTimer.singleShot(0, self._fit)
        return False


def _scrolled(widget: QWidget, parent: QWidget) -> QScrollArea:
    return _WidePage(widget, parent)


def default_settings() -> QSettings:
    """The user's settings.  Honours ``QSettings.setDefaultFormat``/``setPath`` (tests redirect them)."""
    return QSettings(QSettings.defaultFormat(), QSettings.Scope.UserScope, ORG_NAME, APP_NAME)


class MainWindow(QMainWindow):
    """``model_loaded(Model)`` after a successful open; ``load_failed(str)`` with the message shown;
    ``compared(CompareResult)`` when the Compare tab shows a result; ``built()`` once every part exists.

    The window paints its welcome page first and builds the rest in small steps after (see ``_stages``)."""

    model_loaded = Signal(object)
    load_failed = Signal(str)
    compared = Signal(object)
    built = Signal()

    def __init__(self, settings: QSettings | None = None,
                 show_error: Callable[[str, str], None] | None = None, parent: QWidget | None = None,
                 confirm: Callable[[str, str], bool] | None = None):
        super().__init__(parent)
        collect_on_gui_thread()  # (idempotent) see ui/gc_guard.py: a worker thread must never destroy Qt objects
        self.settings = settings if settings is not None else default_settings()
        self.show_error = show_error or self._error_box  # (title, message); tests may inject their own
        self.confirm = confirm or self._confirm_box  # (title, question) -> go ahead?; injectable too
        self.open_job = iter_open_model  # the job generator factory used to load a path (injectable)
        self.model: Model | None = None
        self.error_box: QMessageBox | None = None
        self._pending_path: str | None = None
        self.setWindowTitle(APP_NAME)
        self.setAcceptDrops(True)

        # What the first paint shows is built here: the welcome page, the menu bar, the status bar.  The
        # rest (tree, tabs, dock, dialogs' actions) is built after the first paint, one step per event-loop
        # turn (``_build_next``), or at once when any of it is used first (``__getattr__``).
        self.loader = Worker(self, name="loader")
        self.loader.result.connect(self._on_loaded)
        self.loader.error.connect(self._on_load_error)
        self.loader.cancelled.connect(lambda: self.statusBar().showMessage("Loading cancelled", 4000))
        self.welcome = WelcomeWidget(self)
        self.stack = QStackedWidget(self)
        self.stack.addWidget(self.welcome)
        self.setCentralWidget(self.stack)
        self.status = StatusBar(self)
        self.setStatusBar(self.status)
        self.status.track(self.loader)
        self.recent = RecentFiles(self.settings, self)
        self._build_actions()
        self._menus: dict[str, QMenu] = {}
        for title in ("&File", "&Edit", "&View", "&Tools", "&Help"):  # filled by the last step
            self._menu(title).aboutToShow.connect(self.finish_building)
        self.welcome.open_file.connect(self.open_file_dialog)
        self.welcome.open_folder.connect(self.open_folder_dialog)
        self.welcome.open_demo.connect(self.open_demo)
        self.welcome.open_path.connect(self.open_path)
        self.welcome.set_recent(self.recent)
        self._restore_geometry()

        # (step, its own modules: imported one per event-loop turn before the step runs; the heavy modules under
        # them, deferred.PRELOAD, are imported first on a background thread)
        self._stages = deque([
            (self._build_tree, ("ui.controllers.plan_controller", "ui.widgets.plan_bar", "ui.widgets.tensor_tree")),
            (self._build_detail, ("ui.pages.tensor_detail",)),
            (self._build_metadata, ("ui.pages.metadata_view",)),
            (self._build_error_view, ("ui.pages.error_view",)),
            (self._build_analysis, ("ui.pages.analysis_view",)),
            (self._build_compare, ("ui.widgets.token_view", "ui.pages.compare_view", "ui.dialogs.memory_budget")),
            (self._build_generate, ("ui.pages.generate_panel",)),
            (self._build_optimize, ("ui.pages.optimize_view",)),
            (self._build_plan_actions, ("ui.dialogs.analyze_dialog", "ui.dialogs.rules_dialog",
                                        "ui.controllers.plan_actions")),
            (self._build_conversion, ("ui.dialogs.convert_dialog", "ui.dialogs.job_dialog", "ui.dialogs.lora_dialog",
                                      "ui.controllers.conversion_actions")),
            (self._build_metadata_edit, ("ui.controllers.metadata_editor",)),
            (self._build_finish, ()),
        ])
        self._built = False
        self._stepping = 0
        self.preloader = Preloader()
        self._build_timer = QTimer(self)
        self._build_timer.setSingleShot(True)
        self._build_timer.timeout.connect(self._build_next)
        FirstPaint(self, self._start_building)

    # -- staged construction ------------------------------------------------------------------------
    # the parts built after the first paint: reading any of them before builds every remaining step
    _DEFERRED = frozenset({
        "plan", "plan_bar", "tree", "tabs", "splitter", "tree_pane", "_splitter_state", "detail", "metadata",
        "error_view", "analysis", "analysis_dock", "compare_view", "compare_page", "generate_panel",
        "generate_page", "optimize_view", "optimize_page", "optimize_dialog", "plan_actions", "conversion",
        "metadata_edit", "recent_menu"})

    def __getattr__(self, name: str):
        # only reached when normal lookup fails, i.e. for a part that is not built yet
        if name in MainWindow._DEFERRED and self.__dict__.get("_stages"):
            self.finish_building()
            if name in self.__dict__:
                return self.__dict__[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # read from outside, the window's actions and menus are complete
    def menuBar(self):  # noqa: N802 - Qt name
        if self.__dict__.get("_stages"):
            self.finish_building()
        return super().menuBar()

    def findChildren(self, *args, **kwargs):  # noqa: N802 - Qt name
        if self.__dict__.get("_stages"):
            self.finish_building()
        return super().findChildren(*args, **kwargs)

    def is_built(self) -> bool:
        """Whether every part of the window exists (``built`` was emitted)."""
        return self._built

    def _start_building(self) -> None:
        """After the first paint: start the steps."""
        if self._stages:
            self._build_timer.start(0)

    def showEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        if self._stages and not self._build_timer.isActive():
            self._build_timer.start(FIRST_PAINT_WAIT_MS)  # in case no paint event comes (the first one starts it)

    def _build_next(self) -> None:
        """One step, then yield to the event loop; a step whose modules are still being imported waits."""
        if not self._stages:
            return
        self.preloader.start()  # the heavy modules, imported in the background (once)
        step, needs = self._stages[0]
        if self.preloader.running():  # the steps wait: they would compete with it for the interpreter lock
            self._build_timer.start(10)
            return
        module = next((n for n in needs if n not in sys.modules), None)
        if module is not None:  # the step's own modules first, one a turn (each is a few ms to a few tens)
            try:
                importlib.import_module(module)
            except ImportError:  # the step imports it again and fails there, loudly
                self._stages[0] = (step, tuple(n for n in needs if n != module))
            self._build_timer.start(0)
            return
        self._stages.popleft()
        self._run_step(step)
        if self._stages:
            self._build_timer.start(0)
        else:
            self._done_building()

    def finish_building(self) -> None:
        """Build every remaining part now (something needs one of them)."""
        while self._stages:
            step, _needs = self._stages.popleft()
            self._run_step(step)
        self._done_building()

    def _run_step(self, step) -> None:
        self._stepping += 1  # a step may need a later part: those are built inside it, "built" waits for it
        try:
            step()
        finally:
            self._stepping -= 1

    def _done_building(self) -> None:
        if not self._built and not self._stepping and not self._stages:
            self._built = True
            self._build_timer.stop()
            self.built.emit()

    def _build_tree(self) -> None:
        from .widgets.plan_bar import PlanBar
        from .controllers.plan_controller import PlanController
        from .widgets.tensor_tree import TensorTreeWidget

        self.plan = PlanController(self)
        self.plan.changed.connect(self._on_plan_changed)
        self.plan_bar = PlanBar(self)
        self.tree = TensorTreeWidget(self)
        self.tree.selected.connect(self._on_tree_selected)
        self.tabs = QTabWidget(self)  # its pages come in the next steps, in tab order
        left = QWidget(self)
        left_lay = QVBoxLayout(left)
        left_lay.setContentsMargins(0, 0, 0, 0)
        left_lay.setSpacing(4)
        left_lay.addWidget(self.plan_bar)
        left_lay.addWidget(self.tree, 1)
        self.splitter = QSplitter(Qt.Orientation.Horizontal, self)
        self.splitter.setObjectName("mainSplitter")
        self.splitter.addWidget(left)
        self.splitter.addWidget(self.tabs)
        self.splitter.setChildrenCollapsible(False)
        self.splitter.setStretchFactor(0, 3)  # the tree has six columns: it gets the larger share
        self.splitter.setStretchFactor(1, 2)
        self.splitter.setSizes([730, 550])
        self.splitter.setContentsMargins(6, 6, 6, 0)
        self.splitter.setHandleWidth(8)
        # Compare and Generate are read across the whole window: the tensor pane steps aside while they show
        self.tree_pane = left
        self._splitter_state = self.splitter.saveState()
        self.stack.addWidget(self.splitter)

    def _build_detail(self) -> None:
        from .pages.tensor_detail import TensorDetailWidget

        self.detail = TensorDetailWidget(self)
        self.detail.plan_provider = lambda: self.plan.plan  # a layer row shows its planned types and error
        self.tabs.addTab(self.detail, "Tensor")
        self.tabs.setTabToolTip(0, "The selected tensor: location, value statistics and histogram; a layer: its tensors, planned types and error")

    def _build_metadata(self) -> None:
        from .pages.metadata_view import MetadataWidget

        self.metadata = MetadataWidget(self)
        self.tabs.addTab(self.metadata, "Metadata")
        self.tabs.setTabToolTip(1, "Model metadata: GGUF keys, config.json, tokenizer, adapter settings")

    def _build_error_view(self) -> None:
        from .pages.error_view import ErrorView

        self.error_view = ErrorView(self)
        self.tabs.addTab(self.error_view, "Quantization error")
        self.tabs.setTabToolTip(2, "What quantization types would do to the selected tensor: overlaid error "
                                   "histograms and statistics")

    def _build_analysis(self) -> None:
        from .pages.analysis_view import AnalysisView

        self.analysis = AnalysisView(self)
        self.analysis.tensor_activated.connect(self.tree.select)
        self.analysis_dock = QDockWidget("Analysis", self)
        self.analysis_dock.setObjectName("analysisDock")
        self.analysis_dock.setWidget(self.analysis)
        self.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, self.analysis_dock)
        self.analysis_dock.hide()
        self.status.track(self.analysis.worker, "Stop the analysis (Esc)")

    def _build_compare(self) -> None:
        from .pages.compare_view import CompareView
        from .dialogs.memory_budget import memory_budget

        self.compare_view = CompareView(self)
        self.compare_view.compared.connect(self.compared)
        self.compare_view.memory_budget = lambda: memory_budget(self.settings)
        # the wide pages scroll rather than squeezing the tensor tree when the window is narrow
        self.compare_page = _scrolled(self.compare_view, self)
        self.tabs.addTab(self.compare_page, "Compare")
        self.tabs.setTabToolTip(self.tabs.indexOf(self.compare_page), "Quantization levels side by side: size, "
                                "perplexity, KL divergence, speed and the text each level generates")
        self.status.track(self.compare_view.worker, "Stop the comparison (Esc)")

    def _build_generate(self) -> None:
        from .pages.generate_panel import GeneratePanel
        from .dialogs.memory_budget import memory_budget

        self.generate_panel = GeneratePanel(self)
        self.generate_panel.memory_budget = lambda: memory_budget(self.settings)
        self.generate_page = _scrolled(self.generate_panel, self)
        self.tabs.addTab(self.generate_page, "Generate")
        self.tabs.setTabToolTip(self.tabs.indexOf(self.generate_page), "Generate text with the model at any "
                                "quantization level, streamed as it is written")

    def _build_optimize(self) -> None:
        from .pages.optimize_view import OptimizeView

        self.optimize_view = OptimizeView(self.plan, self)
        self.optimize_view.optimize_requested.connect(self.show_optimize)
        self.compare_view.compared.connect(self.optimize_view.add_comparison)
        self.optimize_page = self.optimize_view
        self.tabs.addTab(self.optimize_page, "Optimize")
        self.tabs.setTabToolTip(self.tabs.indexOf(self.optimize_page), "Size against KL divergence for every "
                                "preset and optimized plan, and which layers are sensitive (Tools ▸ Optimize…)")
        self.optimize_dialog = None  # created on first use

    def _build_plan_actions(self) -> None:
        from .controllers.plan_actions import PlanActions

        self.plan_actions = PlanActions(self)
        self.plan_bar.preset_chosen.connect(self.plan.set_preset)
        self.plan_bar.sizes_ready.connect(self._on_preset_sizes)
        self.plan_bar.rules_requested.connect(self.plan_actions.edit_rules)
        self.plan_bar.analyze_requested.connect(self.plan_actions.analyze_dialog)

    def _build_conversion(self) -> None:
        from .controllers.conversion_actions import ConversionActions

        self.conversion = ConversionActions(self)

    def _build_metadata_edit(self) -> None:
        from .controllers.metadata_editor import MetadataEditActions

        self.metadata_edit = MetadataEditActions(self)

    def _build_finish(self) -> None:
        self._build_menus()
        self._forward_drops()
        self._restore_layout()
        self.tabs.currentChanged.connect(self._on_tab_changed)
        self._on_tab_changed(self.tabs.currentIndex())

    def _menu(self, title: str) -> QMenu:
        """The menu bar's menu ``title`` (created first with an empty menu so the bar shows at once)."""
        if title not in self._menus:
            self._menus[title] = QMainWindow.menuBar(self).addMenu(title)
        return self._menus[title]

    # -- construction ------------------------------------------------------------------------------
    def make_action(self, text: str, tip: str, slot, shortcut=None) -> QAction:
        act = QAction(text, self)
        act.setToolTip(tip)
        if shortcut is not None:
            act.setShortcut(QKeySequence(shortcut))
        act.triggered.connect(lambda _checked=False: slot())
        self.addAction(act)  # shortcuts work even while the menu bar is hidden
        return act

    def _build_actions(self) -> None:
        K = QKeySequence.StandardKey
        self.act_open_file = self.make_action("&Open File…", "Open a .gguf, .safetensors or PyTorch .bin file",
                                              self.open_file_dialog, K.Open)
        self.act_open_folder = self.make_action("Open &Folder…", "Open a Hugging Face model or PEFT adapter folder",
                                                self.open_folder_dialog, "Ctrl+Shift+O")
        self.act_open_demo = self.make_action("Open &Demo Model", "Open a tiny built-in llama-style GGUF",
                                              self.open_demo)
        self.act_quit = self.make_action("&Quit", "Quit Model Workbench", self.close, K.Quit)
        self.act_quit.setShortcut(QKeySequence("Ctrl+Q"))
        self.act_quit.setMenuRole(QAction.MenuRole.QuitRole)
        self.act_focus_filter = self.make_action("&Filter…", "Jump to the filter box (tensors, or metadata when "
                                                 "that tab is shown)", self.focus_filter, K.Find)
        self.act_expand = self.make_action("&Expand All", "Expand every layer of the tensor tree",
                                           self.expand_all, "Ctrl+E")
        self.act_collapse = self.make_action("&Collapse All", "Collapse the tensor tree to its layers",
                                             self.collapse_all, "Ctrl+Shift+C")
        self.act_tab_tensor = self.make_action("&Tensor Tab", "Show the selected tensor's details",
                                               lambda: self.tabs.setCurrentIndex(0), "Ctrl+1")
        self.act_tab_meta = self.make_action("&Metadata Tab", "Show the model's metadata",
                                             lambda: self.tabs.setCurrentIndex(1), "Ctrl+2")
        self.act_tab_error = self.make_action("&Quantization Error Tab", "Compare the error of quantization types on "
                                              "the selected tensor", lambda: self.tabs.setCurrentIndex(2), "Ctrl+3")
        self.act_tab_compare = self.make_action("C&ompare Tab", "Compare quantization levels of the model side by "
                                                "side", lambda: self.tabs.setCurrentWidget(self.compare_page),
                                                "Ctrl+4")
        self.act_tab_generate = self.make_action("&Generate Tab", "Generate text with the model",
                                                 lambda: self.tabs.setCurrentWidget(self.generate_page), "Ctrl+5")
        self.act_compare_levels = self.make_action("Compare &Levels…", "Compare quantization levels of the model "
                                                   "(perplexity, KL divergence, speed, generated text)",
                                                   self.show_compare)
        self.act_imatrix = self.make_action("Importance &Matrix…", "Load or compute an importance matrix and show "
                                            "its per-tensor statistics (llama-imatrix --show-statistics)",
                                            self.show_imatrix)
        self.imatrix_dialog = None  # created on first use
        self.act_optimize = self.make_action("&Optimize…", "Find the plan with the lowest predicted KL divergence "
                                             "for a size budget (measures each tensor group's sensitivity)",
                                             self.show_optimize)
        self.act_cancel = self.make_action("Cancel", "Stop the running job (loading, analysis, comparison, "
                                           "generation)", self.cancel_running, "Esc")
        self.act_preferences = self.make_action("&Preferences…", "Application settings: the memory budget of "
                                                "Generate and Compare", self.show_preferences)
        self.act_preferences.setMenuRole(QAction.MenuRole.PreferencesRole)
        self.act_about = self.make_action("&About Model Workbench", "Version information", self.show_about)
        self.act_about.setMenuRole(QAction.MenuRole.AboutRole)

    def _build_menus(self) -> None:
        file_menu = self._menu("&File")
        file_menu.setToolTipsVisible(True)
        file_menu.addAction(self.act_open_file)
        file_menu.addAction(self.act_open_folder)
        self.recent_menu = RecentFilesMenu(self.recent, self)
        self.recent_menu.open_requested.connect(self.open_path)
        file_menu.addMenu(self.recent_menu)
        file_menu.addAction(self.act_open_demo)
        file_menu.addSeparator()
        pa = self.plan_actions
        for a in (pa.act_save, pa.act_load, pa.act_export):
            file_menu.addAction(a)
        file_menu.addSeparator()
        conv = self.conversion
        file_menu.addAction(conv.act_convert)
        file_menu.addAction(conv.act_export)
        file_menu.addAction(self.metadata_edit.act_save)
        file_menu.addSeparator()
        file_menu.addAction(self.act_quit)
        edit_menu = self._menu("&Edit")
        edit_menu.setToolTipsVisible(True)
        for a in (pa.act_undo, pa.act_redo, None, pa.act_set_type, pa.act_clear, pa.act_clear_all, None, pa.act_rules):
            if a is None:
                edit_menu.addSeparator()
            else:
                edit_menu.addAction(a)
        meta_menu = edit_menu.addMenu("&Metadata")
        meta_menu.setToolTipsVisible(True)
        for a in self.metadata_edit.menu_actions:
            meta_menu.addSeparator() if a is None else meta_menu.addAction(a)
        edit_menu.addSeparator()
        edit_menu.addAction(self.act_preferences)
        for a in (pa.act_set_type, pa.act_clear):  # the tree's context menu
            self.tree.view.addAction(a)
        view_menu = self._menu("&View")
        view_menu.setToolTipsVisible(True)
        view_menu.addAction(self.act_focus_filter)
        view_menu.addSeparator()
        view_menu.addAction(self.act_expand)
        view_menu.addAction(self.act_collapse)
        view_menu.addSeparator()
        view_menu.addAction(self.act_tab_tensor)
        view_menu.addAction(self.act_tab_meta)
        view_menu.addAction(self.act_tab_error)
        view_menu.addAction(self.act_tab_compare)
        view_menu.addAction(self.act_tab_generate)
        dock_action = self.analysis_dock.toggleViewAction()
        dock_action.setToolTip("Show or hide the model analysis results")
        view_menu.addAction(dock_action)
        tools_menu = self._menu("&Tools")
        tools_menu.setToolTipsVisible(True)
        tools_menu.addAction(pa.act_analyze)
        tools_menu.addAction(self.act_compare_levels)
        tools_menu.addAction(self.act_imatrix)
        tools_menu.addAction(self.act_optimize)
        tools_menu.addSeparator()
        tools_menu.addAction(conv.act_merge)
        tools_menu.addAction(conv.act_lora_gguf)
        help_menu = self._menu("&Help")
        help_menu.setToolTipsVisible(True)
        help_menu.addAction(self.act_about)

    def _forward_drops(self) -> None:
        forwarder = DropForwarder(self)
        for w in QMainWindow.findChildren(self, QWidget):
            if w.acceptDrops():
                w.installEventFilter(forwarder)

    # -- settings ---------------------------------------------------------------------------------------
    def _restore_geometry(self) -> None:
        geometry = self.settings.value("window/geometry")
        if isinstance(geometry, QByteArray) and not geometry.isEmpty():
            self.restoreGeometry(geometry)
        else:
            self.resize(1280, 800)
        self.last_dir = str(self.settings.value("window/last_dir", "") or "")

    def _restore_layout(self) -> None:
        state = self.settings.value("window/state")
        if isinstance(state, QByteArray) and not state.isEmpty():
            self.restoreState(state)
            self.analysis_dock.hide()  # shown again by the next analysis
        splitter = self.settings.value("window/splitter")
        if isinstance(splitter, QByteArray) and not splitter.isEmpty():
            self.splitter.restoreState(splitter)
            self._splitter_state = self.splitter.saveState()
        tab = self.settings.value("window/tab", 0)
        try:
            self.tabs.setCurrentIndex(int(tab))
        except (TypeError, ValueError):
            pass

    def show_about(self) -> None:
        from .dialogs.about import show_about

        show_about(self)

    def show_preferences(self):
        from .dialogs.memory_budget import PreferencesDialog

        dialog = PreferencesDialog(self.settings, self)
        dialog.open()
        return dialog

    def _wide_page(self) -> bool:
        return self.tabs.currentWidget() in (self.compare_page, self.generate_page, self.optimize_page)

    def _on_tab_changed(self, _index: int) -> None:
        wide = self._wide_page()
        if wide and self.tree_pane.isVisible():
            self._splitter_state = self.splitter.saveState()  # the sizes the user gave the tree, kept for later
        self.tree_pane.setVisible(not wide)
        if not wide:
            self.splitter.restoreState(self._splitter_state)

    def save_settings(self) -> None:
        self.settings.setValue("window/geometry", self.saveGeometry())
        if self._built:  # else the layout is still the one restored: keep the saved one
            self.settings.setValue("window/state", self.saveState())
            self.settings.setValue("window/splitter", self._splitter_state if self._wide_page()
                                   else self.splitter.saveState())
            self.settings.setValue("window/tab", self.tabs.currentIndex())
        self.settings.setValue("window/last_dir", self.last_dir)
        self.settings.sync()

    def unsaved_work(self, quitting: bool) -> list[str]:
        """What opening another model (or, with ``quitting``, closing the window) would lose."""
        lost = []
        if not self._built:
            return lost  # nothing was used yet
        if self.metadata_edit.edits.is_modified():
            lost.append("metadata edits that are not saved (File ▸ Save Metadata As… writes them to a new file)")
        running = self.conversion.jobs.running()
        if quitting and running:
            lost.append(f"{len(running)} running conversion job{'s' if len(running) > 1 else ''}, which would be "
                        "cancelled (nothing half-written is kept)")
        return lost

    def may_discard(self, quitting: bool = False) -> bool:
        """Ask before losing unsaved work; True when there is none or the user agrees."""
        lost = self.unsaved_work(quitting)
        if not lost:
            return True
        what = "Quit" if quitting else "Open another model"
        return self.confirm(f"{what}?", "This would discard:\n\n" + "\n".join(f"• {x}" for x in lost))

    def _confirm_box(self, title: str, question: str) -> bool:
        box = QMessageBox(QMessageBox.Icon.Warning, title, question, parent=self)
        go = box.addButton("Discard" if "discard" in question else "Continue", QMessageBox.ButtonRole.DestructiveRole)
        box.addButton(QMessageBox.StandardButton.Cancel)
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)
        box.exec()
        return box.clickedButton() is go

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt override
        if not self.may_discard(quitting=True):
            event.ignore()
            return
        self.save_settings()
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self, timeout_ms: int = 5000) -> bool:
        """Cancel every background job of this window and wait for the threads."""
        ok = self.loader.shutdown(timeout_ms)
        ok = self.welcome.shutdown(timeout_ms) and ok
        if not self._built:
            self._build_timer.stop()  # closing before the window was complete: build no more
            parts = self.__dict__
            for name in ("analysis", "error_view", "conversion", "compare_view", "generate_panel", "plan_bar",
                         "optimize_view"):
                if name in parts:
                    ok = parts[name].shutdown(timeout_ms) and ok
            if self.imatrix_dialog is not None:
                ok = self.imatrix_dialog.shutdown(timeout_ms) and ok
            return parts["detail"].worker.shutdown(timeout_ms) and ok if "detail" in parts else ok
        ok = self.analysis.shutdown(timeout_ms) and ok
        ok = self.error_view.shutdown(timeout_ms) and ok
        ok = self.conversion.shutdown(timeout_ms) and ok
        if self.imatrix_dialog is not None:
            ok = self.imatrix_dialog.shutdown(timeout_ms) and ok
        ok = self.compare_view.shutdown(timeout_ms) and ok
        ok = self.generate_panel.shutdown(timeout_ms) and ok
        ok = self.plan_bar.shutdown(timeout_ms) and ok
        ok = self.optimize_view.shutdown(timeout_ms) and ok
        if self.optimize_dialog is not None:
            ok = self.optimize_dialog.shutdown(timeout_ms) and ok
        layer_done = self.detail.layer_worker.shutdown(timeout_ms)
        return self.detail.worker.shutdown(timeout_ms) and layer_done and ok

    # -- opening ------------------------------------------------------------------------------------------
    def open_path(self, path: str | os.PathLike) -> int:
        """Load a model file or folder in the background; returns the job id."""
        path = os.fspath(path)
        if not self.may_discard():
            return -1
        self._pending_path = path
        self.statusBar().showMessage(f"Opening {os.path.basename(path.rstrip('/')) or path}…")
        from .widgets.tensor_tree import open_and_prepare

        return self.loader.start(open_and_prepare, self.open_job, path)  # + the tree's rows, off the GUI thread

    def open_demo(self) -> int:
        if not self.may_discard():
            return -1
        self._pending_path = None  # the demo lives in the cache: not worth a Recent entry
        self.statusBar().showMessage("Opening the demo model…")
        from .widgets.tensor_tree import open_and_prepare

        return self.loader.start(open_and_prepare, open_demo_job)

    def open_file_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open Model File", self.last_dir, FILE_FILTER)
        if path:
            self.last_dir = os.path.dirname(path)
            self.open_path(path)

    def open_folder_dialog(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open Model Folder", self.last_dir)
        if path:
            self.last_dir = os.path.dirname(path.rstrip("/"))
            self.open_path(path)

    def cancel_load(self) -> None:
        self.loader.cancel()

    def cancel_running(self) -> None:
        """Esc: cancel the job the status bar shows (loading, analysis, comparison), else a running
        generation (its text stays)."""
        if self.status.active_worker() is not None:
            self.status.cancel_active()
        elif self._built and self.generate_panel.is_running():
            self.generate_panel.stop()

    def _on_loaded(self, model: Model) -> None:
        old, old_plan = self.model, self.plan.plan
        try:
            self._show_model(model)
        except BaseException:
            # a part failed to take the new model: show the previous one again (or the welcome page) and let
            # the worker report the error (a dialog), instead of a half-updated window still "Opening…"
            self._show_previous(old, old_plan, model)
            raise
        if self._pending_path is not None:
            self.recent.add(self._pending_path)
        if old is not None and old is not model:
            old.close()
        self.model_loaded.emit(model)

    def _show_previous(self, old: Model | None, old_plan, failed: Model) -> None:
        self.model = None
        if old is not None:
            try:
                self._show_model(old, plan=old_plan)
                return
            except Exception:  # noqa: BLE001 - the welcome page then; the first error is what is reported
                log.exception("Could not show the previous model again")
        self.model = None
        self.stack.setCurrentWidget(self.welcome)
        self.setWindowTitle(APP_NAME)
        self.setWindowFilePath("")
        self.status.set_model(None)

    def _show_model(self, model: Model, plan=None) -> None:
        """Hand ``model`` to every part; ``plan``: restore that plan (of the same model) instead of a new one."""
        self.model = model
        self.analysis.reset()
        self.error_view.set_model(model)
        self.plan_bar.set_model(model)
        if plan is not None:
            self.plan.undo_stack.clear()
            self.plan.plan = plan
            self.plan.changed.emit()
        else:
            try:
                self.plan.set_model(model)
            except WorkbenchError as exc:
                self.statusBar().showMessage(f"No quantization plan for this model: {exc}", 8000)
                self.plan_bar.show_unavailable(
                    "A LoRA adapter has no quantization plan: use Tools ▸ Merge LoRA… or LoRA to GGUF…"
                    if model.format == "peft" else f"No quantization plan: {exc.message}")
        self.tree.set_plan(self.plan.plan, self.plan.set_types)
        self.compare_view.set_model(model, self.plan_bar.preset_sizes)
        self.generate_panel.set_model(model, self.plan_bar.preset_sizes)
        self.optimize_view.set_model(model)
        self.tree.set_model(model)
        self.detail.set_model(model)
        self.metadata.set_model(model)
        self.status.set_model(model)
        self.stack.setCurrentWidget(self.splitter)
        self.setWindowTitle(f"{model.name} — {APP_NAME}")
        self.setWindowFilePath(str(model.path))

    def _on_load_error(self, message: str) -> None:
        if self._pending_path is not None and not os.path.exists(self._pending_path) \
                and self._pending_path in self.recent.paths():
            self.recent.remove(self._pending_path)  # a recent entry that no longer exists
        self.statusBar().showMessage("Could not open the model", 5000)
        self.show_error("Could not open model", message)
        self.load_failed.emit(message)

    def _error_box(self, title: str, message: str) -> None:
        """A critical message box that does not block (``open()``, not ``exec()``)."""
        box = QMessageBox(QMessageBox.Icon.Critical, title, message, QMessageBox.StandardButton.Ok, self)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.setWindowModality(Qt.WindowModality.WindowModal)
        self.error_box = box
        box.open()

    # -- drag and drop -----------------------------------------------------------------------------------
    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802 - Qt override
        if local_paths(event.mimeData()):
            event.acceptProposedAction()
        else:
            event.ignore()

    dragMoveEvent = dragEnterEvent

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802 - Qt override
        path = path_to_open(local_paths(event.mimeData()))
        if path is None:
            event.ignore()
            return
        event.acceptProposedAction()
        self.open_path(path)

    # -- view commands --------------------------------------------------------------------------------
    def focus_filter(self) -> None:
        in_right = self.tabs.isAncestorOf(self.focusWidget()) if self.focusWidget() else False
        if self.tabs.currentWidget() is self.metadata and in_right:
            self.metadata.filter.focus()
        else:
            self.tree.filter.focus()

    def expand_all(self) -> None:
        if self.tabs.currentWidget() is self.metadata and self.tabs.isAncestorOf(self.focusWidget() or self):
            self.metadata.view.expandAll()
        else:
            self.tree.expand_all()

    def collapse_all(self) -> None:
        if self.tabs.currentWidget() is self.metadata and self.tabs.isAncestorOf(self.focusWidget() or self):
            self.metadata.view.collapseAll()
        else:
            self.tree.collapse_all()

    def show_imatrix(self):
        """Tools ▸ Importance Matrix…: the (non-modal) importance matrix dialog."""
        from .dialogs.imatrix_dialog import ImatrixDialog

        if self.imatrix_dialog is None:
            self.imatrix_dialog = ImatrixDialog(self.settings, lambda: self.model, self)
            self.model_loaded.connect(lambda _m: self.imatrix_dialog.refresh_compute())
        self.imatrix_dialog.refresh_compute()
        self.imatrix_dialog.show()
        self.imatrix_dialog.raise_()
        self.imatrix_dialog.activateWindow()
        return self.imatrix_dialog

    def show_optimize(self):
        """Tools ▸ Optimize…: the Optimize tab and the (non-modal) Optimize dialog."""
        from .dialogs.optimize_dialog import OptimizeDialog

        self.tabs.setCurrentWidget(self.optimize_page)
        if self.optimize_dialog is None:
            self.optimize_dialog = OptimizeDialog(lambda: self.plan.plan, self)
            self.optimize_dialog.streamed.connect(self.optimize_view.add_streamed)
            self.optimize_dialog.finished_result.connect(self.optimize_view.add_run)
            self.status.track(self.optimize_dialog.worker, "Stop the optimization (Esc)")
            self.model_loaded.connect(lambda _m: self.optimize_dialog.worker.is_busy()
                                      or self.optimize_dialog.refresh())
        if not self.optimize_dialog.worker.is_busy():
            self.optimize_dialog.refresh()
        self.optimize_dialog.show()
        self.optimize_dialog.raise_()
        self.optimize_dialog.activateWindow()
        return self.optimize_dialog

    def show_compare(self) -> None:
        """Tools ▸ Compare Levels…: the Compare tab, its first level picker focused."""
        self.tabs.setCurrentWidget(self.compare_page)
        self.compare_view.pickers[0].setFocus()

    def compare_with(self, levels, **options) -> int | None:
        """Compare ``levels`` (presets, "current", plan files) of the opened model in the Compare tab;
        ``options``: base, prompt, n_ctx, max_windows, max_tokens.  ``compared`` follows the result."""
        view = self.compare_view
        self.tabs.setCurrentWidget(self.compare_page)
        view.set_levels(levels)
        spins = {"n_ctx": view.ctx_spin, "max_windows": view.windows_spin, "max_tokens": view.tokens_spin}
        for key, value in options.items():
            if key in spins:
                spins[key].setValue(int(value or 0))
            elif key == "base":
                view.base_combo.setCurrentText(str(value))
            elif key == "prompt":
                view.prompt_edit.setText(value or "")
            else:
                raise TypeError(f"compare_with() got an unexpected option {key!r}")
        return view.run()

    def _on_preset_sizes(self, sizes: dict) -> None:
        """The presets' sizes for this model arrived from the plan bar's worker."""
        for picker in self.compare_view.pickers:
            picker.set_sizes(sizes)
        self.generate_panel.level.set_sizes(sizes)

    def _on_tree_selected(self, item) -> None:
        self.detail.show_item(item)
        self.error_view.show_item(item)

    def _on_plan_changed(self) -> None:
        plan = self.plan.plan
        self.tree.refresh_plan()
        self.plan_bar.show_plan(plan)
        self.status.set_plan(plan)
        self.error_view.set_plan(plan)
        self.compare_view.set_plan(plan)
        self.generate_panel.set_plan(plan)
        self.analysis.plan_changed()
        self.detail.plan_changed()
