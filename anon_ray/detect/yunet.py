"""YuNet (2023mar) face detector: a light network, ~4x cheaper than CenterFace a pass on CPU,
for the video cascade's cheap passes where FaceConfig.cheap_model names it (detect/__init__.py).

Its input is BGR in 0..255, sides multiples of 32 (models/build.py frees the shipped 640 x 640);
each of three strides gives per-cell class and objectness scores, whose geometric mean is the
face score, and a box as centre offset and log size in cells (OpenCV's FaceDetectorYN decoding).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from anon_ray.config import FaceConfig, SessionConfig
from anon_ray.detect.faces import cached_blob, check_frame, fill_planes, zoom_for, zoomed_size
from anon_ray.detect.nms import nms
from anon_ray.detect.session import make_session, run_checked
from anon_ray.types import FACE, Detections

STRIDES = (8, 16, 32)
OUTPUTS = [f"{kind}_{stride}" for kind in ("cls", "obj", "bbox") for stride in STRIDES]


class YuNetDetector:
    """Faces in frame pixels, one frame a run (the graph's reshapes fix the batch at 1)."""

    def __init__(self, model_path: str, cfg: FaceConfig, session_cfg: SessionConfig) -> None:
        self.cfg = cfg
        self.session = make_session(model_path, session_cfg)
        self.input = self.session.get_inputs()[0].name
        self._blobs: dict[tuple[int, int], np.ndarray] = {}

    def zoom(self, height: int, width: int) -> float:
        return zoom_for(height, width, self.cfg.max_side, self.cfg.min_side)

    def detect(self, frames: Sequence[np.ndarray], first_index: int = 0, zoom: float | None = None) -> Detections:
        return Detections.concat([self._detect_one(frame, first_index + k, zoom) for k, frame in enumerate(frames)])

    def _detect_one(self, frame: np.ndarray, number: int, zoom: float | None) -> Detections:
        check_frame(frame)
        height, width = frame.shape[:2]
        scale = self.zoom(height, width) if zoom is None else zoom
        inner_h, inner_w = zoomed_size(height, width, scale)
        blob = cached_blob(self._blobs, 1, inner_h, inner_w)
        fill_planes(frame, blob[0, ::-1, :inner_h, :inner_w])  # channels reversed: BGR
        outputs = dict(zip(OUTPUTS, run_checked(self.session, OUTPUTS, {self.input: blob})))
        boxes, scores = [], []
        for stride in STRIDES:
            cols = blob.shape[3] // stride
            score = np.sqrt(np.clip(outputs[f"cls_{stride}"][0, :, 0], 0, 1)
                            * np.clip(outputs[f"obj_{stride}"][0, :, 0], 0, 1))
            cell = np.flatnonzero(score > self.cfg.threshold)
            box = outputs[f"bbox_{stride}"][0, cell]
            cx, cy = (cell % cols + box[:, 0]) * stride, (cell // cols + box[:, 1]) * stride
            half_w, half_h = np.exp(box[:, 2]) * stride / 2, np.exp(box[:, 3]) * stride / 2
            boxes.append(np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1))
            scores.append(score[cell])
        xyxy = np.concatenate(boxes).astype(np.float32) * np.array([width / inner_w, height / inner_h] * 2, np.float32)
        score = np.concatenate(scores).astype(np.float32)
        np.clip(xyxy, 0, np.array([width, height] * 2, np.float32), out=xyxy)
        visible = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
        xyxy, score = xyxy[visible], score[visible]
        keep = nms(xyxy, score, self.cfg.nms_iou)
        return Detections.build(np.full(len(keep), number), xyxy[keep], score[keep], FACE)
