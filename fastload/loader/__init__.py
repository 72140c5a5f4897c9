"""Order, worker pool, ring buffer, transfer and the DataLoader that ties them together."""
from .dataloader import DataLoader
from .order import BlockShuffleSampler

__all__ = ["DataLoader", "BlockShuffleSampler"]
