"""Conversion from ImageFolder trees, map-style datasets, module:callable and arrays."""
from __future__ import annotations

import io
import os
import shutil
import textwrap

import numpy as np
import pytest
from PIL import Image

from fastload.conversion import convert, infer_schema, parse_size
from fastload.conversion import ImageFolderSource
from fastload.errors import FormatError, SourceError
from fastload.formats import (BytesField, FloatField, ImageField, IntField, JSONField, NDArrayField, open_dataset,
                              read_manifest)


def _files(root):
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    return [(f, classes.index(c)) for c in classes for f in sorted((root / c).glob("*.jpg"))]


@pytest.mark.parametrize("backend", ["shards", "lmdb"])
def test_photo_folder_round_trip_is_bit_exact(tmp_path, photo_folder, backend):
    s = convert(photo_folder, tmp_path / "ds", backend=backend, workers=2, shard_size="300KB", progress=False)
    files = _files(photo_folder)
    assert s.records == len(files) == 40 and s.skipped == [] and s.backend == backend
    assert s.bytes == read_manifest(tmp_path / "ds").num_bytes
    r = open_dataset(tmp_path / "ds")
    assert list(r.schema) == ["image", "label"]
    if backend == "shards":
        assert s.shards == len(r.manifest.shards) > 3
    for i, (path, label) in enumerate(files):
        assert bytes(r.get(i, "image")) == path.read_bytes()
        assert r.get(i, "label") == label
        assert r.image_size(i, "image") == (500, 375)
    assert r.verify(progress=False) == []


def test_output_does_not_depend_on_worker_count(tmp_path, photo_folder):
    a = convert(photo_folder, tmp_path / "a", workers=0, shard_size="500KB", progress=False)
    b = convert(photo_folder, tmp_path / "b", workers=2, shard_size="500KB", progress=False)
    ma, mb = read_manifest(a.path), read_manifest(b.path)
    assert [s.sha256 for s in ma.shards] == [s.sha256 for s in mb.shards]


def test_imagefolder_matches_torchvision_layout_rules(tmp_path, photo_folder):
    jpeg = next(photo_folder.glob("cat/*.jpg")).read_bytes()
    for rel in ["b/x/2.JPG", "b/x/1.jpeg", "b/0.png", "a/z.jpg", "a/notes.txt", "a/deep/er/y.webp"]:
        p = tmp_path / "tree" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(jpeg)
    (tmp_path / "tree" / "stray.jpg").write_bytes(jpeg)            # files at the root are not samples
    src = ImageFolderSource(tmp_path / "tree")
    assert src.classes == ["a", "b"]
    rel = [(os.path.relpath(p, tmp_path / "tree"), y) for p, y in src.samples]
    # torchvision: classes sorted, then sorted os.walk order, files sorted, extensions case-insensitive
    assert rel == [("a/z.jpg", 0), ("a/deep/er/y.webp", 0), ("b/0.png", 1), ("b/x/1.jpeg", 1), ("b/x/2.JPG", 1)]


def test_empty_class_folder_is_refused_as_torchvision_does(tmp_path, photo_folder):
    root = tmp_path / "tree"
    shutil.copytree(photo_folder, root)
    (root / "zebra").mkdir()
    (root / "zebra" / ".keep").write_text("")
    with pytest.raises(SourceError, match="Found no valid file for the classes zebra"):
        convert(root, tmp_path / "ds", workers=0, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tree"]


def test_symlink_loop_is_walked_once(tmp_path, photo_folder):
    root = tmp_path / "tree"
    shutil.copytree(photo_folder, root)
    os.symlink("..", root / "cat" / "loop")              # cat/loop -> tree: a loop through every class
    os.symlink(root / "cat", root / "cat" / "self")       # cat/self -> cat
    src = ImageFolderSource(root)
    assert len(src.samples) == 40 and len({p for p, _ in src.samples}) == 40
    s = convert(root, tmp_path / "ds", workers=0, progress=False)
    assert s.records == 40


def _broken_tree(tmp_path, photo_folder):
    root = tmp_path / "tree"
    shutil.copytree(photo_folder, root)
    good = next((root / "cat").glob("*.jpg")).read_bytes()
    (root / "cat" / "zz_not_an_image.jpg").write_text("this is not a JPEG")
    (root / "cat" / "zz_truncated.jpg").write_bytes(good[: len(good) // 2])
    return root


def test_on_error_skip_lists_bad_files(tmp_path, photo_folder):
    root = _broken_tree(tmp_path, photo_folder)
    s = convert(root, tmp_path / "ds", on_error="skip", workers=2, progress=False)
    assert s.records == 40
    bad = sorted(os.path.basename(x["source"]) for x in s.skipped)
    assert bad == ["zz_not_an_image.jpg", "zz_truncated.jpg"]
    assert all(os.path.isabs(x["source"]) and x["error"] for x in s.skipped)
    assert "zz_truncated.jpg" in str(s)
    m = read_manifest(tmp_path / "ds")
    assert m.skipped == s.skipped and m.num_records == 40
    r = open_dataset(tmp_path / "ds")
    assert all(bytes(r.get(i, "image"))[:2] == b"\xff\xd8" for i in range(len(r)))


def test_on_error_fail_names_the_file_and_leaves_nothing(tmp_path, photo_folder):
    root = _broken_tree(tmp_path, photo_folder)
    with pytest.raises(SourceError, match="zz_not_an_image.jpg") as e:
        convert(root, tmp_path / "ds", workers=2, progress=False)
    assert e.value.source.endswith("zz_not_an_image.jpg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tree"]     # no DST, no temp dir
    with pytest.raises(FormatError):
        open_dataset(tmp_path / "ds")


def test_max_side_and_quality_reencode(tmp_path, photo_folder):
    s = convert(photo_folder, tmp_path / "small", max_side=100, workers=0, progress=False)
    r = open_dataset(s.path)
    for i in range(len(r)):
        im = Image.open(io.BytesIO(bytes(r.get(i, "image"))))
        assert im.format == "JPEG" and im.size == r.image_size(i, "image") == (100, 75)
    q = convert(photo_folder, tmp_path / "q", quality=40, workers=0, progress=False)
    full = convert(photo_folder, tmp_path / "full", workers=0, progress=False)
    assert q.bytes < 0.8 * full.bytes
    assert open_dataset(q.path).schema["image"] == ImageField(quality=40)
    # a max_side larger than the images keeps the files byte for byte
    big = convert(photo_folder, tmp_path / "big", max_side=1000, workers=0, progress=False)
    assert read_manifest(big.path).shards[0].sha256 == read_manifest(full.path).shards[0].sha256


class PhotoPairs:
    """A map-style dataset returning (PIL image, label), like torchvision datasets."""

    def __init__(self, files):
        self.files = files

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        path, label = self.files[i]
        return Image.open(path).convert("RGB"), label


def test_map_dataset_of_pil_images(tmp_path, photo_folder):
    files = _files(photo_folder)[:12]
    s = convert(PhotoPairs(files), tmp_path / "ds", quality=95, workers=0, progress=False)
    r = open_dataset(s.path)
    assert list(infer_schema((Image.new("RGB", (2, 2)), 1)).items()) == [("image", ImageField()),
                                                                         ("label", IntField())]
    assert list(r.schema.items()) == [("image", ImageField(quality=95)), ("label", IntField())]
    for i, (path, label) in enumerate(files):
        dec = np.asarray(Image.open(io.BytesIO(bytes(r.get(i, "image")))))
        ref = np.asarray(Image.open(path).convert("RGB"))
        assert dec.shape == ref.shape and np.abs(dec.astype(int) - ref).mean() < 4
        assert r.get(i, "label") == label


def test_infer_schema_kinds():
    sample = {"img": np.zeros((4, 5, 3), np.uint8), "vec": np.zeros(7, np.float32), "y": np.int64(3), "w": 0.5,
              "txt": "hi", "blob": b"\x00\x01", "d": {"a": 1}, "jpg": b"\xff\xd8\xff\xe0" + bytes(20)}
    s = infer_schema(sample)
    assert [type(f) for f in s.values()] == [ImageField, NDArrayField, IntField, FloatField, JSONField,
                                             BytesField, JSONField, BytesField]
    assert s["vec"] == NDArrayField(np.float32, (7,))
    assert list(infer_schema((np.zeros((2, 2, 3), np.uint8), 1, 2))) == ["image", "label", "label_1"]


def test_dict_samples_of_every_kind(tmp_path):
    rng = np.random.default_rng(0)
    data = [{"img": rng.integers(0, 255, (20, 30, 3), dtype=np.uint8), "vec": rng.standard_normal(4),
             "y": i, "w": i / 7, "txt": f"s{i}", "blob": bytes([i]) * i} for i in range(70)]
    s = convert(data, tmp_path / "ds", workers=2, progress=False)
    r = open_dataset(s.path)
    assert len(r) == 70 and r.image_size(5, "img") == (30, 20)
    for i in (0, 33, 69):
        np.testing.assert_array_equal(r.get(i, "vec"), data[i]["vec"])
        assert (r.get(i, "y"), r.get(i, "w"), r.get(i, "txt"), bytes(r.get(i, "blob"))) == \
            (i, i / 7, f"s{i}", bytes([i]) * i)


def test_arrays_source_is_lossless(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 255, (300, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, 300)
    s = convert({"image": x, "label": y}, tmp_path / "ds", backend="lmdb", workers=2, progress=False)
    r = open_dataset(s.path)
    assert r.schema["image"] == NDArrayField(np.uint8, (32, 32, 3))
    np.testing.assert_array_equal(np.stack([r.get(i, "image") for i in range(300)]), x)
    np.testing.assert_array_equal(r.column("label"), y)


def test_module_callable_source(tmp_path, monkeypatch):
    (tmp_path / "mysource.py").write_text(textwrap.dedent("""
        import numpy as np
        class Squares:
            def __len__(self): return 100
            def __getitem__(self, i): return np.full((2, 3), i * i, np.int32), i
        def make(): return Squares()
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    s = convert("mysource:make", tmp_path / "ds", workers=2, progress=False)
    r = open_dataset(s.path)
    assert list(r.schema) == ["array", "label"] and len(r) == 100
    np.testing.assert_array_equal(r.get(9, "array"), np.full((2, 3), 81, np.int32))
    with pytest.raises(SourceError, match="cannot import"):
        convert("mysource:nope", tmp_path / "ds2", progress=False)


def test_existing_destination_and_stale_temp_dirs(tmp_path, photo_folder):
    dst = tmp_path / "ds"
    stale = tmp_path / "ds.tmp-999999999"        # no such process
    stale.mkdir()
    (stale / "shard-00000.fls").write_bytes(b"partial")
    convert(photo_folder, dst, workers=0, progress=False)
    assert not stale.exists()
    with pytest.raises(FileExistsError, match="overwrite"):
        convert(photo_folder, dst, workers=0, progress=False)
    s = convert(photo_folder, dst, workers=0, progress=False, overwrite=True, max_side=50)
    assert open_dataset(dst).image_size(0, "image") == (50, 38) and s.records == 40
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_parse_size():
    assert parse_size("256MB") == 256_000_000 and parse_size("1GiB") == 2**30
    assert parse_size("512k") == 512_000 and parse_size(4096) == 4096 and parse_size("1.5M") == 1_500_000
    for bad in ("", "abc", "-1MB", "0"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_fastload_convert_is_a_plain_function(tmp_path, photo_folder):
    import types

    import fastload
    import fastload.conversion
    assert isinstance(fastload.convert, types.FunctionType)
    assert fastload.convert is fastload.conversion.convert
    assert type(fastload.conversion) is types.ModuleType
    s = fastload.convert(photo_folder, tmp_path / "a", workers=0, progress=False)
    assert s.records == 40


def test_class_names_round_trip_as_torchvision(tmp_path, photo_folder):
    from fastload import ShardDataset
    s = convert(photo_folder, tmp_path / "ds", workers=0, progress=False)
    classes = sorted(p.name for p in photo_folder.iterdir() if p.is_dir())
    assert s.classes == classes
    ds = ShardDataset(tmp_path / "ds")
    assert ds.classes == classes and ds.class_to_idx == {c: i for i, c in enumerate(classes)}
    assert read_manifest(tmp_path / "ds").info["classes"] == classes
    # a dataset without names (arrays) says so
    convert({"x": np.arange(5)}, tmp_path / "arr", progress=False)
    assert ShardDataset(tmp_path / "arr").classes is None


def test_corrupt_record_error_names_the_source_file(tmp_path, photo_folder):
    from fastload import ShardDataset, ops
    from fastload.errors import CorruptRecordError
    convert(photo_folder, tmp_path / "ds", workers=0, progress=False, shard_size="100MB")
    r = open_dataset(tmp_path / "ds")
    assert r.source_key(5) == os.path.relpath(_files(photo_folder)[5][0], photo_folder)
    shard = r.shard_paths[0]
    start = int(r._part(0).index["_offset"][5]) + int(r._part(0).index["image.off"][5])
    r.close()
    data = bytearray(shard.read_bytes())
    data[start + 2: start + 4000] = bytes(3998)          # wipe the JPEG headers of record 5
    shard.write_bytes(bytes(data))
    ds = ShardDataset(tmp_path / "ds", transforms={"image": [ops.DecodeCenterCrop(64, 64)]})
    with pytest.raises(CorruptRecordError, match=r"converted from cat/cat_00001\.jpg"):
        ds[5]
    # datasets written before source keys existed (or with the file lost) still read, without the name
    (tmp_path / "ds" / "source_keys.jsonl").unlink()
    assert open_dataset(tmp_path / "ds").source_key(5) is None
    with pytest.raises(CorruptRecordError) as e:
        ShardDataset(tmp_path / "ds", transforms={"image": [ops.DecodeCenterCrop(64, 64)]})[5]
    assert "converted from" not in str(e.value) and "record 5" in str(e.value)


def test_missing_ray_names_the_package(tmp_path, photo_folder):
    import subprocess
    import sys
    code = ("import sys; sys.modules['ray'] = None\n"
            "import fastload\n"
            f"fastload.convert({str(photo_folder)!r}, {str(tmp_path / 'ds')!r}, engine='ray', progress=False)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "ConversionError" in p.stderr
    assert "pip install 'fastload[ray]'" in p.stderr
    assert not (tmp_path / "ds").exists() and list(tmp_path.iterdir()) == []


def test_dead_local_worker_is_named(tmp_path, photo_folder):
    from convert_test_sources import CrashingSource
    from fastload.errors import ConversionError
    src = CrashingSource(photo_folder, crash_at=17, marker=None)
    with pytest.raises(ConversionError, match=r"worker pid \d+ exited with status 3 while converting unit \d+ "
                                              r"\(items \d+\.\.\d+, first: .*\.jpg\)"):
        convert(src, tmp_path / "ds", workers=2, shard_size="300KB", progress=False)
    assert list(tmp_path.iterdir()) == []


_FULL_DISK = """
import errno, os, sys
import fastload
mnt = sys.argv[1]
try:
    fastload.convert(sys.argv[2], os.path.join(mnt, "ds"), backend=sys.argv[3], workers=0, progress=False)
except OSError as e:
    assert e.errno == errno.ENOSPC and "No space left on device" in str(e), repr(e)
    assert os.listdir(mnt) == [], os.listdir(mnt)
    print("ENOSPC-CLEAN")
else:
    print("NO-ERROR")
"""


@pytest.mark.parametrize("backend", ["shards", "lmdb"])
def test_full_disk_is_no_space_left_and_leaves_nothing(tmp_path, photo_folder, backend):
    """Converts into a 1 MiB tmpfs: mounted directly as root, else in a user namespace (unshare -rm)."""
    import shutil
    import subprocess
    import sys
    mnt = tmp_path / "disk"
    mnt.mkdir()
    inner = (f"mount -t tmpfs -o size=1m tmpfs {mnt} || exit 77; "
             f"{sys.executable} -c '{_FULL_DISK}' {mnt} {photo_folder} {backend}; rc=$?; umount {mnt}; exit $rc")
    prefix = [] if os.geteuid() == 0 else (["unshare", "-rm"] if shutil.which("unshare") else None)
    if prefix is None:
        pytest.skip("cannot mount a small file system here (not root, no unshare)")
    p = subprocess.run([*prefix, "sh", "-c", inner], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    if p.returncode == 77 or (prefix and p.returncode != 0 and "unshare" in p.stderr):
        pytest.skip(f"cannot mount a small file system here: {p.stderr.strip()[-200:]}")
    assert p.returncode == 0 and "ENOSPC-CLEAN" in p.stdout, p.stdout + p.stderr
