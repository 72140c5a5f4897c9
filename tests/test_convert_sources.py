"""Every source type, on small real JPEGs made in the test: the records that come out, class names, and the
same bytes from the local engine and from Ray."""
from __future__ import annotations

import csv
import io
import json
import os
import tarfile

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")          # nothing here may reach the network
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import fastload  # noqa: E402
from convert_test_sources import file_digests  # noqa: E402
from fastload.formats import open_dataset  # noqa: E402


def _photos(photo_folder):
    classes = sorted(p.name for p in photo_folder.iterdir() if p.is_dir())
    files = [(f, classes.index(c)) for c in classes for f in sorted((photo_folder / c).glob("*.jpg"))]
    return classes, files[::2]          # 20 photos, two per class


def _parquet(tmp, photo_folder):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    classes, files = _photos(photo_folder)
    root = tmp / "pq"
    root.mkdir()
    for part, chunk in enumerate((files[:12], files[12:])):
        table = pa.table({"image": [f.read_bytes() for f, _ in chunk], "label": [y for _, y in chunk],
                          "caption": [f.stem for f, _ in chunk], "score": [0.5 * y for _, y in chunk]})
        pq.write_table(table, root / f"part-{part}.parquet", row_group_size=5)
    expect = [{"image": f.read_bytes(), "label": y, "caption": f.stem, "score": 0.5 * y} for f, y in files]
    return root, expect, None, [f"part-{0 if i < 12 else 1}.parquet#{i if i < 12 else i - 12}"
                                for i in range(len(files))]


def _hf_dataset(tmp, photo_folder):
    datasets = pytest.importorskip("datasets")
    classes, files = _photos(photo_folder)
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=classes),
                               "caption": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"image": [{"bytes": f.read_bytes(), "path": None} for f, _ in files],
                                     "label": [y for _, y in files], "caption": [f.stem for f, _ in files]},
                                    features=feats)
    ds.save_to_disk(str(tmp / "hf"))
    expect = [{"image": f.read_bytes(), "label": y, "caption": f.stem} for f, y in files]
    return tmp / "hf", expect, classes, [f"{tmp / 'hf'}[{i}]" for i in range(len(files))]


def _hf_parquet(tmp, photo_folder):
    """Parquet written by Hugging Face: the ClassLabel names travel in the file's metadata."""
    datasets = pytest.importorskip("datasets")
    pytest.importorskip("pyarrow")
    classes, files = _photos(photo_folder)
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=classes)})
    ds = datasets.Dataset.from_dict({"image": [{"bytes": f.read_bytes(), "path": None} for f, _ in files],
                                     "label": [y for _, y in files]}, features=feats)
    ds.to_parquet(str(tmp / "train.parquet"))
    expect = [{"image": f.read_bytes(), "label": y} for f, y in files]
    return tmp / "train.parquet", expect, classes, [f"train.parquet#{i}" for i in range(len(files))]


def _webdataset(tmp, photo_folder):
    classes, files = _photos(photo_folder)
    root = tmp / "wds"
    root.mkdir()
    for part, chunk in enumerate((files[:8], files[8:])):
        with tarfile.open(root / f"shard-{part:03d}.tar", "w") as tf:
            for f, y in chunk:
                key = f"{f.parent.name}_{f.stem}"
                for ext, data in (("jpg", f.read_bytes()), ("cls", str(y).encode()),
                                  ("json", json.dumps({"name": f.name}).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    expect = [{"image": f.read_bytes(), "label": y, "json": {"name": f.name}} for f, y in files]
    keys = [f"shard-{0 if i < 8 else 1:03d}.tar/{f.parent.name}_{f.stem}" for i, (f, _) in enumerate(files)]
    return root, expect, None, keys


def _csv(tmp, photo_folder):
    classes, files = _photos(photo_folder)
    with open(photo_folder.parent / "list.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "weight"])
        for f, y in files:
            w.writerow([os.path.relpath(f, photo_folder.parent), classes[y], 1.5])
    expect = [{"image": f.read_bytes(), "label": y, "weight": 1.5} for f, y in files]
    return photo_folder.parent / "list.csv", expect, classes, [os.path.relpath(f, photo_folder.parent)
                                                              for f, _ in files]


def _jsonl(tmp, photo_folder):
    classes, files = _photos(photo_folder)
    with open(tmp / "list.jsonl", "w") as fh:
        for f, y in files:
            fh.write(json.dumps({"image": str(f), "label": y, "note": f.stem}) + "\n")
    expect = [{"image": f.read_bytes(), "label": y, "note": f.stem} for f, y in files]
    return tmp / "list.jsonl", expect, None, [str(f) for f, _ in files]


def _url(tmp, photo_folder, port):
    """The ImageFolder under a URL prefix, served by a real HTTP server on 127.0.0.1."""
    pytest.importorskip("fsspec")
    pytest.importorskip("aiohttp")
    classes = sorted(p.name for p in photo_folder.iterdir() if p.is_dir())
    files = [(f, classes.index(c)) for c in classes for f in sorted((photo_folder / c).glob("*.jpg"))]
    expect = [{"image": f.read_bytes(), "label": y} for f, y in files]
    return f"http://127.0.0.1:{port}/", expect, classes, [f"{f.parent.name}/{f.name}" for f, _ in files]


SOURCES = {"url-imagefolder": _url, "parquet": _parquet, "hf-datasets": _hf_dataset, "hf-parquet": _hf_parquet,
           "webdataset": _webdataset, "csv": _csv, "jsonl": _jsonl}


@pytest.fixture(scope="module")
def http_port(photo_folder):
    """A static HTTP server for the photo folder, listening on 127.0.0.1 only."""
    import functools
    import http.server
    import threading
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(photo_folder))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def built(tmp_path_factory, photo_folder, http_port):
    cache = {}

    def get(name):
        if name not in cache:
            tmp = tmp_path_factory.mktemp(name)
            make = SOURCES[name]
            src, expect, classes, keys = (make(tmp, photo_folder, http_port) if make is _url
                                          else make(tmp, photo_folder))
            dst = tmp / "local"
            fastload.convert(src, dst, workers=2, shard_size="150KB", progress=False)
            cache[name] = (src, expect, classes, keys, dst)
        return cache[name]
    return get


def _value(v):
    if isinstance(v, memoryview):
        return bytes(v)
    return v


@pytest.mark.parametrize("name", list(SOURCES))
def test_source_records_classes_and_keys(built, name):
    src, expect, classes, keys, dst = built(name)
    r = open_dataset(dst)
    assert len(r) == len(expect) and len(r.manifest.shards) >= 2
    assert list(r.schema) == list(expect[0])
    for i, e in enumerate(expect):
        assert {k: _value(r.get(i, k)) for k in e} == e, f"record {i}"
        assert r.source_key(i) == keys[i]
    assert fastload.ShardDataset(dst).classes == classes
    assert r.verify(progress=False) == []


@pytest.mark.parametrize("name", list(SOURCES))
def test_ray_writes_the_same_bytes(ray_cluster, built, tmp_path, name):
    src, _, _, _, dst = built(name)
    s = fastload.convert(src, tmp_path / "ray", engine="ray", workers=2, shard_size="150KB", progress=False)
    assert s.engine == "ray"
    assert file_digests(tmp_path / "ray") == file_digests(dst)


def test_webdataset_sample_missing_a_member_is_named(tmp_path, photo_folder):
    _, files = _photos(photo_folder)
    with tarfile.open(tmp_path / "a.tar", "w") as tf:
        for k, (f, y) in enumerate(files[:3]):
            parts = [("jpg", f.read_bytes())] + ([("cls", str(y).encode())] if k != 1 else [])
            for ext, data in parts:
                info = tarfile.TarInfo(f"s{k}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    with pytest.raises(fastload.SourceError, match=r"a\.tar:s1.*no \.cls member"):
        fastload.convert(tmp_path / "a.tar", tmp_path / "ds", progress=False)
    s = fastload.convert(tmp_path / "a.tar", tmp_path / "ds", on_error="skip", progress=False)
    assert s.records == 2 and s.skipped[0]["source"].endswith("a.tar:s1")
