"""argparse value types shared by ``fastload``'s subcommands and ``fastload profile``."""
from __future__ import annotations

import argparse
import json


def storage_options(text: str) -> dict:
    """``--storage-options``: fsspec options as a JSON object."""
    try:
        v = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--storage-options must be a JSON object: {e}") from None
    if not isinstance(v, dict):
        raise argparse.ArgumentTypeError("--storage-options must be a JSON object")
    return v
