"""Finalize: the encoded parts joined by stream copy, the source's audio and subtitles muxed in,
the result re-read and verified before it takes the output name (I1, I6).

Timestamps are the source's own, in its time base, from decode through the part files to the
output: the output's frame count, pts, fps, rotation and its audio/subtitle packets equal the
input's, and `finalize` proves it by re-reading the file.
"""

from __future__ import annotations

import heapq
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
import av.bitstream
import numpy as np

from anon_ray.io.files import commit_file, remove_quietly, temp_path_beside
from anon_ray.media import MediaError
from anon_ray.media.encode import container_options, output_muxer
from anon_ray.media.packets import main_video_stream, open_input, scan_packets
from anon_ray.media.probe import COPIED_TYPES, first_frame
from anon_ray.media.rotation import normalize
from anon_ray.types import PacketIndex, VideoInfo

# Parts hold length-prefixed (MP4-style) NAL units; these muxers want start codes and, unlike
# MPEG-TS, do not convert on their own.
_ANNEX_B_MUXERS = ("avi",)
_TO_ANNEX_B = {"h264": "h264_mp4toannexb", "hevc": "hevc_mp4toannexb"}


@dataclass(frozen=True)
class FinalizeStats:
    frames: int
    audio_packets: int
    subtitle_packets: int
    dropped_streams: int  # data/attachment/extra video streams not carried over (may hold GPS tracks)
    size_bytes: int


def _rescale(value: int | None, src: Fraction, dst: Fraction) -> int | None:
    return None if value is None else round(value * src / dst)


def _codec_signature(path: str) -> tuple:
    with open_input(path) as container:
        ctx = main_video_stream(container).codec_context
        return ctx.name, ctx.width, ctx.height, ctx.pix_fmt, bytes(ctx.extradata or b"")


def _part_offsets(parts: list[str], src_index: PacketIndex) -> list[int]:
    """Per part, the constant to add to its pts (in the source time base) to land on its frames.

    Parts hold consecutive runs of the source's frames in order, encoded alike (the first part's
    parameter sets describe them all). The MP4 muxer may shift a part's timestamps as a whole by
    less than a millisecond (its edit list counts in ms); a larger shift could hide a dropped
    first frame of a constant-rate part, so anything beyond half a frame interval, and any
    missing, extra or re-timed frame, is an error here, before anything is written.
    """
    src_tb = Fraction(src_index.time_base_num, src_index.time_base_den)
    max_shift = int(np.diff(src_index.pts).min()) // 2 if len(src_index) > 1 else 0
    signature = _codec_signature(parts[0])
    offsets, start = [], 0
    for n, part in enumerate(parts):
        if _codec_signature(part) != signature:
            raise MediaError(f"part {n} was encoded with other parameters than part 0")
        index = scan_packets(part)
        part_tb = Fraction(index.time_base_num, index.time_base_den)
        end = start + len(index)
        if end > len(src_index):
            raise MediaError(f"parts hold more frames than the source's {len(src_index)}")
        pts = np.asarray([_rescale(int(p), part_tb, src_tb) for p in index.pts], np.int64)
        shift = src_index.pts[start:end] - pts
        if np.any(shift != shift[0]) or abs(int(shift[0])) > max_shift:
            raise MediaError(f"part {n} timestamps do not match source frames {start}..{end - 1}")
        offsets.append(int(shift[0]))
        start = end
    if start != len(src_index):
        raise MediaError(f"parts hold {start} frames, the source {len(src_index)}")
    return offsets


def _annex_b(packets: Iterator[av.Packet], stream: av.stream.Stream, muxer: str) -> Iterator[av.Packet]:
    bsf = _TO_ANNEX_B.get(stream.codec_context.name) if muxer in _ANNEX_B_MUXERS else None
    if bsf is None:
        yield from packets
        return
    context = av.bitstream.BitStreamFilterContext(bsf, in_stream=stream)
    for packet in packets:
        yield from context.filter(packet)
    yield from context.filter(None)


def _video_packets(parts: list[str], offsets: list[int], src_tb: Fraction,
                   out_stream: av.stream.Stream, muxer: str, last: tuple[int, int]) -> Iterator[av.Packet]:
    """The parts' packets, retimed to the source's frames. `last`: the source's last frame's pts
    and duration (0: unknown), which that frame keeps; the encoder gave it the average rate's."""
    last_pts, last_duration = last
    for part, offset in zip(parts, offsets):
        with open_input(part) as container:
            stream = main_video_stream(container)
            for packet in _annex_b(container.demux(stream), stream, muxer):
                if packet.size == 0:
                    continue
                if packet.dts is None:
                    # Matroska stores no dts; guessing them breaks muxing of B-frame streams.
                    raise MediaError(f"{part} has packets without decode timestamps (write parts as .mp4)")
                tb = packet.time_base
                pts, dts = _rescale(packet.pts, tb, src_tb), _rescale(packet.dts, tb, src_tb)
                duration = _rescale(packet.duration, tb, src_tb)
                packet.time_base = src_tb
                packet.pts = None if pts is None else pts + offset
                packet.dts = None if dts is None else dts + offset
                if last_duration and packet.pts == last_pts:
                    duration = last_duration
                if duration is not None:
                    packet.duration = duration
                packet.stream = out_stream
                yield packet


def _copied_packets(container: av.container.InputContainer,
                    pairs: dict[int, av.stream.Stream]) -> Iterator[av.Packet]:
    """Audio/subtitle packets of the source, byte for byte, retargeted to their output streams."""
    if not pairs:
        return
    streams = [s for s in container.streams if s.index in pairs]
    for packet in container.demux(*streams):
        if packet.size == 0:
            continue
        packet.stream = pairs[packet.stream_index]
        yield packet


def _mux_time(packet: av.Packet) -> Fraction:
    ts = packet.dts if packet.dts is not None else packet.pts
    return Fraction(ts or 0) * packet.time_base


def _add_template(out: av.container.OutputContainer, template: av.stream.Stream, language: str | None,
                  disposition: av.stream.Disposition) -> av.stream.Stream:
    stream = out.add_stream_from_template(template)
    # Only playback-relevant tags survive: titles, handler names, encoder strings and the like
    # can identify the person or the device.
    stream.metadata.clear()
    if language and language != "und":
        stream.metadata["language"] = language
    stream.disposition = disposition
    return stream


@dataclass
class _StreamDigest:
    """What must survive muxing of one copied stream: its packets' bytes and where it starts."""

    kind: str
    packets: int = 0
    crc: int = 0
    start: Fraction | None = None  # first packet's time, seconds
    tick: Fraction = Fraction(0)

    def add(self, packet: av.Packet) -> None:
        # The MOV muxer pads mov_text tracks with zero-length empty samples of its own; they
        # show nothing, so they are not part of what has to match.
        if self.kind == "subtitle" and packet.duration == 0:
            return
        self.packets += 1
        self.crc = zlib.crc32(bytes(packet), self.crc)
        if self.start is None and packet.pts is not None:
            self.start, self.tick = packet.pts * packet.time_base, packet.time_base

    def same_as(self, other: "_StreamDigest") -> bool:
        return (self.kind, self.packets, self.crc) == (other.kind, other.packets, other.crc)


def _read_back(path: str) -> tuple[PacketIndex, dict[int, _StreamDigest], int]:
    """The output's frame index, per non-video stream its digest, and its display rotation."""
    index = scan_packets(path)
    with open_input(path) as container:
        video = main_video_stream(container)
        others = [s for s in container.streams if s.index != video.index]
        digests = {s.index: _StreamDigest(s.type) for s in others}
        if others:
            for packet in container.demux(*others):
                if packet.size:
                    digests[packet.stream_index].add(packet)
    # A fresh open rather than a seek back: seeking to 0 skips packets with negative timestamps.
    with open_input(path) as container:
        rotation = normalize(-first_frame(container, main_video_stream(container)).rotation)
    return index, digests, rotation


def _first_dts(path: str, tb: Fraction) -> int:
    """The first video packet's decode time in `tb`: in AVI, which stores no times, its slot."""
    with open_input(path) as container:
        stream = main_video_stream(container)
        for packet in container.demux(stream):
            if packet.size and packet.dts is not None:
                return _rescale(packet.dts, stream.time_base, tb)
    raise MediaError(f"{path} has no video packet with a decode time")


def _shown_in_order(path: str, frames: int) -> None:
    """Decode the output and fail unless its `frames` frames come out with rising times. In a
    container that stores no presentation times (AVI) a frame's time is its packet's slot, so
    B-frames would show out of order (1, 4, 3, 5, 2, ...) while the sorted packet times match."""
    with open_input(path) as container:
        stream = main_video_stream(container)
        stream.thread_type = "AUTO"
        shown = [frame.pts for frame in container.decode(stream)]
    if len(shown) != frames or None in shown or any(b <= a for a, b in zip(shown, shown[1:])):
        raise MediaError(f"output frames do not show in time order ({len(shown)} decoded of {frames})")


def _verify(path: str, src_index: PacketIndex, muxed: dict[int, _StreamDigest], info: VideoInfo,
            check_start: bool = True, check_shown: bool = False) -> None:
    """`check_start` False: the output's start is not read back (AVI: an output's first frame is
    put in the source's first slot, and FFmpeg reads H.264 there a slot late, MPEG-4 not).
    `check_shown`: also decode the output to see its frames come out in time order (AVI)."""
    index, digests, rotation = _read_back(path)
    if len(index) != len(src_index):
        raise MediaError(f"output has {len(index)} frames, the source {len(src_index)}")
    if check_shown:
        _shown_in_order(path, len(index))
    src_tb = Fraction(src_index.time_base_num, src_index.time_base_den)
    out_tb = Fraction(index.time_base_num, index.time_base_den)
    expected = np.asarray([_rescale(int(p), src_tb, out_tb) for p in src_index.pts], np.int64)
    if not np.array_equal(index.pts - index.pts[0], expected - expected[0]):
        raise MediaError("output frame timestamps differ from the source's")
    if src_index.last_duration and index.last_duration:  # where both containers store it
        last = (src_index.last_duration * src_tb, index.last_duration * out_tb)
        if abs(last[0] - last[1]) > max(Fraction(1, 1000), out_tb):
            raise MediaError(f"output's last frame lasts {float(last[1]):.4f} s, the source's {float(last[0]):.4f} s")
    # Within half a frame: the MP4 muxer's edit lists count in milliseconds.
    half = Fraction(int(np.diff(src_index.pts).min()), 2) * src_tb if len(src_index) > 1 else Fraction(0)
    if check_start and abs((int(index.pts[0]) - int(expected[0])) * out_tb) > half:
        raise MediaError(f"output's first frame shows at {float(index.pts[0] * out_tb):.3f} s, "
                         f"the source's at {float(src_index.pts[0] * src_tb):.3f} s")
    if digests.keys() != muxed.keys():
        raise MediaError("output streams differ from the ones written")
    src_video_start, out_video_start = src_index.pts[0] * src_tb, index.pts[0] * out_tb
    for i, wrote in muxed.items():
        got = digests[i]
        if not got.same_as(wrote):
            raise MediaError(f"stream {i} packets differ after muxing ({wrote.packets} written, {got.packets} read)")
        if wrote.start is not None and got.start is not None:
            drift = (got.start - out_video_start) - (wrote.start - src_video_start)
            if abs(drift) > max(got.tick, wrote.tick, out_tb):
                raise MediaError(f"stream {i} moved {float(drift):.6f} s against the video")
    if info.display_matrix is not None and rotation != info.rotation:
        raise MediaError(f"output rotation {rotation} differs from the source's {info.rotation}")


def _mux(parts: list[str], offsets: list[int], src: str, tmp: str, info: VideoInfo, src_index: PacketIndex,
         copied: tuple[str, ...]) -> tuple[int, dict[int, _StreamDigest], int]:
    """Write the output; return its frame count, digests of the copied streams, dropped streams."""
    src_tb = Fraction(src_index.time_base_num, src_index.time_base_den)
    last = (int(src_index.pts[-1]), src_index.last_duration)
    with open_input(src) as source, open_input(parts[0]) as first_part:
        src_video = main_video_stream(source)
        muxer = output_muxer(tmp, info)
        with av.open(tmp, mode="w", format=muxer, container_options=container_options(muxer, info.time_base)) as out:
            out_video = _add_template(out, main_video_stream(first_part), src_video.language,
                                      src_video.disposition)
            out_video.time_base = src_tb
            # Becomes avg_frame_rate (Matroska's default duration); the template's is unset.
            out_video.codec_context.framerate = Fraction(*info.fps)
            out_video.set_display_matrix(info.display_matrix)
            pairs = {s.index: _add_template(out, s, s.language, s.disposition)
                     for s in source.streams if s.type in copied}
            muxed = {o.index: _StreamDigest(o.type) for o in pairs.values()}
            frames = 0
            video = _video_packets(parts, offsets, src_tb, out_video, muxer, last)
            for packet in heapq.merge(video, _copied_packets(source, pairs), key=_mux_time):
                if packet.stream_index == out_video.index:
                    frames += 1
                else:
                    muxed[packet.stream_index].add(packet)
                out.mux(packet)
        return frames, muxed, len(source.streams) - 1 - len(pairs)


def check_verifiable(info: VideoInfo, index: PacketIndex) -> None:
    """Refuse, before any decoding, a video whose output's timing `finalize` could not verify."""
    steps = np.diff(index.pts)
    if info.container == "avi" and len(steps) and np.any(steps != steps.min()):
        # AVI stores slots, not times; FFmpeg guesses an H.264 frame's time from the next slot, so
        # around an empty chunk the times read back are off by a frame.
        raise MediaError("AVI with dropped-frame (empty) chunks is not supported yet: its frame times "
                         "cannot be verified after re-encoding")


def finalize(parts: list[str], src: str, dst: str, info: VideoInfo, keep_audio: bool = True) -> FinalizeStats:
    """Join the encoded parts by stream copy, add the source's audio and subtitles, verify, rename.

    No identifying metadata is carried over: container tags (title, location/GPS, make/model,
    creation_time, com.apple.quicktime.*, ...) are dropped, stream tags except `language` too,
    and data streams (timed GPS/metadata tracks, timecode) and attachments are not copied. What
    playback needs stays: display matrix, colour description, dispositions, languages. `dst`
    is written only after re-reading the result proves frames, timestamps, copied packets and
    rotation match; otherwise nothing is left behind and MediaError is raised. Parts should be
    `.mp4` files from `VideoWriter`, in frame order. `keep_audio` False leaves the audio out.
    """
    if not parts:
        raise MediaError("no parts to finalize")
    src_index = scan_packets(src)
    src_tb = Fraction(src_index.time_base_num, src_index.time_base_den)
    tmp = temp_path_beside(dst)
    try:
        offsets = _part_offsets(parts, src_index)
        copied = COPIED_TYPES if keep_audio else tuple(t for t in COPIED_TYPES if t != "audio")
        avi = output_muxer(tmp, info) == "avi"
        if avi:
            late = _first_dts(parts[0], src_tb) + offsets[0] - _first_dts(src, src_tb)
            offsets = [o - late for o in offsets]
        frames, muxed, dropped = _mux(parts, offsets, src, tmp, info, src_index, copied)
        _verify(tmp, src_index, muxed, info, check_start=not avi, check_shown=avi)
        commit_file(tmp, dst)
    except (av.FFmpegError, ValueError) as exc:  # ValueError: PyAV refusing a stream for this container
        remove_quietly(tmp)
        raise MediaError(f"finalizing {dst} failed: {exc}") from exc
    except BaseException:
        remove_quietly(tmp)
        raise
    return FinalizeStats(
        frames=frames,
        audio_packets=sum(d.packets for d in muxed.values() if d.kind == "audio"),
        subtitle_packets=sum(d.packets for d in muxed.values() if d.kind == "subtitle"),
        dropped_streams=dropped,
        size_bytes=os.path.getsize(dst),
    )
