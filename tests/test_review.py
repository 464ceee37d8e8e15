"""Corrections as data: overrides files parsed and applied, and assets re-rendered from stored
boxes on real media without running a detector (core/overrides.py, run/render.py, run/rerender.py)."""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLES, manifest_rows

from anon_ray import detect
from anon_ray.config import AppConfig, DetectConfig, FaceConfig, PlateConfig, ReviewConfig
from anon_ray.core import overrides
from anon_ray.io import review
from anon_ray.media import packets
from anon_ray.media.decode import decode
from anon_ray.run import job, rerender
from anon_ray.run.local import run_local
from anon_ray.types import FACE, PLATE, REGION, Detections


def _doc(**kw) -> bytes:
    return json.dumps({"version": 1, **kw}).encode()


@pytest.mark.parametrize("doc, words", [
    (b"{not json", "not JSON"),
    (_doc(version=2), "version"),
    (_doc(add=[{"box": [0, 0, 10, 10]}], supress=[]), "unknown keys"),
    (_doc(add=[{"box": [0, 0, 10, 10], "frame": [1, 2]}]), "add[0]: unknown keys"),
    (_doc(add=[{"box": [10, 0, 5, 10]}]), "x2 > x1"),
    (_doc(add=[{"box": [0, 0, 10]}]), "[x1, y1, x2, y2]"),
    (_doc(add=[{"box": [0, 0, 10, 10], "frames": [5, 2]}]), "first <= last"),
    (_doc(add=[{"box": [0, 0, 10, 10], "track": 3}]), "both track and at"),
    (_doc(add=[{"box": [0, 0, 10, 10], "cls": "person"}]), "cls must be"),
    (_doc(suppress=[{"track": 1, "frame": 2}]), "suppress[0]"),
    (_doc(suppress=[{"track": -1}]), "frame number"),
    (_doc(exclude="yes"), "exclude"),
])
def test_overrides_files_that_break_the_schema_fail_whole(doc, words):
    """A misspelt key or a bad value fails the file: a correction must never be dropped quietly."""
    with pytest.raises(overrides.OverridesError, match=words.replace("[", r"\[").replace("]", r"\]")):
        overrides.parse(doc)


def _stored() -> Detections:
    """Track 0: a face moving 10 px right per frame over frames 0-9, 20x20 at (100 + 10f, 50);
    track 1: a plate on frames 0-4; one untracked face on frame 3."""
    f = np.arange(10)
    face = np.c_[100 + 10 * f, np.full(10, 50), 120 + 10 * f, np.full(10, 70)]
    plate = np.tile([300, 300, 360, 320], (5, 1))
    return Detections.concat([Detections.build(f, face, np.full(10, 0.9), FACE, np.zeros(10)),
                              Detections.build(np.arange(5), plate, np.full(5, 0.8), PLATE, np.ones(5)),
                              Detections.build([3], [[10, 10, 30, 30]], 0.2, FACE, [-1])])


def test_overrides_suppress_add_and_follow():
    ov = overrides.parse(_doc(
        suppress=[{"track": 1}, {"frame": 3, "box": [12, 11, 31, 29]}],
        add=[{"box": [0, 0, 50, 20]},  # static: every frame
             {"box": [500, 400, 540, 440], "frames": [2, 4], "cls": "face"},
             # drawn on frame 5 just below the face (same size, one face-height lower): a name badge
             {"box": [150, 70, 170, 90], "track": 0, "at": 5, "frames": [3, 20]}]))
    out = overrides.apply(_stored(), ov, n_frames=12)
    assert not np.any(out.track == 1) and not np.any((out.frame == 3) & (out.score == np.float32(0.2)))
    assert np.count_nonzero(out.track == 0) == 10  # the face itself is kept
    static = out.select(out.track == 2)
    assert static.frame.tolist() == list(range(12)) and np.all(static.cls == REGION)
    ranged = out.select(out.track == 3)
    assert ranged.frame.tolist() == [2, 3, 4] and np.all(ranged.cls == FACE)
    badge = out.select(out.track == 4)
    assert badge.frame.tolist() == list(range(3, 10))  # where the followed track has boxes
    assert np.allclose(badge.xyxy, np.c_[100 + 10 * badge.frame, np.full(7, 70), 120 + 10 * badge.frame,
                                         np.full(7, 90)])
    with pytest.raises(overrides.OverridesError, match="no box on frame 11"):
        overrides.apply(_stored(), overrides.parse(_doc(add=[{"box": [0, 0, 5, 5], "track": 0, "at": 11}])), 12)


def test_region_boxes_are_masked_as_drawn():
    """A reviewer's region gets no face margin and no ellipse: its corners are masked too."""
    from anon_ray.config import MaskConfig
    from anon_ray.core import mask

    region = mask.mask_region((100, 100), Detections.build([0], [[20, 20, 60, 40]], 1.0, REGION), MaskConfig())
    assert region[20:40, 20:60].all() and not region[:15].any() and not region[:, :15].any()


def _counting(monkeypatch) -> list[str]:
    """Every Detector built or asked to detect, from now on."""
    calls: list[str] = []
    init, run = detect.Detector.__init__, detect.Detector.detect
    monkeypatch.setattr(detect.Detector, "__init__", lambda s, *a, **k: (calls.append("init"), init(s, *a, **k))[1])
    monkeypatch.setattr(detect.Detector, "detect", lambda s, *a, **k: (calls.append("detect"), run(s, *a, **k))[1])
    return calls


def _frames(path: Path) -> list[np.ndarray]:
    index = packets.scan_packets(str(path))
    return [rgb for _, _, rgb in decode(str(path), None, index, 0, len(index))]


def test_missed_face_masked_by_an_override_and_a_rerender_without_detectors(tmp_path, monkeypatch):
    """The job misses the astronaut's face (detection off), a reviewer adds it frame by frame, and
    the re-render masks it from the stored boxes with no detector built or called."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    shutil.copy(SAMPLES / "astronaut_pan.mp4", src / "clip.mp4")
    blind = DetectConfig(face=FaceConfig(enabled=False), plate=PlateConfig(enabled=False))
    cfg = replace(AppConfig(input=str(src), output=str(out)), detect=blind, review=ReviewConfig(boxes=True))
    assert job.run(cfg, run_local, out=io.StringIO()).ok == 1
    stored, meta = review.read_boxes(review.boxes_uri(str(out), "clip.mp4"), cfg.storage)
    assert len(stored) == 0 and meta["input_version"] and meta["frames"] == 75
    first = _frames(out / "clip.mp4")

    finder = detect.Detector(AppConfig().detect, AppConfig().models)
    source = _frames(src / "clip.mp4")
    faces = [finder.detect([rgb]) for rgb in source]
    boxes = {i: d.xyxy[np.argmax(d.score)] for i, d in enumerate(faces) if np.any(d.cls == FACE)}
    assert len(boxes) >= 60
    add = [{"box": [float(v) for v in b], "frames": [i, i], "cls": "face"} for i, b in boxes.items()]
    ov_path = Path(review.overrides_uri(str(out), "clip.mp4"))
    ov_path.parent.mkdir(parents=True)
    ov_path.write_bytes(_doc(boxes_run=meta["run_id"], add=add))

    calls = _counting(monkeypatch)
    log = io.StringIO()
    summary = rerender.rerender(cfg, log)
    assert (summary.ok, summary.failed, calls) == (1, 0, []), log.getvalue()
    second = _frames(out / "clip.mp4")
    assert len(second) == len(first) == 75
    for i, b in list(boxes.items())[::10]:
        x1, y1, x2, y2 = (int(round(v)) for v in b)
        face = (slice(y1 + 2, y2 - 2), slice(x1 + 2, x2 - 2))
        before, after = first[i][face].astype(float), second[i][face].astype(float)
        assert np.abs(before - after).mean() > 8  # masked now, and it was not before
        assert np.abs(second[i][:20, :20].astype(float) - first[i][:20, :20]).mean() < 2  # background kept
    rows = manifest_rows(out)
    assert rows[-1]["overrides_sha256"] == overrides.sha256(ov_path.read_bytes()) and rows[-1]["status"] == "ok"
    assert all(r["overrides_sha256"] == "" for r in rows[:-1])

    assert rerender.rerender(cfg, io.StringIO()).skipped == 1  # nothing new to apply: nothing written
    assert len(manifest_rows(out)) == len(rows)

    # A later job that processes the asset again (forced, detection on) renders the reviewed boxes
    # instead of detecting: the correction stays published and the stored boxes stay the reviewed run's.
    corrected = _frames(out / "clip.mp4")
    seeing = replace(cfg, force=True, detect=DetectConfig())
    calls.clear()
    log = io.StringIO()
    assert job.run(seeing, run_local, out=log).ok == 1 and "detect" not in calls, log.getvalue()
    assert all(np.array_equal(a, b) for a, b in zip(corrected, _frames(out / "clip.mp4")))
    assert review.read_boxes(review.boxes_uri(str(out), "clip.mp4"), cfg.storage)[1]["run_id"] == meta["run_id"]
    last = manifest_rows(out)[-1]
    assert (last["status"], last["overrides_sha256"]) == ("ok", rows[-1]["overrides_sha256"])
    assert job.run(replace(seeing, force=False), run_local, out=io.StringIO()).skipped == 1
    assert rerender.rerender(cfg, io.StringIO()).skipped == 1
    # Overrides it cannot apply fail the asset closed: no output, not the detector's alone.
    ov_path.write_bytes(_doc(boxes_run="another", add=add))
    log = io.StringIO()
    assert job.run(seeing, run_local, out=log).failed == 1 and "run another" in log.getvalue()
    assert not (out / "clip.mp4").exists() and "detect" not in calls

    ov_path.write_bytes(_doc(exclude=True))
    assert rerender.rerender(cfg, io.StringIO()).ok == 1 and not (out / "clip.mp4").exists()
    last = manifest_rows(out)[-1]
    assert (last["status"], last["error_class"], last["output_uri"]) == ("skipped", job.EXCLUDED, "")
    # The exclusion outlives later job runs, forced or with another config: the asset stays unpublished.
    log = io.StringIO()
    again = job.run(replace(cfg, force=True, detect=DetectConfig()), run_local, out=log)
    assert (again.ok, again.skipped) == (0, 1) and "EXCLUDED clip.mp4" in log.getvalue()
    assert not (out / "clip.mp4").exists()
    assert manifest_rows(out)[-1]["error_class"] == job.EXCLUDED


def test_rerender_without_corrections_writes_what_the_job_wrote(tmp_path):
    """Empty overrides: the stored boxes masked again give the job's own frames, so a correction
    changes only what it names."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    shutil.copy(SAMPLES / "astronaut_pan.mp4", src / "clip.mp4")
    cfg = replace(AppConfig(input=str(src), output=str(out)), review=ReviewConfig(boxes=True))
    assert job.run(cfg, run_local, out=io.StringIO()).ok == 1
    stored, _ = review.read_boxes(review.boxes_uri(str(out), "clip.mp4"), cfg.storage)
    assert np.any(stored.cls == FACE) and np.any(stored.track >= 0)
    first = _frames(out / "clip.mp4")
    ov_path = Path(review.overrides_uri(str(out), "clip.mp4"))
    ov_path.parent.mkdir(parents=True)
    ov_path.write_bytes(_doc())
    assert rerender.rerender(cfg, io.StringIO()).ok == 1
    again = _frames(out / "clip.mp4")
    assert len(again) == len(first) and all(np.array_equal(a, b) for a, b in zip(first, again))


def test_a_failed_rerender_leaves_no_output_whether_refused_or_failing_while_rendering(tmp_path, monkeypatch):
    """One rule for every failure: the overrides say the job's output is wrong, so a re-render
    that cannot apply them removes it, and the row says why; once they can be applied it is back."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    shutil.copy(SAMPLES / "astronaut.jpg", src / "a.jpg")
    cfg = replace(AppConfig(input=str(src), output=str(out)), review=ReviewConfig(boxes=True))
    assert job.run(cfg, run_local, out=io.StringIO()).ok == 1
    ov_path = Path(review.overrides_uri(str(out), "a.jpg"))
    ov_path.parent.mkdir(parents=True)
    boxes_file = Path(review.boxes_uri(str(out), "a.jpg"))
    kept = boxes_file.read_bytes()

    ov_path.write_bytes(_doc())
    assert rerender.rerender(cfg, io.StringIO()).ok == 1
    for doc, words, breaks, mends in [
        (b"{not json", "not JSON", lambda: None, lambda: ov_path.write_bytes(_doc(add=[{"box": [0, 0, 9, 9]}]))),
        (_doc(), "no boxes file", boxes_file.unlink, lambda: boxes_file.write_bytes(kept)),
        (_doc(boxes_run="another"), "run another", lambda: None, lambda: ov_path.write_bytes(_doc())),
    ]:
        ov_path.write_bytes(doc)
        breaks()
        log = io.StringIO()
        assert rerender.rerender(cfg, log).failed == 1 and words in log.getvalue(), log.getvalue()
        assert not (out / "a.jpg").exists()
        last = manifest_rows(out)[-1]
        assert (last["status"], last["output_sha256"]) == ("failed", "")
        mends()
        assert rerender.rerender(cfg, io.StringIO()).ok == 1 and (out / "a.jpg").exists()

    assert job.run(cfg, run_local, out=io.StringIO()).skipped == 1  # a job row that changes nothing...
    assert rerender.rerender(cfg, io.StringIO()).skipped == 1  # ...leaves the correction done
    # Failing while rendering: the same.
    monkeypatch.setattr("anon_ray.run.render.image_io.encode_image", lambda *a: 1 / 0)
    ov_path.write_bytes(_doc(add=[{"box": [0, 0, 5, 5]}]))
    assert rerender.rerender(cfg, io.StringIO()).failed == 1 and not (out / "a.jpg").exists()


def test_risk_flags_gaps_mid_frame_ends_and_weak_small_detections():
    from anon_ray.core import risk

    cfg = ReviewConfig()
    # track 0: detected on 0-9 and 20-29, nothing on 10-19 (a gap never filled); it vanishes mid-picture
    f = np.r_[0:10, 20:30]
    steady = Detections.build(f, np.tile([300, 200, 340, 240], (20, 1)), np.full(20, 0.9), FACE, np.zeros(20))
    # track 1 appears mid-picture on frame 40 and vanishes there on frame 45; its pads (score 0) do not count
    late = Detections.build(np.r_[40:46], np.tile([600, 300, 640, 340], (6, 1)), np.full(6, 0.8), FACE, np.ones(6))
    pads = Detections.build(np.r_[30:40], np.tile([600, 300, 640, 340], (10, 1)), np.zeros(10), FACE, np.ones(10))
    # track 2 enters and leaves at the left border: not flagged; one weak, small untracked detection
    edge = Detections.build(np.r_[50:55], np.tile([0, 100, 30, 140], (5, 1)), np.full(5, 0.9), FACE, np.full(5, 2))
    weak = Detections.build([60], [[100, 100, 112, 112]], [0.2], FACE, [-1])
    r = risk.assess(Detections.concat([steady, late, pads, edge, weak]), 100, (1280, 720), cfg)
    assert r.reasons == {"gap_frames": 10, "appeared": 1, "vanished": 2, "low_score": 1, "small": 1}
    assert r.score == pytest.approx(5 * 10 + 2 + 2 * 2 + 0.2 + 0.2)
    assert {15, 29, 40, 45, 60} <= set(r.frames) and len(r.frames) == cfg.sheet_frames
    calm = risk.assess(steady.select(steady.frame < 10), 10, (1280, 720), cfg)
    assert (calm.score, calm.reasons) == (0.0, {}) and len(calm.frames) == 10  # a 10-frame clip: each frame once


def test_job_rows_carry_the_review_queue(tmp_path):
    """A real photo job: every processed row has a risk score, its reasons and frames to look at."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    shutil.copy(SAMPLES / "astronaut.jpg", src / "a.jpg")
    assert job.run(AppConfig(input=str(src), output=str(out)), run_local, out=io.StringIO()).ok == 1
    row = manifest_rows(out)[-1]
    assert json.loads(row["review_frames"]) == [0] and isinstance(json.loads(row["risk_reasons"]), dict)
    assert row["risk"] >= 0


def test_report_lists_the_queue_and_writes_sheets_of_the_masked_output(tmp_path, capsys):
    import cv2

    from anon_ray.tools import report, sheets

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    shutil.copy(SAMPLES / "astronaut_pan.mp4", src / "clip.mp4")
    shutil.copy(SAMPLES / "astronaut.jpg", src / "photo.jpg")
    # A high cut-off for "low" scores flags every detection: both assets are queued.
    cfg = replace(AppConfig(input=str(src), output=str(out)), review=ReviewConfig(low_score=1.0))
    assert job.run(cfg, run_local, out=io.StringIO()).ok == 2
    assert report.main([f"output={out}", "sheets=2"]) == 0
    text = capsys.readouterr().out
    queue = text.split("review queue", 1)[1]
    assert "clip.mp4" in queue and "photo.jpg" in queue and "low_score" in queue
    row = next(r for r in manifest_rows(out) if r["kind"] == "video")
    frames = json.loads(row["review_frames"])
    assert len(frames) == ReviewConfig().sheet_frames
    sheet = cv2.imread(str(out / "_anon_ray" / "review" / "sheets" / "clip.mp4.jpg"))[:, :, ::-1]
    tile_h = sheet.shape[0] // 3  # 12 frames, 4 per row
    assert sheet.shape[1] == 4 * sheets.THUMB_W and tile_h == round(360 * sheets.THUMB_W / 640)
    # Each tile is the masked output's frame, not the input's: compare below the frame label.
    masked, source = _frames(out / "clip.mp4"), _frames(src / "clip.mp4")
    for k, f in enumerate(frames[:4]):
        tile = sheet[30:tile_h, k * sheets.THUMB_W:(k + 1) * sheets.THUMB_W].astype(float)
        thumb = lambda rgb: cv2.resize(rgb, (sheets.THUMB_W, tile_h), interpolation=cv2.INTER_AREA)[30:]  # noqa: E731
        assert np.abs(tile - thumb(masked[f])).mean() < np.abs(tile - thumb(source[f])).mean()
    assert (out / "_anon_ray" / "review" / "sheets" / "photo.jpg.jpg").is_file()
