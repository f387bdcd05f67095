"""Validation of site replies before any strategy sees them.

An update must carry exactly the arrays of the global model it answers (same names,
shapes and dtypes), only finite values, finite metrics, and stay within a size bound.
A bad update is rejected with a precise reason (and audited by the caller); it is never
aggregated. A reason names only what the coordinator itself sent (its record and array
names), never a key the site chose: those could carry text out of a site.
"""

from __future__ import annotations

import math

import numpy as np
from flwr.app import Message

from coordinator.aggregation import array_view

__all__ = ["validate_reply"]


def validate_reply(
    instruction: Message, reply: Message, *, max_bytes: int, reply_bytes: int
) -> str | None:
    """``None`` if ``reply`` is an acceptable answer to ``instruction``, else why not."""
    if reply.has_error():
        return None
    if reply_bytes > max_bytes:
        return f"update of {reply_bytes} bytes exceeds the {max_bytes}-byte bound"
    content = reply.content
    sent = instruction.content if instruction.has_content() else None
    for key, record in content.array_records.items():
        if sent is None or key not in sent.array_records:
            return "an array record that was not part of the instruction"
        expected = sent.array_records[key]
        if list(record.keys()) != list(expected.keys()):
            return f"array record {key!r} does not have the instruction's tensors"
        for name, arr in record.items():
            ref = expected[name]
            if tuple(arr.shape) != tuple(ref.shape):
                return f"{key}.{name}: shape {tuple(arr.shape)} != {tuple(ref.shape)}"
            if arr.dtype != ref.dtype:
                return f"{key}.{name}: dtype {arr.dtype} != {ref.dtype}"
            values = array_view(arr)  # the update's own bytes: no 100 MB copy to check them
            if values.dtype.kind in "fc" and not np.isfinite(values).all():
                return f"{key}.{name}: non-finite values"
    for metrics in content.metric_records.values():
        for value in metrics.values():
            vals = value if isinstance(value, list) else [value]
            if not all(isinstance(v, int | float) and math.isfinite(v) for v in vals):
                return "a metric is not finite"
    return None
