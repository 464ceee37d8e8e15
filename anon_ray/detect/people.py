"""People seen with no face masked on them: a review signal, never a mask.

A face detector misses a face turned away, bowed, in profile or hidden under a hood; a person
detector still sees the person. A frame where a person tall enough to show a face has no masked
face box over the top of their box is one a reviewer should look at (core/risk.py). The person
model (models/ssd_tf.py: an SSD over the whole frame shrunk to its square input) runs on a few
frames of a video only (ReviewConfig.people_every): it decides no pixel.
"""

from __future__ import annotations

import cv2
import numpy as np

from anon_ray.config import ReviewConfig, SessionConfig
from anon_ray.detect.faces import check_frame
from anon_ray.detect.nms import nms
from anon_ray.detect.session import make_session, run_checked
from anon_ray.types import FACE, Detections

NMS_IOU = 0.45
HEAD_SHARE = 0.3  # the top of a person's box where their face is, as a share of its height


class PeopleFinder:
    def __init__(self, model_path: str, cfg: ReviewConfig, session_cfg: SessionConfig) -> None:
        self.cfg = cfg
        self.session = make_session(model_path, session_cfg)
        model_input = self.session.get_inputs()[0]
        self.input = model_input.name
        self.height, self.width = model_input.shape[2:]
        self.outputs = [o.name for o in self.session.get_outputs()]  # boxes (shares of the sides), scores

    def people(self, rgb: np.ndarray) -> np.ndarray:
        """float32 (n, 4) boxes in frame pixels of the people scoring at least people_score and at
        least people_min_px tall."""
        check_frame(rgb)
        h, w = rgb.shape[:2]
        small = cv2.resize(rgb, (self.width, self.height), interpolation=cv2.INTER_AREA)
        blob = small.transpose(2, 0, 1)[None].astype(np.float32)
        boxes, scores = run_checked(self.session, self.outputs, {self.input: blob})
        score = scores[0, :, 0]
        keep = np.flatnonzero(score >= self.cfg.people_score)
        xyxy = np.clip(boxes[0, keep] * np.array([w, h, w, h], np.float32), 0, [w, h, w, h]).astype(np.float32)
        xyxy = xyxy[nms(xyxy, score[keep], NMS_IOU)]
        return xyxy[xyxy[:, 3] - xyxy[:, 1] >= self.cfg.people_min_px]

    def faceless(self, rgb: np.ndarray, masked: Detections) -> int:
        """How many people in `rgb` have no face box of `masked` (this frame's) centred in the top
        of their box."""
        people = self.people(rgb)
        if not len(people):
            return 0
        faces = masked.xyxy[masked.cls == FACE]
        cx, cy = (faces[:, 0] + faces[:, 2]) / 2, (faces[:, 1] + faces[:, 3]) / 2
        head_bottom = people[:, 1] + HEAD_SHARE * (people[:, 3] - people[:, 1])
        faced = ((cx[None, :] >= people[:, :1]) & (cx[None, :] <= people[:, 2:3])
                 & (cy[None, :] >= people[:, 1:2]) & (cy[None, :] <= head_bottom[:, None])).any(axis=1)
        return int(np.count_nonzero(~faced))
