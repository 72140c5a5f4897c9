"""Datasets behind URLs and bigger than the page cache: fsspec filesystems (per process), ranged reads with
retries, the node-local block cache, read-ahead along the known order, and uploads (docs/REMOTE.md)."""
from fastload.storage.blocks import BlockTable
from fastload.storage.cache import default_cache_dir
from fastload.storage.ranged import COUNTERS, RetryPolicy
from fastload.storage.reading import open_reader
from fastload.storage.remote import RemoteDatasetReader, RemoteOptions
from fastload.storage.upload import upload_dataset
from fastload.storage.url import is_remote

__all__ = ["BlockTable", "COUNTERS", "RemoteDatasetReader", "RemoteOptions", "RetryPolicy", "default_cache_dir",
           "is_remote", "open_reader", "upload_dataset"]
