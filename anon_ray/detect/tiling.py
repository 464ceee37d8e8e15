"""Extra passes for small objects: zoomed overlapping tiles and a mirrored frame, merged by NMS.

A detector sees an object at the size it has in the network input; faces under ~10 input pixels
and plates under ~15 are mostly missed. The tiled pass enlarges the frame by `scale` and runs the
detector on tiles of it, so a small object reaches a size the model was trained on without one
huge input. The flip pass runs the whole frame mirrored: the models are not exactly symmetric and
a face in profile or a plate at an angle that scores just under the threshold one way often
clears it the other.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from anon_ray.config import TilingConfig
from anon_ray.detect.nms import nms
from anon_ray.track.matching import iou_matrix
from anon_ray.types import Detections

# A tiled box this close to an inner tile edge (a share of the tile's side, at least 1 px) was
# cut by it. The models draw a cut object's box a little short of the edge that cut it: plates
# crossing a 640 px tile ended 1-7 px before it, and such a box, scoring higher than the whole
# plate's, won the merge and left ~20% of close-up plates on plates_openimages under-covered.
EDGE_SHARE = 0.01


class ZoomableDetector(Protocol):
    def zoom(self, height: int, width: int) -> float: ...

    def detect(self, frames: Sequence[np.ndarray], first_index: int = 0,
               zoom: float | None = None) -> Detections: ...


def axis_starts(length: int, side: int, overlap: float) -> np.ndarray:
    """Starts of windows of `side` covering [0, length), spread evenly, neighbours sharing at
    least `overlap` of a side (one window from 0 when the axis fits in one)."""
    if length <= side:
        return np.zeros(1, np.int64)
    stride = side * (1.0 - min(max(overlap, 0.0), 0.9))
    count = math.ceil((length - side) / stride) + 1
    return np.round(np.linspace(0, length - side, count)).astype(np.int64)


def tile_windows(height: int, width: int, side: int, overlap: float) -> np.ndarray:
    """int64 (n, 4) x0, y0, x1, y1 windows of at most side x side covering the frame, all of one
    shape so the tiles of a frame batch together."""
    xs, ys = axis_starts(width, side, overlap), axis_starts(height, side, overlap)
    tw, th = min(side, width), min(side, height)
    x0, y0 = np.meshgrid(xs, ys)
    x0, y0 = x0.ravel(), y0.ravel()
    return np.stack([x0, y0, x0 + tw, y0 + th], axis=1)


def cut_by_tile(xyxy: np.ndarray, windows: np.ndarray, height: int, width: int) -> np.ndarray:
    """bool (n,): boxes (frame pixels) touching an edge of their tile (`windows`, one row per box)
    that is not a frame edge.

    Such a box shows only part of its object; with overlapping tiles, an object smaller than the
    overlap lies whole in a neighbouring tile, and larger ones are the whole-frame pass's job.
    """
    x0, y0, x1, y1 = windows.T
    near_x = np.maximum(1.0, EDGE_SHARE * (x1 - x0))
    near_y = np.maximum(1.0, EDGE_SHARE * (y1 - y0))
    return (((xyxy[:, 0] <= x0 + near_x) & (x0 > 0)) | ((xyxy[:, 1] <= y0 + near_y) & (y0 > 0))
            | ((xyxy[:, 2] >= x1 - near_x) & (x1 < width)) | ((xyxy[:, 3] >= y1 - near_y) & (y1 < height)))


def tiled(detector: ZoomableDetector, frames: Sequence[np.ndarray], first_index: int,
          cfg: TilingConfig) -> Detections:
    """Boxes from the zoomed tile passes (one per scale), in frame pixels."""
    return Detections.concat([tiled_at(detector, frames, first_index, cfg, scale) for scale in cfg.scales])


def tiled_at(detector: ZoomableDetector, frames: Sequence[np.ndarray], first_index: int,
             cfg: TilingConfig, scale: float) -> Detections:
    """Boxes from the tile pass at `scale`, in frame pixels; nothing where it would add no zoom.

    A frame that fits in one tile at `scale` is run once, enlarged; one whose tile pass would see
    it no larger than the whole-frame pass already does, or that needs more than `max_tiles`
    tiles, is skipped.
    """
    parts = []
    for k, frame in enumerate(frames):
        height, width = frame.shape[:2]
        plan = _tile_plan(detector, height, width, cfg, scale)
        if plan is None:
            continue
        windows, zoom = plan
        crops = [frame[y0:y1, x0:x1] for x0, y0, x1, y1 in windows]
        found = detector.detect(crops, 0, zoom=zoom)
        offset = windows[found.frame][:, [0, 1, 0, 1]].astype(np.float32)
        xyxy = found.xyxy + offset
        whole = ~cut_by_tile(xyxy, windows[found.frame], height, width)
        parts.append(Detections.build(first_index + k, xyxy[whole], found.score[whole], found.cls[whole]))
    return Detections.concat(parts)


def _tile_plan(detector: ZoomableDetector, height: int, width: int, cfg: TilingConfig,
               scale: float) -> tuple[np.ndarray, float] | None:
    """(windows, zoom) of the tile pass at `scale` over a frame of this size, or None where it is skipped."""
    windows = tile_windows(height, width, max(1, int(cfg.tile / scale)), cfg.overlap)
    if cfg.max_tiles and len(windows) > cfg.max_tiles:
        return None
    zoom = scale if len(windows) > 1 else min(scale, cfg.tile / max(height, width))
    return None if zoom <= detector.zoom(height, width) * 1.01 else (windows, zoom)


def tiling_runs(detector: ZoomableDetector, frames: Sequence[np.ndarray], cfg: TilingConfig) -> bool:
    """Whether the tiling runs a pass (at one of its scales at least) over every one of `frames`."""
    return all(any(_tile_plan(detector, *f.shape[:2], cfg, scale) is not None for scale in cfg.scales)
               for f in frames)


def flipped(detector: ZoomableDetector, frames: Sequence[np.ndarray], first_index: int) -> Detections:
    """Boxes found on the mirrored frames, mapped back to the frames."""
    found = detector.detect([np.ascontiguousarray(f[:, ::-1]) for f in frames], first_index)
    widths = np.array([f.shape[1] for f in frames], np.float32)[found.frame - first_index]
    xyxy = np.stack([widths - found.xyxy[:, 2], found.xyxy[:, 1], widths - found.xyxy[:, 0], found.xyxy[:, 3]], axis=1)
    return Detections.build(found.frame, xyxy, found.score, found.cls)


def confirmed(parts: Sequence[Detections], height: float, below: float, iou: float) -> list[Detections]:
    """Each pass's boxes without those at least `height` px tall scoring under `below` that no
    other pass found (a box of the same frame and class overlapping by IoU >= `iou`).

    A model sees a big face clearly: its big low-score boxes are mostly walls, hair and sky, and
    each costs a mask the size of a face. A real face that scores low in one pass is found by
    another (enlarged, tiled, mirrored) as well. With one pass there is nothing to confirm with:
    every box stays.
    """
    if len(parts) < 2 or height <= 0:
        return list(parts)
    out = []
    for k, part in enumerate(parts):
        doubt = np.flatnonzero((part.xyxy[:, 3] - part.xyxy[:, 1] >= height) & (part.score < below))
        others = Detections.concat([p for j, p in enumerate(parts) if j != k])
        if len(doubt) and len(others):
            same = ((part.frame[doubt, None] == others.frame[None, :])
                    & (part.cls[doubt, None] == others.cls[None, :]))
            seen = ((iou_matrix(part.xyxy[doubt], others.xyxy) >= iou) & same).any(axis=1)
            doubt = doubt[~seen]
        keep = np.ones(len(part), bool)
        keep[doubt] = False
        out.append(part.select(keep))
    return out


def merge(parts: Sequence[Detections], iou: float, fuse: bool = False) -> Detections:
    """Cross-pass NMS: per frame and class, the best-scoring of boxes overlapping by IoU >= `iou`.
    Sorted by frame, then score descending, like a single pass's output.

    `fuse`: each kept box grows to take in the score-weighted mean of the boxes overlapping it by
    IoU >= `iou`, its own included (weighted box fusion, widening only): where passes disagree on
    an object's extent, the best-scoring box alone may be a tight or shifted one. Only widening,
    because the mean can also be pulled inside an object by the passes that saw part of it.
    """
    dets = Detections.concat(list(parts))
    group = dets.frame * 256 + dets.cls.astype(np.int64)
    keep = nms(dets.xyxy, dets.score, iou, group=group)
    keep = keep[np.lexsort((-dets.score[keep], dets.frame[keep]))]
    kept = dets.select(keep)
    if not fuse or not len(kept):
        return kept
    cluster = (iou_matrix(kept.xyxy, dets.xyxy) >= iou) & (group[keep][:, None] == group[None, :])
    weight = cluster * dets.score[None, :].astype(np.float64)
    mean = (weight @ dets.xyxy.astype(np.float64)) / weight.sum(axis=1, keepdims=True)
    xyxy = np.concatenate([np.minimum(mean[:, :2], kept.xyxy[:, :2]), np.maximum(mean[:, 2:], kept.xyxy[:, 2:])], axis=1)
    return Detections.build(kept.frame, xyxy, kept.score, kept.cls, kept.track)


class MultiPass:
    """One detector run as configured: the whole frame, plus the mirrored frame and each tiling's
    tiles when switched on, merged. Errors of any pass propagate: a failed pass never reads as
    "nothing"."""

    def __init__(self, detector: ZoomableDetector, tilings: Sequence[TilingConfig], flip: bool,
                 nms_iou: float, confirm: tuple[float, float] = (0.0, 0.0), fuse: bool = False) -> None:
        self.detector, self.tilings, self.flip, self.nms_iou = detector, tuple(tilings), flip, nms_iou
        self.confirm = confirm  # (height, below) of `confirmed`, applied to photos; height 0 = off
        self.fuse = fuse  # `merge`'s weighted box fusion

    def detect(self, frames: Sequence[np.ndarray], first_index: int = 0, photo: bool = False) -> Detections:
        parts = [self.detector.detect(frames, first_index)]
        if self.flip:
            parts.append(flipped(self.detector, frames, first_index))
        skipped = []  # tilings that run no pass over these frames (too large): they confirm nothing
        for tiling in self.tilings:
            if tiling.enabled and (photo or tiling.video):
                if tiling_runs(self.detector, frames, tiling):
                    parts.append(tiled(self.detector, frames, first_index, tiling))
                else:
                    skipped.append(tiled(self.detector, frames, first_index, tiling))
        if photo:
            parts = confirmed(parts, *self.confirm, self.nms_iou)
        parts += skipped
        return parts[0] if len(parts) == 1 else merge(parts, self.nms_iou, self.fuse)
