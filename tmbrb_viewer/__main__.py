"""python -m tmbrb_viewer: the browser viewer on its own (same options as `tmbrb viewer`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
