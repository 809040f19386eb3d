"""``python -m theme_engine``: the ``theme-engine`` command."""

import sys

from theme_engine.cluster.commands.cli import main

sys.exit(main())
