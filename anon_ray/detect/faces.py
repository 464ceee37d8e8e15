"""CenterFace face detector: batched ONNX inference with a vectorized heatmap decoder."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import cv2
import numpy as np

from anon_ray.arrays import scratch
from anon_ray.config import FaceConfig, SessionConfig
from anon_ray.detect.nms import nms
from anon_ray.detect.session import make_session, run_checked
from anon_ray.types import FACE, Detections

STRIDE = 4  # heatmap cell size in input pixels
ALIGN = 32  # the network downsamples 5 times, so input sides must be multiples of 32
OUTPUTS = ["537", "538", "539"]  # heatmap, log box size, centre offset (landmarks are not used)


def check_frame(frame: np.ndarray) -> None:
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 HxWx3 frame, got {frame.dtype} {frame.shape}")


def same_size_batches(frames: Sequence[np.ndarray], size: int) -> Iterator[tuple[int, Sequence[np.ndarray]]]:
    """(start, frames) runs of at most `size` consecutive frames that share a shape, so they stack."""
    start = 0
    while start < len(frames):
        stop = start + 1
        while stop < len(frames) and stop - start < size and frames[stop].shape == frames[start].shape:
            stop += 1
        yield start, frames[start:stop]
        start = stop


def zoom_for(height: int, width: int, max_side: int, min_side: int = 0) -> float:
    """Scale of a frame inside the network input: down so the long side fits `max_side`, up so it
    reaches `min_side` (CenterFace misses faces under ~10 input pixels, so small photos gain from
    being enlarged; 0 = never upscale)."""
    long = max(height, width)
    return min(max_side / long, max(1.0, min_side / long))


def zoomed_size(height: int, width: int, zoom: float) -> tuple[int, int]:
    return max(1, round(height * zoom)), max(1, round(width * zoom))


def _area_into(frame: np.ndarray, planes: np.ndarray) -> np.ndarray:
    """Shrink a uint8 frame by INTER_AREA into float32 planes (3, h, w) at a scale that is no whole
    fraction: the values OpenCV's uint8 resize gives (its float sums, rounded half to even), from
    its float resize, the uint8 one being slow there (a 720p frame to the cascade's 736 px: 7.4
    against 5.3 ms CPU here, 2-core AMD EPYC). INTER_AREA, not bilinear, for the cascade: bilinear
    leaked 0.0074 of face-frames >= 16 px on videos_gt against 0.0069 (faces only, 56 against 52 a
    minute; 2026-12-07). Whole fractions take OpenCV's fast uint8 path, whose rounding differs."""
    h, w = planes.shape[1:]
    src = scratch("faces.area_in", frame.shape, np.float32)
    np.copyto(src, frame)
    small = cv2.resize(src, (w, h), dst=scratch("faces.area_out", (h, w, 3), np.float32),
                       interpolation=cv2.INTER_AREA)
    for c in range(3):
        np.rint(small[..., c], out=planes[c])
    return planes


def fill_planes(frame: np.ndarray, planes: np.ndarray) -> None:
    """Write a uint8 frame, resized to the size of `planes` (3, h, w), into them channel by channel
    (a view with its channels reversed takes it as BGR)."""
    height, width = frame.shape[:2]
    inner_h, inner_w = planes.shape[1:]
    if inner_h < height and (height % inner_h or width % inner_w):
        _area_into(frame, planes)
        return
    if (inner_h, inner_w) != (height, width):
        # INTER_AREA averages the pixels it drops; bilinear aliases small faces when downscaling a lot.
        shrink = inner_h < height
        frame = cv2.resize(frame, (inner_w, inner_h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    # Plane by plane: a strided transpose-and-cast costs three times as much per frame.
    for c, plane in enumerate(cv2.split(frame)):
        planes[c] = plane


def cached_blob(blobs: dict[tuple[int, int], np.ndarray], n: int, inner_h: int, inner_w: int) -> np.ndarray:
    """A network input for `n` frames resized to inner_h x inner_w, padded (not stretched) to the
    alignment so x and y keep the scale of the resize alone, from a detector's cache `blobs`.

    Kept between batches: a video's batches all share one shape, and a fresh blob (tens of MB,
    served by mmap: see heap.py) would be zeroed page by page on every batch. The padding stays
    zero because each key has its own inner size; a tiled pass adds a shape or two.
    """
    key = (inner_h, inner_w)
    blob = blobs.get(key)
    if blob is None or len(blob) < n:
        if len(blobs) >= 4:  # photos of many sizes: keep memory bounded
            blobs.clear()
        shape = (n, 3, -(-inner_h // ALIGN) * ALIGN, -(-inner_w // ALIGN) * ALIGN)
        blob = blobs[key] = np.zeros(shape, np.float32)
    return blob[:n]


class FaceDetector:
    def __init__(self, model_path: str, cfg: FaceConfig, session_cfg: SessionConfig) -> None:
        self.cfg = cfg
        self.session = make_session(model_path, session_cfg)
        self.input = self.session.get_inputs()[0].name
        self._blobs: dict[tuple[int, int], np.ndarray] = {}

    def zoom(self, height: int, width: int) -> float:
        """Scale of the whole-frame pass for a frame of this size."""
        return zoom_for(height, width, self.cfg.max_side, self.cfg.min_side)

    def detect(self, frames: Sequence[np.ndarray], first_index: int = 0, zoom: float | None = None) -> Detections:
        """Faces in frame pixels; `zoom` overrides the scale the frames are resized by (tiles)."""
        parts = [self.detect_batch(batch, first_index + start, zoom)
                 for start, batch in same_size_batches(frames, max(1, self.cfg.batch))]
        return Detections.concat(parts)

    def detect_batch(self, frames: Sequence[np.ndarray], first_index: int, zoom: float | None = None) -> Detections:
        for frame in frames:
            check_frame(frame)
        height, width = frames[0].shape[:2]
        inner_h, inner_w = zoomed_size(height, width, self.zoom(height, width) if zoom is None else zoom)
        blob = cached_blob(self._blobs, len(frames), inner_h, inner_w)
        for k, frame in enumerate(frames):
            fill_planes(frame, blob[k, :, :inner_h, :inner_w])
        heat, size, offset = run_checked(self.session, OUTPUTS, {self.input: blob})
        return self.decode(heat, size, offset, first_index, (inner_w / width, inner_h / height), (width, height))

    def decode(self, heat: np.ndarray, size: np.ndarray, offset: np.ndarray, first_index: int,
               scale: tuple[float, float], frame_size: tuple[int, int]) -> Detections:
        b, i, j = np.nonzero(heat[:, 0] > self.cfg.threshold)
        score = heat[b, 0, i, j]
        box_h = np.exp(size[b, 0, i, j]) * STRIDE
        box_w = np.exp(size[b, 1, i, j]) * STRIDE
        cy = (i + offset[b, 0, i, j] + 0.5) * STRIDE
        cx = (j + offset[b, 1, i, j] + 0.5) * STRIDE
        xyxy = np.stack([cx - box_w / 2, cy - box_h / 2, cx + box_w / 2, cy + box_h / 2], axis=1)
        xyxy /= np.array([scale[0], scale[1], scale[0], scale[1]], np.float32)
        np.clip(xyxy, 0, np.array([frame_size[0], frame_size[1]] * 2, np.float32), out=xyxy)
        visible = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
        b, xyxy, score = b[visible], xyxy[visible], score[visible]
        keep = nms(xyxy, score, self.cfg.nms_iou, group=b)
        keep = keep[np.lexsort((-score[keep], b[keep]))]
        return Detections.build(first_index + b[keep], xyxy[keep], score[keep], FACE)
