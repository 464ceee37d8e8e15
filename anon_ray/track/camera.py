"""How far the picture moved between consecutive frames, so that boxes the detector did not draw
(gaps, pads) and the tracker's predictions follow the scene while the camera pans.

The detector misses faces most while the camera moves fast (motion blur): on the ground-truth
clips, 60% of the face-frames of whip pans leaked. A box held still in the picture slides off a
face at the pan's speed; moved with the picture it stays on anything still in the scene. The
shift is the global translation by phase correlation of small grey copies of two frames (~1 ms
a 720p frame at 320 px), which motion blur along the pan does not stop.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from anon_ray.types import CameraPath

MIN_SIDE = 8  # px of the small copy: below it there is nothing to correlate (the picture holds still)
# Consecutive frames correlate at 0.7-1.0 even through a whip pan's blur; unrelated pictures (a cut)
# near 0, and their "shift" is noise: the picture is taken as held still.
MIN_RESPONSE = 0.3
# Sensor noise on a still camera reads as hundredths of a pixel; zeroing it keeps a still camera's
# path exactly still, so no box is drawn twice (refine.py draws a moved twin only where it moved).
MIN_SHIFT_PX = 0.25


class CameraMeter:
    """Measures the frames of one run in order; positions accumulate from its first frame."""

    def __init__(self, width: int) -> None:
        self.width = width
        self._prev: np.ndarray | None = None
        self._window: np.ndarray | None = None
        self._index = -1
        self._xy = np.zeros(2)

    def measure(self, first_index: int, frames: Sequence[np.ndarray]) -> CameraPath:
        """The path over `frames` (RGB, consecutive from `first_index`, continuing the last call)."""
        xy = np.zeros((len(frames), 2))
        for k, rgb in enumerate(frames):
            index = first_index + k
            small = self._small(rgb)
            if self._prev is not None and self._index != index - 1:
                raise ValueError(f"frame {index} does not follow frame {self._index}")
            # A first frame, a change of size (a new picture) or one too small to correlate: still.
            if self._prev is not None and self._prev.shape == small.shape and min(small.shape) >= MIN_SIDE:
                (dx, dy), response = cv2.phaseCorrelate(self._prev, small, self._window)
                shift = np.array([dx, dy]) * [rgb.shape[1] / small.shape[1], rgb.shape[0] / small.shape[0]]
                shift[np.abs(shift) < MIN_SHIFT_PX] = 0.0
                if response >= MIN_RESPONSE:
                    # One addition per frame, in frame order: the streamed and the whole-segment
                    # refinement read the same floats.
                    self._xy = self._xy + shift
            xy[k] = self._xy
            self._prev, self._index = small, index
        return CameraPath(np.arange(first_index, first_index + len(frames), dtype=np.int64), xy)

    def _small(self, rgb: np.ndarray) -> np.ndarray:
        height, width = rgb.shape[:2]
        size = (min(self.width, width), max(1, round(height * min(self.width, width) / width)))
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        small = cv2.resize(grey, size, interpolation=cv2.INTER_AREA).astype(np.float32)
        if self._window is None or self._window.shape != small.shape:
            # A Hann window keeps the frame's borders from dominating the correlation.
            self._window = cv2.createHanningWindow(size, cv2.CV_32F)
        return small


def stabilized(xyxy: np.ndarray, frames: np.ndarray, path: CameraPath) -> np.ndarray:
    """Boxes in scene coordinates: each frame's camera position taken off."""
    return xyxy - np.tile(path.at(frames), 2).astype(xyxy.dtype)
