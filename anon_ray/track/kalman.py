"""Constant-velocity Kalman filter on boxes, vectorized over tracks.

State per track: (cx, cy, w, h, vcx, vcy, vw, vh). Width and height are filtered directly rather
than aspect ratio and height: faces and plates change aspect with head turns and perspective,
and noise scaled by w and h separately keeps both axes well conditioned. Noise is proportional to
the box size so small (distant) and large (close) objects are tracked alike.
"""

from __future__ import annotations

import numpy as np

POS_STD = 1.0 / 20  # position/size noise, a share of the box size
VEL_STD = 1.0 / 160  # velocity noise, a share of the box size per frame

_F = np.eye(8)
_F[:4, 4:] = np.eye(4)


def xyxy_to_cxcywh(xyxy: np.ndarray) -> np.ndarray:
    xyxy = np.asarray(xyxy, np.float64)
    wh = xyxy[:, 2:] - xyxy[:, :2]
    return np.concatenate([xyxy[:, :2] + wh / 2, wh], axis=1)


def cxcywh_to_xyxy(z: np.ndarray) -> np.ndarray:
    half = np.maximum(z[:, 2:4], 0.0) / 2
    return np.concatenate([z[:, :2] - half, z[:, :2] + half], axis=1)


def _diag(std: np.ndarray) -> np.ndarray:
    """(m, k) standard deviations -> (m, k, k) diagonal covariances."""
    return np.eye(std.shape[1]) * (std**2)[:, None, :]


def _size(mean: np.ndarray) -> np.ndarray:
    return np.abs(mean[:, [2, 3, 2, 3]])


def initiate(xyxy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """New tracks at rest; velocity is uncertain until the second detection."""
    z = xyxy_to_cxcywh(xyxy)
    mean = np.concatenate([z, np.zeros_like(z)], axis=1)
    wh = _size(mean)
    return mean, _diag(np.concatenate([2 * POS_STD * wh, 10 * VEL_STD * wh], axis=1))


def predict(mean: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One frame ahead."""
    wh = _size(mean)
    q = _diag(np.concatenate([POS_STD * wh, VEL_STD * wh], axis=1))
    return mean @ _F.T, _F @ cov @ _F.T + q


def update(mean: np.ndarray, cov: np.ndarray, xyxy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Corrects each track (row) with its matched measurement (same row of xyxy)."""
    z = xyxy_to_cxcywh(xyxy)
    s = cov[:, :4, :4] + _diag(POS_STD * _size(mean))
    ph = cov[:, :, :4]  # P H^T, (m, 8, 4)
    gain = np.linalg.solve(s, ph.transpose(0, 2, 1)).transpose(0, 2, 1)  # P H^T S^-1 (S symmetric)
    mean = mean + (gain @ (z - mean[:, :4])[:, :, None])[:, :, 0]
    return mean, cov - gain @ ph.transpose(0, 2, 1)
