"""A segment's owned frames, decoded once for detection and held until they are encoded.

Decoding the owned frames a second time for the encoder cost ~8% of a worker's busy time
(faces only, 720p). Holding them instead costs memory: a frame waits from its decode until its
boxes are final, i.e. until detection has passed it by the streamed refinement's reach
(core/streamed.py) and the rest of its batch. The decoding thread therefore blocks when
`capacity` frames are held, and a segment whose frames would hold more than HELD_BYTES (4K and
up) decodes again instead (Worker.segment), so a worker's memory stays bounded (I3).
"""

from __future__ import annotations

import threading

import numpy as np

from anon_ray.run.errors import AssetError

# 28 frames of 1080p RGB (~174 MB) fit, 4K's (~700 MB) do not.
HELD_BYTES = 256 * 2**20
# Frames the decoding thread may run ahead of the detector's batch beyond what the streamed
# refinement needs (prefetch's default depth): a buffer with no slack would make it wait on
# every frame the encoder takes.
SLACK = 8


class Closed(Exception):
    """The segment ended (done or failed) while the decoding thread waited for room."""


def capacity(reach: int, batch: int) -> int:
    """Frames to hold so that detection can always finalize the oldest held frame: its boxes need
    detection past it by `reach` frames, in batches of `batch`."""
    return reach + batch + SLACK


def fits(cap: int, width: int, height: int) -> bool:
    return cap * width * height * 3 <= HELD_BYTES


class HeldFrames:
    """Frames put in order by the decoding thread, taken in order by the encoding one."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._frames: dict[int, tuple[int, np.ndarray]] = {}
        self._room = threading.Condition()
        self._closed = False

    def put(self, index: int, pts: int, rgb: np.ndarray) -> None:
        """Hold a frame; waits while `cap` are held. Raises Closed once close() was called."""
        with self._room:
            self._room.wait_for(lambda: self._closed or len(self._frames) < self.cap)
            if self._closed:
                raise Closed
            self._frames[index] = (pts, rgb)

    def take(self, index: int) -> tuple[int, np.ndarray]:
        """(pts, rgb) of a frame whose boxes are final: it was decoded before it was detected."""
        with self._room:
            if index not in self._frames:
                raise AssetError(f"frame {index} is final but was never held for encoding")
            got = self._frames.pop(index)
            self._room.notify_all()
            return got

    def close(self) -> None:
        """Release the decoding thread if it waits, and every held frame."""
        with self._room:
            self._closed = True
            self._frames.clear()
            self._room.notify_all()
