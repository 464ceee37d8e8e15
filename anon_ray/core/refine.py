"""Tracks -> the boxes to mask per frame, recall first.

A detector misses a face now and then (motion blur, a turned head, one bad frame); a track that
was seen just before and just after still marks where it is. So, per track:

- gaps of up to max_gap frames between two detections are filled by linear interpolation;
- each run of detections (detections linked by fillable gaps) is extended `pad` frames before its
  first and after its last detection, the box held in place and grown by PAD_GROWTH per frame of
  distance, because the object keeps moving while the detector has not (yet) seen it. Holding is
  safer than extrapolating a velocity fitted on a few noisy frames.

When the camera moves (the `path` of track/camera.py), each such box is drawn twice: held (or
interpolated) in the picture, for a face that moves with the camera, and in the scene, for one
that stays where it is while the camera pans past it. Recall first: both are masked.

A segment's tracker starts at its context, so near a cut it can link detections otherwise than a
run that began earlier did: a low-score box that an older track (its velocity fitted on frames the
segment never saw) took, and padded past the cut, stays untracked in the segment. So each
detection in the `pad` frames before a segment's first owned frame is padded forward as if its
track ended there: the segment masks at least the pads the earlier run drew (invariant I2), at
the cost of a few extra boxes in the `pad` frames after a cut.

Otherwise an untracked detection (track -1) is masked as it is, and `lone_pad` (a plate:
`plate_lone_pad`) frames before and after its own as well, held and grown like a run's pads (and
moved with the picture). Synthetic boxes (interpolated or padded)
carry their track's id and class and score 0, which tells them apart from detections. Margin
dilation is the masker's job, not done here.
"""

from __future__ import annotations

import numpy as np

from anon_ray.config import TrackConfig
from anon_ray.types import PLATE, CameraPath, Detections

PAD_GROWTH = 0.05  # relative growth of w and h per padded frame (50% at the default pad of 10)


def mask_boxes(tracked: Detections, cfg: TrackConfig, frames: range, frame_size: tuple[int, int],
               path: CameraPath | None = None, owned_from: int = 0) -> Detections:
    """Every box to mask on frames in `frames`, clipped to the frame (w, h), sorted by frame.

    Each detection is kept (clipped); synthetic boxes that fall outside the frame are dropped.
    `path` must cover `frames` (and the detections' frames) when given. `owned_from`: the
    segment's first owned frame; the detections in the `pad` frames before it are padded forward.
    """
    t = tracked.select(tracked.track >= 0)
    t = t.select(np.lexsort((t.frame, t.track)))
    same = t.track[1:] == t.track[:-1]
    missing = t.frame[1:] - t.frame[:-1] - 1
    linked = same & (missing <= cfg.max_gap)
    breaks = np.flatnonzero(~linked)
    run_start = np.r_[0, breaks + 1] if len(t) else breaks
    run_end = np.r_[breaks, len(t) - 1] if len(t) else breaks
    pairs = np.flatnonzero(linked & (missing > 0))
    lead = tracked.select(tracked.track < 0)
    before = np.flatnonzero((lead.frame >= owned_from - cfg.pad) & (lead.frame < owned_from))
    lone = [(np.flatnonzero(lead.cls != PLATE), cfg.lone_pad), (np.flatnonzero(lead.cls == PLATE), cfg.plate_lone_pad)]
    parts = [_interpolate(t, pairs, missing), _pad(t, run_start, -1, cfg.pad), _pad(t, run_end, +1, cfg.pad),
             _pad(lead, before, +1, cfg.pad)]
    parts += [_pad(lead, rows, d, n) for rows, n in lone for d in (-1, +1)]
    if path is not None and np.any(path.xy):
        parts += [_interpolate(t, pairs, missing, path), _pad(t, run_start, -1, cfg.pad, path),
                  _pad(t, run_end, +1, cfg.pad, path), _pad(lead, before, +1, cfg.pad, path)]
        parts += [_pad(lead, rows, d, n, path) for rows, n in lone for d in (-1, +1)]
    synthetic = Detections.concat(parts)
    out = Detections.concat([tracked, synthetic])
    w, h = frame_size
    xyxy = np.clip(out.xyxy, 0, np.array([w, h, w, h], np.float32))
    area = (xyxy[:, 2] - xyxy[:, 0]) * (xyxy[:, 3] - xyxy[:, 1])
    is_detection = np.arange(len(out)) < len(tracked)
    keep = (out.frame >= frames.start) & (out.frame < frames.stop) & (is_detection | (area > 0))
    out = Detections(out.frame, xyxy, out.score, out.cls, out.track).select(keep)
    return out.select(np.argsort(out.frame, kind="stable"))


def _interpolate(t: Detections, pairs: np.ndarray, missing: np.ndarray, path: CameraPath | None = None) -> Detections:
    """Boxes on the missing frames between rows i and i+1 for each i in pairs; with `path`,
    interpolated in scene coordinates and put back into each frame's picture, only where that
    differs from the plain interpolation."""
    reps = missing[pairs]
    src = np.repeat(pairs, reps)
    step = np.arange(len(src)) - np.repeat(np.cumsum(reps) - reps, reps) + 1
    alpha = (step / np.repeat(reps + 1, reps))[:, None]
    frame = t.frame[src] + step
    a, b = t.xyxy[src].astype(np.float64), t.xyxy[src + 1].astype(np.float64)
    moved = np.ones(len(src), bool)
    if path is not None:
        shift_a, shift_b = _shift(path, t.frame[src], frame), _shift(path, t.frame[src + 1], frame)
        a, b = a + shift_a, b + shift_b
        moved = np.any((shift_a != 0) | (shift_b != 0), axis=1)
    return _synthetic(t, src, frame, a + alpha * (b - a)).select(moved)


def _pad(t: Detections, rows: np.ndarray, direction: int, pad: int, path: CameraPath | None = None) -> Detections:
    """`pad` boxes before (direction -1) or after (+1) each of `rows`, held and grown; with
    `path`, held in the scene (moved with the picture) instead, only where the picture moved."""
    src = np.repeat(rows, pad)
    dist = np.tile(np.arange(1, pad + 1), len(rows))
    frame = t.frame[src] + direction * dist
    box = t.xyxy[src].astype(np.float64)
    moved = np.ones(len(src), bool)
    if path is not None:
        shift = _shift(path, t.frame[src], frame)
        box, moved = box + shift, np.any(shift != 0, axis=1)
    centre, half = (box[:, :2] + box[:, 2:]) / 2, (box[:, 2:] - box[:, :2]) / 2
    half = half * (1 + PAD_GROWTH * dist)[:, None]
    return _synthetic(t, src, frame, np.concatenate([centre - half, centre + half], axis=1)).select(moved)


def _shift(path: CameraPath, start: np.ndarray, frame: np.ndarray) -> np.ndarray:
    """(n, 4) offsets that carry a box still in the scene from frame `start` to `frame`."""
    return np.tile(path.at(frame) - path.at(start), 2)


def _synthetic(t: Detections, src: np.ndarray, frame: np.ndarray, xyxy: np.ndarray) -> Detections:
    return Detections.build(frame, xyxy, np.zeros(len(src)), t.cls[src], t.track[src])
