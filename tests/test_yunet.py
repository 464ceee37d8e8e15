"""YuNet, the light face model of the video cascade's cheap passes (detect/yunet.py)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import skimage.data

from anon_ray.config import DetectConfig, FaceConfig, ModelsConfig, PlateConfig, SessionConfig
from anon_ray.detect import Detector
from anon_ray.detect.yunet import YuNetDetector
from anon_ray.io import files
from anon_ray.media import packets
from anon_ray.media.decode import decode
from anon_ray.models import build
from anon_ray.models.registry import load_manifest, resolve
from anon_ray.track.matching import iou_matrix
from anon_ray.types import FACE

SESSION = SessionConfig(intra_op_threads=1)
CLIP = "widercam_parade_marchingband_1_234"  # a camera over a labelled WIDER crowd, faces ~20-60 px
FRAMES = (0, 60, 240)


@pytest.fixture(scope="module")
def labelled(eval_data: Path) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(number, RGB frame, labelled xyxy boxes at least 24 px tall, whole in the frame) of a few
    frames of CLIP (faces cut by the frame edge are the tracks' and masks' concern, not this test's)."""
    root = eval_data / "videos_gt"
    rows = np.loadtxt(root / f"{CLIP}_gt.txt", delimiter=",", ndmin=2)
    src = str(root / f"{CLIP}.mp4")
    index = packets.scan_packets(src)
    out = []
    for number, _, rgb in decode(src, None, index, 0, max(FRAMES) + 1):
        if number in FRAMES:
            gt = rows[(rows[:, 0] == number + 1) & (rows[:, 5] >= 24)][:, 2:6]
            xyxy = np.c_[gt[:, :2], gt[:, :2] + gt[:, 2:]]
            inside = np.all((xyxy > 1) & (xyxy < [1279, 719, 1279, 719]), axis=1)
            out.append((number, rgb, xyxy[inside]))
    return out


def yunet(threshold: float = 0.5) -> YuNetDetector:
    return YuNetDetector(resolve("yunet", ModelsConfig()).path, FaceConfig(threshold=threshold), SESSION)


def test_yunet_finds_the_labelled_faces_of_crowd_frames_in_frame_pixels(labelled):
    """At full size and shrunk to the cascade's 736 px (a scale that is no whole fraction), boxes
    land on the labels in frame pixels; nothing on a face-free photo."""
    detector = yunet()
    for number, frame, gt in labelled:
        for zoom in (None, 736 / 1280):
            found = detector.detect([frame], number, zoom=zoom)
            assert set(found.frame.tolist()) == {number} and set(found.cls.tolist()) == {FACE}
            best = iou_matrix(gt, found.xyxy).max(axis=1)
            assert len(gt) >= 15 and np.mean(best >= 0.5) >= 0.9, (number, zoom, np.mean(best >= 0.5))
    assert len(detector.detect([skimage.data.coffee()])) == 0


def test_yunet_cut_off_and_nms(labelled):
    """A lower cut-off keeps more boxes, each of them at or over it; kept boxes overlap little."""
    _, frame, _ = labelled[0]
    high, low = yunet(0.5).detect([frame]), yunet(0.1).detect([frame])
    assert len(low) > len(high) and low.score.min() >= 0.1 and high.score.min() >= 0.5
    overlap = iou_matrix(low.xyxy, low.xyxy)
    np.fill_diagonal(overlap, 0)
    assert overlap.max() < FaceConfig().nms_iou


def test_cheap_model_runs_on_the_cascades_cheap_video_frames_only(labelled):
    """detect.face.cheap_model: video frames numbered by a multiple of full_every keep the face
    model's full pass, the others get YuNet on the shrunk frame, cut at cheap_threshold; photos
    keep the face model's passes; the manifest's hash of YuNet is recorded."""
    face = FaceConfig(full_every=3, regions=False, cheap_model="yunet", cheap_threshold=0.3)
    cfg = DetectConfig(face=face, plate=PlateConfig(enabled=False), session=SESSION)
    mixed, plain = Detector(cfg, ModelsConfig()), Detector(DetectConfig(face=FaceConfig(full_every=3, regions=False),
                                                                       plate=PlateConfig(enabled=False),
                                                                       session=SESSION), ModelsConfig())
    _, frame, _ = labelled[1]
    found, base = mixed.detect([frame] * 3, first_index=6), plain.detect([frame] * 3, first_index=6)
    np.testing.assert_array_equal(found.for_frame(6).xyxy, base.for_frame(6).xyxy)
    cheap = yunet(0.3).detect([frame], 7, zoom=face.cheap_side / 1280)
    for f in (7, 8):
        np.testing.assert_array_equal(found.for_frame(f).xyxy, cheap.xyxy)
        assert not np.array_equal(found.for_frame(f).xyxy, base.for_frame(f).xyxy)
    np.testing.assert_array_equal(mixed.detect([frame], 7, photo=True).xyxy, plain.detect([frame], 7, photo=True).xyxy)
    assert mixed.model_hashes["yunet"] == load_manifest(ModelsConfig())["yunet"]["prepared_sha256"]
    assert "yunet" not in plain.model_hashes


def test_yunet_preparation_frees_the_input_size():
    """The prepared model gives the shipped one's outputs at its 640 x 640 and runs at other sides."""
    cfg = ModelsConfig()
    entry = load_manifest(cfg)["yunet"]
    source = build.source_file("yunet", entry, cfg).read_bytes()
    prepared = build.prepare_yunet_dynamic(source)
    assert files.sha256_bytes(prepared) == entry["prepared_sha256"]
    assert prepared == build.prepare_yunet_dynamic(source)  # deterministic
    dims = onnx.load_from_string(prepared).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims][2:] == ["H", "W"]
    shipped = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    free = ort.InferenceSession(prepared, providers=["CPUExecutionProvider"])
    blob = np.random.default_rng(0).uniform(0, 255, (1, 3, 640, 640)).astype(np.float32)
    for want, got in zip(shipped.run(None, {"input": blob}), free.run(None, {"input": blob})):
        np.testing.assert_array_equal(got, want)
    cls8 = free.run(["cls_8"], {"input": np.zeros((1, 3, 416, 736), np.float32)})[0]
    assert cls8.shape == (1, (416 // 8) * (736 // 8), 1)


def test_cheap_small_side_finds_faces_a_pan_blurs(labelled):
    """With cheap_small_side, a whole cheap frame is also searched shrunk to 448 px: under a
    35 px horizontal motion blur (a whip pan at 720p) that pass finds labelled faces the 736 px
    one loses; its boxes are merged with the 736 px ones, none overlapping another."""
    def cascade(**small) -> Detector:
        face = FaceConfig(full_every=3, regions=False, cheap_model="yunet", **small)
        return Detector(DetectConfig(face=face, plate=PlateConfig(enabled=False), session=SESSION), ModelsConfig())

    plain, both = cascade(), cascade(cheap_small_side=448, cheap_small_threshold=0.1)
    for number, frame, gt in labelled:
        blurred = cv2.filter2D(frame, -1, np.ones((1, 35), np.float32) / 35)
        alone, merged = plain.detect([blurred], first_index=7), both.detect([blurred], first_index=7)
        found = {name: np.mean(iou_matrix(gt, d.xyxy).max(axis=1) >= 0.5) for name, d in
                 (("alone", alone), ("merged", merged))}
        assert found["merged"] >= found["alone"], (number, found)
        if number == 0:  # the crowd that the blur hides most
            assert found["merged"] >= found["alone"] + 0.2, found
        overlap = iou_matrix(merged.xyxy, merged.xyxy)
        np.fill_diagonal(overlap, 0)
        assert overlap.max() < FaceConfig().nms_iou
        np.testing.assert_array_equal(both.detect([blurred], first_index=6).xyxy,
                                      plain.detect([blurred], first_index=6).xyxy)  # full frames: as before
