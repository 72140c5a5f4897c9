"""The profiler's typed results and the one path that writes them as JSON (``report.json``).

Every phase's measurements are a dataclass (:class:`Result`), built where the phase runs and read by
attribute everywhere else, so that a misspelt name is an error (``TypeError`` when constructing,
``AttributeError`` when reading), never a silent ``None``. ``to_dict()`` turns one into the JSON shape the
report has always had: a field made with :func:`omitted` is left out while it is None (a measurement that was
not taken), a field made with :func:`private` never appears (trace spans, kept for ``trace.json``); floats are
rounded, inf / nan become null, enums their values. A phase that did not run for a reason is :class:`Skipped`
(``{"skipped": why}`` in the JSON).
"""
from __future__ import annotations

import dataclasses
import math
from enum import Enum
from typing import Any

_OMIT = "fastload.omit_if_none"
_PRIVATE = "fastload.private"


def omitted(default: Any = None) -> Any:
    """A field left out of the JSON while it is None (the measurement was not taken)."""
    return dataclasses.field(default=default, metadata={_OMIT: True})


def private(default_factory: Any = list) -> Any:
    """A field never written to the JSON (e.g. trace spans: they go to trace.json)."""
    return dataclasses.field(default_factory=default_factory, repr=False, compare=False, metadata={_PRIVATE: True})


def jsonable(x: Any) -> Any:
    """JSON-ready copy of a result, or of anything in one: a :class:`Result` by its ``to_dict()``, other
    dataclasses by their fields (the rules above), dicts without their private ``_`` keys, floats rounded
    (inf / nan to None), enums as values, anything else unknown as its ``str``."""
    if isinstance(x, Result):
        return x.to_dict()
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return fields_json(x)
    if isinstance(x, Enum):
        return jsonable(x.value)
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items() if not str(k).startswith("_")}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, bool) or x is None or isinstance(x, (str, int)):
        return x
    if isinstance(x, float):
        if not math.isfinite(x):
            return None
        return round(x, 4) if abs(x) < 1e6 else round(x)
    return str(x)


def fields_json(obj: Any) -> dict:
    """A dataclass's fields as JSON: private ones never, :func:`omitted` ones only when set."""
    out = {}
    for f in dataclasses.fields(obj):
        if f.metadata.get(_PRIVATE):
            continue
        v = getattr(obj, f.name)
        if v is None and f.metadata.get(_OMIT):
            continue
        out[f.name] = jsonable(v)
    return out


class Result:
    """Base of the profiler's result dataclasses: ``to_dict()`` (JSON-ready) and ``skipped`` (None: it ran).
    The results have slots, so that assigning a misspelt attribute raises too."""

    __slots__ = ()
    skipped: str | None = None

    def to_dict(self) -> dict:
        return fields_json(self)


@dataclasses.dataclass(kw_only=True, slots=True)
class Skipped(Result):
    """A phase (or part of one) that did not run, and why; ``{"skipped": why}`` in the JSON."""

    skipped: str
