"""Mask boxes frame by frame while detection is still running, so a worker can encode a
segment's first frames while it detects its later ones.

A frame's mask boxes (tracking, then refine.mask_boxes) depend only on detections a bounded
distance around it: gap filling links detections at most max_gap + 1 frames apart, padding
reaches `pad` (or a lone detection's pad) frames, and ByteTrack is online. So once detection has passed frame f by
max(max_gap + 1, pad, the lone pads) frames, f is final, and refining a window that reaches as far behind it
gives exactly the boxes a refinement of the whole segment gives. The worker
still checks this against the whole-segment result before it publishes a part.
"""

from __future__ import annotations

import numpy as np

from anon_ray.config import TrackConfig
from anon_ray.core import refine
from anon_ray.track.bytetrack import ByteTracker, class_rows, in_scene, step_frames
from anon_ray.types import CameraPath, Detections

# Each class's tracker numbers its tracks from its own base, so ids never collide across classes
# although the trackers run side by side (the whole-segment tracker numbers them one class after
# the other; ids are only compared within one refinement).
_CLASS_ID_BASE = 1 << 40


def streamed_reach(cfg: TrackConfig) -> int:
    """Frames detection must have passed a frame by before its boxes are final."""
    return max(cfg.max_gap + 1, cfg.pad, cfg.lone_pad, cfg.plate_lone_pad)


class StreamedBoxes:
    """Feed detections in frame order with `add`; it returns the frames that became final."""

    def __init__(self, cfg: TrackConfig, frames: range, frame_size: tuple[int, int], owned_from: int = 0) -> None:
        self.cfg = cfg
        self.owned_from = owned_from  # refine.mask_boxes's
        self.frames = frames
        self.frame_size = frame_size
        self.reach = streamed_reach(cfg)
        self.trackers: dict[int, ByteTracker] = {}
        self.window = Detections.empty()
        self.path = CameraPath.empty()
        self.done = frames.start

    def add(self, raw: Detections, seen_to: int, path: CameraPath | None = None) -> tuple[range, Detections]:
        """`raw`: every detection of the frames from the previous `seen_to` up to this one
        (exclusive), and the camera's `path` over those frames (positions continuing the earlier
        calls'). Returns the frames that are now final and their mask boxes."""
        self.path = CameraPath.concat([self.path, path or CameraPath.empty()])
        ids = np.full(len(raw), -1, np.int64)
        scene = in_scene(raw, self.path)
        for cls, rows in class_rows(raw):
            tracker = self.trackers.setdefault(cls, ByteTracker(self.cfg, cls * _CLASS_ID_BASE, cls))
            step_frames(tracker, scene, rows, ids)
        self.window = Detections.concat([self.window, raw.with_track(ids)])
        final = self.frames.stop if seen_to >= self.frames.stop else seen_to - self.reach
        if final <= self.done:
            return range(self.done, self.done), Detections.empty()
        span = range(self.done, final)
        boxes = refine.mask_boxes(self.window, self.cfg, span, self.frame_size, self.path, self.owned_from)
        self.window = self.window.select(self.window.frame >= final - self.reach)
        self.path = self.path.since(final - self.reach)
        self.done = final
        return span, boxes
