"""``fastload profile``: where the input pipeline's time goes, and which stage bounds training.

Measures storage (sequential and random reads, page cache warm and cold), the per-sample CPU cost of each
stage (read, decode, each augmentation, collation) and the ceiling that gives on this machine's cores, the
loader end to end over a sweep of ``num_workers`` and prefetch depth (throughput, time to first batch, CPU
and peak memory of the process tree), host-to-device copies (real with CUDA, simulated on request), and the
data stall of a training step; then names the bound and what to change.

Python::

    report = fastload.profile("/data/imagenet_fl", step_time=0.25, out="profile/")
    print(report)                      # the table and the verdict
    report.bound                       # "decode", "storage", "transfer", "model", ...
    fastload.profile(my_torch_loader, steps=100, step=train_step)

This package is itself callable (``fastload.profile(...)`` is :func:`fastload.profiling.profiler.profile`),
so the name works whether ``fastload.profile`` resolves to the package or to the function. Everything
heavy (torch, the loader) is imported on first use, so the command line's parser stays light.

Command line: ``fastload profile DST`` (see :mod:`fastload.profiling.cli`).
"""
from __future__ import annotations

import importlib

_LAZY = {"profile": "profiler", "ProfileReport": "report", "ThrottledReader": "storage",
         "Skipped": "result", "chrome_trace": "trace", "validate_trace": "trace"}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
