"""Detectors on real images. Assumes `python -m anon_ray.models fetch` ran (the Makefile does)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import skimage.data

from anon_ray import models
from anon_ray.config import DetectConfig, FaceConfig, ModelsConfig, PlateConfig, SessionConfig
from anon_ray.detect import DetectionError, Detector, FaceDetector, PlateDetector
from anon_ray.detect.nms import nms
from anon_ray.detect.session import providers
from anon_ray.models import load_manifest, resolve
from anon_ray.types import FACE, PLATE

SESSION = SessionConfig(intra_op_threads=2)
ASTRONAUT_FACE = (180.0, 58.0, 270.0, 178.0)  # checked by eye: forehead to chin, ear to ear
PLATE_IMAGES = ["openalpr_us_car12.jpg", "openalpr_us_car13.jpg", "openalpr_us_316b64c0-55bf-4079-a1c0-d93f461a576f.jpg"]


def iou(a, b) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0.0) * max(h, 0.0)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def faces() -> FaceDetector:
    return FaceDetector(resolve("centerface", ModelsConfig()).path, FaceConfig(), SESSION)


@pytest.fixture(scope="module")
def plates() -> PlateDetector:
    return PlateDetector(resolve("platedet", ModelsConfig()).path, PlateConfig(), SESSION)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage.data.astronaut()


@pytest.fixture(scope="module")
def plate_set(eval_data: Path) -> list[tuple[np.ndarray, list[float]]]:
    """A few labelled images, read in place from the evaluation set (conftest's `eval_data`)."""
    root = eval_data / "plates"
    rows = {r["file"]: r for r in map(json.loads, (root / "annotations.jsonl").read_text().splitlines())}
    return [(cv2.cvtColor(cv2.imread(str(root / name)), cv2.COLOR_BGR2RGB), rows[name]["boxes"][0])
            for name in PLATE_IMAGES]


class FakeSession:
    """Stands in for an ORT session whose outputs went bad, keeping the real input/output metadata."""

    def __init__(self, real: ort.InferenceSession, fault: str) -> None:
        self.real, self.fault = real, fault

    def __getattr__(self, name):
        return getattr(self.real, name)

    def run(self, names, feed):
        if self.fault == "raise":
            raise ort.capi.onnxruntime_pybind11_state.Fail("simulated kernel failure")
        outputs = self.real.run(names, feed)
        outputs[0].flat[len(outputs[0].flat) // 2] = np.nan if self.fault == "nan" else np.inf
        return outputs


def test_astronaut_has_exactly_one_face(faces, astronaut):
    found = faces.detect([astronaut], first_index=7)
    assert len(found) == 1
    assert found.frame.tolist() == [7] and found.cls.tolist() == [FACE] and found.track.tolist() == [-1]
    assert found.score[0] > 0.8
    assert iou(found.xyxy[0], ASTRONAUT_FACE) > 0.8


def test_no_face_in_a_face_free_image(faces):
    assert len(faces.detect([skimage.data.coffee()])) == 0


@pytest.mark.parametrize("scale", [2.0, 0.77])
def test_face_boxes_map_back_to_frame_pixels(astronaut, scale):
    """Downscaled (long side > max_side) and padded (sides not multiples of 32) inputs give the same face."""
    detector = FaceDetector(resolve("centerface", ModelsConfig()).path, FaceConfig(max_side=512), SESSION)
    frame = cv2.resize(astronaut, None, fx=scale, fy=scale * 0.9, interpolation=cv2.INTER_AREA)
    found = detector.detect([frame])
    assert len(found) == 1
    expected = np.array(ASTRONAUT_FACE) * [scale, scale * 0.9, scale, scale * 0.9]
    assert iou(found.xyxy[0], expected) > 0.75
    assert (found.xyxy[:, [0, 2]] <= frame.shape[1]).all() and (found.xyxy[:, [1, 3]] <= frame.shape[0]).all()


def test_face_batches_equal_single_frames(astronaut):
    frames = [astronaut, np.ascontiguousarray(astronaut[:, ::-1]), skimage.data.coffee()[:512, :512].copy(),
              np.ascontiguousarray(astronaut[::-1]), cv2.resize(astronaut, (640, 384))]
    path = resolve("centerface", ModelsConfig()).path
    batched = FaceDetector(path, FaceConfig(batch=4), SESSION).detect(frames, first_index=100)
    single = FaceDetector(path, FaceConfig(batch=1), SESSION).detect(frames, first_index=100)
    assert batched.frame.tolist() == single.frame.tolist()
    assert set(batched.frame.tolist()) == {100, 101, 103, 104}
    np.testing.assert_allclose(batched.xyxy, single.xyxy, atol=0.05)
    np.testing.assert_allclose(batched.score, single.score, atol=1e-4)


def test_plates_found_on_labelled_images(plates, plate_set):
    for k, (image, truth) in enumerate(plate_set):
        found = plates.detect([image], first_index=k)
        assert (found.cls == PLATE).all() and (found.frame == k).all()
        assert max((iou(box, truth) for box in found.xyxy), default=0.0) > 0.5, PLATE_IMAGES[k]


def test_plate_frames_are_indexed(plates, plate_set):
    found = plates.detect([plate_set[0][0], plate_set[1][0]], first_index=40)
    assert set(found.frame.tolist()) == {40, 41}


@pytest.mark.parametrize("fault", ["nan", "inf", "raise"])
def test_bad_inference_fails_closed(faces, plates, astronaut, monkeypatch, fault):
    for detector in (faces, plates):
        monkeypatch.setattr(detector, "session", FakeSession(detector.session, fault))
        with pytest.raises(DetectionError):
            detector.detect([astronaut])
        monkeypatch.undo()


def test_rejects_non_rgb_frames(faces, plates):
    for detector in (faces, plates):
        with pytest.raises(ValueError):
            detector.detect([np.zeros((64, 64), np.uint8)])


def test_detector_combines_enabled_models(astronaut, plate_set):
    cfg = DetectConfig(session=SESSION)
    detector = Detector(cfg, ModelsConfig())
    names = (cfg.face.model, cfg.plate.model)
    assert detector.model_hashes == {name: resolve(name, ModelsConfig()).sha256 for name in names}
    detector.warmup(256, 320)
    found = detector.detect([astronaut, plate_set[1][0]], first_index=3)
    assert found.for_frame(3).cls.tolist() == [FACE]
    assert PLATE in found.for_frame(4).cls.tolist()

    faces_only = Detector(DetectConfig(plate=PlateConfig(enabled=False), session=SESSION), ModelsConfig())
    assert list(faces_only.model_hashes) == [cfg.face.model]
    assert set(faces_only.detect([astronaut, plate_set[1][0]]).cls.tolist()) <= {FACE}


def test_nms_keeps_best_per_group():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]], np.float32)
    score = np.array([0.5, 0.9, 0.8, 0.7], np.float32)
    assert nms(boxes, score, 0.5).tolist() == [1, 2]
    assert nms(boxes, score, 0.5, group=np.array([0, 0, 0, 1])).tolist() == [1, 2, 3]
    assert nms(boxes[:0], score[:0], 0.5).tolist() == []


def test_providers_skip_missing_and_end_with_cpu():
    chosen = providers(SessionConfig(providers=["NoSuchExecutionProvider", "CPUExecutionProvider"]))
    assert chosen == ["CPUExecutionProvider"]
    assert providers(SessionConfig(providers=[]))[-1] == "CPUExecutionProvider"


@pytest.mark.slow
def test_int8_preparation_finds_the_same_face(faces, astronaut, tmp_path):
    """centerface_int8 (opt-in, not the default): the build step keeps working for CPU experiments."""
    entry = load_manifest(ModelsConfig())["centerface"]
    source = models.source_file("centerface", entry, ModelsConfig()).read_bytes()
    path = tmp_path / "centerface_int8.onnx"
    path.write_bytes(models.prepare_centerface_int8(source))
    quantized = FaceDetector(str(path), FaceConfig(), SESSION)
    want, got = faces.detect([astronaut]), quantized.detect([astronaut])
    assert len(got) == len(want) == 1
    assert iou(got.xyxy[0], want.xyxy[0]) > 0.9
