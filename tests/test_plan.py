import numpy as np

from anon_ray.config import SegmentConfig
from anon_ray.core.plan import plan_segments
from anon_ray.types import PacketIndex


def index(n, gop=30, step=1001, den=30000, first_key=0):
    """n frames at 29.97 fps (pts in 1/30000 s), a keyframe every `gop` frames from first_key."""
    frames = np.arange(n)
    return PacketIndex(frames * step, (frames >= first_key) & ((frames - first_key) % gop == 0), 1, den)


def check_tiling(plans, idx, overlap):
    n = len(idx)
    assert plans[0].start == 0 and plans[-1].end == n
    for k, p in enumerate(plans):
        assert p.index == k and p.count == len(plans)
        assert p.start < p.end  # never empty
        assert p.ctx_start == max(0, p.start - overlap) and p.ctx_end == min(n, p.end + overlap)
        assert 0 <= p.seek_frame <= p.ctx_start
        assert p.seek_frame == 0 or idx.key[p.seek_frame]
        assert p.seek_pts == idx.pts[p.seek_frame]
    for a, b in zip(plans, plans[1:]):
        assert a.end == b.start  # no gap, no overlap


def test_empty_and_short_video_and_one_segment_settings():
    assert plan_segments("v", index(0), 29.97, SegmentConfig()) == []
    (p,) = plan_segments("v", index(10), 29.97, SegmentConfig(seconds=30))
    assert (p.start, p.end, p.ctx_start, p.ctx_end, p.seek_frame, p.seek_pts) == (0, 10, 0, 10, 0, 0)
    for seconds in (0, -1):
        (p,) = plan_segments("v", index(5000), 29.97, SegmentConfig(seconds=seconds))
        assert (p.start, p.end) == (0, 5000)


def test_cuts_on_keyframes_and_seek_one_gop_before_the_context():
    idx = index(900, gop=30)
    plans = plan_segments("v", idx, 29.97, SegmentConfig(seconds=10, overlap=30))
    check_tiling(plans, idx, 30)
    assert [p.start for p in plans] == [0, 300, 600]  # 10 s at 29.97 fps is 299.7 frames
    # ctx_start 270 is a keyframe: its GOP alone would do for a clean IDR/CRA, one more is decoded.
    assert [p.seek_frame for p in plans] == [0, 240, 540]
    plans = plan_segments("v", idx, 29.97, SegmentConfig(seconds=10, overlap=30), warmup_gops=0)
    assert [p.seek_frame for p in plans] == [0, 270, 570]


def test_cut_moves_to_the_nearest_keyframe():
    idx = index(1000, gop=70)  # keyframes 0, 70, ..., 280, 350, ...
    plans = plan_segments("v", idx, 29.97, SegmentConfig(seconds=10, overlap=20))
    check_tiling(plans, idx, 20)
    assert plans[1].start == 280  # nearest to 299.7 (350 is farther)
    assert all(idx.key[p.start] for p in plans)
    assert plans[1].seek_frame == 140  # last keyframe at/before ctx_start 260 is 210; one GOP before


def test_single_keyframe_cuts_anyway_and_every_segment_decodes_from_the_start():
    idx = index(3000, gop=10**9)
    plans = plan_segments("v", idx, 29.97, SegmentConfig(seconds=10))
    check_tiling(plans, idx, 30)
    assert len(plans) == 10
    assert all(p.seek_frame == 0 and p.seek_pts == 0 for p in plans)
    assert all(abs(p.end - p.start - 300) <= 1 for p in plans[:-1])


def test_first_keyframe_after_the_start_decodes_from_the_file_start():
    idx = index(900, gop=60, first_key=37)  # frames 0..36 precede any keyframe: keys 37, 97, ...
    plans = plan_segments("v", idx, 29.97, SegmentConfig(seconds=4, overlap=30))
    check_tiling(plans, idx, 30)
    assert plans[0].seek_frame == 0 and plans[0].seek_pts == idx.pts[0]
    assert plans[1].start == 97 and plans[1].ctx_start == 67
    assert plans[1].seek_frame == 0  # keyframe 37 is at/below ctx 67, the warm-up GOP before it is none
    plans = plan_segments("v", idx, 29.97, SegmentConfig(seconds=4, overlap=70), warmup_gops=0)
    assert plans[1].ctx_start == 27 and plans[1].seek_frame == 0  # context before the first keyframe


def test_open_gop_context_starting_on_leading_frames():
    # Open GOP: the leading B-frames of keyframe 120 display at 118 and 119, before it, but are
    # decoded after it from references in the previous GOP. A context starting on them must be
    # decoded from keyframe 60 or earlier, never from 120: the seek keyframe is chosen in display
    # order at or before ctx_start, then WARMUP_GOPS further back.
    idx = index(400, gop=60)
    cfg = SegmentConfig(seconds=4, overlap=2)
    p = plan_segments("v", idx, 29.97, cfg, warmup_gops=0)[1]
    assert (p.start, p.ctx_start, p.seek_frame) == (120, 118, 60)
    assert plan_segments("v", idx, 29.97, cfg)[1].seek_frame == 0


def test_variable_frame_rate_cuts_by_time():
    # 300 frames at 30 fps then 600 at 60 fps, time base 1/60: 10 s + 10 s.
    pts = np.r_[np.arange(300) * 2, 600 + np.arange(600)]
    idx = PacketIndex(pts, np.arange(900) % 10 == 0, 1, 60)
    plans = plan_segments("v", idx, 45.0, SegmentConfig(seconds=5, overlap=10))
    check_tiling(plans, idx, 10)
    assert [p.start for p in plans] == [0, 150, 300, 600]  # every 5 s, not every 225 frames


def test_tiling_on_random_indexes():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 3000))
        pts = np.cumsum(rng.integers(1, 5, n)) + int(rng.integers(-1000, 1000))
        key = rng.random(n) < rng.choice([0.0, 0.001, 0.02, 0.2, 1.0])
        key[0] = rng.random() < 0.8
        idx = PacketIndex(pts.astype(np.int64), key, 1, int(rng.choice([25, 90, 1000])))
        cfg = SegmentConfig(seconds=float(rng.choice([0, 0.01, 0.5, 2, 10, 60])), overlap=int(rng.integers(0, 60)))
        plans = plan_segments("v", idx, float(rng.uniform(1, 120)), cfg, warmup_gops=int(rng.integers(0, 3)))
        check_tiling(plans, idx, cfg.overlap)
        if cfg.seconds > 0:
            tb = 1 / idx.time_base_den
            durations = [(idx.pts[min(p.end, n - 1)] - idx.pts[p.start]) * tb for p in plans[:-1]]
            assert max(durations, default=0) <= 1.5 * cfg.seconds + 4 * tb + 1e-9


def test_a_short_video_is_shared_by_the_pool_as_far_as_the_context_allows():
    cfg = SegmentConfig(seconds=30, overlap=30)
    forty = index(1200)  # 40 s: one 30 s default segment would keep one of two workers idle
    assert len(plan_segments("v", forty, 29.97, cfg)) == 1
    two = plan_segments("v", forty, 29.97, cfg, workers=2)
    assert len(two) == 2 and all(p.end - p.start >= 10 * cfg.overlap for p in two)
    check_tiling(two, forty, 30)
    assert len(plan_segments("v", forty, 29.97, cfg, workers=4)) == 4  # 300 frames each: 10x the overlap
    assert len(plan_segments("v", forty, 29.97, cfg, workers=8)) == 4  # not 8: 150 frames would cost 40% context
    nine = index(275)  # 9 s: halves of 137 frames would decode 44% more than they own
    assert len(plan_segments("v", nine, 29.97, cfg, workers=2)) == 1
    assert len(plan_segments("v", forty, 29.97, SegmentConfig(seconds=0), workers=2)) == 1  # no cuts asked
    long = index(30 * 300)  # 300 s: already ten 30 s segments
    assert len(plan_segments("v", long, 29.97, cfg, workers=2)) == len(plan_segments("v", long, 29.97, cfg))
