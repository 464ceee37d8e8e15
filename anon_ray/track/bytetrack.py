"""ByteTrack-style two-stage association, one tracker per class.

Stage 1 matches confident detections (score >= high_threshold) to every live track; stage 2 gives
the remaining tracks a chance at the low-score detections, which are mostly the same objects
partly occluded, blurred or turned away. Only confident detections start tracks (plates have a
cut-off of their own, track.plate_high_threshold; face boxes under track.small_height px a lower
one). Low-score detections that match nothing keep track -1: they are still masked (recall
first), they just do not seed tracks that would then be interpolated and padded.

Unlike the original there is no "unconfirmed" state and no special first frame: both make the
result depend on where a run starts, and the output must not depend on where a video is cut.
"""

from __future__ import annotations

import numpy as np

from anon_ray.config import TrackConfig
from anon_ray.track import kalman
from anon_ray.track.camera import stabilized
from anon_ray.track.matching import assign, iou_matrix
from anon_ray.types import FACE, PLATE, CameraPath, Detections


class ByteTracker:
    """Tracks of one class. IDs come from this instance's counter, starting at `first_id`."""

    def __init__(self, cfg: TrackConfig, first_id: int = 0, cls: int = FACE) -> None:
        self.cfg = cfg
        self.high = cfg.plate_high_threshold if cls == PLATE else cfg.high_threshold
        self.small = (cfg.small_height, cfg.small_high_threshold) if cls == FACE else (0, self.high)
        self.next_id = first_id
        self._frame: int | None = None
        self._ids = np.zeros(0, np.int64)
        self._last = np.zeros(0, np.int64)  # frame of the last matched detection
        self._mean = np.zeros((0, 8))
        self._cov = np.zeros((0, 8, 8))

    def step(self, frame: int, xyxy: np.ndarray, score: np.ndarray) -> np.ndarray:
        """Associates one frame's detections; returns their track ids (-1: unmatched low score).

        Frames must increase; frames skipped between calls count as frames without detections.
        """
        if self._frame is not None and frame <= self._frame:
            raise ValueError(f"frames must increase: {frame} after {self._frame}")
        self._end_lost(frame)
        self._predict_to(frame)
        xyxy = np.asarray(xyxy, np.float64).reshape(-1, 4)
        ids = np.full(len(xyxy), -1, np.int64)
        small_height, small_high = self.small
        high = np.asarray(score) >= np.where(xyxy[:, 3] - xyxy[:, 1] < small_height, small_high, self.high)
        free = np.ones(len(self._ids), bool)
        predicted = kalman.cxcywh_to_xyxy(self._mean[:, :4])
        for stage in (high, ~high):
            dets, trks = np.flatnonzero(stage), np.flatnonzero(free)
            rows, cols = assign(iou_matrix(predicted[trks], xyxy[dets]), self.cfg.match_iou)
            t, d = trks[rows], dets[cols]
            self._mean[t], self._cov[t] = kalman.update(self._mean[t], self._cov[t], xyxy[d])
            self._last[t] = frame
            ids[d] = self._ids[t]
            free[t] = False
        new = high & (ids < 0)
        ids[new] = self._start(frame, xyxy[new])
        return ids

    def _end_lost(self, frame: int) -> None:
        """Ends tracks that went more than max_age frames without a match."""
        alive = frame - self._last - 1 <= self.cfg.max_age
        self._ids, self._last = self._ids[alive], self._last[alive]
        self._mean, self._cov = self._mean[alive], self._cov[alive]

    def _predict_to(self, frame: int) -> None:
        if self._frame is None:
            self._frame = frame
            return
        for f in range(self._frame + 1, frame + 1):
            # A lost track keeps moving but stops growing or shrinking: size velocity fitted on a
            # few frames, extrapolated blindly, makes boxes vanish or explode (ByteTrack does the same).
            self._mean[self._last < f - 1, 6:] = 0.0
            self._mean, self._cov = kalman.predict(self._mean, self._cov)
        self._frame = frame

    def _start(self, frame: int, xyxy: np.ndarray) -> np.ndarray:
        new = self.next_id + np.arange(len(xyxy), dtype=np.int64)
        self.next_id += len(xyxy)
        mean, cov = kalman.initiate(xyxy)
        self._ids = np.concatenate([self._ids, new])
        self._last = np.concatenate([self._last, np.full(len(xyxy), frame, np.int64)])
        self._mean = np.concatenate([self._mean, mean])
        self._cov = np.concatenate([self._cov, cov])
        return new


def track(dets: Detections, cfg: TrackConfig, frames: range, path: CameraPath | None = None) -> Detections:
    """The same detections (same row order) with `track` filled: ids >= 0 unique within this call.

    Every detection must lie in `frames`. Faces and plates are tracked separately, so a track
    never changes class. Rows are processed in a canonical order (frame, score descending, box),
    so the result does not depend on the order of the input rows. With the camera's `path`, boxes
    are matched in scene coordinates, so a pan does not break tracks (the ids are the output).
    """
    if len(dets) and (dets.frame.min() < frames.start or dets.frame.max() >= frames.stop):
        raise ValueError(f"detections outside {frames}: frames {dets.frame.min()}..{dets.frame.max()}")
    ids = np.full(len(dets), -1, np.int64)
    next_id = 0
    scene = in_scene(dets, path)
    for cls, rows in class_rows(dets):
        tracker = ByteTracker(cfg, first_id=next_id, cls=cls)
        step_frames(tracker, scene, rows, ids)
        next_id = tracker.next_id
    return dets.with_track(ids)


def in_scene(dets: Detections, path: CameraPath | None) -> Detections:
    """`dets` with the camera's motion taken off their boxes (unchanged without a path)."""
    if path is None or not len(path.frame):
        return dets
    return Detections(dets.frame, stabilized(dets.xyxy, dets.frame, path), dets.score, dets.cls, dets.track)


def class_rows(dets: Detections) -> list[tuple[int, np.ndarray]]:
    """Per class, its rows in the canonical order (frame, score descending, box)."""
    box = dets.xyxy
    order = np.lexsort((box[:, 3], box[:, 2], box[:, 1], box[:, 0], -dets.score, dets.frame))
    return [(int(cls), order[dets.cls[order] == cls]) for cls in np.unique(dets.cls)]


def step_frames(tracker: ByteTracker, dets: Detections, rows: np.ndarray, ids: np.ndarray) -> None:
    """Feed `rows` (one class, canonical order) to `tracker` frame by frame; their ids go to `ids`."""
    for chunk in np.split(rows, np.flatnonzero(np.diff(dets.frame[rows])) + 1):
        ids[chunk] = tracker.step(int(dets.frame[chunk[0]]), dets.xyxy[chunk], dets.score[chunk])
