"""Face and plate detection over batches of RGB frames, failing closed on any inference error."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from anon_ray.config import DetectConfig, ModelsConfig
from anon_ray.detect.cascade import Cadence, Cascade, Recent
from anon_ray.detect.faces import FaceDetector
from anon_ray.detect.plates import PlateDetector
from anon_ray.detect.session import DetectionError, make_session
from anon_ray.detect.tiling import MultiPass
from anon_ray.detect.yunet import YuNetDetector
from anon_ray.models.registry import ModelInfo, resolve
from anon_ray.types import FACE, Detections

__all__ = ["Detector", "DetectionError", "FaceDetector", "PlateDetector", "Recent", "make_session"]


class Detector:
    """Every enabled detector with its configured passes (whole frame, mirrored, tiles), run on the
    same frames; their detections are concatenated."""

    def __init__(self, cfg: DetectConfig, models: ModelsConfig) -> None:
        self.cfg, self.models_cfg = cfg, models
        self.models: dict[str, ModelInfo] = {}
        self.detectors: list[Cadence | Cascade] = []
        self.photo_detectors: list[MultiPass] = []  # the same sessions, with passes for photos
        if cfg.face.enabled:
            info = self.models[cfg.face.model] = resolve(cfg.face.model, models)
            # One session per class at the lower of the photo and video cut-offs; video frames
            # are cut at theirs after it (a box under a cut-off never suppresses one above it in NMS).
            low = replace(cfg.face, threshold=min(cfg.face.threshold, cfg.face.photo_threshold))
            face = FaceDetector(info.path, low, cfg.session)
            full = MultiPass(face, [cfg.face.tiling], cfg.face.flip, cfg.face.nms_iou)
            self.detectors.append(Cascade(full, self._cheap_faces(face), cfg.face))
            self.photo_detectors.append(MultiPass(face, [cfg.face.tiling, cfg.face.photo_tiling], cfg.face.flip,
                                                  cfg.face.nms_iou, (cfg.face.confirm_height, cfg.face.confirm_below)))
        if cfg.plate.enabled:
            info = self.models[cfg.plate.model] = resolve(cfg.plate.model, models)
            low = replace(cfg.plate, threshold=min(cfg.plate.threshold, cfg.plate.photo_threshold))
            plate = PlateDetector(info.path, low, cfg.session)
            self.detectors.append(Cadence(MultiPass(plate, [cfg.plate.tiling], cfg.plate.flip, cfg.plate.nms_iou,
                                                    fuse=cfg.plate.fuse), cfg.plate.every))
            self.photo_detectors.append(MultiPass(plate.for_photos(), [cfg.plate.tiling], cfg.plate.flip,
                                                  cfg.plate.nms_iou, fuse=cfg.plate.fuse))
            if cfg.plate.photo_extra_model:
                info = self.models[cfg.plate.photo_extra_model] = resolve(cfg.plate.photo_extra_model, models)
                extra = PlateDetector(info.path, replace(cfg.plate, threshold=cfg.plate.photo_extra_threshold),
                                      cfg.session)
                self.photo_detectors.append(MultiPass(extra.for_photos(), [cfg.plate.photo_extra_tiling],
                                                      cfg.plate.flip, cfg.plate.nms_iou, fuse=cfg.plate.fuse))

    def _cheap_faces(self, face: FaceDetector) -> FaceDetector | YuNetDetector:
        """The detector of the video cascade's cheap passes: `face`, or FaceConfig.cheap_model's
        (its boxes cut at cheap_threshold, never under the video cut-off)."""
        cfg = self.cfg.face
        if not cfg.cheap_model or cfg.cheap_model == cfg.model:
            return face
        info = self.models[cfg.cheap_model] = resolve(cfg.cheap_model, self.models_cfg)
        cut = replace(cfg, threshold=max(cfg.threshold, cfg.cheap_threshold))
        if info.task != "face":
            raise ValueError(f"detect.face.cheap_model {cfg.cheap_model!r} is a {info.task} model")
        return YuNetDetector(info.path, cut, self.cfg.session) if info.name == "yunet" \
            else FaceDetector(info.path, cut, self.cfg.session)

    @property
    def model_hashes(self) -> dict[str, str]:
        return {name: info.sha256 for name, info in self.models.items()}

    def warmup(self, height: int = 720, width: int = 1280) -> None:
        """One inference at the expected frame size, so the first real batch does not pay for allocations."""
        self.detect([np.zeros((height, width, 3), np.uint8)])

    def detect(self, frames: Sequence[np.ndarray], first_index: int = 0, photo: bool = False,
               recent: Recent | None = None) -> Detections:
        """`photo`: the frames are photos, not video frames (TilingConfig.video, *.photo_threshold).
        `recent`: a video's earlier raw boxes (Cascade)."""
        passes = self.photo_detectors if photo else self.detectors
        found = Detections.concat([d.detect(frames, first_index, photo, recent) if isinstance(d, Cascade)
                                   else d.detect(frames, first_index, photo) for d in passes])
        return found.select(found.score >= cutoffs(self.cfg, found.cls, photo))


def cutoffs(cfg: DetectConfig, cls: np.ndarray, photo: bool) -> np.ndarray:
    """float32 (n,): the configured score cut-off of boxes of classes `cls`, on photos or video frames."""
    face, plate = cfg.face, cfg.plate
    cut = (face.photo_threshold, plate.photo_threshold) if photo else (face.threshold, plate.threshold)
    return np.where(cls == FACE, cut[0], cut[1]).astype(np.float32)
