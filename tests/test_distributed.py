"""torchrun --nproc_per_node=2 (gloo, CPU): disjoint, complete coverage and one permutation per epoch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path



def test_torchrun_two_ranks_cover_the_epoch_disjointly(tmp_path):
    out = tmp_path / "ranks.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(Path(__file__).with_name("distributed_rank.py")), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = json.loads(out.read_text())
    assert len(ranks) == 2
    assert ranks[0]["global_order"] == ranks[1]["global_order"]          # identical permutation
    for e in range(2):
        a, b = ranks[0]["epochs"][e], ranks[1]["epochs"][e]
        assert len(a) == len(b) == 51                                     # 101 padded to 102
        assert set(a) | set(b) == set(range(101))                         # complete
        assert len(set(a) & set(b)) <= 1                                  # disjoint but for the one pad sample
    assert ranks[0]["epochs"][0] != ranks[0]["epochs"][1]                 # the epoch advanced by itself


def test_distributed_order_matches_torch_distributed_sampler():
    from torch.utils.data import DistributedSampler

    from fastload.loader.order import DistributedOrder
    for n in range(1, 14):
        for world in range(1, 6):
            for drop_last in (False, True):
                for shuffle in (False, True):
                    for rank in range(world):
                        ours = DistributedOrder(n, rank, world, shuffle, 7, drop_last)
                        ref = DistributedSampler(range(n), world, rank, shuffle, 7, drop_last)
                        assert list(ours) == list(ref) and len(ours) == len(ref), (n, world, rank)
