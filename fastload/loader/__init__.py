"""Order, worker pool, ring buffer, transfer and the DataLoader that ties them together."""
from .dataloader import DataLoader

__all__ = ["DataLoader"]
