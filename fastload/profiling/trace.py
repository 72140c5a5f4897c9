"""Per-worker stage spans as a Chrome / Perfetto trace (Trace Event Format, JSON object form).

Open ``trace.json`` in https://ui.perfetto.dev or chrome://tracing: one track per worker process (its
``read+decode+augment`` and ``write-to-slot`` spans per batch), and the main process with the training loop's
``wait-for-data`` and ``step`` spans (and the loader's own ``wait-for-batch`` inside them) plus, when a copy
stage ran, a copy thread with ``wait-for-loader`` and ``copy`` spans.

Span times come from ``time.perf_counter`` (CLOCK_MONOTONIC on Linux, shared by all processes), so the
workers' and the main process's spans share one timeline.
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterable

MAIN_PID = 1
WORKER_PID0 = 100
_REQUIRED = {"name": str, "ph": str, "pid": int, "tid": int}


def _where(who: int) -> tuple[int, int]:
    """(pid, tid) of a span's owner: worker ``w`` >= 0, -1 the main thread, -2 the copy thread, -3 the
    profiler's own track (which run is which)."""
    if who >= 0:
        return WORKER_PID0 + who, 1
    return MAIN_PID, {-1: 1, -2: 2}.get(who, 3)


def chrome_trace(spans: Iterable[tuple[str, int, float, float]], meta: dict | None = None) -> dict:
    """``{"traceEvents": [...]}`` from (stage, owner, start s, duration s) spans."""
    spans = list(spans)
    events: list[dict] = []
    if spans:
        t0 = min(s for _, _, s, _ in spans)
        owners = sorted({w for _, w, _, _ in spans})
        seen_pids = set()
        for w in owners:
            pid, tid = _where(w)
            if pid not in seen_pids:
                seen_pids.add(pid)
                pname = "main process" if pid == MAIN_PID else f"worker {w}"
                events.append({"name": "process_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": pname}})
                events.append({"name": "process_sort_index", "ph": "M", "pid": pid, "tid": tid,
                               "args": {"sort_index": pid}})
            tname = {-1: "training loop", -2: "copy thread", -3: "profile runs"}.get(w, f"worker {w}")
            events.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": tname}})
        for name, w, s, d in sorted(spans, key=lambda x: (x[2], -x[3])):
            pid, tid = _where(w)
            events.append({"name": name, "cat": "profile" if w == -3 else "main" if w < 0 else "worker", "ph": "X",
                           "ts": round((s - t0) * 1e6, 3), "dur": round(max(d, 0.0) * 1e6, 3),
                           "pid": pid, "tid": tid})
    out: dict = {"traceEvents": events, "displayTimeUnit": "ms"}
    if meta:
        out["otherData"] = {k: (v if isinstance(v, (str, int, float, bool)) else str(v)) for k, v in meta.items()}
    return out


def write_trace(path: str | os.PathLike, spans: Iterable, meta: dict | None = None) -> dict:
    trace = chrome_trace(spans, meta)
    with open(path, "w") as f:
        json.dump(trace, f)
    return trace


def validate_trace(trace: Any) -> list[str]:
    """Problems that would stop a Trace Event Format viewer from reading ``trace`` (empty when valid)."""
    problems = []
    if not isinstance(trace, dict) or not isinstance(trace.get("traceEvents"), list):
        return ["not an object with a traceEvents list"]
    for k, e in enumerate(trace["traceEvents"]):
        if not isinstance(e, dict):
            problems.append(f"event {k} is not an object")
            continue
        for key, typ in _REQUIRED.items():
            if not isinstance(e.get(key), typ) or isinstance(e.get(key), bool):
                problems.append(f"event {k}: {key!r} missing or not {typ.__name__}")
        ph = e.get("ph")
        if ph == "X":
            for key in ("ts", "dur"):
                v = e.get(key)
                if not isinstance(v, (int, float)) or isinstance(v, bool) or v != v or v < 0:
                    problems.append(f"event {k}: {key!r} must be a non-negative number of microseconds")
        elif ph == "M":
            if not isinstance(e.get("args"), dict):
                problems.append(f"event {k}: metadata event without args")
        else:
            problems.append(f"event {k}: unexpected phase {ph!r}")
    return problems
