"""Display rotation of video frames, and boxes between stored and displayed pixels.

`rotation` everywhere is the clockwise angle (0, 90, 180, 270) that turns the stored frame upright,
i.e. the legacy `rotate` tag and what `ffmpeg` autorotation applies: a phone video shot in
portrait is stored landscape with rotation 90. Box coordinates are continuous pixel edges
(a box covering pixel column 0 spans x 0..1), so the mappings are exact and invertible.
"""

from __future__ import annotations

import numpy as np

ROTATIONS = (0, 90, 180, 270)


def normalize(degrees: float) -> int:
    """The nearest of ROTATIONS (display matrices may carry rounding noise or odd angles)."""
    return int(round(degrees / 90.0)) % 4 * 90


def _check(rotation: int) -> int:
    if rotation not in ROTATIONS:
        raise ValueError(f"rotation must be one of {ROTATIONS}, got {rotation}")
    return rotation


def to_display(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """Stored frame (h, w, ...) -> upright frame; a contiguous copy unless rotation is 0."""
    if _check(rotation) == 0:
        return rgb
    return np.ascontiguousarray(np.rot90(rgb, k=-(rotation // 90)))


def _corners_to_boxes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.stack([np.minimum(x[:, 0], x[:, 1]), np.minimum(y[:, 0], y[:, 1]),
                     np.maximum(x[:, 0], x[:, 1]), np.maximum(y[:, 0], y[:, 1])], axis=1).astype(np.float32)


def boxes_to_display(xyxy: np.ndarray, rotation: int, stored_w: int, stored_h: int) -> np.ndarray:
    """Boxes in stored pixels (n, 4) -> the same regions in displayed pixels."""
    xyxy = np.asarray(xyxy, np.float32).reshape(-1, 4)
    x, y = xyxy[:, [0, 2]], xyxy[:, [1, 3]]
    rotation = _check(rotation)
    if rotation == 90:
        return _corners_to_boxes(stored_h - y, x)
    if rotation == 180:
        return _corners_to_boxes(stored_w - x, stored_h - y)
    if rotation == 270:
        return _corners_to_boxes(y, stored_w - x)
    return xyxy.copy()


def boxes_to_stored(xyxy: np.ndarray, rotation: int, stored_w: int, stored_h: int) -> np.ndarray:
    """Boxes found on the displayed frame (n, 4) -> stored pixels, the frame that gets masked."""
    xyxy = np.asarray(xyxy, np.float32).reshape(-1, 4)
    x, y = xyxy[:, [0, 2]], xyxy[:, [1, 3]]
    rotation = _check(rotation)
    if rotation == 90:
        return _corners_to_boxes(y, stored_h - x)
    if rotation == 180:
        return _corners_to_boxes(stored_w - x, stored_h - y)
    if rotation == 270:
        return _corners_to_boxes(stored_w - y, x)
    return xyxy.copy()
