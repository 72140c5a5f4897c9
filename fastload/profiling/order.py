"""The block order's part of the report (a dataset behind a URL): how well the loaders' runs shuffled, and
what each run's read-ahead fetched."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from fastload.loader.block_order import OrderQuality

from .result import Result, omitted


@dataclass(kw_only=True)
class ShuffleQuality(OrderQuality, Result):
    """The loader's :class:`~fastload.loader.block_order.OrderQuality` of the last run that drew samples, and
    its sentence for people (``text``)."""

    text: str = ""

    @classmethod
    def of(cls, q: OrderQuality) -> "ShuffleQuality":
        return cls(**asdict(q), text=str(q))


@dataclass(kw_only=True, slots=True)
class ReadAheadRun(Result):
    """One loader run's read-ahead counters (``fastload.storage.prefetch.ReadAheadStats``)."""

    run: str
    blocks_needed: int
    blocks_fetched: int
    bytes_fetched: int
    peak_pinned_bytes: int


@dataclass(kw_only=True, slots=True)
class OrderReport(Result):
    """Shuffle quality and read-ahead counters of the block-ordered loaders that ran."""

    read_ahead: list[ReadAheadRun] = field(default_factory=list)
    order: ShuffleQuality | None = omitted()


def order_report(runs: Sequence[tuple[str, Any]]) -> OrderReport | None:
    """From ``(label, loader)`` of each run; None when no loader kept order or read-ahead counters."""
    out = OrderReport()
    quality = None
    for label, loader in runs:
        ra = getattr(getattr(loader, "sampler", None), "read_ahead_stats", None)
        q = getattr(getattr(loader, "stats", None), "order", None)
        if q is not None and q.samples:
            quality = q
        if ra is not None:
            out.read_ahead.append(ReadAheadRun(run=label, blocks_needed=ra.blocks_needed,
                                               blocks_fetched=ra.blocks_fetched, bytes_fetched=ra.bytes_fetched,
                                               peak_pinned_bytes=ra.peak_pinned_bytes))
    if quality is None and not out.read_ahead:
        return None
    if quality is not None:
        out.order = ShuffleQuality.of(quality)
    return out
