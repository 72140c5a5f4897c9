"""What the profile ran on: CPU model and usable cores, memory, GPU, software versions."""
from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass

from .cpu import usable_cores
from .result import Result


@dataclass(kw_only=True, slots=True)
class Machine(Result):
    """The machine the numbers were measured on (None: not known here)."""

    cpu: str | None = None
    cores: int                              # usable: this process's affinity mask
    cpu_count: int | None = None
    memory_bytes: int | None = None
    memory_available_bytes: int | None = None
    cuda: str | None = None                 # the GPU's name; None: no CUDA
    python: str | None = None
    torch: str | None = None
    fastload: str | None = None
    platform: str | None = None


def machine_info() -> Machine:
    cpu = platform.processor() or platform.machine()
    mem = avail = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            for line in f:
                k, v = line.split(":", 1)
                if k == "MemTotal":
                    mem = int(v.split()[0]) * 1024
                elif k == "MemAvailable":
                    avail = int(v.split()[0]) * 1024
    except (OSError, ValueError):
        pass
    import torch
    from fastload import __version__
    from .transfer import cuda_available
    cuda = torch.cuda.get_device_name() if cuda_available() else None
    return Machine(cpu=cpu, cores=usable_cores(), cpu_count=os.cpu_count(), memory_bytes=mem,
                   memory_available_bytes=avail, cuda=cuda, python=sys.version.split()[0], torch=torch.__version__,
                   fastload=__version__, platform=platform.platform())
