"""Greedy non-maximum suppression over numpy arrays, shared by the face and plate decoders."""

from __future__ import annotations

import numpy as np


def nms(xyxy: np.ndarray, score: np.ndarray, iou: float, group: np.ndarray | None = None) -> np.ndarray:
    """Indices of the boxes kept, best score first.

    A box is dropped when it overlaps a better kept box of the same `group` (e.g. frame index) by
    IoU >= `iou`. Groups are separated by shifting each group's boxes into its own region, so one
    pass handles a whole batch and the loop runs once per kept box, not once per candidate.
    """
    if len(xyxy) == 0:
        return np.zeros(0, np.int64)
    boxes = xyxy.astype(np.float64)
    if group is not None:
        span = float(boxes.max() - min(boxes.min(), 0.0)) + 1.0
        boxes = boxes + (np.asarray(group, np.float64) * span)[:, None]
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    # Stable sort so equal scores keep input order: results do not depend on the sort algorithm.
    order = np.argsort(-score, kind="stable")
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        w = np.minimum(boxes[best, 2], boxes[rest, 2]) - np.maximum(boxes[best, 0], boxes[rest, 0])
        h = np.minimum(boxes[best, 3], boxes[rest, 3]) - np.maximum(boxes[best, 1], boxes[rest, 1])
        inter = np.clip(w, 0, None) * np.clip(h, 0, None)
        union = area[best] + area[rest] - inter
        overlap = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[overlap < iou]
    return np.asarray(keep, np.int64)
