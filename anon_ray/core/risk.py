"""How much an asset's masks deserve a reviewer's look, from its masked boxes alone.

Signals (counts), each where a model alone is most likely to have let a face or plate through:
- `gap_frames`: frames inside a track's span (first to last detection) where it has no box at
  all: a gap longer than the tracker fills, so the object was unmasked there;
- `appeared` / `vanished`: tracks whose first (last) detection is neither on the asset's first
  (last) frame nor near the frame's border: the object was in the picture before (after) the
  detector saw it, covered only by the track's padding;
- `low_score`: detections under `low_score` (kept, recall first, but the model was unsure: a
  false mask, or a true face seen badly whose neighbours may be missed);
- `small`: detections shorter than `small_px`, near the size where detection gives out.
- `faceless`: sampled frames where a person detector saw someone tall enough to show a face with
  no face masked over the top of them (detect/people.py): a face turned away, bowed or hidden,
  which the face model does not find and a reviewer should confirm is not visible.
Synthetic boxes (interpolated or padded: score 0, core/refine.py) never count as detections.

The score weighs unmasked frames most; the frames returned are where the signals are, for a
contact sheet of the masked output.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from anon_ray.config import ReviewConfig
from anon_ray.types import Detections

# A faceless frame stands for the ~people_every frames around it.
WEIGHTS = {"gap_frames": 5.0, "appeared": 2.0, "vanished": 2.0, "low_score": 0.2, "small": 0.2, "faceless": 2.0}


@dataclass(frozen=True)
class Risk:
    score: float
    reasons: dict  # signal -> count (only signals that occurred)
    frames: tuple[int, ...]  # the frames to look at, ascending


def _near_border(xyxy: np.ndarray, frame_wh: tuple[int, int], edge_px: float) -> np.ndarray:
    w, h = frame_wh
    return (xyxy[:, 0] <= edge_px) | (xyxy[:, 1] <= edge_px) | (xyxy[:, 2] >= w - edge_px) | (xyxy[:, 3] >= h - edge_px)


def _tracks(dets: Detections, n_frames: int, frame_wh: tuple[int, int], cfg: ReviewConfig
            ) -> tuple[dict[str, int], list[int]]:
    counts = {"gap_frames": 0, "appeared": 0, "vanished": 0}
    where: list[int] = []
    edge = cfg.edge_share * min(frame_wh)
    for track in np.unique(dets.track[dets.track >= 0]):
        mine = dets.select(dets.track == track)
        found = mine.select(mine.score > 0)
        if not len(found):
            continue
        order = np.argsort(found.frame)
        first, last = int(found.frame[order[0]]), int(found.frame[order[-1]])
        boxed = np.unique(mine.frame[(mine.frame >= first) & (mine.frame <= last)])
        missing = (last - first + 1) - len(boxed)
        if missing:
            counts["gap_frames"] += missing
            holes = np.setdiff1d(np.arange(first, last + 1), boxed)
            where.append(int(holes[len(holes) // 2]))
        ends = found.xyxy[[order[0], order[-1]]]
        inside = ~_near_border(ends, frame_wh, edge)
        if first > 0 and inside[0]:
            counts["appeared"] += 1
            where.append(first)
        if last < n_frames - 1 and inside[1]:
            counts["vanished"] += 1
            where.append(last)
    return counts, where


def assess(dets: Detections, n_frames: int, frame_wh: tuple[int, int], cfg: ReviewConfig,
           faceless: tuple[int, ...] = ()) -> Risk:
    """Risk of one asset from the boxes it was masked with (stored pixels of a `frame_wh` frame) and
    its frames with people but no face."""
    counts, where = _tracks(dets, n_frames, frame_wh, cfg) if frame_wh[0] and frame_wh[1] else ({}, [])
    counts["faceless"] = len(faceless)
    where += list(faceless)
    found = dets.select(dets.score > 0)
    low = found.score < cfg.low_score
    small = (found.xyxy[:, 3] - found.xyxy[:, 1]) < cfg.small_px
    counts["low_score"], counts["small"] = int(np.count_nonzero(low)), int(np.count_nonzero(small))
    where += [int(f) for f in np.unique(found.frame[low | small])]
    counts = {k: v for k, v in counts.items() if v}
    score = float(sum(WEIGHTS[k] * v for k, v in counts.items()))
    # The signals' frames first (evenly thinned when there are many), then the asset's own span.
    picked = np.unique(np.asarray(where, np.int64))
    if len(picked) > cfg.sheet_frames:
        picked = picked[np.linspace(0, len(picked) - 1, cfg.sheet_frames).round().astype(int)]
    spare = cfg.sheet_frames - len(picked)
    if spare > 0 and n_frames > 0:
        picked = np.union1d(picked, np.linspace(0, n_frames - 1, min(spare, n_frames)).round().astype(np.int64))
    return Risk(round(score, 3), counts, tuple(int(f) for f in picked[: cfg.sheet_frames]))
