"""``python -m fastload.profiling TARGET``: the profiler without the ``fastload`` command."""
import sys

from fastload.profiling.cli import main

sys.exit(main())
