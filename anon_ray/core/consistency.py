"""Do two runs mask the same things? Checks on per-frame mask boxes, no pixels needed.

Inputs are the boxes an asset's output was masked with (`AssetResult.tracks`: owned frames of
every segment, global track ids, -1 for untracked rows), before the masker's margin dilation.
They back invariant I2 (output independent of where a video is cut) and the flicker figure of
DESIGN.md §5.
"""

from __future__ import annotations

import numpy as np

from anon_ray.track.matching import assign, iou_matrix
from anon_ray.types import Detections

COVERED = 0.9  # share of a box's area under masks that counts as protected (DESIGN.md §5)


def compare_masks(reference: Detections, other: Detections, iou: float = 0.9) -> dict:
    """Per-frame one-to-one matching of same-class boxes, and coverage of each side by the other.

    - matched: pairs with IoU >= `iou` (gated optimal assignment per frame and class);
      matched_share = matched / reference boxes, matched_share_other = matched / other boxes
      (1.0 when there are no boxes at all);
    - unmasked: reference boxes less than COVERED of whose area lies under the union of other's
      boxes on that frame, whatever their class (a mask hides pixels, not a class) - an object
      masked in the reference run that the other run leaves (mostly) visible;
      unmasked_other is the same the other way round.
    """
    matched = 0
    unmasked = unmasked_other = 0
    ref_frames, oth_frames = _by_frame(reference), _by_frame(other)
    for f in ref_frames.keys() | oth_frames.keys():
        r, o = ref_frames.get(f, _EMPTY), oth_frames.get(f, _EMPTY)
        for cls in np.union1d(r.cls, o.cls):
            rc, oc = r.xyxy[r.cls == cls], o.xyxy[o.cls == cls]
            matched += len(assign(iou_matrix(rc, oc), iou)[0])
        unmasked += int(np.count_nonzero(_coverage(r.xyxy, o.xyxy) < COVERED))
        unmasked_other += int(np.count_nonzero(_coverage(o.xyxy, r.xyxy) < COVERED))
    return {
        "reference": len(reference),
        "other": len(other),
        "matched": matched,
        "matched_share": matched / len(reference) if len(reference) else 1.0,
        "matched_share_other": matched / len(other) if len(other) else 1.0,
        "unmasked": unmasked,
        "unmasked_other": unmasked_other,
    }


def flicker(masks: Detections) -> int:
    """(track, frame) pairs where a track is masked on frames f-1 and f+1 but not on f.

    Only tracks (track >= 0) count: untracked detections have no identity to follow from frame to
    frame, and matching them spatially would re-implement a tracker here. Refinement fills every
    gap up to track.max_gap >= 1, so a flicker means a cut or a stitch lost a box.
    """
    t = masks.select(masks.track >= 0)
    if not len(t):
        return 0
    keys = np.unique(np.stack([t.track, t.frame], axis=1), axis=0)  # sorted by track, then frame
    same = keys[1:, 0] == keys[:-1, 0]
    return int(np.count_nonzero(same & (np.diff(keys[:, 1]) == 2)))


_EMPTY = Detections.empty()


def _by_frame(dets: Detections) -> dict[int, Detections]:
    order = np.argsort(dets.frame, kind="stable")
    frames = dets.frame[order]
    cuts = np.flatnonzero(np.diff(frames)) + 1
    return {int(frames[rows[0]]): dets.select(order[rows]) for rows in np.split(np.arange(len(frames)), cuts)
            if len(rows)}


def _coverage(boxes: np.ndarray, cover: np.ndarray) -> np.ndarray:
    """Per box, the share of its area under the union of `cover` (exact, by coordinate grid)."""
    out = np.zeros(len(boxes))
    for i, (x1, y1, x2, y2) in enumerate(np.asarray(boxes, np.float64)):
        area = (x2 - x1) * (y2 - y1)
        if area <= 0:
            out[i] = 1.0  # nothing to hide
            continue
        c = np.clip(np.asarray(cover, np.float64), [x1, y1, x1, y1], [x2, y2, x2, y2])
        c = c[(c[:, 2] > c[:, 0]) & (c[:, 3] > c[:, 1])]
        if not len(c):
            continue
        xs, ys = np.unique(c[:, [0, 2]]), np.unique(c[:, [1, 3]])
        cx, cy = (xs[:-1] + xs[1:]) / 2, (ys[:-1] + ys[1:]) / 2
        inside = ((c[:, None, None, 0] <= cx[None, :, None]) & (cx[None, :, None] < c[:, None, None, 2])
                  & (c[:, None, None, 1] <= cy[None, None, :]) & (cy[None, None, :] < c[:, None, None, 3])).any(0)
        out[i] = float((np.diff(xs)[:, None] * np.diff(ys)[None, :])[inside].sum() / area)
    return out
