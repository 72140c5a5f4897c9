"""The pipelines ``fastload profile`` can run on a dataset path (``--pipeline``); anything else goes through
``fastload.profile(ShardDataset(path, transforms=...))`` or ``fastload.profile(loader)``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class NamedPipeline:
    name: str
    what: str                                   # for the report: what it does
    ops: Callable[[int], list]                  # output side -> the image field's fastload ops


def _rrc(size: int) -> list:
    from fastload.ops import DecodeRandomResizedCrop, RandomHorizontalFlip
    return [DecodeRandomResizedCrop(size), RandomHorizontalFlip()]


def _center(size: int) -> list:
    from fastload.ops import DecodeCenterCrop
    return [DecodeCenterCrop(size, round(size * 256 / 224))]


def _decode(size: int) -> list:
    from fastload.ops import CenterCrop, Decode
    return [Decode(), CenterCrop(size)]


PIPELINES = {
    "rrc": NamedPipeline("rrc", "training: RandomResizedCrop + horizontal flip", _rrc),
    "center": NamedPipeline("center", "evaluation: resize the short side to size*256/224, centre crop", _center),
    "decode": NamedPipeline("decode", "full-size decode, then a centre crop to one size (the decode's cost)",
                            _decode),
}
DEFAULT = "rrc"


def named(name: str) -> NamedPipeline:
    try:
        return PIPELINES[name]
    except KeyError:
        raise ValueError(f"unknown pipeline {name!r}: choose one of {', '.join(PIPELINES)}, or profile your own "
                         "with fastload.profile(ShardDataset(path, transforms=...))") from None
