"""The review's person signal: a TF frozen graph read and converted without TensorFlow, the person
detector on real footage, and frames with people but no face flagged in the review queue.

Uses the manifest's fetched model (`python -m anon_ray.models fetch`, as the Makefile runs before the
tests) and the evaluation set's CCTV-like clip, where a man stands with his back to the camera."""

from __future__ import annotations

import io
import json
from dataclasses import replace

import av
import numpy as np
import pytest
from conftest import composed, manifest_rows

from anon_ray.config import AppConfig, ModelsConfig, ReviewConfig, SessionConfig
from anon_ray.detect.people import PeopleFinder
from anon_ray.io.files import sha256_bytes
from anon_ray.models import build
from anon_ray.models.registry import ModelError, load_manifest, resolve
from anon_ray.models.ssd_tf import ssd_anchors, ssd_onnx
from anon_ray.models.tf_graph import read_graph
from anon_ray.run import job
from anon_ray.run.local import run_local
from anon_ray.track.matching import iou_matrix
from anon_ray.types import FACE, Detections

CFG = ModelsConfig()
CLIP = "videos/intel_one-by-one-person-detection.mp4"
BACK_TURNED = 1260  # a man at the table, his back to the camera: no face to find
EMPTY_ROOM = 200


def frames(path, wanted: set[int]) -> dict[int, np.ndarray]:
    out = {}
    with av.open(str(path)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i in wanted:
                out[i] = f.to_ndarray(format="rgb24")
            if len(out) == len(wanted):
                return out
    raise AssertionError(f"frames {wanted - set(out)} not in {path}")


@pytest.fixture(scope="module")
def finder() -> PeopleFinder:
    return PeopleFinder(resolve("ssdlite_pedestrian", CFG).path, ReviewConfig(), SessionConfig())


def face(*xyxy: float) -> Detections:
    return Detections.build(0, np.array([xyxy], np.float32), np.array([0.9], np.float32), FACE)


def test_the_people_model_is_converted_without_tensorflow_to_the_pinned_bytes():
    entry = load_manifest(CFG)["ssdlite_pedestrian"]
    source = build.source_file("ssdlite_pedestrian", entry, CFG).read_bytes()
    nodes = read_graph(source)
    assert nodes["Preprocessor/sub/y"].attrs["value"] == np.float32(1.0)
    assert nodes["FeatureExtractor/MobilenetV2/Conv/weights"].attrs["value"].shape == (3, 3, 3, 32)
    assert sha256_bytes(ssd_onnx(source)) == entry["prepared_sha256"]
    # SSD at 300 px: feature maps of 19, 10, 5, 3, 2 and 1 cells, 3 boxes per cell in the first, 6 above.
    anchors = ssd_anchors([(19, 19), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)])
    assert len(anchors) == 1917 and np.allclose(anchors[0], [0.5 / 19, 0.5 / 19, 0.1, 0.1])
    assert np.allclose(anchors[-1], [0.5, 0.5, np.sqrt(0.95), np.sqrt(0.95)])  # the interpolated scale, square
    for junk in (b"", b"\x0a\x05abc", bytes(range(256))):
        with pytest.raises(ModelError):
            ssd_onnx(junk)


def test_finds_the_person_whose_face_is_turned_away(eval_data, finder):
    got = frames(eval_data / CLIP, {BACK_TURNED, EMPTY_ROOM})
    people = finder.people(got[BACK_TURNED])
    assert len(people) == 1 and iou_matrix(people, np.array([[349, 11, 535, 397]], np.float32))[0, 0] > 0.8
    assert len(finder.people(got[EMPTY_ROOM])) == 0
    assert finder.faceless(got[BACK_TURNED], Detections.empty()) == 1
    assert finder.faceless(got[BACK_TURNED], face(420, 15, 475, 70)) == 0  # a face masked on his head
    assert finder.faceless(got[BACK_TURNED], face(420, 330, 475, 385)) == 1  # not where his face would be
    assert finder.faceless(got[EMPTY_ROOM], Detections.empty()) == 0


@pytest.fixture(scope="module")
def back_turned_clip(eval_data, tmp_path_factory):
    """60 frames of the clip from the back-turned man on, re-encoded as a clip of their own."""
    folder = tmp_path_factory.mktemp("people_in")
    with av.open(str(eval_data / CLIP)) as src, av.open(str(folder / "back.mp4"), "w") as dst:
        stream = dst.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 768, 432, "yuv420p"
        for i, f in enumerate(src.decode(video=0)):
            if BACK_TURNED <= i < BACK_TURNED + 60:
                dst.mux(stream.encode(av.VideoFrame.from_ndarray(f.to_ndarray(format="rgb24"), format="rgb24")))
            elif i >= BACK_TURNED + 60:
                break
        dst.mux(stream.encode())
    return folder


@pytest.mark.parametrize("model", ["ssdlite_pedestrian", ""])
def test_a_clip_of_someone_with_his_back_turned_is_queued_for_review(back_turned_clip, tmp_path, model):
    """The job samples every 30th frame: frame 0 shows him without a face, and the row says so (off:
    nothing said). On frame 30 a track masks the side of his head: boxes there score 0.12-0.25 on
    frames 18-27, face tracks start at 0.2 (track.high_threshold) and are padded 10 frames (with
    tracks from 0.5 both sampled frames counted)."""
    out = tmp_path / "out"
    cfg = replace(AppConfig(input=str(back_turned_clip), output=str(out)),
                  review=ReviewConfig(people_model=model))
    assert job.run(cfg, run_local, out=io.StringIO()).ok == 1
    (row,) = manifest_rows(out)
    reasons = json.loads(row["risk_reasons"] or "{}")
    assert reasons.get("faceless", 0) == (1 if model else 0)
    if model:
        assert 0 in set(json.loads(row["review_frames"]))


def test_the_person_signal_is_on_by_default():
    assert ReviewConfig().people_model == composed("config").review.people_model == "ssdlite_pedestrian"
    assert ReviewConfig().people_every == composed("config").review.people_every == 30
