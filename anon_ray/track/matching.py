"""IoU between boxes and gated one-to-one assignment."""

from __future__ import annotations

import numpy as np

_INFEASIBLE = 1e6


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a (n, 4) with every box in b (m, 4), xyxy -> (n, m)."""
    a = np.asarray(a, np.float64)[:, None, :]
    b = np.asarray(b, np.float64)[None, :, :]
    return _iou(a, b)


def iou_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of a[i] with b[i], xyxy (n, 4) each -> (n,)."""
    return _iou(np.asarray(a, np.float64), np.asarray(b, np.float64))


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    wh = np.clip(np.minimum(a[..., 2:], b[..., 2:]) - np.maximum(a[..., :2], b[..., :2]), 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area = lambda x: np.clip(x[..., 2] - x[..., 0], 0, None) * np.clip(x[..., 3] - x[..., 1], 0, None)  # noqa: E731
    union = area(a) + area(b) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def assign(iou: np.ndarray, min_iou: float) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the matched pairs, each pair with IoU >= min_iou.

    Minimises sum(1 - IoU) over matches plus (1 - min_iou) / 2 for every row and column left
    unmatched (the lapjv `cost_limit` rule ByteTrack uses): a strong match is never traded for
    two weak ones, which is what keeps IDs from swapping when objects pass close by.
    """
    n, m = iou.shape
    if n == 0 or m == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    unmatched = (1.0 - min_iou) / 2
    cost = np.full((n + m, m + n), _INFEASIBLE)
    cost[:n, :m] = np.where(iou >= min_iou, 1.0 - iou, _INFEASIBLE)
    np.fill_diagonal(cost[:n, m:], unmatched)
    np.fill_diagonal(cost[n:, :m], unmatched)
    cost[n:, m:] = 0.0
    # Imported here: scipy.optimize costs ~0.6 s CPU to import, and the job's driver and its planning
    # tasks import this module (through core/stitch.py) without ever matching a box.
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(cost)
    real = (rows < n) & (cols < m)
    rows, cols = rows[real], cols[real]
    keep = iou[rows, cols] >= min_iou
    return rows[keep].astype(np.int64), cols[keep].astype(np.int64)
