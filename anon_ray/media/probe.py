"""Video probe: what the main video stream is (size, rotation, rate, colour, other streams).

Frames travel in STORED orientation (as coded); `rotation` says how to turn them upright and is
carried to the output as the container's display matrix, so pixels are never re-rotated.
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np

from anon_ray.media import MediaError
from anon_ray.media.packets import Source, main_video_stream, open_input, scan_packets
from anon_ray.media.rotation import normalize
from anon_ray.types import PacketIndex, VideoInfo

COPIED_TYPES = ("audio", "subtitle")  # the source streams the output carries over (I6)


def _fraction(value: Fraction) -> tuple[int, int]:
    return value.numerator, value.denominator


def first_frame(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> av.VideoFrame:
    try:
        return next(container.decode(stream))
    except StopIteration:
        raise MediaError("video has no decodable frame") from None
    except av.FFmpegError as exc:
        raise MediaError(f"first video frame does not decode: {exc}") from exc


def display_matrix(frame: av.VideoFrame) -> tuple[int, ...] | None:
    # PyAV exposes the container's display matrix only on decoded frames (the decoder copies the
    # stream's coded side data onto each frame), hence the one-frame decode in `probe`.
    for side in frame.side_data:
        if side.type == av.sidedata.sidedata.Type.DISPLAYMATRIX:
            return tuple(int(v) for v in np.frombuffer(bytes(side), np.int32)[:9])
    return None


def header_seconds(path: str) -> float | None:
    """The duration the container's header states, without reading its packets; None if it
    states none."""
    with open_input(path) as container:
        return container.duration / av.time_base if container.duration else None


def _tag(in_frame, in_stream) -> int:
    """A colour description: the decoded frame's, unless it leaves it unspecified (0, or 2 for
    primaries, transfer and matrix) and the container says it (a MOV `colr` atom over ProRes)."""
    value = int(in_frame)
    return int(in_stream or 0) if value in (0, 2) and int(in_stream or 0) not in (0, 2) else value


def probe(src: Source, index: PacketIndex | None = None) -> VideoInfo:
    """Describe the main video stream; pass the `scan_packets` result to avoid a second scan (a
    source other than a local path must)."""
    index = scan_packets(src) if index is None else index
    with open_input(src) as container:
        stream = main_video_stream(container)
        ctx = stream.codec_context
        time_base = stream.time_base
        rate = stream.average_rate or stream.guessed_rate
        if not rate and len(index) > 1:
            rate = Fraction(len(index) - 1) / (Fraction(int(index.pts[-1] - index.pts[0])) * time_base)
        if not rate:
            raise MediaError("video frame rate is unknown")
        span = Fraction(int(index.pts[-1] - index.pts[0])) * time_base
        counts = {kind: sum(s.type == kind for s in container.streams) for kind in COPIED_TYPES}
        # The container's colour description, read before decoding overwrites it with the frame's.
        tagged = (ctx.color_range, ctx.color_primaries, ctx.color_trc, ctx.colorspace) if ctx else (0, 2, 2, 2)
        frame = first_frame(container, stream)
        matrix = display_matrix(frame)
        return VideoInfo(
            width=ctx.width,
            height=ctx.height,
            # VideoFrame.rotation is counter-clockwise (FFmpeg's av_display_rotation_get).
            rotation=normalize(-frame.rotation) if matrix else 0,
            fps=_fraction(rate),
            time_base=_fraction(time_base),
            n_frames=len(index),
            duration_s=float(span + 1 / rate),
            pix_fmt=ctx.pix_fmt or frame.format.name,
            codec=ctx.name,
            color_range=_tag(frame.color_range, tagged[0]),
            color_primaries=_tag(frame.color_primaries, tagged[1]),
            color_trc=_tag(frame.color_trc, tagged[2]),
            colorspace=_tag(frame.colorspace, tagged[3]),
            audio_streams=counts["audio"],
            subtitle_streams=counts["subtitle"],
            start_pts=int(index.pts[0]),
            display_matrix=matrix,
            container=container.format.name,
        )

