"""``python -m hatch_mcpkit``: the ``mcpkit`` command."""

from __future__ import annotations

import sys

from hatch_mcpkit.cli import main

if __name__ == "__main__":
    sys.exit(main())
