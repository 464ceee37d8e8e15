"""Evaluation metrics of DESIGN.md section 5, pure numpy.

Boxes are xyxy float pixels; a pixel (column i, row j) belongs to a box when its centre
(i + 0.5, j + 0.5) lies in [x1, x2) x [y1, y2), the convention `anon_ray.mask` samples with. Along
an axis where a box is too thin to hold a pixel centre it takes the pixel its centre falls in, so
every box in the frame has an area of at least one pixel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

PROTECTED_COVERAGE = 0.9
MATCH_IOU = 0.5
# A labelled box counts as detected when a masked box overlaps it at least this much (IoU): a
# leak is then the mask's shape or margin (under-covered), not the detector (not detected).
DETECTED_IOU = 0.3
# Boxes flagged with these tags are scored apart, never counted as leaks: WIDER's `invalid`
# boxes, and faces a video's ground truth labels although they are hidden (`hidden`).
APART_TAGS = ("invalid", "hidden")
HEIGHT_EDGES = (16.0, 32.0, 96.0)
HEIGHT_BUCKETS = ("<16", "16-32", "32-96", ">=96")


def box_pixels(xyxy: np.ndarray, shape_hw: tuple[int, int]) -> np.ndarray:
    """int64 (n, 4) half-open pixel ranges [x0, x1) x [y0, y1) of boxes, clipped to the frame."""
    xyxy = np.asarray(xyxy, np.float64).reshape(-1, 4)
    lo = np.ceil(xyxy[:, :2] - 0.5)
    hi = np.ceil(xyxy[:, 2:] - 0.5)
    thin = hi <= lo
    lo = np.where(thin, np.floor((xyxy[:, :2] + xyxy[:, 2:]) / 2), lo)
    hi = np.where(thin, lo + 1, hi)
    h, w = shape_hw[:2]
    lim = np.array([w, h])
    return np.concatenate([np.clip(lo, 0, lim), np.clip(hi, 0, lim)], axis=1).astype(np.int64)


def coverage(gt_xyxy: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """float64 (n,): share of each box's in-frame pixels under `mask` (1.0 for a box wholly outside
    the frame: nothing of it is visible, so nothing can leak)."""
    px = box_pixels(gt_xyxy, mask.shape)
    integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.int64)
    integral[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    x0, y0, x1, y1 = px.T
    covered = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    area = (x1 - x0) * (y1 - y0)
    return np.where(area > 0, covered / np.maximum(area, 1), 1.0)


def height_bucket(heights: np.ndarray) -> np.ndarray:
    """Bucket labels (HEIGHT_BUCKETS) of box heights in px; an edge value opens the upper bucket."""
    index = np.searchsorted(np.asarray(HEIGHT_EDGES), np.asarray(heights, np.float64), side="right")
    return np.asarray(HEIGHT_BUCKETS, dtype=object)[index]


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, m) IoU of continuous xyxy boxes."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    wh = np.clip(np.minimum(a[:, None, 2:], b[None, :, 2:]) - np.maximum(a[:, None, :2], b[None, :, :2]), 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = _area(a)[:, None] + _area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _area(xyxy: np.ndarray) -> np.ndarray:
    return np.clip(xyxy[:, 2] - xyxy[:, 0], 0, None) * np.clip(xyxy[:, 3] - xyxy[:, 1], 0, None)


def match_count(gt_xyxy: np.ndarray, det_xyxy: np.ndarray, min_iou: float = MATCH_IOU) -> int:
    """One-to-one matches at IoU >= min_iou, taken greedily from the highest IoU down."""
    return _greedy_matches(iou_matrix(gt_xyxy, det_xyxy), min_iou)


def _greedy_matches(iou: np.ndarray, min_iou: float) -> int:
    """match_count on an IoU matrix already computed."""
    gi, di = np.nonzero(iou >= min_iou)
    used_g, used_d = set(), set()
    for k in np.argsort(-iou[gi, di], kind="stable"):
        g, d = int(gi[k]), int(di[k])
        if g not in used_g and d not in used_d:
            used_g.add(g)
            used_d.add(d)
    return len(used_g)


@dataclass(frozen=True, eq=False)
class ImageScore:
    """One image's per-box results and counts (arrays are per ground-truth box)."""

    coverage: np.ndarray  # float64 (n,)
    heights: np.ndarray  # float64 (n,), px
    detected: np.ndarray  # bool (n,): a masked box overlaps it (DETECTED_IOU)
    tags: dict[str, np.ndarray] = field(default_factory=dict)  # tag -> bool (n,)
    n_det: int = 0
    n_matched: int = 0  # ground-truth boxes matched one-to-one by a detection at IoU >= 0.5
    over_masked: int = 0  # mask pixels outside every ground-truth box
    area: int = 0  # image pixels

    @property
    def protected(self) -> np.ndarray:
        return self.coverage >= PROTECTED_COVERAGE

    @property
    def buckets(self) -> np.ndarray:
        return height_bucket(self.heights)


def score_image(
    gt_xyxy: np.ndarray,
    mask: np.ndarray,
    det_xyxy: np.ndarray,
    tags: dict[str, np.ndarray] | None = None,
) -> ImageScore:
    """Score one image: `mask` is the applied mask region (bool HxW, e.g. `mask.mask_region`);
    `det_xyxy` are the raw detector boxes (before dilation); `tags` flag hard subsets per GT box."""
    gt = np.asarray(gt_xyxy, np.float64).reshape(-1, 4)
    det = np.asarray(det_xyxy, np.float64).reshape(-1, 4)
    mask = np.asarray(mask, bool)
    inside_gt = np.zeros(mask.shape[:2], bool)
    for x0, y0, x1, y1 in box_pixels(gt, mask.shape):
        inside_gt[y0:y1, x0:x1] = True
    flags = {name: np.asarray(v, bool).reshape(len(gt)) for name, v in (tags or {}).items()}
    iou = iou_matrix(gt, det)
    return ImageScore(
        coverage=coverage(gt, mask),
        heights=gt[:, 3] - gt[:, 1],
        tags=flags,
        detected=(iou >= DETECTED_IOU).any(axis=1),
        n_det=len(det),
        n_matched=_greedy_matches(iou, MATCH_IOU),
        over_masked=int(np.count_nonzero(mask & ~inside_gt)),
        area=int(mask.shape[0] * mask.shape[1]),
    )


def _share(count: float, total: float) -> float:
    return float(count / total) if total else float("nan")


class Aggregate:
    """Accumulates ImageScores of one class (or one data set) into the summary of DESIGN.md §5.

    Shares with nothing to divide by (no boxes in a bucket, no detections) are NaN.
    """

    def __init__(self) -> None:
        self._scores: list[ImageScore] = []

    def add(self, score: ImageScore) -> None:
        self._scores.append(score)

    def summary(self) -> dict[str, Any]:
        scores = self._scores
        protected = self._column(lambda s: s.protected, bool)
        buckets = self._column(lambda s: s.buckets, object)
        heights = self._column(lambda s: s.heights, np.float64)
        detected = self._column(lambda s: s.detected, bool)
        tag_names = sorted({name for s in scores for name in s.tags})
        flags = {name: self._column(lambda s: s.tags.get(name, np.zeros(len(s.coverage), bool)), bool)
                 for name in tag_names}
        apart = np.zeros(len(protected), bool)
        for name in APART_TAGS:
            apart |= flags.get(name, np.zeros(len(protected), bool))
        counted = ~apart
        by_tag = {}
        for name in tag_names:
            flag = flags[name] & (counted if name not in APART_TAGS else True)
            share = _share(protected[flag].sum(), flag.sum())
            by_tag[name] = {"protected": share, "leak_rate": 1.0 - share, "n": int(flag.sum()),
                            "leak_by_height": _leak_by_height(protected[flag], buckets[flag])}
        protected, buckets, heights, detected = protected[counted], buckets[counted], heights[counted], detected[counted]
        n = len(protected)
        tall = heights >= HEIGHT_EDGES[0]
        leaked = ~protected
        by_height = {b: _share(protected[buckets == b].sum(), (buckets == b).sum()) for b in HEIGHT_BUCKETS}
        return {
            "leak_rate": 1.0 - _share(protected.sum(), n),
            "protected": _share(protected.sum(), n),
            "recall_iou50": _share(sum(s.n_matched for s in scores), n),
            "precision_iou50": _share(sum(s.n_matched for s in scores), sum(s.n_det for s in scores)),
            "over_masking": float(np.mean([s.over_masked / s.area for s in scores])) if scores else float("nan"),
            "n_boxes": n,
            "n_apart": int(apart.sum()),
            "n_images": len(scores),
            "by_height": by_height,
            "leak_by_height": _leak_by_height(protected, buckets),
            "by_height_n": {b: int((buckets == b).sum()) for b in HEIGHT_BUCKETS},
            "by_tag": by_tag,
            "leak_rate_ge16": 1.0 - _share(protected[tall].sum(), tall.sum()),
            # Every leak >= 16 px is one or the other; the two add up to leak_rate_ge16.
            "leak_ge16_not_detected": _share((leaked & ~detected)[tall].sum(), tall.sum()),
            "leak_ge16_under_covered": _share((leaked & detected)[tall].sum(), tall.sum()),
            "leak_causes_by_height": {
                b: {"not_detected": _share((leaked & ~detected)[buckets == b].sum(), (buckets == b).sum()),
                    "under_covered": _share((leaked & detected)[buckets == b].sum(), (buckets == b).sum())}
                for b in HEIGHT_BUCKETS},
        }

    def _column(self, get: Callable[[ImageScore], np.ndarray], dtype) -> np.ndarray:
        """One per-box array over every image added, in order."""
        return np.concatenate([get(s) for s in self._scores]) if self._scores else np.zeros(0, dtype)


def _leak_by_height(protected: np.ndarray, buckets: np.ndarray) -> dict[str, float]:
    """Leak rate per height bucket (NaN for an empty bucket): tiny faces are reported apart."""
    return {b: 1.0 - _share(protected[buckets == b].sum(), (buckets == b).sum()) for b in HEIGHT_BUCKETS}


def threshold_curve(
    items: Sequence[tuple[np.ndarray, Any]],
    thresholds: Sequence[float],
    build_mask: Callable[[Any, float], np.ndarray],
) -> list[dict[str, float]]:
    """Protection and over-masking per score threshold, from cached detections.

    Each item is (gt_xyxy, cache); `build_mask(cache, threshold)` returns that image's bool mask
    (e.g. keep detections scoring >= threshold, dilate, `mask.mask_region`). One dict per threshold:
    threshold, protected, leak_rate, over_masking, n_boxes.
    """
    rows = []
    for threshold in thresholds:
        agg = Aggregate()
        for gt, cache in items:
            agg.add(score_image(gt, build_mask(cache, threshold), np.zeros((0, 4))))
        s = agg.summary()
        rows.append({"threshold": float(threshold), "protected": s["protected"], "leak_rate": s["leak_rate"],
                     "over_masking": s["over_masking"], "n_boxes": s["n_boxes"]})
    return rows
