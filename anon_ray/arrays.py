"""Per-thread scratch arrays, reused frame after frame instead of allocated afresh.

Workers serve every block of a megabyte or more with a mapping of its own (run/heap.py, so the
heap cannot creep, I3), and a fresh mapping costs a page fault and a zeroed page per 4 KB touched:
on a 2-core AMD EPYC VM, turning a 720p frame from YUV to RGB took 8.1 ms CPU with its two
frame-sized temporaries mapped afresh against 4.4 ms reused (the frame it returns still new; 2.5 ms
with no mapping at all). A temporary that never leaves the call that fills it can take last
frame's array instead.
"""

from __future__ import annotations

import threading

import numpy as np

# Larger arrays (4K frames' tables, big photos) are allocated each time, so a thread never holds
# more than a few of these between frames (a 1080p frame's summed-area table: 25 MB).
KEEP_BYTES = 32 << 20

_local = threading.local()


def scratch(name: str, shape: tuple[int, ...], dtype: type | np.dtype) -> np.ndarray:
    """An uninitialized array of `shape` and `dtype`: this thread's array `name` while it keeps
    that shape and dtype. The last caller's values are still in it; the caller must not keep it
    or hand it on past its own call, since the next call with `name` overwrites it."""
    dtype = np.dtype(dtype)
    if int(np.prod(shape)) * dtype.itemsize > KEEP_BYTES:
        return np.empty(shape, dtype)
    kept = _local.__dict__.setdefault("arrays", {})
    array = kept.get(name)
    if array is None or array.shape != tuple(shape) or array.dtype != dtype:
        array = kept[name] = np.empty(shape, dtype)
    return array
