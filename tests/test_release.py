"""The release shape: ``python -m build`` makes an sdist and a wheel that install and run outside the checkout.

The wheel is built from the sdist (``build``'s default), so a file missing from the sdist fails here. The
venv reuses the system site-packages so torch is not installed again; the test checks that ``fastload`` is
then imported from the venv, not from the checkout or another install.
"""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import pytest

import fastload

REPO = Path(__file__).resolve().parents[1]
HAVE_LIBJPEG = any((Path(d) / "jpeglib.h").is_file() for d in ("/usr/include", "/usr/local/include",
                                                                  sysconfig.get_paths()["include"]))

SMOKE = r"""
import sys, tempfile
from pathlib import Path
import fastload
from fastload import ops
from fastload.demo_data import make_photo_imagefolder
assert Path(fastload.__file__).is_relative_to(sys.prefix), (fastload.__file__, sys.prefix)
tmp = Path(tempfile.mkdtemp())
photos = make_photo_imagefolder(tmp / "photos", images_per_class=2)
fastload.convert(str(photos), str(tmp / "ds"), workers=0, progress=False)
ds = fastload.ShardDataset(tmp / "ds", transforms={"image": [ops.DecodeRandomResizedCrop(64)]})
images, labels = next(iter(fastload.DataLoader(ds, batch_size=4, num_workers=1, seed=0)))
assert tuple(images.shape) == (4, 3, 64, 64) and labels.shape == (4,)
try:
    import fastload.ops._jpegcrop
    print("extension: built")
except ImportError:
    print("extension: absent")
print("smoke ok", fastload.__version__)
"""


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}   # nothing from the checkout
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, **kw)
    assert r.returncode == 0, f"{cmd}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(REPO)])
    return out


def _venv(where: Path) -> Path:
    # without a pip (and the old setuptools it comes with) of its own: this interpreter's pip installs into
    # it, and a build from the sdist uses the system's setuptools, as the checkout's build does
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(where)])
    return where / "bin" / "python"


@pytest.mark.parametrize("kind", ["wheel", "sdist"])
def test_installs_and_runs_outside_the_checkout(dist, tmp_path, kind):
    version = fastload.__version__
    artifact = next(dist.glob(f"fastload-{version}-*.whl" if kind == "wheel" else f"fastload-{version}.tar.gz"))
    python = _venv(tmp_path / "venv")
    # --ignore-installed: the system site-packages may hold a fastload of the same version (e.g. editable)
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
          "--no-build-isolation", "--ignore-installed", str(artifact)], cwd=tmp_path)
    r = _run([str(tmp_path / "venv" / "bin" / "fastload"), "--version"], cwd=tmp_path)
    assert r.stdout.strip() == f"fastload {version}"
    r = _run([str(python), "-c", SMOKE], cwd=tmp_path)
    assert f"smoke ok {version}" in r.stdout
    if HAVE_LIBJPEG:   # the sdist carries the C sources and builds them; the wheel was built from the sdist
        assert "extension: built" in r.stdout, r.stdout


def test_sdist_holds_what_a_user_reads_and_builds(dist):
    with tarfile.open(next(dist.glob("*.tar.gz"))) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    for need in ("README.md", "CHANGELOG.md", "setup.py", "pyproject.toml", "fastload/ops/_jpegcrop.c",
                 "fastload/ops/_aaresize.c", "fastload/ops/_aaresize.h", "fastload/cli.py", "docs/CLI.md"):
        assert need in names, need


def test_build_without_libjpeg_says_so_and_goes_on(dist, tmp_path):
    """A compiler that cannot find a header (as without libjpeg-turbo's): the build succeeds without the
    extension and prints what to install."""
    with tarfile.open(next(dist.glob("*.tar.gz"))) as t:
        t.extractall(tmp_path, filter="data")
    src = next(tmp_path.glob("fastload-*"))
    env = {**os.environ, "CFLAGS": "-include fastload-no-such-header.h"}
    env.pop("PYTHONPATH", None)
    r = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=src, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "optional C extension fastload.ops._jpegcrop was NOT built" in r.stderr
    assert "apt-get install libjpeg62-turbo-dev" in r.stderr
    assert not list((src / "fastload" / "ops").glob("_jpegcrop*.so"))
