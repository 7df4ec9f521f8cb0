"""Entry script of the frozen app (PyInstaller): the same ``ui.app.main`` as ``model-workbench``."""
import multiprocessing
import sys

from ui.app import main

if __name__ == "__main__":
    multiprocessing.freeze_support()  # a no-op unless a library starts multiprocessing children
    sys.exit(main())
