"""Desktop integration on Linux and other freedesktop.org systems (no Qt).

``install_desktop()`` registers the app for the current user: a ``.desktop`` entry in
``<data>/applications`` (so it appears in the application menu and in "Open With"), the file types
``application/x-gguf`` (``*.gguf``, magic ``GGUF``) and ``application/x-safetensors`` (``*.safetensors``)
in ``<data>/mime/packages``, and the icon in every ``hicolor`` size.  ``<data>`` is ``PREFIX/share`` when a
prefix is given, else ``$XDG_DATA_HOME`` (default ``~/.local/share``).  Then it refreshes the caches with
``update-mime-database``, ``update-desktop-database`` and ``gtk-update-icon-cache`` and makes the app the
default for both types with ``xdg-mime default``, each only when the tool exists.

The entry's ``Exec`` runs the frozen bundle when called from it, else this environment's
``model-workbench`` launcher.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .errors import WorkbenchError
from .fsutil import atomic_write_path

APP_ID = "model-workbench"
DESKTOP_FILE = f"{APP_ID}.desktop"
MIME_FILE = f"{APP_ID}.xml"
MIME_TYPES = {"application/x-gguf": "*.gguf", "application/x-safetensors": "*.safetensors"}
ICON_SIZES = (16, 24, 32, 48, 64, 128, 256, 512)
TOOL_TIMEOUT_S = 60


def root_dir() -> Path:
    """The folder holding ``resources/`` and ``packaging/``: the source checkout, or the bundle's data folder."""
    frozen = getattr(sys, "_MEIPASS", None)
    return Path(frozen) if frozen else Path(__file__).resolve().parents[1]


def resource_path(*parts: str) -> Path:
    return root_dir().joinpath("resources", *parts)


def icon_png(size: int) -> Path:
    return resource_path("icons", f"{APP_ID}-{size}.png")


def icon_svg() -> Path:
    return resource_path("icons", f"{APP_ID}.svg")


def _template(name: str) -> str:
    path = root_dir() / "packaging" / name
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise WorkbenchError(f"the desktop-integration file {name} is missing ({exc.strerror})", path=path,
                             hint="run from a source checkout (pip install -e .) or from the bundle") from None


def data_home(prefix: str | os.PathLike | None = None, env: dict | None = None) -> Path:
    """``PREFIX/share``, else ``$XDG_DATA_HOME``, else ``~/.local/share``."""
    if prefix is not None:
        return Path(prefix).expanduser() / "share"
    env = os.environ if env is None else env
    xdg = env.get("XDG_DATA_HOME")
    return Path(xdg).expanduser() if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "share"


def launch_command() -> list[str]:
    """The command that starts the GUI: the bundle executable when frozen, else the ``model-workbench``
    launcher beside this Python (a venv's bin/), else ``python -m ui``."""
    if getattr(sys, "frozen", False):
        return [os.path.abspath(sys.executable)]
    name = "model-workbench.exe" if os.name == "nt" else "model-workbench"
    script = Path(sys.executable).parent / name
    if script.is_file():
        return [str(script)]  # no resolve(): a venv's python is a symlink, its launcher is not
    found = shutil.which(name)
    if found:
        return [os.path.abspath(found)]
    return [os.path.abspath(sys.executable), "-m", "ui"]


_RESERVED = set(' \t\n"\'\\><~|&;$*?#()`')


def exec_quote(arg: str) -> str:
    """Quote one ``Exec`` argument as the Desktop Entry spec wants (double quotes, ``" ` $ \\``
    backslash-escaped), then escape backslashes once more for the string value itself; ``%`` doubled."""
    arg = arg.replace("%", "%%")
    if arg and not (set(arg) & _RESERVED):
        return arg
    quoted = '"' + "".join("\\" + c if c in '"`$\\' else c for c in arg) + '"'
    return quoted.replace("\\", "\\\\")


def desktop_entry(command: Sequence[str]) -> str:
    """The ``.desktop`` file text for a launch command (``%F`` appended: the files to open)."""
    if not command:
        raise ValueError("empty launch command")
    text = _template("model-workbench.desktop.in")
    return (text.replace("@EXEC@", " ".join(exec_quote(a) for a in command))
            .replace("@TRYEXEC@", command[0].replace("\\", "\\\\")))


def mime_xml() -> str:
    return _template("model-workbench-mime.xml")


@dataclass
class DesktopReport:
    """What an install or uninstall did: files written/removed and the tools run (with their outcome)."""

    data_dir: Path
    files: list[Path] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write_path(path) as tmp:
        Path(tmp).write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        os.chmod(tmp, 0o644)  # the temporary file is private; desktop files are world-readable
    return path


def _installed_files(data: Path) -> list[Path]:
    hicolor = data / "icons" / "hicolor"
    return [data / "applications" / DESKTOP_FILE, data / "mime" / "packages" / MIME_FILE,
            *(hicolor / f"{s}x{s}" / "apps" / f"{APP_ID}.png" for s in ICON_SIZES),
            hicolor / "scalable" / "apps" / f"{APP_ID}.svg"]


def _run_tool(report: DesktopReport, argv: list[str], env: dict | None) -> None:
    exe = shutil.which(argv[0], path=(env or os.environ).get("PATH"))
    if exe is None:
        report.skipped.append(argv[0])
        return
    text = " ".join(argv)
    try:
        proc = subprocess.run([exe, *argv[1:]], env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=TOOL_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        report.failed.append(f"{text}: {exc}")
        return
    if proc.returncode == 0:
        report.ran.append(text)
    else:
        report.failed.append(f"{text}: exit {proc.returncode} {proc.stderr.strip()[:300]}")


def _refresh(report: DesktopReport, data: Path, env: dict | None) -> None:
    _run_tool(report, ["update-mime-database", str(data / "mime")], env)
    _run_tool(report, ["update-desktop-database", str(data / "applications")], env)
    _run_tool(report, ["gtk-update-icon-cache", "-q", "-t", "-f", str(data / "icons" / "hicolor")], env)


def install_desktop(prefix: str | os.PathLike | None = None, command: Sequence[str] | None = None,
                    set_default: bool = True, run_tools: bool = True, env: dict | None = None) -> DesktopReport:
    """Register the app for the current user (see the module docstring); returns what was done.

    ``command``: the launch command (default :func:`launch_command`).  ``set_default``: make the app the
    default for ``.gguf`` and ``.safetensors`` (``xdg-mime default``).  ``run_tools=False`` writes the files
    only.  ``env``: the environment the tools run in (their PATH and XDG variables)."""
    data = data_home(prefix, env)
    report = DesktopReport(data)
    command = list(command) if command else launch_command()
    entry = desktop_entry(command)
    mime = mime_xml()
    icons = {s: icon_png(s) for s in ICON_SIZES}
    missing = [p for p in (*icons.values(), icon_svg()) if not p.is_file()]
    if missing:
        raise WorkbenchError(f"the application icon {missing[0].name} is missing", path=missing[0],
                             hint="run from a source checkout (pip install -e .) or from the bundle")
    files = _installed_files(data)
    report.files.append(_write(files[0], entry))
    report.files.append(_write(files[1], mime))
    for s, dest in zip(ICON_SIZES, files[2:]):
        report.files.append(_write(dest, icons[s].read_bytes()))
    report.files.append(_write(files[-1], icon_svg().read_bytes()))
    if run_tools:
        _refresh(report, data, env)
        if set_default:
            _run_tool(report, ["xdg-mime", "default", DESKTOP_FILE, *MIME_TYPES], env)
    return report


def uninstall_desktop(prefix: str | os.PathLike | None = None, run_tools: bool = True,
                      env: dict | None = None) -> DesktopReport:
    """Remove what :func:`install_desktop` wrote (missing files are fine) and refresh the caches."""
    data = data_home(prefix, env)
    report = DesktopReport(data)
    for path in _installed_files(data):
        try:
            path.unlink()
            report.files.append(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise WorkbenchError(f"could not remove {path.name}: {exc.strerror}", path=path) from None
    if run_tools:
        _refresh(report, data, env)
    return report


def supported() -> bool:
    """Whether this platform uses freedesktop.org desktop entries (Linux and the BSDs)."""
    return sys.platform.startswith("linux") or "bsd" in sys.platform
