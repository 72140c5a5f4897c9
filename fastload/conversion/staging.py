"""The staging directory ``DST.tmp-<pid>`` of a conversion: created or adopted, committed, or removed.

Tasks write finished shards into it.  ``commit`` removes what failed attempts left (``*.part-*`` files,
sidecars), writes ``manifest.json`` last, fsyncs and renames the directory to ``DST``: a dataset exists
only once it is complete.  A run that was killed leaves its staging directory; the next run of the same
plan (same fingerprint) adopts it and reuses the units whose shard still matches its checksum.  Staging
directories of other plans, or of runs that failed cleanly, are removed.
"""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from fastload.conversion.plan import WorkUnit
from fastload.conversion.units import SIDECAR, UnitResult, read_sidecar
from fastload.formats.dataset_writer import TEMP_RE, temp_path
from fastload.formats.lmdbstore import file_sha256
from fastload.formats.dataset_writer import publish_dir
from fastload.formats.manifest import MANIFEST, Manifest, write_manifest
from fastload.liveness import pid_alive

PLAN_FILE = ".fastload-plan"


class Staging:
    """The staging directory of one conversion to ``dst`` for the plan ``fingerprint``."""

    def __init__(self, dst: str | os.PathLike, fingerprint: str, overwrite: bool = False, resume: bool = True):
        self.dst = Path(dst).absolute()
        if self.dst.exists() and not overwrite:
            raise FileExistsError(f"{self.dst} already exists (pass overwrite=True / --overwrite to replace it)")
        self.overwrite, self.fingerprint = overwrite, fingerprint
        self.dst.parent.mkdir(parents=True, exist_ok=True)
        self.path = temp_path(self.dst)
        self.adopted_from: Path | None = None
        self._finished = False
        for p in self._siblings():
            if self.adopted_from is None and resume and p.name != self.path.name and \
                    TEMP_RE.search(p.name).group(1) == "tmp" and self._plan_of(p) == fingerprint:
                os.rename(p, self.path)
                self.adopted_from = p
            elif p != self.path:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        if self.adopted_from is None:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path.mkdir()
            (self.path / PLAN_FILE).write_text(fingerprint)

    def _siblings(self) -> list[Path]:
        """Staging and replaced directories of dead runs for ``dst``; refuses if a live run is writing."""
        found = []
        for p in sorted(self.dst.parent.iterdir()):
            m = TEMP_RE.search(p.name)
            if not m or p.name[: m.start()] != self.dst.name:
                continue
            pid = int(m.group(2))
            if pid != os.getpid() and pid_alive(pid):
                raise FileExistsError(f"{p} belongs to a running conversion (pid {pid}); "
                                      "delete it if that process is not a fastload convert")
            found.append(p)
        return found

    @staticmethod
    def _plan_of(p: Path) -> str | None:
        try:
            return (p / PLAN_FILE).read_text()[:200]
        except OSError:
            return None

    def finished(self, units: tuple[WorkUnit, ...]) -> dict[int, UnitResult]:
        """Units an adopted directory already holds, each shard verified against its sha256."""
        done: dict[int, UnitResult] = {}
        if self.adopted_from is None:
            return done
        for u in units:
            res = read_sidecar(self.path, u, self.fingerprint)
            if res is None:
                continue
            if res.entry is not None:
                p = self.path / res.entry.file
                try:
                    if p.stat().st_size != res.entry.num_bytes or file_sha256(p) != res.entry.sha256:
                        continue
                except OSError:
                    continue
            done[u.index] = res
        return done

    def commit(self, manifest: Manifest, keep: set[str]) -> None:
        """Leave only ``keep`` (plus the manifest), write the manifest, rename the directory to ``dst``."""
        for p in self.path.iterdir():
            if p.name not in keep:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink()
        write_manifest(self.path, manifest, fsync=True)
        publish_dir(self.path, self.dst, self.overwrite)
        self._finished = True

    def abort(self) -> None:
        """Remove the staging directory (an interrupted or failed run leaves nothing behind)."""
        if not self._finished:
            shutil.rmtree(self.path, ignore_errors=True)
        self._finished = True


def no_space(path: Path, needed: int) -> OSError | None:
    """An ENOSPC error naming ``path`` when its file system has fewer than ``needed`` bytes free."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    if st.f_bavail * st.f_frsize < needed:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return None


__all__ = ["MANIFEST", "PLAN_FILE", "SIDECAR", "Staging", "no_space"]
