"""Where an asset's time goes: busy seconds per stage, for the manifest and the bench's profile.

Stages overlap: detection runs in a thread of its own while the frames it has finished are
masked and encoded, and decoding runs ahead of both. So the seconds of the stages add up to more
than the wall-clock time; each stage's share of their sum says where the work is, and `cpu`
(process CPU seconds, every thread counted) against the wall-clock time says how busy the cores
were. One thread per stage name: the counts are not locked.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

# Stage names, in pipeline order: plan (packet scan, probe, cuts), decode (frames for detection),
# detect, camera (the pan measured for tracking), track (tracking and refinement), decode_again
# (the owned frames again for encoding, only where they are too large to hold: run/held.py), people
# (the review's person detector on sampled frames: detect/people.py), mask, encode, finalize
# (joining parts, muxing, verifying, publishing). A photo: read, detect, people, mask, write.


class StageClock:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._cpu0 = time.process_time()
        self._wall0 = time.perf_counter()

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0

    def timed(self, stage: str, items: Iterable) -> Iterator:
        """`items`, with the time spent producing each charged to `stage`."""
        it = iter(items)
        while True:
            with self(stage):
                item = next(it, _END)
            if item is _END:
                return
            yield item

    def totals(self) -> dict[str, float]:
        """The stages' seconds, plus `wall` and `cpu` since the clock was made."""
        return {**self.seconds, "wall": time.perf_counter() - self._wall0, "cpu": time.process_time() - self._cpu0}


_END = object()


def summed(parts: Iterable[dict[str, float]]) -> dict[str, float]:
    """Seconds per key over several clocks' totals (the segments of a video, plan and finalize)."""
    out: dict[str, float] = {}
    for part in parts:
        for key, seconds in part.items():
            out[key] = out.get(key, 0.0) + seconds
    return out
