"""``python -m fastload.profile TARGET``: the profiler without the ``fastload`` command."""
import sys

from fastload.profile.cli import main

sys.exit(main())
