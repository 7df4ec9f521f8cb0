"""The shape of ``ui/``: a small shell at the top, the parts grouped by role in subpackages, and no part
importing the window that composes them (each names what it uses of its host in a ``Protocol``)."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

UI = Path(__file__).resolve().parents[2] / "ui"

# the application shell and the infrastructure every part shares
SHELL = {
    "__init__.py", "__main__.py",
    "app.py",  # entry point (model-workbench = ui.app:main): builds the window
    "main_window.py",  # composes the parts
    "theme.py", "gc_guard.py", "deferred.py", "single_instance.py", "drop.py",
    "worker.py",  # background jobs of every part (stop_all_workers at exit)
    "formatting.py",  # display strings shared by every part
}
SUBPACKAGES = {"pages", "dialogs", "widgets", "models", "controllers"}
WINDOW = "ui.main_window"
MAY_IMPORT_WINDOW = {"ui.app"}  # it builds the window

# (module, host protocol, constructor parameter): every attribute the part reads of its host is declared
HOSTS = [
    ("ui.controllers.plan_actions", "PlanActionsHost", "PlanActions"),
    ("ui.controllers.conversion_actions", "ConversionHost", "ConversionActions"),
    ("ui.controllers.metadata_editor", "MetadataEditHost", "MetadataEditActions"),
]


def module_name(path: Path, root: Path = UI) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imported_modules(path: Path, root: Path = UI) -> set[str]:
    """Every module an ``import`` or ``from ... import`` in ``path`` names (relative ones resolved; a
    ``from pkg import name`` counts both ``pkg`` and ``pkg.name``), wherever it is: module level, in a
    function, under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    name = module_name(path, root)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{alias.name}" for alias in node.names)
    return out


def window_importers(root: Path = UI) -> list[str]:
    return sorted(module_name(p, root) for p in root.rglob("*.py")
                  if "__pycache__" not in p.parts and WINDOW in imported_modules(p, root))


def test_only_the_app_imports_the_window():
    assert set(window_importers()) <= MAY_IMPORT_WINDOW


def test_no_part_in_a_subpackage_imports_the_window():
    for sub in sorted(SUBPACKAGES):
        for path in sorted((UI / sub).rglob("*.py")):
            assert WINDOW not in imported_modules(path), f"{module_name(path)} imports {WINDOW}"


def test_the_top_level_holds_only_the_shell():
    top = {p.name for p in UI.glob("*.py")}
    assert top == SHELL, f"not shell modules (move them into a subpackage): {sorted(top - SHELL)}; " \
                         f"missing: {sorted(SHELL - top)}"
    dirs = {p.name for p in UI.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert dirs == SUBPACKAGES
    for sub in SUBPACKAGES:
        assert (UI / sub / "__init__.py").is_file(), f"ui/{sub} is not a package (setuptools would skip it)"
        assert not {p.name for p in (UI / sub).iterdir() if p.is_dir() and p.name != "__pycache__"}


def test_the_check_sees_every_way_of_importing_the_window(tmp_path):
    """The walk finds the window imported relatively, absolutely, inside a function and under TYPE_CHECKING."""
    root = tmp_path / "ui"
    (root / "pages").mkdir(parents=True)
    for f in ("__init__.py", "main_window.py", "pages/__init__.py", "pages/clean.py"):
        (root / f).write_text("import os\n")
    ways = {
        "pages/a.py": "from ..main_window import MainWindow\n",
        "pages/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ui.main_window import X\n",
        "pages/c.py": "def f():\n    from .. import main_window\n",
        "pages/d.py": "import ui.main_window as mw\n",
        "e.py": "from .main_window import MainWindow\n",
    }
    for f, src in ways.items():
        (root / f).write_text(src)
    assert window_importers(root) == ["ui.e", "ui.pages.a", "ui.pages.b", "ui.pages.c", "ui.pages.d"]


def _protocol_members(proto: type) -> set[str]:
    names = set(getattr(proto, "__annotations__", {}))
    names.update(n for n in vars(proto) if not n.startswith("_") and callable(vars(proto)[n]))
    return names


def _host_uses(module: str, cls_name: str) -> set[str]:
    """What ``cls_name`` reads of its host: ``window.X`` in its ``__init__`` and ``self.w.X`` anywhere in it."""
    path = UI.parent / (module.replace(".", "/") + ".py")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls_name)
    init = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    host_param = init.args.args[1].arg
    used = set()
    for node in ast.walk(cls):
        if not isinstance(node, ast.Attribute):
            continue
        v = node.value
        if isinstance(v, ast.Name) and v.id == host_param:
            used.add(node.attr)
        elif isinstance(v, ast.Attribute) and v.attr == "w" and isinstance(v.value, ast.Name) and v.value.id == "self":
            used.add(node.attr)
    return used


@pytest.mark.parametrize("module, proto, cls", HOSTS)
def test_a_host_protocol_names_what_its_part_uses(module, proto, cls):
    members = _protocol_members(getattr(importlib.import_module(module), proto))
    used = _host_uses(module, cls)
    assert used, f"{cls} reads nothing of its host? (the check would be empty)"
    assert used <= members, f"{cls} uses {sorted(used - members)} of its host, not declared in {proto}"


def test_the_window_provides_what_its_parts_need(make_window):
    w = make_window()
    w.finish_building()
    for module, proto, _cls in HOSTS:
        missing = [m for m in sorted(_protocol_members(getattr(importlib.import_module(module), proto)))
                   if not hasattr(w, m)]
        assert not missing, f"MainWindow lacks {missing} of {proto}"
