"""A conversion killed with SIGKILL leaves nothing a reader accepts, and the next run succeeds."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fastload.errors import FormatError
from fastload.formats import ShardReader, open_dataset

REPO = Path(__file__).resolve().parents[1]


def _cli(args, tmp_path, **env):
    e = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path)]), **env}
    return subprocess.Popen([sys.executable, "-m", "fastload.cli", *args], cwd=tmp_path, env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


@pytest.mark.skipif(not hasattr(os, "killpg"), reason="needs POSIX process groups")
def test_sigkill_mid_run_then_rerun(tmp_path):
    (tmp_path / "slowsource.py").write_text(textwrap.dedent("""
        import os, time
        import numpy as np
        class Slow:
            def __len__(self): return 400
            def __getitem__(self, i):
                time.sleep(float(os.environ.get("SLOW_SECONDS", "0")))
                return np.full(1000, i, np.int64), i
        def make(): return Slow()
    """))
    dst = tmp_path / "ds"
    args = ["convert", "slowsource:make", str(dst), "--workers", "1", "--shard-size", "40KB", "-q"]
    proc = _cli(args, tmp_path, SLOW_SECONDS="0.01")
    tmp_dir = None
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:           # wait until at least two shards are on disk
            tmps = list(tmp_path.glob("ds.tmp-*"))
            if tmps and len(list(tmps[0].glob("*.fls"))) >= 2:
                tmp_dir = tmps[0]
                break
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.02)
        assert tmp_dir is not None, "conversion never got going"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not dst.exists()
    with pytest.raises(FormatError, match="does not exist"):
        open_dataset(dst)
    with pytest.raises(FormatError, match="temporary directory"):
        open_dataset(tmp_dir)
    for shard in tmp_dir.glob("*.fls"):             # finished shards open; the one being written does not
        try:
            ShardReader(shard).close()
        except FormatError as e:
            assert "truncated" in str(e)
    assert not (tmp_dir / "manifest.json").exists()

    proc = _cli(args, tmp_path, SLOW_SECONDS="0")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    assert "400 records" in out.decode()
    assert not tmp_dir.exists() and sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("ds")) == ["ds"]
    r = open_dataset(dst)
    assert len(r) == 400 and r.get(399, "label") == 399 and r.verify(progress=False) == []
