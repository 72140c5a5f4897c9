"""The Ray engine on a real local cluster (one for the whole run, loopback only): the same bytes as the local
engine for 1, 2 and 8 tasks and after a retried task, failures named, nothing listening beyond 127.0.0.1."""
from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fastload
from convert_test_sources import CrashingSource, file_digests
from fastload.errors import ConversionError, SourceError

psutil = pytest.importorskip("psutil")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def local_reference(photo_folder, tmp_path_factory):
    """The photo folder converted by the local engine (the bytes every Ray run must reproduce)."""
    dst = tmp_path_factory.mktemp("ref") / "ds"
    fastload.convert(photo_folder, dst, workers=2, shard_size="300KB", progress=False)
    return dst


@pytest.mark.parametrize("tasks", [1, 2, 8])
def test_ray_output_is_byte_identical_to_local(ray_cluster, photo_folder, local_reference, tmp_path, tasks):
    s = fastload.convert(photo_folder, tmp_path / "ds", engine="ray", workers=tasks, shard_size="300KB",
                         progress=False)
    assert s.engine == "ray" and s.records == 40 and s.units >= 5
    assert file_digests(tmp_path / "ds") == file_digests(local_reference)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]      # no staging directory left


def test_one_big_shard_fans_out_and_stays_identical(ray_cluster, photo_folder, tmp_path):
    """Fewer units than CPUs: the unit's task spreads its items over sub-tasks, even one that dies once."""
    a = fastload.convert(photo_folder, tmp_path / "a", workers=2, progress=False)
    marker = tmp_path / "crashed-once"
    b = fastload.convert(CrashingSource(photo_folder, crash_at=25, marker=str(marker)), tmp_path / "b",
                         engine="ray", progress=False)
    assert a.units == b.units == 1 and marker.exists()
    assert file_digests(a.path) == file_digests(b.path)


def test_ray_lmdb_is_byte_identical_to_local(ray_cluster, photo_folder, tmp_path):
    a = fastload.convert(photo_folder, tmp_path / "a", backend="lmdb", workers=2, shard_size="200KB",
                         progress=False)
    b = fastload.convert(photo_folder, tmp_path / "b", backend="lmdb", engine="ray", shard_size="200KB",
                         progress=False)
    assert a.records == b.records == 40 and file_digests(a.path) == file_digests(b.path)


def test_retried_task_gives_the_same_bytes_and_leaves_no_orphans(ray_cluster, photo_folder, local_reference,
                                                                 tmp_path):
    marker = tmp_path / "crashed-once"
    src = CrashingSource(photo_folder, crash_at=17, marker=str(marker))
    s = fastload.convert(src, tmp_path / "ds", engine="ray", workers=2, shard_size="300KB", progress=False)
    assert marker.exists(), "the task never crashed: this test proves nothing"
    assert s.records == 40
    assert file_digests(tmp_path / "ds") == file_digests(local_reference)   # the .part orphan is gone too


def test_task_that_always_dies_is_named(ray_cluster, photo_folder, tmp_path):
    src = CrashingSource(photo_folder, crash_at=5, marker=None)
    with pytest.raises(ConversionError, match=r"unit \d+ \(items \d+\.\.\d+, first: .*\.jpg\).*retries"):
        fastload.convert(src, tmp_path / "ds", engine="ray", workers=2, shard_size="300KB", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_bad_items_named_and_skipped_as_locally(ray_cluster, photo_folder, tmp_path):
    root = tmp_path / "tree"
    shutil.copytree(photo_folder, root)
    (root / "cat" / "zz_not_an_image.jpg").write_text("this is not a JPEG")
    with pytest.raises(SourceError, match="zz_not_an_image.jpg.*Ray task"):
        fastload.convert(root, tmp_path / "fail", engine="ray", shard_size="300KB", progress=False)
    assert not (tmp_path / "fail").exists()
    a = fastload.convert(root, tmp_path / "a", on_error="skip", workers=2, shard_size="300KB", progress=False)
    b = fastload.convert(root, tmp_path / "b", on_error="skip", engine="ray", shard_size="300KB",
                         progress=False)
    assert [os.path.basename(x["source"]) for x in b.skipped] == ["zz_not_an_image.jpg"]
    assert file_digests(a.path) == file_digests(b.path)


def _listening(root_pid: int) -> list[tuple[str, int, str]]:
    """(ip, port, process name) of every listening inet socket of ``root_pid`` and its descendants."""
    root = psutil.Process(root_pid)
    found = []
    for p in [root, *root.children(recursive=True)]:
        try:
            name = p.name()
            conns = p.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        found += [(c.laddr.ip, c.laddr.port, name) for c in conns if c.status == psutil.CONN_LISTEN]
    return found


def _outside_loopback(sockets):
    bad = []
    for ip, port, name in sockets:
        a = ipaddress.ip_address(ip.split("%")[0])
        mapped = getattr(a, "ipv4_mapped", None)
        if not (a.is_loopback or (mapped is not None and mapped.is_loopback)):
            bad.append((ip, port, name))
    return bad


def test_cluster_and_conversion_listen_on_loopback_only(ray_cluster, photo_folder, tmp_path):
    fastload.convert(photo_folder, tmp_path / "ds", engine="ray", shard_size="300KB", progress=False)
    sockets = _listening(os.getpid())
    assert len(sockets) >= 3, f"found no Ray listeners to check: {sockets}"
    assert _outside_loopback(sockets) == []


def test_cli_ray_instance_started_by_fastload_listens_on_loopback_only(photo_folder, tmp_path):
    pytest.importorskip("ray")
    (tmp_path / "slowmod.py").write_text(
        "from convert_test_sources import SlowSource\n"
        f"def make(): return SlowSource({str(photo_folder)!r}, 0.05)\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests"), str(tmp_path)])
    proc = subprocess.Popen([sys.executable, "-m", "fastload.cli", "convert", "slowmod:make", str(tmp_path / "ds"),
                             "--engine", "ray", "--workers", "2", "--shard-size", "300KB", "-q"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    seen: list = []
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                seen += _listening(proc.pid)
            except psutil.NoSuchProcess:
                break
            time.sleep(0.3)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()[-3000:]
    assert "40 records" in out.decode()
    assert len({s[:2] for s in seen}) >= 3, f"never saw Ray's listeners: {seen}"
    assert _outside_loopback(seen) == []
