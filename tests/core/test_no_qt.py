import subprocess
import sys


def test_core_imports_without_qt():
    """The core must work on a machine with no Qt: import everything with PySide6 blocked."""
    code = (
        "import sys; sys.modules['PySide6'] = None; sys.modules['pyqtgraph'] = None\n"
        "import workbench, workbench.cli, workbench.stats, workbench.demo\n"
        "import workbench.formats.torchbin, workbench.formats.peft\n"
        "assert not any(m.startswith(('PySide6.', 'pyqtgraph.')) for m in sys.modules)\n"
        "print(workbench.open_model)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "open_model" in proc.stdout
