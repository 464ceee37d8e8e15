"""Segment decode: the frames [first, stop) of a video as RGB, with their source pts (PyAV).

Frames come in STORED orientation and keep the source's own timestamps, in its time base.
"""

from __future__ import annotations

from collections.abc import Iterator

import av
import numpy as np

from anon_ray.media import MediaError
from anon_ray.media.packets import Source, main_video_stream, open_input
from anon_ray.media.yuv import to_rgb
from anon_ray.types import PacketIndex


class _SeekOvershot(Exception):
    """A seek landed after the first wanted frame; nothing was yielded yet."""


def decode(src: Source, seek_pts: int | None, index: PacketIndex, first: int, stop: int
           ) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield (frame index, pts, rgb uint8 (h, w, 3) in stored orientation) for frames [first, stop).

    Decoding starts at the keyframe `seek_pts` (None: the file's start). Every index in the range
    is yielded exactly once and in order, or MediaError is raised: a frame the decoder drops or a
    file that ends early must never turn into a silently shorter segment.

    Seeking only saves decode work. Some demuxers land late (MPEG-TS seeks by byte position and
    can pass the wanted keyframe, or find nothing when asked for the first one), so an overshoot
    retries from the keyframe before and then from the file's start.
    """
    if first >= stop:
        return
    for target in _seek_targets(index, seek_pts, first):
        try:
            yield from _decode_from(src, target, index, first, stop)
            return
        except _SeekOvershot:
            continue


def _seek_targets(index: PacketIndex, seek_pts: int | None, first: int) -> list[int | None]:
    if seek_pts is None or seek_pts <= index.pts[0]:
        return [None]
    if seek_pts > index.pts[first]:  # the caller's mistake, not the demuxer's: no retry hides it
        return [seek_pts]
    keys = index.pts[index.key]
    earlier = keys[(keys < seek_pts) & (keys > index.pts[0])]
    return [seek_pts, *[int(k) for k in earlier[-1:]], None]


def _decode_from(src: Source, seek_pts: int | None, index: PacketIndex, first: int, stop: int
                 ) -> Iterator[tuple[int, int, np.ndarray]]:
    # Landing after `first` is the demuxer's doing only when the seek aimed at or before it.
    overshoot_possible = seek_pts is not None and seek_pts <= index.pts[first]
    with open_input(src) as container:
        stream = main_video_stream(container)
        stream.thread_type = "AUTO"
        # AVI stores frames in decode order with no presentation times: a decoded B-frame carries
        # its packet's decode slot. The decoder still outputs frames in display order, so there the
        # n-th frame after a keyframe takes the n-th slot; every keyframe must land on its own
        # slot, which catches a frame the decoder dropped.
        by_order = container.format.name == "avi"
        slot: int | None = None
        expected = first
        try:
            if seek_pts is not None:
                container.seek(seek_pts, stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                pts = frame.pts if frame.pts is not None else frame.dts
                i = index.index_of(pts) if pts is not None else len(index)
                if i >= len(index) or index.pts[i] != pts:
                    raise MediaError(f"decoded a frame with pts {pts} that the packet scan does not know")
                if by_order:
                    if slot is not None and not frame.key_frame:
                        i, pts = slot + 1, int(index.pts[min(slot + 1, len(index) - 1)])
                    elif slot is not None and i != slot + 1:
                        raise MediaError(f"AVI keyframe at frame {i} decoded in slot {slot + 1}")
                    slot = i
                if i < first:
                    continue
                if i >= stop:
                    return
                if i != expected:
                    if expected == first and overshoot_possible:
                        raise _SeekOvershot
                    raise MediaError(f"frame {expected} missing from decode (got frame {i})")
                yield i, pts, to_rgb(frame)
                expected += 1
        except av.FFmpegError as exc:
            raise MediaError(f"decoding failed at frame {expected}: {exc}") from exc
        if expected == first and overshoot_possible:
            raise _SeekOvershot
        if expected < stop:
            raise MediaError(f"video ended at frame {expected}, expected frames up to {stop}")


