"""Host-to-device copies: the copy rate when CUDA is present, and the copy stage the stall run puts between
the loader and the step — real (the loader's own device stage, :class:`fastload.loader.transfer.DeviceTransfer`:
a side-stream copy) or, without a GPU, *simulated* (a sleep of ``bytes / rate``, labelled as such everywhere
it is reported). A fastload loader with ``device=`` copies by itself: its batches arrive on the device and
cost nothing here."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .result import Result, omitted
from .sweep import leaves

NO_CUDA = "no CUDA: host-to-device copies not measured"


@dataclass(kw_only=True, slots=True)
class TransferProbe(Result):
    """The transfer phase: host-to-device copy rates of one batch's bytes (with CUDA), and the simulated rate
    the stall run's copy used, if one was asked for."""

    cuda: bool
    note: str | None = omitted()                # why nothing was measured
    device: str | None = omitted()
    bytes: int | None = omitted()
    pageable_gb_s: float | None = omitted()
    pinned_gb_s: float | None = omitted()
    simulated_gb_s: float | None = omitted()


def host_nbytes(batch: Any) -> int:
    """Bytes of the batch's host (CPU) tensors and arrays: what a copy to the device moves."""
    return sum(int(x.nbytes) if isinstance(x, np.ndarray) else x.numel() * x.element_size()
               for x in leaves(batch) if isinstance(x, np.ndarray) or x.device.type == "cpu")


def cuda_available() -> bool:
    try:
        return bool(torch.cuda.is_available())
    except Exception:
        return False


def probe_copy_rate(nbytes: int, repeats: int = 10) -> TransferProbe:
    """Host-to-device copy rate of an ``nbytes`` buffer, pageable and page-locked (GB/s)."""
    if not cuda_available():
        return TransferProbe(cuda=False, note=NO_CUDA)
    nbytes = max(int(nbytes), 1 << 20)
    dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    host = torch.empty(nbytes, dtype=torch.uint8)
    host.fill_(1)
    rates = []
    for src in (host, host.pin_memory()):          # pageable, then page-locked
        dev.copy_(src, non_blocking=True)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(repeats):
            dev.copy_(src, non_blocking=True)
        torch.cuda.synchronize()
        rates.append(nbytes * repeats / (time.perf_counter() - t0) / 1e9)
    return TransferProbe(cuda=True, device=torch.cuda.get_device_name(), bytes=nbytes, pageable_gb_s=rates[0],
                         pinned_gb_s=rates[1])


class CopyStage:
    """Moves a batch to the device, or pretends to: ``CopyStage(simulated_gb_s=...)`` sleeps for
    ``bytes / rate`` instead (for machines without a GPU; every number it produces is marked simulated)."""

    def __init__(self, simulated_gb_s: float | None = None, device: str = "cuda"):
        self.simulated = simulated_gb_s is not None
        if self.simulated:
            if simulated_gb_s <= 0:
                raise ValueError(f"simulated transfer rate must be positive, got {simulated_gb_s}")
            self.gb_s = float(simulated_gb_s)
        else:
            if not cuda_available():
                raise RuntimeError("no CUDA device: pass a simulated rate (simulated_gb_s=) instead")
            from fastload.loader.transfer import DeviceTransfer
            self.device = torch.device(device)
            self.transfer = DeviceTransfer(self.device)     # the loader's own device stage
        self.bytes = 0
        self.seconds = 0.0

    def describe(self) -> str:
        return (f"simulated host-to-device copy at {self.gb_s:g} GB/s (no GPU: a sleep of bytes / rate)"
                if self.simulated else f"host-to-device copy to {self.device} on a side stream")

    def __call__(self, batch: Any) -> Any:
        nbytes = host_nbytes(batch)      # tensors already on the device (a loader with device=) cost nothing here
        t0 = time.perf_counter()
        if self.simulated:
            time.sleep(nbytes / (self.gb_s * 1e9))
            out = batch
        else:
            # the loader's device stage: a side-stream copy, then handed to this thread's (default) stream,
            # which the step runs on, with record_stream so the memory is not reused early
            pending = self.transfer.start(batch)
            if pending.event is not None:
                pending.event.synchronize()
            out = self.transfer.finish(pending)
        self.seconds += time.perf_counter() - t0
        self.bytes += nbytes
        return out
