"""Desktop integration (workbench.desktop, `workbench install-desktop`): files written into a temporary
XDG data dir, their contents, the tools run, and removal."""
from __future__ import annotations

import configparser
import os
import shutil
import stat
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from workbench import desktop
from workbench.cli import main as cli_main

MIME_NS = "{http://www.freedesktop.org/standards/shared-mime-info}"


def _entry(path: Path) -> dict[str, str]:
    cp = configparser.ConfigParser(interpolation=None)
    cp.optionxform = str  # keys are case-sensitive
    cp.read(path, encoding="utf-8")
    return dict(cp["Desktop Entry"])


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", data[16:24])


def test_install_writes_entry_mime_types_and_icons(tmp_path):
    exe = "/opt/Model Workbench/model-workbench"
    report = desktop.install_desktop(tmp_path, [exe], run_tools=False)
    data = tmp_path / "share"
    assert report.data_dir == data and report.ran == [] and report.failed == []

    entry_path = data / "applications" / "model-workbench.desktop"
    entry = _entry(entry_path)
    assert entry["Type"] == "Application" and entry["Name"] == "Model Workbench"
    assert entry["Exec"] == '"/opt/Model Workbench/model-workbench" %F'
    assert entry["TryExec"] == exe
    assert entry["Icon"] == "model-workbench" and entry["Terminal"] == "false"
    assert entry["MimeType"].split(";")[:2] == ["application/x-gguf", "application/x-safetensors"]
    assert entry["MimeType"].endswith(";") and entry["Categories"].endswith(";")

    root = ET.parse(data / "mime" / "packages" / "model-workbench.xml").getroot()
    types = {t.get("type"): t for t in root.findall(f"{MIME_NS}mime-type")}
    assert set(types) == {"application/x-gguf", "application/x-safetensors"}
    assert [g.get("pattern") for g in types["application/x-gguf"].findall(f"{MIME_NS}glob")] == ["*.gguf"]
    assert [g.get("pattern") for g in types["application/x-safetensors"].findall(f"{MIME_NS}glob")] == ["*.safetensors"]
    match = types["application/x-gguf"].find(f"{MIME_NS}magic/{MIME_NS}match")
    assert (match.get("type"), match.get("offset"), match.get("value")) == ("string", "0", "GGUF")

    for size in desktop.ICON_SIZES:
        png = data / "icons" / "hicolor" / f"{size}x{size}" / "apps" / "model-workbench.png"
        assert _png_size(png) == (size, size)
        assert stat.S_IMODE(png.stat().st_mode) == 0o644
    svg = data / "icons" / "hicolor" / "scalable" / "apps" / "model-workbench.svg"
    assert svg.read_bytes() == desktop.icon_svg().read_bytes()
    assert len(report.files) == 2 + len(desktop.ICON_SIZES) + 1 and all(p.is_file() for p in report.files)
    assert not [p for p in data.rglob("*.partial")]


def test_default_data_dir_follows_xdg(tmp_path, monkeypatch):
    assert desktop.data_home(None, {"XDG_DATA_HOME": str(tmp_path / "xdg")}) == tmp_path / "xdg"
    assert desktop.data_home(None, {"XDG_DATA_HOME": "relative/ignored"}) == Path.home() / ".local" / "share"
    assert desktop.data_home(None, {}) == Path.home() / ".local" / "share"
    assert desktop.data_home("~/p", {}) == Path.home() / "p" / "share"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    report = desktop.install_desktop(None, ["/usr/bin/mw"], run_tools=False)
    assert (tmp_path / "xdg" / "applications" / "model-workbench.desktop").is_file()
    assert report.data_dir == tmp_path / "xdg"


@pytest.mark.parametrize("arg, quoted", [
    ("/usr/bin/model-workbench", "/usr/bin/model-workbench"),
    ("/home/a b/mw", '"/home/a b/mw"'),
    ("/opt/$HOME/x", '"/opt/\\\\$HOME/x"'),  # \$ in the Exec grammar, the backslash escaped again
    ('/o"q/x', '"/o\\\\"q/x"'),
    ("/opt/100%/mw", "/opt/100%%/mw"),
])
def test_exec_quoting(arg, quoted):
    assert desktop.exec_quote(arg) == quoted


def test_launch_command_frozen_and_from_a_venv(tmp_path, monkeypatch):
    exe = tmp_path / "dist" / "model-workbench" / "model-workbench"
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "executable", str(exe))
    assert desktop.launch_command() == [str(exe)]
    monkeypatch.delattr(sys, "frozen")
    venv_bin = tmp_path / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "model-workbench").write_text("#!/bin/sh\n")
    monkeypatch.setattr(sys, "executable", str(venv_bin / "python"))
    assert desktop.launch_command() == [str(venv_bin / "model-workbench")]
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "other" / "python"))
    assert desktop.launch_command() == [str(tmp_path / "other" / "python"), "-m", "ui"]
    report = desktop.install_desktop(tmp_path / "p", run_tools=False)
    assert _entry(report.files[0])["Exec"] == f"{tmp_path}/other/python -m ui %F"


def _fake_tools(bin_dir: Path, log: Path, failing: str | None = None) -> None:
    bin_dir.mkdir()
    for name in ("update-mime-database", "update-desktop-database", "xdg-mime"):
        code = 3 if name == failing else 0
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\necho oops >&2\nexit {code}\n')
        script.chmod(0o755)


@pytest.mark.skipif(os.name == "nt", reason="shell-script stand-ins for the desktop tools")
def test_install_runs_the_tools_that_exist_and_tolerates_failures(tmp_path):
    log = tmp_path / "log.txt"
    _fake_tools(tmp_path / "bin", log, failing="update-desktop-database")
    env = {"PATH": str(tmp_path / "bin"), "HOME": str(tmp_path)}
    report = desktop.install_desktop(tmp_path / "p", ["/x/mw"], env=env)
    data = tmp_path / "p" / "share"
    assert log.read_text().splitlines() == [
        f"update-mime-database {data}/mime",
        f"update-desktop-database {data}/applications",
        "xdg-mime default model-workbench.desktop application/x-gguf application/x-safetensors",
    ]
    assert report.ran == [f"update-mime-database {data}/mime",
                          "xdg-mime default model-workbench.desktop application/x-gguf application/x-safetensors"]
    assert len(report.failed) == 1 and "exit 3" in report.failed[0] and "oops" in report.failed[0]
    assert report.skipped == ["gtk-update-icon-cache"]

    log.unlink()
    desktop.install_desktop(tmp_path / "p", ["/x/mw"], set_default=False, env=env)
    assert "xdg-mime" not in log.read_text()


def test_install_without_any_tool(tmp_path):
    report = desktop.install_desktop(tmp_path / "p", ["/x/mw"], env={"PATH": str(tmp_path / "nothing")})
    assert report.ran == [] and report.failed == []
    assert report.skipped == ["update-mime-database", "update-desktop-database", "gtk-update-icon-cache", "xdg-mime"]
    assert (tmp_path / "p" / "share" / "applications" / "model-workbench.desktop").is_file()


@pytest.mark.skipif(shutil.which("update-mime-database") is None, reason="update-mime-database is not installed")
def test_real_mime_database_knows_the_types(tmp_path):
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)}
    report = desktop.install_desktop(tmp_path / "p", ["/x/mw"], set_default=False, env=env)
    assert any(r.startswith("update-mime-database") for r in report.ran), report.failed
    globs = (tmp_path / "p" / "share" / "mime" / "globs2").read_text()
    assert "application/x-gguf:*.gguf" in globs and "application/x-safetensors:*.safetensors" in globs
    magic = (tmp_path / "p" / "share" / "mime" / "magic").read_bytes()
    assert b"application/x-gguf" in magic and b"GGUF" in magic


def test_uninstall_removes_what_install_wrote(tmp_path):
    installed = desktop.install_desktop(tmp_path, ["/x/mw"], run_tools=False)
    (tmp_path / "share" / "applications" / "other.desktop").write_text("[Desktop Entry]\n")
    removed = desktop.uninstall_desktop(tmp_path, run_tools=False)
    assert sorted(removed.files) == sorted(installed.files)
    assert not any(p.exists() for p in installed.files)
    assert (tmp_path / "share" / "applications" / "other.desktop").is_file()
    assert desktop.uninstall_desktop(tmp_path, run_tools=False).files == []  # nothing left: still fine


def test_cli_install_and_uninstall(tmp_path, capsys):
    assert cli_main(["install-desktop", "--prefix", str(tmp_path), "--exec", "'/opt/my apps/mw' --new-window",
                     "--no-default"]) == 0
    out, err = capsys.readouterr()
    entry_path = tmp_path / "share" / "applications" / "model-workbench.desktop"
    assert str(entry_path) in out.splitlines()
    assert f"installed {len(out.splitlines())} files under {tmp_path / 'share'}" in err
    assert _entry(entry_path)["Exec"] == '"/opt/my apps/mw" --new-window %F'
    assert cli_main(["uninstall-desktop", "--prefix", str(tmp_path)]) == 0
    assert not entry_path.exists()


def test_cli_exec_that_is_a_path_with_spaces(tmp_path, capsys):
    exe = tmp_path / "My Apps" / "model-workbench"
    exe.parent.mkdir()
    exe.write_text("#!/bin/sh\n")
    assert cli_main(["install-desktop", "--prefix", str(tmp_path), "--exec", str(exe), "--no-default"]) == 0
    entry = _entry(tmp_path / "share" / "applications" / "model-workbench.desktop")
    assert entry["Exec"] == f'"{exe}" %F' and entry["TryExec"] == str(exe)


def test_missing_template_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(desktop, "root_dir", lambda: tmp_path / "nowhere")
    assert cli_main(["install-desktop", "--prefix", str(tmp_path), "--exec", "/x/mw"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "model-workbench.desktop.in" in err and "Traceback" not in err
    assert not (tmp_path / "share" / "applications").exists()


def test_desktop_module_imports_without_qt():
    code = ("import sys; sys.modules['PySide6'] = None\n"
            "import workbench.desktop, workbench.hfcache\n"
            "assert not any(m.startswith('PySide6.') for m in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
