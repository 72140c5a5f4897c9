"""Storage layer: field schema, native shard files, LMDB environments and dataset directories."""
from fastload.formats.dataset_dir import DatasetReader, open_dataset
from fastload.formats.dataset_writer import DatasetWriter
from fastload.formats.imagesize import probe_image_size
from fastload.formats.lmdbstore import LMDBReader, LMDBWriter
from fastload.formats.manifest import Manifest, ShardEntry, read_manifest
from fastload.formats.records import PackedRecord, pack_record
from fastload.formats.schema import (BytesField, EncodedImage, Field, FloatField, ImageField, IntField,
                                     JSONField, NDArrayField, Schema)
from fastload.formats.shard import ShardInfo, ShardReader, ShardWriter
from fastload.formats.verify import verify_dataset

__all__ = [
    "BytesField", "DatasetReader", "DatasetWriter", "EncodedImage", "Field", "FloatField", "ImageField",
    "IntField", "JSONField", "LMDBReader", "LMDBWriter", "Manifest", "NDArrayField", "PackedRecord", "Schema",
    "ShardEntry", "ShardInfo", "ShardReader", "ShardWriter", "open_dataset", "pack_record", "probe_image_size",
    "read_manifest", "verify_dataset",
]
