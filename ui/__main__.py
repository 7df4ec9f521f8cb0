"""``python -m ui [PATH]``."""
import sys

from .app import main

if __name__ == "__main__":
    sys.exit(main())
