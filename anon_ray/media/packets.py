"""Frame index of a video from its packets alone: cheap enough to plan segments before decoding."""

from __future__ import annotations

import struct
from fractions import Fraction
from typing import BinaryIO, Protocol

import av
import numpy as np

from anon_ray.media import MediaError
from anon_ray.media.sampletable import SampleTable, read_sample_table
from anon_ray.types import PacketIndex

# Packets the demuxer reads at the head of a file, and at most at its tail (from the last
# keyframe on), to check an index read from the sample tables before it is used.
CHECKED_PACKETS = 300


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


def index_packets(path: str) -> PacketIndex:
    """`scan_packets`' index; for an MP4/MOV file read from its sample tables instead of every
    packet (`table_index`): planning a 24 h recording then reads its header, not its 50 GB."""
    index = table_index(path)
    return index if index is not None else scan_packets(path)


def table_index(src: Source) -> PacketIndex | None:
    """The index from an MP4/MOV file's sample tables (sampletable.py) where the demuxer agrees
    with them at the head and the tail of the file; None where there are none or they disagree.
    Reads the header, the first CHECKED_PACKETS packets and the last GOP, whatever the length."""
    try:
        with open(src, "rb") if isinstance(src, str) else src.open() as fh:
            table = read_sample_table(fh)
    except (OSError, struct.error, ValueError):
        table = None
    return _checked(src, table) if table is not None else None


def _checked(src: Source, table: SampleTable) -> PacketIndex | None:
    """The table as a PacketIndex, in the demuxer's timestamps, or None where the two disagree."""
    n = len(table.pts)
    if np.any(table.size == 0):
        return None  # scan_packets drops empty packets; leave such files to it
    try:
        with open_input(src) as container:
            stream = main_video_stream(container)
            if stream.time_base != Fraction(1, table.timescale):
                return None
            head = _packets(container, stream, CHECKED_PACKETS)
            if not head or head[0][0] is None:
                return None
            shift = head[0][0] - int(table.pts[0])
            if not _agree(head, table, 0, shift):
                return None
            if len(head) < n:  # the head did not reach the end: read from the last keyframe on
                last_key = int(np.flatnonzero(table.key)[-1]) if table.key.any() else 0
                container.seek(int(table.pts[last_key]) + shift, stream=stream, backward=True)
                tail = _packets(container, stream, n - last_key)
                if len(tail) != n - last_key or not _agree(tail, table, last_key, shift):
                    return None
    except (av.FFmpegError, MediaError):
        return None
    pts = table.pts + shift
    order = np.argsort(pts, kind="stable")
    if np.any(np.diff(pts[order]) == 0):
        return None  # scan_packets names the duplicate timestamps
    # The time base checked above, from the table: the stream is freed with its closed container
    # (reading it here returned None or garbage, and once left a job spinning).
    return PacketIndex(pts=pts[order], key=table.key[order], time_base_num=1, time_base_den=table.timescale,
                       pos=table.pos[order], size=table.size[order], last_duration=int(table.duration[order[-1]]))


def _packets(container: av.container.InputContainer, stream, limit: int) -> list[tuple]:
    """(pts, key, pos, size, duration, discard) of up to `limit` packets from where the demuxer is."""
    out: list[tuple] = []
    for packet in container.demux(stream):
        if packet.size == 0:
            continue
        out.append((packet.pts, packet.is_keyframe, packet.pos, packet.size, packet.duration or 0, packet.is_discard))
        if len(out) >= limit:
            break
    return out


def _agree(packets: list[tuple], table: SampleTable, first: int, shift: int) -> bool:
    """The demuxer's packets from sample `first` on match the table's samples one for one."""
    k = np.arange(first, first + len(packets))
    if k[-1] >= len(table.pts):
        return False
    pts, key, pos, size, duration, discard = zip(*packets)
    return (not any(discard) and None not in pts
            and np.array_equal(np.asarray(pts, np.int64), table.pts[k] + shift)
            and np.array_equal(np.asarray(key, bool), table.key[k])
            and np.array_equal(np.asarray(pos, np.int64), table.pos[k])
            and np.array_equal(np.asarray(size, np.int64), table.size[k])
            and np.array_equal(np.asarray(duration, np.int64), table.duration[k]))
