"""Cut a video's frames into keyframe-aligned segments with context, from its packet index.

Cutting uses presentation times (pts × time base), not fps × seconds, so variable-frame-rate
video gets segments of about equal duration. Each cut moves to the keyframe nearest its target
time if one lies within half a segment; otherwise (no keyframe near: a single keyframe, very long
GOPs, intra-refresh streams) the cut falls on a plain frame. Segments thus last at most 1.5 ×
seconds (all but the last at least 0.5 ×), which bounds a worker's memory whatever the GOP
structure.

Seek rule. A segment decodes from `seek_frame`, WARMUP_GOPS keyframes before the last keyframe at
or before ctx_start (frame 0 when there is none). Starting at the keyframe at/below ctx_start is
enough for a clean random-access point (IDR, or CRA with open GOP: only its leading frames, which
display before it, reference the previous GOP). But containers flag more than that as keyframes:
non-IDR I-frames (x264 scenecut I-frames, AVI/MKV/TS muxers) after which P-frames may still
reference frames before the I-frame, and mp4 seeks by dts, which can land a keyframe late. A
wrongly decoded frame is a frame the detector may miss, i.e. a leak, so by default one extra GOP is
decoded (decode only; frames before ctx_start are neither detected nor written). The decoder must
map frames by pts (PacketIndex.index_of) and drop those before ctx_start, including any leading
frames of the seek keyframe.

Cost: with a single keyframe (or none before ctx_start), every segment decodes from the file start,
so segment k decodes k × seconds of video before its context: total decode work grows with the
square of the length. Detection, the dominant cost, is unaffected.
"""

from __future__ import annotations

import numpy as np

from anon_ray.config import SegmentConfig
from anon_ray.types import PacketIndex, SegmentPlan

WARMUP_GOPS = 1


# Context is not free: a segment decodes and detects `overlap` extra frames on each side, so a
# video is cut finer than `segment.seconds` only while each segment owns at least this many times
# its overlap (DESIGN.md section 1: overlap / segment length <= 10%).
MIN_OWNED_PER_OVERLAP = 10
# Frames past ctx_end whose packets a decoder may read before it returns the last wanted frame:
# B-frame reordering holds frames back by up to the stream's reorder depth (16 at most in H.264).
REORDER_FRAMES = 16


def plan_segments(
    asset: str, index: PacketIndex, fps: float, cfg: SegmentConfig, *, workers: int = 1,
    warmup_gops: int = WARMUP_GOPS
) -> list[SegmentPlan]:
    """Segments tiling the frames [0, len(index)) exactly; [] for a video without frames.

    `fps` only gives the display duration of the last frame; cutting uses the pts. A video
    shorter than `workers` segments is cut into `workers` shares instead (a pool of that many
    would otherwise leave some idle on it), as far as the context cost allows.
    """
    n = len(index)
    if n == 0:
        return []
    t = (index.pts - index.pts[0]) * (index.time_base_num / index.time_base_den)
    t_end = t[-1] + (1.0 / fps if fps > 0 else 0.0)
    keys = np.flatnonzero(index.key)
    cuts = _cuts(t, t_end, keys, segment_seconds(t_end, n, cfg, workers)) + [n]
    overlap = max(0, cfg.overlap)
    plans = []
    for k, (start, end) in enumerate(zip(cuts[:-1], cuts[1:])):
        ctx_start = max(0, start - overlap)
        seek = _seek_frame(keys, ctx_start, warmup_gops)
        ctx_end = min(n, end + overlap)
        plans.append(
            SegmentPlan(
                asset=asset,
                index=k,
                count=len(cuts) - 1,
                start=start,
                end=end,
                ctx_start=ctx_start,
                ctx_end=ctx_end,
                seek_pts=int(index.pts[seek]),
                seek_frame=seek,
                **dict(zip(("byte_start", "byte_end"), byte_span(index, seek, ctx_end))),
            )
        )
    return plans


def byte_span(index: PacketIndex, first: int, stop: int) -> tuple[int, int]:
    """The bytes holding the packets that decoding frames [first, stop) reads, other streams'
    packets interleaved there included; (-1, -1) when the scan has no positions for them."""
    if index.pos is None or index.size is None:
        return -1, -1
    sel = slice(first, min(len(index), stop + REORDER_FRAMES))
    pos, size = index.pos[sel], index.size[sel]
    if not len(pos) or pos.min() < 0:
        return -1, -1
    return int(pos.min()), int((pos + size).max())


def segment_seconds(duration_s: float, frames: int, cfg: SegmentConfig, workers: int) -> float:
    """`cfg.seconds`, or less so that up to `workers` segments share a short video, each owning at
    least MIN_OWNED_PER_OVERLAP x overlap frames (0 stays one segment)."""
    if cfg.seconds <= 0 or workers <= 1 or duration_s <= 0:
        return cfg.seconds
    shares = min(workers, frames // max(1, MIN_OWNED_PER_OVERLAP * cfg.overlap))
    return min(cfg.seconds, duration_s / shares) if shares >= 2 else cfg.seconds


def _cuts(t: np.ndarray, t_end: float, keys: np.ndarray, seconds: float) -> list[int]:
    """Start frame of each segment."""
    cuts = [0]
    if seconds <= 0:
        return cuts
    tolerance = seconds / 2
    key_t = t[keys]
    while cuts[-1] < len(t) - 1:
        cur = cuts[-1]
        target = t[cur] + seconds
        if t_end - target < tolerance:  # the rest is at most 1.5 × seconds: one segment
            break
        after = np.searchsorted(keys, cur, "right")  # first keyframe after the current start
        i = np.clip(np.searchsorted(key_t, target), after, len(keys))
        near = [j for j in (i - 1, i) if after <= j < len(keys) and abs(key_t[j] - target) <= tolerance]
        if near:
            cut = int(keys[min(near, key=lambda j: abs(key_t[j] - target))])
        else:
            j = int(np.searchsorted(t, target))
            cut = j - 1 if j == len(t) or (j > 0 and target - t[j - 1] <= t[j] - target) else j
        cuts.append(int(np.clip(cut, cur + 1, len(t) - 1)))
    return cuts


def _seek_frame(keys: np.ndarray, ctx_start: int, warmup_gops: int) -> int:
    j = int(np.searchsorted(keys, ctx_start, "right")) - 1 - warmup_gops
    return int(keys[j]) if j >= 0 else 0
