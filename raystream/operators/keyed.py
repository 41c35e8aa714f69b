"""Rules every keyed, event-time operator (windows, joins) follows, written once."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from raystream.errors import TopologyError


def cumulative_watermark(ts: np.ndarray, out_of_orderness: int, previous: int) -> np.ndarray:
    """The watermark right after each record: ``max(previous, max(ts[:i+1]) - out_of_orderness)``.

    Computed per record, so results do not depend on where batch boundaries fall.
    """
    return np.maximum(np.maximum.accumulate(ts - out_of_orderness), previous)


def check_scalar_keys(keys: pa.Array, message: str) -> None:
    """Refuse nested keys (lists, structs), whose Python values cannot key the state.

    ``message`` is the error text, with ``{type}`` standing for the key's Arrow type.
    """
    if pa.types.is_nested(keys.type):
        raise TopologyError(message.format(type=keys.type))
