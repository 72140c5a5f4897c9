"""Really corrupted bytes on disk: a named error by default, a full batch and a report with on_corrupt="skip"."""
from __future__ import annotations

import warnings

import pytest

import fastload
from fastload import ops

TRANSFORMS = {"image": [ops.DecodeCenterCrop(48, resize=56)]}


def _damage(dataset_dir, index: int, fault: str) -> tuple[str, int]:
    """Overwrite bytes of record ``index``'s JPEG inside its shard file; returns (shard, record)."""
    reader = fastload.open_dataset(dataset_dir)
    payload = bytes(reader.get(index, "image"))
    shard, record = reader.locate(index)
    reader.close()
    data = bytearray(open(shard, "rb").read())
    at = data.find(payload)
    assert at > 0
    if fault == "header":
        data[at:at + 4] = b"\x00\x00\x00\x00"              # not a JPEG any more
    else:
        data[at + len(payload) // 2] ^= 0xFF                # one flipped bit pattern: checksum mismatch
    open(shard, "wb").write(bytes(data))
    return str(shard), record


@pytest.mark.parametrize("num_workers", [0, 2])
def test_corrupt_jpeg_raises_naming_shard_and_record(fresh_shards, num_workers):
    shard, record = _damage(fresh_shards, 17, "header")
    ds = fastload.ShardDataset(fresh_shards, transforms=TRANSFORMS)
    with pytest.raises(fastload.CorruptRecordError) as e:
        list(fastload.DataLoader(ds, batch_size=8, num_workers=num_workers))
    msg = str(e.value)
    assert shard in msg and f"record {record}" in msg


def test_checksum_mismatch_is_caught_when_verifying_reads(fresh_shards):
    shard, record = _damage(fresh_shards, 30, "flip")
    ds = fastload.ShardDataset(fresh_shards, transforms=TRANSFORMS, verify_checksums=True)
    with pytest.raises(fastload.CorruptRecordError) as e:
        list(fastload.DataLoader(ds, batch_size=8, num_workers=2))
    assert shard in str(e.value) and f"record {record}" in str(e.value)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_skip_policy_keeps_batches_full_and_reports_at_epoch_end(fresh_shards, num_workers):
    _damage(fresh_shards, 5, "header")
    _damage(fresh_shards, 61, "header")
    ds = fastload.ShardDataset(fresh_shards, transforms=TRANSFORMS, on_corrupt="skip")
    loader = fastload.DataLoader(ds, batch_size=8, num_workers=num_workers)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(loader)
    assert [len(b[1]) for b in batches] == [8] * 10           # nothing dropped, batches stay full
    report = [str(w.message) for w in caught if "corrupt record" in str(w.message)]
    assert len(report) == 1 and "replaced 2 corrupt record(s)" in report[0]
    assert "sample 5" in report[0] and "sample 61" in report[0]
    assert sorted(i for i, _ in loader.stats.last_skipped) == [5, 61]
    assert all(b[0].shape == (8, 3, 48, 48) for b in batches)


def test_shard_cut_while_workers_read_it_is_a_named_error(fresh_shards):
    """A shard truncated in place under a running loader with workers: the worker's FormatError naming it, not
    a worker killed by SIGBUS (num_workers=0, where SIGBUS would kill the training process itself, is tested
    in a bounded child in tests/test_formats_hostile.py)."""
    num_workers = 2
    import os

    from fastload.formats.mapping_guard import available
    if not available():
        pytest.skip("the _sigbus extension is not built")
    ds = fastload.ShardDataset(fresh_shards, transforms=TRANSFORMS)
    it = iter(fastload.DataLoader(ds, batch_size=8, num_workers=num_workers, persistent_workers=num_workers > 0))
    next(it)
    for f in ds.reader.shard_paths:
        os.truncate(f, 4096)
    with pytest.raises(fastload.FastloadError) as e:
        for _ in it:
            pass
    msg = str(e.value)     # a mapped read stopped, or a shard first opened after the cut refused
    assert ("changed size while being read" in msg or "rewritten after the dataset was opened" in msg
            or "the dataset changed after this reader opened it" in msg), msg
    assert "shard-0000" in msg or "/ds:" in msg
    assert "SIGBUS" not in str(e.value)
