"""Frame index of a video from its packets alone: cheap enough to plan segments before decoding."""

from __future__ import annotations

from typing import BinaryIO, Protocol

import av
import numpy as np

from anon_ray.media import MediaError
from anon_ray.types import PacketIndex


class Openable(Protocol):
    """A source read through file objects (a remote object fetched in ranges): one per open."""

    def open(self) -> BinaryIO: ...


Source = str | Openable


def open_input(src: Source) -> av.container.InputContainer:
    # Tags in a legacy 8-bit charset (old cameras write Latin-1 titles) must not make a video
    # unreadable; no tag text reaches the output anyway.
    try:
        return av.open(src if isinstance(src, str) else src.open(), mode="r", metadata_errors="replace")
    except (av.FFmpegError, OSError) as exc:
        raise MediaError(f"cannot open {src if isinstance(src, str) else 'the input'}: {exc}") from exc


def main_video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    """The first real video stream: cover art and thumbnails are video streams too."""
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    raise MediaError("no video stream")


def scan_packets(path: str) -> PacketIndex:
    """Every displayed frame's pts and keyframe flag, sorted by pts (B-frames reorder).

    Packets the demuxer flags as discarded (frames an edit list trims away) are not displayed and
    so are not frames. A packet without pts falls back to its dts. Duplicate timestamps cannot be
    told apart by a decoder or kept by a muxer, so they make the file unsupported.
    """
    with open_input(path) as container:
        stream = main_video_stream(container)
        pts: list[int] = []
        key: list[bool] = []
        pos: list[int] = []
        size: list[int] = []
        duration: list[int] = []
        try:
            for packet in container.demux(stream):
                if packet.size == 0 or packet.is_discard:  # the demuxer's end-of-stream marker
                    continue
                ts = packet.pts if packet.pts is not None else packet.dts
                if ts is None:
                    raise MediaError(f"video packet {len(pts)} has no timestamp")
                pts.append(ts)
                key.append(packet.is_keyframe)
                pos.append(packet.pos if packet.pos is not None else -1)
                size.append(packet.size)
                duration.append(packet.duration or 0)
        except av.FFmpegError as exc:
            raise MediaError(f"demuxing {path} failed after {len(pts)} packets: {exc}") from exc
        time_base = stream.time_base
    if not pts:
        raise MediaError("video stream has no packets")
    pts_arr = np.asarray(pts, np.int64)
    order = np.argsort(pts_arr, kind="stable")
    pts_arr = pts_arr[order]
    if np.any(np.diff(pts_arr) == 0):
        raise MediaError("video has duplicate frame timestamps")
    return PacketIndex(pts=pts_arr, key=np.asarray(key, bool)[order],
                       time_base_num=time_base.numerator, time_base_den=time_base.denominator,
                       pos=np.asarray(pos, np.int64)[order], size=np.asarray(size, np.int64)[order],
                       last_duration=int(duration[order[-1]]))
