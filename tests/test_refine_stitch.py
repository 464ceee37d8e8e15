import numpy as np

from anon_ray.config import SegmentConfig, TrackConfig
from anon_ray.core.plan import plan_segments
from anon_ray.core.refine import PAD_GROWTH, mask_boxes
from anon_ray.core.stitch import asset_tracks, count_objects, global_ids
from anon_ray.io.manifest import track_table
from anon_ray.track import track
from anon_ray.track.matching import iou_matrix
from anon_ray.types import FACE, PLATE, CameraPath, Detections, PacketIndex, SegmentPlan

CFG = TrackConfig()


def linear(frames, start, velocity, size=(40, 40)):
    frames = np.asarray(frames)
    tl = np.asarray(start, float) + np.outer(frames, velocity)
    return np.concatenate([tl, tl + size], axis=1)


def build(frames, xyxy, score, cls, track=-1):
    n = len(frames)
    return Detections.build(frames, xyxy, np.broadcast_to(score, (n,)), cls, np.broadcast_to(track, (n,)))


def test_interpolation_exact_on_a_linear_path():
    frames = np.array([10, 17])  # 6 missing frames
    d = build(frames, linear(frames, (0, 100), (3.5, -1.25)), [0.9, 0.8], FACE, 4)
    out = mask_boxes(d, TrackConfig(pad=0), range(100), (2000, 2000))
    np.testing.assert_array_equal(out.frame, np.arange(10, 18))
    np.testing.assert_allclose(out.xyxy, linear(np.arange(10, 18), (0, 100), (3.5, -1.25)), atol=1e-4)
    np.testing.assert_allclose(out.score, [0.9, 0, 0, 0, 0, 0, 0, 0.8])
    assert (out.track == 4).all() and (out.cls == FACE).all()


def test_gap_longer_than_max_gap_is_not_filled_but_both_runs_padded():
    cfg = TrackConfig(max_gap=3, pad=2)
    frames = np.array([10, 11, 20])
    d = build(frames, np.tile([100, 100, 120, 120], (3, 1)), 0.9, PLATE, 0)
    out = mask_boxes(d, cfg, range(100), (1000, 1000))
    assert sorted(out.frame.tolist()) == [8, 9, 10, 11, 12, 13, 18, 19, 20, 21, 22]


def test_padding_held_grown_and_clipped_to_frame_and_range():
    frames = np.arange(2, 11)
    d = build(frames, np.tile([0, 10, 20, 30], (len(frames), 1)), 0.9, FACE, 1)
    out = mask_boxes(d, CFG, range(0, 13), (15, 25))
    assert out.frame.tolist() == list(range(13))
    before = out.select(out.frame == 0).xyxy[0]
    grow = 10 * PAD_GROWTH * 2  # 2 frames before the first detection
    np.testing.assert_allclose(before, [0, 10 - grow, 15, 25], atol=1e-5)  # clipped to (w, h)
    after = out.select(out.frame == 12).xyxy[0]
    np.testing.assert_allclose(after, [0, 10 - grow, 15, 25], atol=1e-5)
    assert (out.xyxy[:, [0, 2]] <= 15).all() and (out.xyxy[:, [1, 3]] <= 25).all()


def test_untracked_detections_masked_as_is_and_empty_input():
    d = build([3, 4], [[1, 2, 3, 4], [5, 6, 7, 8]], [0.2, 0.3], FACE, [-1, -1])
    out = mask_boxes(d, CFG, range(10), (100, 100))
    np.testing.assert_array_equal(out.xyxy, d.xyxy)
    np.testing.assert_array_equal(out.track, [-1, -1])
    assert len(mask_boxes(Detections.empty(), CFG, range(10), (100, 100))) == 0


def test_untracked_plates_padded_plate_lone_pad_frames_each_side_held_and_with_the_picture():
    d = build([5], [[100, 100, 140, 120]], 0.2, PLATE, -1)
    out = mask_boxes(d, CFG, range(6), (1000, 1000))  # plate_lone_pad 2; frames 6 and 7 are out of range
    assert out.frame.tolist() == [3, 4, 5] and (out.track == -1).all()
    np.testing.assert_allclose(out.score, [0, 0, 0.2])
    grow = np.array([-20, -10, 20, 10]) * PAD_GROWTH  # half the box's w and h per frame of distance
    np.testing.assert_allclose(out.select(out.frame == 3).xyxy[0], [100, 100, 140, 120] + 2 * grow, atol=1e-4)
    # A picture moving 10 px a frame right: each pad is also drawn where the scene carried it.
    path = CameraPath(np.arange(10), np.c_[np.arange(10) * 10.0, np.zeros(10)])
    moved = mask_boxes(d, CFG, range(10), (1000, 1000), path)
    assert sorted(moved.frame.tolist()) == [3, 3, 4, 4, 5, 6, 6, 7, 7]
    np.testing.assert_allclose(np.sort(moved.select(moved.frame == 7).xyxy[:, 0]), [98, 118], atol=1e-4)
    assert count_objects(out) == (0, 1)
    # Faces get no such pads by default (lone_pad 0); either class can be set.
    face = build([5], [[100, 100, 140, 120]], 0.2, FACE, -1)
    assert len(mask_boxes(face, CFG, range(10), (1000, 1000))) == 1
    assert len(mask_boxes(face, TrackConfig(lone_pad=1), range(10), (1000, 1000))) == 3
    assert len(mask_boxes(d, TrackConfig(plate_lone_pad=0), range(10), (1000, 1000))) == 1


def segment_plan(index, start, end, ctx_start, ctx_end, count=2):
    return SegmentPlan("a", index, count, start, end, ctx_start, ctx_end, 0, 0)


def run_segment(plan, dets, size=(1920, 1080)):
    ctx = range(plan.ctx_start, plan.ctx_end)
    inside = dets.select((dets.frame >= ctx.start) & (dets.frame < ctx.stop))
    return mask_boxes(track(inside, CFG, ctx), CFG, ctx, size)


def test_object_split_by_a_cut_gets_one_global_id_and_others_stay_apart():
    frames = np.arange(120)
    walker = build(frames, linear(frames, (0, 100), (5, 0)), 0.9, FACE)
    # Same class, right beside the walker (IoU 0.23) through the overlap: must not merge with it.
    neighbour = build(frames[40:], linear(frames[40:], (25, 100), (5, 0)), 0.9, FACE)
    plate = build(frames[50:], linear(frames[50:], (900, 500), (0, 0), (80, 20)), 0.9, PLATE)
    dets = Detections.concat([walker, neighbour, plate])
    plans = [segment_plan(0, 0, 60, 0, 90), segment_plan(1, 60, 120, 30, 120)]
    results = [(p, run_segment(p, dets)) for p in plans]
    ids = global_ids(results)
    assert [len(g) for g in ids] == [len(d) for _, d in results]
    assert all(((g >= 0) == (d.track >= 0)).all() for g, (_, d) in zip(ids, results))
    merged = asset_tracks(results)
    padded = np.r_[frames, frames[40 - CFG.pad :], frames[50 - CFG.pad :]]
    np.testing.assert_array_equal(merged.frame, np.sort(padded))
    by_object = {}
    for f, box, gid in zip(merged.frame, merged.xyxy, merged.track):
        key = "plate" if box[2] - box[0] > 60 else ("walker" if abs(box[0] - 5 * f) < 12 else "neighbour")
        by_object.setdefault(key, set()).add(int(gid))
    assert all(len(v) == 1 for v in by_object.values()), by_object
    assert len(set.union(*by_object.values())) == 3
    assert sorted(set(merged.track)) == [0, 1, 2]  # dense, walker first (first masked)
    assert by_object["walker"] == {0}


def test_track_table():
    d = build([5, 6, 6, 9, 3], np.arange(20).reshape(5, 4), 0.9, [0, 0, 0, 1, 0], [2, 2, 2, 0, -1])
    table = track_table(d, boxes=False)
    assert table.column_names == ["track", "cls", "first_frame", "last_frame", "frames"]
    assert table.to_pylist() == [
        {"track": 0, "cls": 1, "first_frame": 9, "last_frame": 9, "frames": 1},
        {"track": 2, "cls": 0, "first_frame": 5, "last_frame": 6, "frames": 2},
    ]
    boxed = track_table(d, boxes=True)
    assert boxed.column("frame").to_pylist() == [[9], [5, 6, 6]]
    assert boxed.column("x1").to_pylist() == [[12.0], [0.0, 4.0, 8.0]]
    assert track_table(Detections.empty(), boxes=True).num_rows == 0


def synthetic_video(seed, n=300, objects=10):
    """Faces and plates on linear paths with jitter, dropouts, weak frames and stray detections."""
    rng = np.random.default_rng(seed)
    parts = []
    for _ in range(objects):
        first = int(rng.integers(0, n - 40))
        last = int(rng.integers(first + 30, n + 1))
        frames = np.arange(first, last)
        seen = rng.random(len(frames)) > 0.1  # single-frame misses
        for _ in range(rng.integers(0, 4)):  # longer dropouts, up to max_gap
            g = int(rng.integers(0, len(frames)))
            seen[g : g + int(rng.integers(2, CFG.max_gap + 1))] = False
        frames = frames[seen]
        size = rng.uniform(20, 120, 2)
        box = linear(frames - first, rng.uniform((0, 0), (1800, 960)), rng.normal(0, 4, 2), size)
        box += rng.normal(0, 0.5, box.shape)
        weak = rng.random(len(frames)) < 0.15
        score = np.where(weak, rng.uniform(0.1, 0.5, len(frames)), rng.uniform(0.5, 1, len(frames)))
        parts.append(build(frames, box, score, int(rng.integers(0, 2))))
    corner = rng.uniform(0, 1000, (15, 2))
    parts.append(build(rng.integers(0, n, 15), np.c_[corner, corner + 30], rng.uniform(0.1, 0.4, 15), FACE))
    return Detections.concat(parts)


def coverage(reference: Detections, candidate: Detections, min_iou=0.9) -> float:
    """Share of reference boxes with a candidate box of the same frame and class at IoU >= min_iou.

    Boxes clipped to nothing (objects that left the frame) mask nothing and are not counted.
    """
    wh = reference.xyxy[:, 2:] - reference.xyxy[:, :2]
    reference = reference.select((wh > 0).all(axis=1))
    hit = 0
    for f, c in set(zip(reference.frame.tolist(), reference.cls.tolist())):
        r = reference.select((reference.frame == f) & (reference.cls == c))
        k = candidate.select((candidate.frame == f) & (candidate.cls == c))
        hit += int((iou_matrix(r.xyxy, k.xyxy) >= min_iou).any(axis=1).sum()) if len(k) else 0
    return hit / len(reference)


def test_cut_independence_of_track_and_refine():
    n, size = 300, (1920, 1080)
    index = PacketIndex(np.arange(n) * 1001, np.arange(n) % 24 == 0, 1, 30000)  # 29.97 fps, GOP 24
    for seed in range(5):
        dets = synthetic_video(seed, n)
        whole = mask_boxes(track(dets, CFG, range(n)), CFG, range(n), size)
        for seconds in (1.0, 2.0, 3.5):
            plans = plan_segments("v", index, 29.97, SegmentConfig(seconds=seconds))
            assert len(plans) > 1
            results = [(p, run_segment(p, dets, size)) for p in plans]
            cut = asset_tracks(results)
            assert coverage(whole, cut) >= 0.995, (seed, seconds, coverage(whole, cut))
            assert coverage(cut, whole) >= 0.995, (seed, seconds, coverage(cut, whole))
            # Every detection is masked on its frame (clipped to it), whatever the cut.
            clipped = mask_boxes(dets.with_track(np.full(len(dets), -1)), TrackConfig(plate_lone_pad=0), range(n), size)
            assert coverage(clipped, cut, min_iou=0.999) == 1.0
