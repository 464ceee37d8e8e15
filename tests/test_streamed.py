"""Streamed mask boxes equal the whole-segment refinement, frame by frame, however they are fed."""

import numpy as np
import pytest

from anon_ray.config import TrackConfig
from anon_ray.core.refine import mask_boxes
from anon_ray.core.streamed import StreamedBoxes
from anon_ray.track import track
from anon_ray.types import FACE, PLATE, CameraPath, Detections

FRAMES = range(40, 340)
SIZE = (640, 360)


def scene(seed: int) -> Detections:
    """Objects of both classes moving across each other, with dropouts of every length (some
    longer than max_gap), low-score frames, and objects entering at the segment's first frames."""
    rng = np.random.default_rng(seed)
    parts = []
    for k in range(14):
        first = FRAMES.start + (0 if k < 3 else int(rng.integers(0, len(FRAMES) - 20)))
        frames = np.arange(first, min(FRAMES.stop, first + int(rng.integers(10, 200))))
        frames = frames[rng.random(len(frames)) > rng.choice([0.0, 0.2, 0.6])]
        for a in rng.integers(0, len(frames), 2):
            frames = np.r_[frames[:a], frames[a + int(rng.integers(1, 25)):]]  # long gaps too
        tl = rng.uniform(0, 500, 2) + np.outer(frames - first, rng.normal(0, 3, 2))
        size = rng.uniform(12, 90, 2)
        score = np.where(rng.random(len(frames)) < 0.25, 0.3, 0.9)
        parts.append(Detections.build(frames, np.c_[tl, tl + size], score, PLATE if k % 4 == 0 else FACE))
    return Detections.concat(parts)


def by_frame(d: Detections) -> dict[int, np.ndarray]:
    rows = np.c_[d.frame, d.cls, d.xyxy].astype(np.float64)
    rows = rows[np.lexsort(rows.T[::-1])]
    return {int(f): rows[rows[:, 0] == f, 1:] for f in np.unique(rows[:, 0])}


def camera(seed: int) -> CameraPath:
    """A pan with pauses and a whip: positions accumulated frame by frame, as CameraMeter does."""
    rng = np.random.default_rng(seed + 100)
    shift = rng.normal(0, 4, (len(FRAMES), 2)) * (rng.random((len(FRAMES), 1)) < 0.7)
    shift[100:110] += [60.0, -5.0]
    shift[0] = 0.0
    return CameraPath(np.arange(FRAMES.start, FRAMES.stop), np.cumsum(shift, axis=0))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("moving", [False, True])
@pytest.mark.parametrize("cfg", [TrackConfig(), TrackConfig(max_gap=3, pad=9), TrackConfig(max_gap=20, pad=0)])
def test_streamed_boxes_equal_the_whole_segment(seed, cfg, moving):
    raw = scene(seed)
    path = camera(seed) if moving else None
    owned_from = FRAMES.start + 40 * (seed % 2)  # odd seeds: a leading context of 40 frames
    whole = mask_boxes(track(raw, cfg, FRAMES, path), cfg, FRAMES, SIZE, path, owned_from)
    stream = StreamedBoxes(cfg, FRAMES, SIZE, owned_from)
    rng = np.random.default_rng(seed)
    got, covered, start = [], [], FRAMES.start
    while start < FRAMES.stop:
        stop = min(FRAMES.stop, start + int(rng.integers(1, 9)))  # batches of any size
        part = CameraPath(path.frame[start - FRAMES.start:stop - FRAMES.start],
                          path.xy[start - FRAMES.start:stop - FRAMES.start]) if path else None
        span, boxes = stream.add(raw.select((raw.frame >= start) & (raw.frame < stop)), stop, part)
        assert span.start == (covered[-1].stop if covered else FRAMES.start)
        assert len(boxes) == 0 or (boxes.frame.min() >= span.start and boxes.frame.max() < span.stop)
        covered.append(span)
        got.append(boxes)
        start = stop
    assert covered[-1].stop == FRAMES.stop
    # Every frame is final long before the end, except the lookahead.
    assert max(len(s) for s in covered[-1:]) <= max(cfg.max_gap + 1, cfg.pad) + 8
    want, have = by_frame(whole), by_frame(Detections.concat(got))
    assert want.keys() == have.keys() and len(whole) > 200
    for f in want:
        np.testing.assert_array_equal(have[f], want[f], err_msg=f"frame {f}")


def test_a_frame_masked_with_other_boxes_fails_the_segment():
    from anon_ray.run import pipeline
    from anon_ray.types import SegmentPlan

    cfg = TrackConfig()
    raw = scene(0)
    whole = mask_boxes(track(raw, cfg, FRAMES), cfg, FRAMES, SIZE)
    seg = SegmentPlan(asset="a", index=0, count=1, start=60, end=300, ctx_start=FRAMES.start, ctx_end=FRAMES.stop,
                      seek_pts=0, seek_frame=0)
    per = pipeline.group_by_frame(whole)
    used = {i: per.get(i, Detections.empty()) for i in range(seg.start, seg.end)}
    pipeline._check_streamed(used, whole, seg)  # the same boxes: fine
    busy = max(used, key=lambda i: len(used[i]))
    used[busy] = used[busy].select(np.arange(len(used[busy])) > 0)  # one box short
    with pytest.raises(pipeline.AssetError, match=f"frame {busy}"):
        pipeline._check_streamed(used, whole, seg)
