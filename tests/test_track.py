import numpy as np
import pytest

from anon_ray.config import TrackConfig
from anon_ray.core.refine import mask_boxes
from anon_ray.track import ByteTracker, kalman, track
from anon_ray.track.matching import assign, iou_matrix, iou_pairs
from anon_ray.types import FACE, PLATE, Detections

CFG = TrackConfig()


def path(frames, start, velocity, size=(40, 50)):
    """Boxes moving linearly: top-left at start + velocity * (frame - frames[0])."""
    frames = np.asarray(frames)
    tl = np.asarray(start, float) + np.outer(frames - frames[0], velocity)
    return np.concatenate([tl, tl + size], axis=1)


def dets(frames, xyxy, score=0.9, cls=FACE):
    return Detections.build(frames, xyxy, np.broadcast_to(score, (len(frames),)), cls)


def test_iou_matrix_and_pairs():
    a = np.array([[0, 0, 10, 10], [0, 0, 0, 0]])
    b = np.array([[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30]])
    np.testing.assert_allclose(iou_matrix(a, b), [[1 / 3, 1, 0], [0, 0, 0]])
    np.testing.assert_allclose(iou_pairs(a, b[:2]), [1 / 3, 0])
    assert iou_matrix(a[:0], b).shape == (0, 3)


def test_assign_keeps_strong_match_over_two_weak():
    iou = np.array([[0.9, 0.3], [0.3, 0.0]])
    rows, cols = assign(iou, 0.2)
    assert list(zip(rows, cols)) == [(0, 0)]
    assert [len(x) for x in assign(np.zeros((0, 2)), 0.2)] == [0, 0]


def test_kalman_learns_constant_velocity():
    boxes = path(range(20), (10, 20), (3, -1))
    mean, cov = kalman.initiate(boxes[:1])
    for b in boxes[1:]:
        mean, cov = kalman.predict(mean, cov)
        mean, cov = kalman.update(mean, cov, b[None])
    np.testing.assert_allclose(mean[0, 4:6], (3, -1), atol=0.1)
    mean, _ = kalman.predict(mean, cov)
    np.testing.assert_allclose(kalman.cxcywh_to_xyxy(mean[:, :4])[0], path([0, 20], (10, 20), (3, -1))[1], atol=0.5)


def test_one_id_through_a_gap_of_five_and_gap_filled():
    frames = np.r_[0:20, 25:40]  # frames 20..24 missed
    d = dets(frames, path(frames, (100, 100), (4, 2)))
    t = track(d, CFG, range(40))
    assert set(t.track) == {0}
    boxes = mask_boxes(t, CFG, range(40), (1000, 1000))
    on = boxes.select((boxes.frame >= 20) & (boxes.frame < 25))
    np.testing.assert_array_equal(on.frame, np.arange(20, 25))
    np.testing.assert_allclose(on.xyxy, path(np.arange(20, 25), (180, 140), (4, 2)), atol=1e-3)
    assert (on.track == 0).all() and (on.score == 0).all()


def test_track_ends_after_max_age():
    frames = np.r_[0:10, 10 + CFG.max_age + 1 : 30 + CFG.max_age]  # max_age + 1 frames missed
    d = dets(frames, np.tile([100, 100, 140, 150], (len(frames), 1)))
    t = track(d, CFG, range(60))
    assert len(set(t.track[:10])) == 1 and len(set(t.track[10:])) == 1 and t.track[0] != t.track[-1]
    edge = np.r_[0:10, 10 + CFG.max_age : 30 + CFG.max_age]  # exactly max_age missed: kept
    assert set(track(dets(edge, np.tile([100, 100, 140, 150], (len(edge), 1))), CFG, range(60)).track) == {0}


def test_crossing_boxes_keep_their_ids():
    frames = np.arange(60)
    a = dets(frames, path(frames, (0, 100), (6, 0)))
    b = dets(frames, path(frames, (354, 110), (-6, 0)))  # they pass each other around frame 30
    t = track(Detections.concat([a, b]), CFG, range(60))
    assert len(set(t.track[:60])) == 1 and len(set(t.track[60:])) == 1
    assert t.track[0] != t.track[60]


def test_low_score_detections_join_in_stage_two_and_never_start_tracks():
    frames = np.arange(30)
    score = np.where((frames >= 10) & (frames < 20), 0.1, 0.9)  # occluded: weak detections
    obj = dets(frames, path(frames, (50, 50), (3, 0)), score)
    stray = dets([5], [[600, 600, 640, 650]], 0.1)  # a weak detection nowhere near a track
    t = track(Detections.concat([obj, stray]), CFG, range(30))
    assert set(t.track[:30]) == {0}
    assert t.track[30] == -1
    boxes = mask_boxes(t, CFG, range(30), (1000, 1000))
    assert ((boxes.frame == 5) & (boxes.track == -1)).sum() == 1  # still masked


def test_classes_tracked_separately_with_unique_ids():
    frames = np.arange(10)
    boxes = path(frames, (50, 50), (2, 0))
    t = track(Detections.concat([dets(frames, boxes, cls=FACE), dets(frames, boxes, cls=PLATE)]), CFG, range(10))
    face, plate = set(t.track[:10]), set(t.track[10:])
    assert len(face) == len(plate) == 1 and face != plate


def test_deterministic_and_independent_of_row_order():
    rng = np.random.default_rng(0)
    parts = [dets(np.arange(50), path(np.arange(50), rng.uniform(0, 500, 2), rng.normal(0, 3, 2)),
                  rng.uniform(0.1, 1, 50)) for _ in range(6)]
    d = Detections.concat(parts)
    ref = track(d, CFG, range(50))
    perm = rng.permutation(len(d))
    np.testing.assert_array_equal(track(d.select(perm), CFG, range(50)).track, ref.track[perm])


def test_ids_count_per_tracker_instance():
    a, b = ByteTracker(CFG), ByteTracker(CFG, first_id=7)
    box = np.array([[0, 0, 10, 10]])
    assert a.step(0, box, [0.9])[0] == 0 and b.step(0, box, [0.9])[0] == 7
    assert ByteTracker(CFG).step(3, box, [0.9])[0] == 0
    with pytest.raises(ValueError):
        a.step(0, box, [0.9])


def test_detections_outside_frames_rejected():
    with pytest.raises(ValueError):
        track(dets([5], [[0, 0, 10, 10]]), CFG, range(5))
    assert len(track(Detections.empty(), CFG, range(5))) == 0


def test_untracked_detections_before_a_segments_first_owned_frame_are_padded_across_the_cut():
    """A low-score box that a run begun earlier gave to an older track (and padded past the cut)
    is untracked in the segment that starts at the cut's context: it is padded forward there."""
    stray = track(dets([45, 52], [[600, 600, 640, 650], [300, 300, 340, 350]], 0.1), CFG, range(30, 90))
    assert (stray.track == -1).all()
    segment = mask_boxes(stray, CFG, range(30, 90), (1000, 1000), owned_from=60)
    on = segment.select(segment.frame >= 60)
    np.testing.assert_array_equal(on.frame, np.arange(60, 63))  # 52's pads; 45's end at 55
    assert (on.xyxy[:, 0] < 300).all() and (on.xyxy[:, 2] > 340).all() and (on.score == 0).all()
    whole = mask_boxes(stray, CFG, range(30, 90), (1000, 1000))
    assert len(whole) == 2  # inside one segment, an untracked box is masked as it is


def test_plate_tracks_start_at_their_own_score():
    """A plate seen every 3rd frame at 0.3: below high_threshold it seeds no track and is masked
    on those frames only (here without the lone pads); with track.plate_high_threshold 0.25 it is
    tracked and the frames between are filled. Faces at 0.3 seed no track either way."""
    frames = [0, 3, 6, 9]
    boxes = path(frames, (100, 100), (6, 0), size=(60, 20))
    plain = TrackConfig(high_threshold=0.5, small_height=0, plate_lone_pad=0)
    low = TrackConfig(high_threshold=0.5, small_height=0, plate_high_threshold=0.25, plate_lone_pad=0)
    for cls, cfg, tracked in ((PLATE, plain, False), (PLATE, low, True), (FACE, low, False)):
        found = track(dets(frames, boxes, 0.3, cls), cfg, range(12))
        assert bool(np.all(found.track >= 0)) == tracked
        masked = mask_boxes(found, cfg, range(12), (1280, 720))
        assert sorted(set(masked.frame.tolist())) == (list(range(12)) if tracked else frames)


def test_small_faces_start_tracks_lower():
    """A face box seen on every 6th frame only (the video cascade's full passes) at 0.12: under
    32 px tall it starts a track (track.small_high_threshold 0.1), so the frames between are
    filled; 40 px tall it needs high_threshold 0.2 and is masked on its own frames only."""
    frames = [0, 6, 12, 18]
    for height, tracked in ((24, True), (40, False)):
        boxes = path(frames, (100, 100), (1, 0), size=(height * 0.8, height))
        found = track(dets(frames, boxes, 0.12), CFG, range(24))
        assert bool(np.all(found.track >= 0)) == tracked and len(np.unique(found.track)) == 1
        masked = mask_boxes(found, CFG, range(24), (1280, 720))
        assert sorted(set(masked.frame.tolist())) == (list(range(24)) if tracked else frames)
    # Plates keep their own seed whatever their height.
    small_plate = track(dets(frames, path(frames, (100, 100), (4, 0), size=(30, 10)), 0.12, PLATE), CFG, range(24))
    assert (small_plate.track < 0).all()
