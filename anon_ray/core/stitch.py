"""Segment-local tracks -> one asset's global track ids.

Neighbouring segments decode and track the same context frames (segment k's context after its end
is segment k+1's owned frames and the other way round), so one object seen across a cut has a
track on both sides with boxes on the same frames. Two tracks of the same class whose boxes agree
there (mean IoU >= iou over >= min_frames common frames) are the same object; joining every such
pair with union-find over all segments of the asset also joins a track that one side split in two.
"""

from __future__ import annotations

import numpy as np

from anon_ray.track.matching import iou_pairs
from anon_ray.types import FACE, PLATE, Detections, SegmentPlan


def global_ids(
    results: list[tuple[SegmentPlan, Detections]], iou: float = 0.5, min_frames: int = 3
) -> list[np.ndarray]:
    """Per result, the global track id of each of its rows (-1 stays -1).

    Each result is a segment's plan and the boxes it masked over its whole context range (the
    `mask_boxes` output, SegmentResult.tracks) with segment-local track ids; any order.

    Ids are dense from 0, ordered by the first owned frame each object is masked on; objects
    seen only in context frames (never written) come last, so the ids in `asset_tracks` are dense.
    """
    local = [np.unique(d.track[d.track >= 0]) for _, d in results]
    offset = np.cumsum([0] + [len(u) for u in local])
    # Union-find node of each row; meaningless on untracked rows (track -1), which are skipped.
    node = [offset[k] + np.searchsorted(local[k], d.track) for k, (_, d) in enumerate(results)]
    parent = np.arange(offset[-1])
    for i, j in _overlapping(results):
        (pi, di), (pj, dj) = results[i], results[j]
        lo, hi = max(pi.ctx_start, pj.ctx_start), min(pi.ctx_end, pj.ctx_end)
        ti, tj = _same_objects(di, dj, lo, hi, iou, min_frames)
        for a, b in zip(offset[i] + np.searchsorted(local[i], ti), offset[j] + np.searchsorted(local[j], tj)):
            parent[_root(parent, a)] = _root(parent, b)
    root = np.array([_root(parent, a) for a in range(len(parent))], np.int64)
    dense = _dense_by_first_appearance(results, node, root)
    out = []
    for (_, d), n in zip(results, node):
        ids = np.full(len(d), -1, np.int64)
        ids[d.track >= 0] = dense[root[n[d.track >= 0]]]
        out.append(ids)
    return out


def _dense_by_first_appearance(
    results: list[tuple[SegmentPlan, Detections]], node: list[np.ndarray], root: np.ndarray
) -> np.ndarray:
    """Dense id per union-find root, by (first owned frame, first frame seen, root)."""
    never = np.iinfo(np.int64).max
    first_owned, first_seen = np.full(len(root), never), np.full(len(root), never)
    for (plan, d), n in zip(results, node):
        rows = d.track >= 0
        owned = rows & (d.frame >= plan.start) & (d.frame < plan.end)
        np.minimum.at(first_seen, root[n[rows]], d.frame[rows])
        np.minimum.at(first_owned, root[n[owned]], d.frame[owned])
    roots = np.unique(root)
    dense = np.empty(len(root), np.int64)
    dense[roots[np.lexsort((roots, first_seen[roots], first_owned[roots]))]] = np.arange(len(roots))
    return dense


def asset_tracks(results: list[tuple[SegmentPlan, Detections]], iou: float = 0.5, min_frames: int = 3) -> Detections:
    """The rows on each segment's owned frames with global ids: what was masked in the output."""
    parts = []
    for (plan, d), ids in zip(results, global_ids(results, iou, min_frames)):
        owned = (d.frame >= plan.start) & (d.frame < plan.end)
        parts.append(d.with_track(ids).select(owned))
    return Detections.concat(parts)


def _overlapping(results: list[tuple[SegmentPlan, Detections]]) -> list[tuple[int, int]]:
    """Pairs of segments whose context ranges share frames."""
    return [
        (i, j)
        for i, (pi, _) in enumerate(results)
        for j, (pj, _) in enumerate(results)
        if i < j and max(pi.ctx_start, pj.ctx_start) < min(pi.ctx_end, pj.ctx_end)
    ]


def _same_objects(
    a: Detections, b: Detections, lo: int, hi: int, iou: float, min_frames: int
) -> tuple[np.ndarray, np.ndarray]:
    """Track id pairs (of a, of b) with mean IoU >= iou over >= min_frames frames in [lo, hi)."""
    a = a.select((a.track >= 0) & (a.frame >= lo) & (a.frame < hi))
    b = b.select((b.track >= 0) & (b.frame >= lo) & (b.frame < hi))
    b = b.select(np.argsort(b.frame, kind="stable"))
    first, last = np.searchsorted(b.frame, a.frame, "left"), np.searchsorted(b.frame, a.frame, "right")
    n = last - first
    ia = np.repeat(np.arange(len(a)), n)
    ib = np.repeat(first, n) + np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
    same_cls = a.cls[ia] == b.cls[ib]
    ia, ib = ia[same_cls], ib[same_cls]
    pairs, inverse = np.unique(np.stack([a.track[ia], b.track[ib]], axis=1), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    frames = np.bincount(inverse, minlength=len(pairs))
    total = np.bincount(inverse, weights=iou_pairs(a.xyxy[ia], b.xyxy[ib]), minlength=len(pairs))
    keep = (frames >= min_frames) & (total >= iou * frames)
    return pairs[keep, 0], pairs[keep, 1]


def _root(parent: np.ndarray, a: int) -> int:
    while parent[a] != a:
        parent[a] = parent[parent[a]]
        a = parent[a]
    return int(a)


def count_objects(dets: Detections) -> tuple[int, int]:
    """Objects masked per class: one per track, plus each detection that joined no track (its
    pads, synthetic boxes of score 0, not counted again)."""

    def count(cls: int) -> int:
        sel = dets.cls == cls
        tracked = dets.track[sel]
        return int(len(np.unique(tracked[tracked >= 0])) + np.count_nonzero((tracked < 0) & (dets.score[sel] > 0)))

    return count(FACE), count(PLATE)
