"""Keep a long-lived worker's heap from growing with the number of frames it has handled (I3).

Frames are allocated by the decode thread and freed by the consumer. glibc serves a large block
with mmap at first, but each time such a block is freed it raises its mmap threshold to that size,
so from then on frame buffers come from the threads' heap arenas, whose freed space fragments and
is kept: the process grows with every segment. A fixed threshold (mallopt turns the adaptation
off) keeps every frame-sized buffer in a mapping of its own, handed back to the kernel when freed.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
# Frames and network input blobs are megabytes; the many small arrays of post-processing stay on
# the heap, where mmap would cost a system call each.
FRAME_MMAP_THRESHOLD = 1 << 20


def fix_mmap_threshold(nbytes: int = FRAME_MMAP_THRESHOLD) -> bool:
    """Serve blocks of `nbytes` and more with mmap from now on; False where the C library is not
    glibc (then nothing changes)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, ctypes.c_int(nbytes)))
    except (OSError, AttributeError, TypeError):
        return False
