"""Licence-plate detector: YOLOv8(-seg) ONNX model, letterboxed input, boxes only."""

from __future__ import annotations

import ast
import copy
import dataclasses

from collections.abc import Sequence

import cv2
import numpy as np

from anon_ray.arrays import scratch
from anon_ray.config import PlateConfig, SessionConfig
from anon_ray.detect.faces import check_frame
from anon_ray.detect.nms import nms
from anon_ray.detect.session import make_session, run_checked
from anon_ray.types import PLATE, Detections

PAD_VALUE = 114  # Ultralytics letterbox grey: the model was trained with it
SEG_COEFFS = 32  # rows after the class scores in a YOLOv8-seg output; ignored (masks are drawn from boxes)


class PlateDetector:
    def __init__(self, model_path: str, cfg: PlateConfig, session_cfg: SessionConfig) -> None:
        self.cfg = cfg
        self.session = make_session(model_path, session_cfg)
        model_input = self.session.get_inputs()[0]
        self.input = model_input.name
        self.dtype = np.float16 if model_input.type == "tensor(float16)" else np.float32
        meta = self.session.get_modelmeta().custom_metadata_map
        self.height, self.width = model_input.shape[2:]
        # A model with free input sides (models/yolo_pt.py) fits frames to its training size and
        # pads them to that whole size or, with tight_letterbox, to the next multiple of its
        # stride; a frame enlarged past the training size goes in whole.
        self.stride = 0  # 0: a fixed input size
        if not (isinstance(self.height, int) and isinstance(self.width, int)):
            try:
                (self.height, self.width), self.stride = ast.literal_eval(meta["imgsz"]), int(meta["stride"])
            except (KeyError, ValueError, SyntaxError) as e:
                raise ValueError(f"plate model {model_path} has free input sides but no imgsz and stride") from e
        self.output = self.session.get_outputs()[0].name
        # Ultralytics exports record their task; a detect-only model (a user's override) has no mask rows.
        self.coeffs = SEG_COEFFS if meta.get("task", "segment") == "segment" else 0

    def for_photos(self) -> "PlateDetector":
        """The same session with the photos' whole-frame scales (PlateConfig.photo_scales), never
        cut below photo_threshold: boxes under it must not widen a photo's kept boxes when passes
        are fused, however low video frames are cut; and the square input the model was trained
        on (PlateConfig.tight_letterbox is for video frames)."""
        twin = copy.copy(self)
        twin.cfg = dataclasses.replace(self.cfg, scales=list(self.cfg.photo_scales), tight_letterbox=False,
                                       threshold=max(self.cfg.threshold, self.cfg.photo_threshold))
        return twin

    def zoom(self, height: int, width: int) -> float:
        """Largest scale any whole-frame pass gives a frame of this size."""
        return min(self.height / height, self.width / width) * max(self.cfg.scales)

    def detect(self, frames: Sequence[np.ndarray], first_index: int = 0, zoom: float | None = None) -> Detections:
        """Plates in frame pixels; with `zoom` one pass per frame at that scale (tiles, which must
        fit the network input once scaled) instead of the configured `scales`."""
        # The exported model has batch size 1.
        return Detections.concat([self.detect_one(frame, first_index + k, zoom) for k, frame in enumerate(frames)])

    def detect_one(self, frame: np.ndarray, index: int, zoom: float | None = None) -> Detections:
        check_frame(frame)
        height, width = frame.shape[:2]
        fit = min(self.height / height, self.width / width)
        ratios = [fit * scale for scale in self.cfg.scales] if zoom is None else [min(zoom, fit)]
        found = [self._at_ratio(frame, ratio) for ratio in ratios]
        # Passes that shrink the frame below the fit find close-ups, and their false boxes are as
        # large: they may need a cut-off of their own.
        found = [(xyxy[score >= self.cfg.shrink_threshold], score[score >= self.cfg.shrink_threshold])
                 if ratio < fit else (xyxy, score) for ratio, (xyxy, score) in zip(ratios, found)]
        xyxy = np.concatenate([f[0] for f in found])
        score = np.concatenate([f[1] for f in found])
        keep = nms(xyxy, score, self.cfg.nms_iou)
        return Detections.build(index, xyxy[keep], score[keep], PLATE)

    def _canvas(self, inner_w: int, inner_h: int) -> tuple[int, int]:
        """(width, height) of the network input a frame resized to inner_w x inner_h is padded to."""
        if not self.stride:
            if inner_w > self.width or inner_h > self.height:
                raise ValueError(f"a {inner_w}x{inner_h} frame exceeds the plate model's fixed input")
            return self.width, self.height
        tight = -(-inner_w // self.stride) * self.stride, -(-inner_h // self.stride) * self.stride
        return tight if self.cfg.tight_letterbox else (max(tight[0], self.width), max(tight[1], self.height))

    def _at_ratio(self, frame: np.ndarray, ratio: float) -> tuple[np.ndarray, np.ndarray]:
        """Boxes and scores with the frame resized by `ratio` and letterboxed into the network input.

        Ratios below the fit shrink close-up plates, which fill the frame, to the sizes the model
        was trained on (a half-size pass recovers most large plates the full-size pass misses).
        """
        height, width = frame.shape[:2]
        inner_w, inner_h = max(1, round(width * ratio)), max(1, round(height * ratio))
        canvas_w, canvas_h = self._canvas(inner_w, inner_h)
        left, top = (canvas_w - inner_w) // 2, (canvas_h - inner_h) // 2
        if (inner_w, inner_h) != (width, height):
            frame = cv2.resize(frame, (inner_w, inner_h), interpolation=cv2.INTER_LINEAR)
        # The letterboxed input written straight into the float blob, scaled as float32 and then
        # cast: bit-exact with scaling a uint8 letterbox, and ~5 ms less a 640 px pass (2 cores).
        # The blob is this thread's from the last pass (arrays.py), padding filled again.
        blob = scratch("plates.blob", (1, 3, canvas_h, canvas_w), self.dtype)
        blob.fill(np.float32(PAD_VALUE) / np.float32(255))
        np.divide(frame.transpose(2, 0, 1), np.float32(255), dtype=np.float32,
                  out=blob[0, :, top:top + inner_h, left:left + inner_w])
        (pred,) = run_checked(self.session, [self.output], {self.input: blob})
        pred = pred[0].astype(np.float32)  # (4 box + classes + mask coefficients, anchors)
        score = pred[4:len(pred) - self.coeffs].max(axis=0)
        candidates = score > self.cfg.threshold
        cx, cy, w, h = pred[:4, candidates]
        score = score[candidates]
        xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        xyxy -= np.array([left, top, left, top], np.float32)
        xyxy /= np.array([inner_w / width, inner_h / height] * 2, np.float32)
        np.clip(xyxy, 0, np.array([width, height] * 2, np.float32), out=xyxy)
        visible = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
        return xyxy[visible], score[visible]
