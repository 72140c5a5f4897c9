"""Make ``torch.utils.data.get_worker_info()`` answer inside fastload's workers.

Datasets written for torch's DataLoader call ``get_worker_info()`` to shard an iterable dataset across
workers or to seed their own libraries. torch offers no public way to set what it returns: its own worker loop
assigns the module global that ``get_worker_info()`` reads. This is the one place fastload touches a private
torch name, on purpose and only here, so that user datasets keep working; it is checked by the loader tests
on the oldest and newest torch fastload supports.
"""
from __future__ import annotations

from typing import Any


def set_torch_worker_info(worker_id: int, num_workers: int, seed: int, dataset: Any) -> None:
    from torch.utils.data._utils import worker as torch_worker   # see the module docstring
    torch_worker._worker_info = torch_worker.WorkerInfo(id=worker_id, num_workers=num_workers, seed=seed,
                                                        dataset=dataset)
