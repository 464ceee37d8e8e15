"""A cheaper face pass on most video frames, the full passes on every n-th one.

Detection is most of a CPU worker's time (README, "where the time goes"). On video a face seen
on one frame is carried to its neighbours by tracking, gap filling and padding (track/, core/refine.py),
so not every frame needs the full-resolution pass: frames whose absolute number is a multiple of
`full_every` get it, the others get the whole-frame pass with the frame shrunk to `cheap_side` px
on its long side (large and medium faces stay found there; small ones come from the full frames,
the track carrying them between). Absolute numbers keep the choice independent of where a video
is cut into segments (I2). Photos always get the full passes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from anon_ray.detect.tiling import MultiPass, ZoomableDetector
from anon_ray.types import Detections


def _renumbered(dets: Detections, frames: np.ndarray) -> Detections:
    """Boxes of frames numbered 0.. in a subset, numbered as the subset's `frames` say."""
    return Detections(frames[dets.frame], dets.xyxy, dets.score, dets.cls, dets.track)


class Cascade:
    def __init__(self, full: MultiPass, detector: ZoomableDetector, full_every: int, cheap_side: int) -> None:
        if full_every < 1 or cheap_side < 32:
            raise ValueError(f"cascade needs full_every >= 1 and cheap_side >= 32, got {full_every}, {cheap_side}")
        self.full, self.detector, self.every, self.side = full, detector, full_every, cheap_side

    def detect(self, frames: Sequence[np.ndarray], first_index: int = 0, photo: bool = False) -> Detections:
        if photo or self.every == 1:
            return self.full.detect(frames, first_index, photo)
        numbers = np.arange(first_index, first_index + len(frames))
        key = numbers % self.every == 0
        parts = []
        if key.any():
            parts.append(_renumbered(self.full.detect([frames[k] for k in np.flatnonzero(key)], 0), numbers[key]))
        if not key.all():
            cheap = [frames[k] for k in np.flatnonzero(~key)]
            height, width = cheap[0].shape[:2]
            zoom = min(self.detector.zoom(height, width), self.side / max(height, width))
            parts.append(_renumbered(self.detector.detect(cheap, 0, zoom=zoom), numbers[~key]))
        dets = Detections.concat(parts)
        return dets.select(np.lexsort((-dets.score, dets.frame)))
