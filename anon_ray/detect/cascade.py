"""A cheaper face pass on most video frames, the full passes on every n-th one; plates' passes
on every n-th frame only (`Cadence`).

Detection is most of a CPU worker's time (README, "where the time goes"). On video a face seen
on one frame is carried to its neighbours by tracking, gap filling and padding (track/, core/refine.py),
so not every frame needs the full-resolution pass: frames whose absolute number is a multiple of
`full_every` get it, the others get the whole-frame pass with the frame shrunk to `cheap_side` px
on its long side (large and medium faces stay found there; small ones come from the full frames,
the track carrying them between). Absolute numbers keep the choice independent of where a video
is cut into segments (I2). Photos always get the full passes.

With `regions` on, a cheap frame is searched only around the faces found since the last full
pass (each box grown by `region_grow` of its long side, plus `region_motion` of the frame's long
side per frame since it was seen): a frame with no recent face gets no cheap pass at all, which
is most frames of most CCTV footage. Every `region_sweep`-th frame still gets the whole shrunk
frame, and so does a frame whose regions would cover more than `region_max_share` of it or whose
last full pass lies before the stream's first frame. A face that shows up elsewhere is found
within `region_sweep` frames, and its track is padded back over the frames before (track.pad).
The choice reads only frames since the last full pass, so with segment.overlap >= full_every an
owned frame is searched the same way wherever the video is cut (I2).

Every `edge_every`-th frame (by absolute number too) also gets `edge_pass`, for the faces its edge
cuts, which no pass over the frame itself finds reliably.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from anon_ray.config import FaceConfig
from anon_ray.detect.faces import zoomed_size
from anon_ray.detect.nms import nms
from anon_ray.detect.tiling import MultiPass, ZoomableDetector
from anon_ray.track.matching import iou_matrix
from anon_ray.types import FACE, Detections

_QUANTUM = 64  # region sides are rounded up to this many frame pixels: few network input shapes


@dataclass(frozen=True)
class Recent:
    """What a video stream's earlier batches found: raw boxes of its frames from `start` on, in the
    orientation detection runs in (all classes; the cascade reads the faces)."""

    start: int
    dets: Detections


def _renumbered(dets: Detections, frames: np.ndarray) -> Detections:
    """Boxes of frames numbered 0.. in a subset, numbered as the subset's `frames` say."""
    return Detections(frames[dets.frame], dets.xyxy, dets.score, dets.cls, dets.track)


class Cadence:
    """A detector's passes on video frames whose absolute number is a multiple of `every` only
    (photos: always), so a costly class's pass runs on fewer frames; tracking, gap filling and
    the padding of boxes that joined no track (track.plate_lone_pad) carry its boxes between.
    Absolute numbers keep the choice independent of where a video is cut (I2)."""

    def __init__(self, inner: MultiPass, every: int) -> None:
        if every < 1:
            raise ValueError(f"a detection cadence needs every >= 1, got {every}")
        self.inner, self.every = inner, every

    def detect(self, frames: Sequence[np.ndarray], first_index: int = 0, photo: bool = False) -> Detections:
        if photo or self.every == 1:
            return self.inner.detect(frames, first_index, photo)
        numbers = np.arange(first_index, first_index + len(frames))
        key = np.flatnonzero(numbers % self.every == 0)
        if not len(key):
            return Detections.empty()
        return _renumbered(self.inner.detect([frames[k] for k in key], 0), numbers[key])


class Cascade:
    def __init__(self, full: MultiPass, detector: ZoomableDetector, cfg: FaceConfig) -> None:
        if cfg.full_every < 1 or cfg.cheap_side < 32 or cfg.region_sweep < 1:
            raise ValueError(f"cascade needs full_every >= 1, cheap_side >= 32 and region_sweep >= 1, got "
                             f"{cfg.full_every}, {cfg.cheap_side}, {cfg.region_sweep}")
        self.full, self.detector, self.cfg = full, detector, cfg

    def detect(self, frames: Sequence[np.ndarray], first_index: int = 0, photo: bool = False,
               recent: Recent | None = None) -> Detections:
        """`recent`: the stream's earlier boxes, for `regions` (None: nothing earlier is known)."""
        if photo:
            return self.full.detect(frames, first_index, photo)
        dets = self._video(frames, first_index, recent)
        if self.cfg.edge_every:
            edges = [edge_pass(self.full.detector, frame, number, self.cfg)
                     for number, frame in enumerate(frames, first_index) if number % self.cfg.edge_every == 0]
            dets = Detections.concat([dets, *edges])
        return dets.select(np.lexsort((-dets.score, dets.frame)))

    def _video(self, frames: Sequence[np.ndarray], first_index: int, recent: Recent | None) -> Detections:
        every = self.cfg.full_every
        if every == 1:
            return self.full.detect(frames, first_index)
        numbers = np.arange(first_index, first_index + len(frames))
        key = numbers % every == 0
        parts = []
        if key.any():
            parts.append(_renumbered(self.full.detect([frames[k] for k in np.flatnonzero(key)], 0), numbers[key]))
        if not key.all():
            height, width = frames[0].shape[:2]
            zoom = min(self.detector.zoom(height, width), self.cfg.cheap_side / max(height, width))
            cheap = np.flatnonzero(~key)
            if self.cfg.regions:
                start = recent.start if recent is not None else first_index
                known = Detections.concat([recent.dets if recent is not None else Detections.empty(), *parts])
                for k in cheap:
                    found = self._cheap_regions(frames[k], int(numbers[k]), zoom, start, known)
                    known = Detections.concat([known, found])
                    parts.append(found)
            else:
                parts.extend(self._whole(frames[k], int(numbers[k]), zoom) for k in cheap)
        return Detections.concat(parts)

    def _whole(self, frame: np.ndarray, number: int, zoom: float) -> Detections:
        """The cheap pass of the whole frame `number`, shrunk by `zoom`; with cheap_small_side, also
        shrunk to that long side, the two merged by NMS: a pan's motion blur, which hides faces
        from the first, spans fewer pixels there (videos_gt: README "Models")."""
        side = self.cfg.cheap_small_side
        height, width = frame.shape[:2]
        inner_h, inner_w = zoomed_size(height, width, zoom)
        if not side or side >= max(inner_h, inner_w):
            return self.detector.detect([frame], number, zoom=zoom)
        # Both passes read one shrunk copy: shrinking the whole frame costs as much as a YuNet pass.
        # INTER_AREA on uint8, the values the detector's own shrink gives (faces._area_into).
        shrunk = cv2.resize(frame, (inner_w, inner_h), interpolation=cv2.INTER_AREA)
        found = self.detector.detect([shrunk], number, zoom=1.0)
        small = self.detector.detect([shrunk], number, zoom=side / max(inner_h, inner_w))
        both = Detections.concat([found, small.select(small.score >= self.cfg.cheap_small_threshold)])
        both = both.select(np.sort(nms(both.xyxy, both.score, self.cfg.nms_iou)))
        return Detections.build(both.frame, both.xyxy * np.array([width / inner_w, height / inner_h] * 2, np.float32),
                                both.score, both.cls)

    def _cheap_regions(self, frame: np.ndarray, number: int, zoom: float, start: int, known: Detections
                       ) -> Detections:
        """The cheap pass of frame `number` over the regions of the faces `known` since the last
        full pass; the whole frame where that pass lies before `start` or the regions cover too much."""
        height, width = frame.shape[:2]
        last_full = number - number % self.cfg.full_every
        if last_full < start or number % self.cfg.region_sweep == 0:
            return self._whole(frame, number, zoom)
        seen = known.select((known.frame >= last_full) & (known.frame < number) & (known.cls == FACE)
                            & (known.score >= self.cfg.threshold))
        rects = regions(seen, number, (height, width), self.cfg)
        area = float(np.prod(rects[:, 2:] - rects[:, :2], axis=1).sum()) if len(rects) else 0.0
        if area > self.cfg.region_max_share * height * width:
            return self._whole(frame, number, zoom)
        found = []
        for x0, y0, x1, y1 in rects:
            part = self.detector.detect([frame[y0:y1, x0:x1]], number, zoom=zoom)
            found.append(Detections.build(part.frame, part.xyxy + np.array([x0, y0, x0, y0], np.float32),
                                          part.score, part.cls))
        return Detections.concat(found)


def edge_pass(detector: ZoomableDetector, frame: np.ndarray, number: int, cfg: FaceConfig) -> Detections:
    """Faces the edge of frame `number` cuts: the frame mirrored out by `edge_pad` of its long side
    at every edge, shrunk to `edge_side` px on its long side. A cut face and its mirror image make a
    whole one, which the model finds where the half alone scores too low; the boxes that reach past
    the frame scoring `edge_threshold` or more are kept, clipped to it (the frame's own passes find
    the others; mirrored crowds make false faces, which tracks would hold and pad)."""
    height, width = frame.shape[:2]
    pad = round(cfg.edge_pad * max(height, width))
    found = detector.detect([cv2.copyMakeBorder(frame, pad, pad, pad, pad, cv2.BORDER_REFLECT_101)], number,
                            zoom=min(1.0, cfg.edge_side / max(height, width)))
    xyxy = found.xyxy - np.float32(pad)
    past = (xyxy[:, 0] < 0) | (xyxy[:, 1] < 0) | (xyxy[:, 2] > width) | (xyxy[:, 3] > height)
    xyxy = np.clip(xyxy, 0, np.array([width, height] * 2, np.float32))
    keep = past & (xyxy[:, 2] - xyxy[:, 0] > 2) & (xyxy[:, 3] - xyxy[:, 1] > 2) & (found.score >= cfg.edge_threshold)
    return Detections.build(found.frame[keep], xyxy[keep], found.score[keep], found.cls[keep])


def regions(seen: Detections, number: int, size_hw: tuple[int, int], cfg: FaceConfig) -> np.ndarray:
    """int64 (n, 4) x0, y0, x1, y1: frame regions around the boxes `seen` on earlier frames where
    frame `number` may show them, merged until none overlap, sides rounded up to _QUANTUM px."""
    height, width = size_hw
    if not len(seen):
        return np.zeros((0, 4), np.int64)
    xyxy = seen.xyxy.astype(np.float64)
    grow = cfg.region_grow * np.max(xyxy[:, 2:] - xyxy[:, :2], axis=1) \
        + cfg.region_motion * max(height, width) * (number - seen.frame)
    rects = _fit(np.c_[xyxy[:, :2] - grow[:, None], xyxy[:, 2:] + grow[:, None]], height, width)
    while True:  # merge overlapping groups into their bounding rects (a crowd: in a few rounds)
        touch = iou_matrix(rects, rects) > 0
        if touch.sum() == len(rects):  # each touches only itself
            return rects
        group = np.arange(len(rects))
        while True:  # connected groups: every rect takes the lowest label it touches
            lowest = np.where(touch, group[None], len(rects)).min(axis=1)
            if np.array_equal(lowest, group):
                break
            group = lowest
        labels = np.unique(group)
        merged = np.array([np.r_[rects[group == g, :2].min(axis=0), rects[group == g, 2:].max(axis=0)] for g in labels])
        rects = _fit(merged.astype(np.float64), height, width)


def _fit(rects: np.ndarray, height: int, width: int) -> np.ndarray:
    """int64 `rects` grown to whole _QUANTUM sides (or the frame's), kept inside the frame."""
    x0 = np.maximum(0, np.floor(rects[:, 0])).astype(np.int64)
    y0 = np.maximum(0, np.floor(rects[:, 1])).astype(np.int64)
    x1 = np.minimum(width, np.ceil(rects[:, 2])).astype(np.int64)
    y1 = np.minimum(height, np.ceil(rects[:, 3])).astype(np.int64)
    w = np.minimum(width, -(-(x1 - x0) // _QUANTUM) * _QUANTUM)
    h = np.minimum(height, -(-(y1 - y0) // _QUANTUM) * _QUANTUM)
    x0, y0 = np.minimum(x0, width - w), np.minimum(y0, height - h)
    return np.stack([x0, y0, x0 + w, y0 + h], axis=1)
