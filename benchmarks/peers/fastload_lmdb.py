"""fastload from LMDB: the same pipeline as fastload_shards, records in one LMDB environment.

    .venv-vision/bin/python -m benchmarks.peers.fastload_lmdb --data benchmarks/data/bench --workers 2
"""
from __future__ import annotations

import sys

from benchmarks.peers._common import main
from benchmarks.peers.fastload_shards import make_loader_for

make_loader = make_loader_for("lmdb")

if __name__ == "__main__":
    sys.exit(main(make_loader, "fastload_lmdb", __doc__.splitlines()[0]))
