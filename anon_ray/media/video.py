"""Video probe, segment decode, part encode and the final stream-copy mux (PyAV).

Frames travel in STORED orientation (as coded); `rotation` says how to turn them upright and is
carried to the output as the container's display matrix, so pixels are never re-rotated.
Timestamps are the source's own, in its time base, from decode through the part files to the
output: the output's frame count, pts, fps, rotation and its audio/subtitle packets equal the
input's (invariant I6), and `finalize` proves it by re-reading the file before it takes the
output name (invariant I1).
"""

from __future__ import annotations

import heapq
import io
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
import av.bitstream
import numpy as np
from av.video.reformatter import Interpolation

from ..config import VideoConfig
from ..types import PacketIndex
from . import MediaError, commit_file, remove_quietly, temp_path_beside
from .packets import main_video_stream, open_input, scan_packets
from .rotation import normalize

# Part files should be MP4/MOV: Matroska rounds timestamps to milliseconds and stores no dts.
_MOV_MUXERS = ("mp4", "mov", "m4v", "3gp", "3g2")
# Source demuxer -> (muxer per output extension, muxer for any other name). The output keeps the
# source's container whatever its name says (an MP4 named .jpg stays MP4), as photos keep theirs.
_MUXERS = {
    "mov,mp4,m4a,3gp,3g2,mj2": ({".mov": "mov", ".3gp": "3gp", ".3g2": "3g2"}, "mp4"),
    "matroska,webm": ({".webm": "webm"}, "matroska"),
    "avi": ({}, "avi"),
    "mpegts": ({}, "mpegts"),
}
# Parts hold length-prefixed (MP4-style) NAL units; these muxers want start codes and, unlike
# MPEG-TS, do not convert on their own.
_ANNEX_B_MUXERS = ("avi",)
_TO_ANNEX_B = {"h264": "h264_mp4toannexb", "hevc": "hevc_mp4toannexb"}
# Formats libx264 encodes from RGB without surprises; anything else falls back to yuv420p.
_OUTPUT_PIX_FMTS = ("yuv420p", "yuv422p", "yuv444p", "yuv420p10le", "yuv422p10le", "yuv444p10le")
# Deprecated full-range ("J") formats: the same layout plus color_range=JPEG.
_J_FORMATS = {"yuvj420p": "yuv420p", "yuvj422p": "yuv422p", "yuvj444p": "yuv444p"}
_RANGE_MPEG, _RANGE_JPEG = 1, 2
_UNSPECIFIED = 2  # AVCOL_PRI/TRC/SPC_UNSPECIFIED
# AVColorSpace -> the swscale matrix name PyAV's reformat expects.
_SWS_MATRIX = {1: "ITU709", 4: "FCC", 5: "ITU601", 6: "ITU601", 7: "SMPTE240M", 9: "BT2020", 10: "BT2020"}
_COPIED_TYPES = ("audio", "subtitle")
# swscale's default YUV->RGB path rounds down: about -1.2 levels of brightness per decode/encode
# cycle on the eval clips. Accurate rounding with full chroma interpolation round-trips at ~55 dB
# PSNR with no bias, for a few ms per 1080p frame.
_TO_RGB = Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT \
    | Interpolation.FULL_CHR_H_INP
_FROM_RGB = Interpolation.BILINEAR | Interpolation.ACCURATE_RND


@dataclass(frozen=True)
class VideoInfo:
    """What planning, decoding and encoding need to know about a video's main stream."""

    width: int  # coded (stored) size
    height: int
    rotation: int  # clockwise degrees that turn stored frames upright: 0, 90, 180, 270
    fps: tuple[int, int]
    time_base: tuple[int, int]
    n_frames: int
    duration_s: float
    pix_fmt: str
    codec: str
    color_range: int  # FFmpeg AVColorRange / AVColorPrimaries / AVColorTransferCharacteristic /
    color_primaries: int  # AVColorSpace values, 0 or 2 when unspecified
    color_trc: int
    colorspace: int
    audio_streams: int
    subtitle_streams: int
    start_pts: int
    display_matrix: tuple[int, ...] | None = None  # 9 ints as stored (keeps flips too), or None
    container: str = ""

    @property
    def display_size(self) -> tuple[int, int]:
        return (self.height, self.width) if self.rotation in (90, 270) else (self.width, self.height)


@dataclass(frozen=True)
class FinalizeStats:
    frames: int
    audio_packets: int
    subtitle_packets: int
    dropped_streams: int  # data/attachment/extra video streams not carried over (may hold GPS tracks)
    size_bytes: int


def _fraction(value: Fraction) -> tuple[int, int]:
    return value.numerator, value.denominator


def _first_frame(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> av.VideoFrame:
    try:
        return next(container.decode(stream))
    except StopIteration:
        raise MediaError("video has no decodable frame") from None
    except av.FFmpegError as exc:
        raise MediaError(f"first video frame does not decode: {exc}") from exc


def _display_matrix(frame: av.VideoFrame) -> tuple[int, ...] | None:
    # PyAV exposes the container's display matrix only on decoded frames (the decoder copies the
    # stream's coded side data onto each frame), hence the one-frame decode in `probe`.
    for side in frame.side_data:
        if side.type == av.sidedata.sidedata.Type.DISPLAYMATRIX:
            return tuple(int(v) for v in np.frombuffer(bytes(side), np.int32)[:9])
    return None


def probe(path: str, index: PacketIndex | None = None) -> VideoInfo:
    """Describe the main video stream; pass the `scan_packets` result to avoid a second scan."""
    index = scan_packets(path) if index is None else index
    with open_input(path) as container:
        stream = main_video_stream(container)
        ctx = stream.codec_context
        time_base = stream.time_base
        rate = stream.average_rate or stream.guessed_rate
        if not rate and len(index) > 1:
            rate = Fraction(len(index) - 1) / (Fraction(int(index.pts[-1] - index.pts[0])) * time_base)
        if not rate:
            raise MediaError("video frame rate is unknown")
        span = Fraction(int(index.pts[-1] - index.pts[0])) * time_base
        counts = {kind: sum(s.type == kind for s in container.streams) for kind in _COPIED_TYPES}
        frame = _first_frame(container, stream)
        matrix = _display_matrix(frame)
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
            color_range=int(frame.color_range),
            color_primaries=int(frame.color_primaries),
            color_trc=int(frame.color_trc),
            colorspace=int(frame.colorspace),
            audio_streams=counts["audio"],
            subtitle_streams=counts["subtitle"],
            start_pts=int(index.pts[0]),
            display_matrix=matrix,
            container=container.format.name,
        )


class _SeekOvershot(Exception):
    """A seek landed after the first wanted frame; nothing was yielded yet."""


def decode(path: str, seek_pts: int | None, index: PacketIndex, first: int, stop: int
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
            yield from _decode_from(path, target, index, first, stop)
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


def _decode_from(path: str, seek_pts: int | None, index: PacketIndex, first: int, stop: int
                 ) -> Iterator[tuple[int, int, np.ndarray]]:
    # Landing after `first` is the demuxer's doing only when the seek aimed at or before it.
    overshoot_possible = seek_pts is not None and seek_pts <= index.pts[first]
    with open_input(path) as container:
        stream = main_video_stream(container)
        stream.thread_type = "AUTO"
        expected = first
        try:
            if seek_pts is not None:
                container.seek(seek_pts, stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                pts = frame.pts if frame.pts is not None else frame.dts
                i = index.index_of(pts) if pts is not None else len(index)
                if i >= len(index) or index.pts[i] != pts:
                    raise MediaError(f"decoded a frame with pts {pts} that the packet scan does not know")
                if i < first:
                    continue
                if i >= stop:
                    return
                if i != expected:
                    if expected == first and overshoot_possible:
                        raise _SeekOvershot
                    raise MediaError(f"frame {expected} missing from decode (got frame {i})")
                # to_ndarray converts with the frame's own matrix and range (full or limited).
                yield i, pts, frame.to_ndarray(format="rgb24", interpolation=_TO_RGB)
                expected += 1
        except av.FFmpegError as exc:
            raise MediaError(f"decoding failed at frame {expected}: {exc}") from exc
        if expected == first and overshoot_possible:
            raise _SeekOvershot
        if expected < stop:
            raise MediaError(f"video ended at frame {expected}, expected frames up to {stop}")


def output_muxer(path: str, info: VideoInfo) -> str:
    """The muxer that writes `info`'s container under `path`; MediaError if there is none."""
    names, default = _MUXERS.get(info.container, ({}, ""))
    if not default:
        raise MediaError(f"writing {info.container or 'unknown'} containers is not supported")
    return names.get(os.path.splitext(path)[1].lower(), default)


def check_writable(path: str, info: VideoInfo, codec: str) -> None:
    """Refuse, before any decoding, a video whose container cannot hold `codec` (H.264 in WebM)."""
    muxer = output_muxer(path, info)
    try:
        with av.open(io.BytesIO(), mode="w", format=muxer) as out:
            out.add_stream(codec)  # no frame is written: this only asks the muxer
    except (av.FFmpegError, ValueError) as exc:
        raise MediaError(f"cannot write {codec} video into a {muxer} container: {exc}") from exc


def _container_options(muxer: str, time_base: tuple[int, int]) -> dict[str, str]:
    """Options for a muxer (or an extension naming one)."""
    if muxer in _MOV_MUXERS:
        # Otherwise the MOV muxer picks its own timescale and pts get rescaled (and rounded).
        return {"video_track_timescale": str(time_base[1])}
    return {}


def _output_pix_fmt(info: VideoInfo, codec: str) -> tuple[str, int]:
    """The encoder pixel format nearest the source's, and the colour range to encode with."""
    supported = {f.name for f in av.Codec(codec, "w").video_formats or ()}
    pix_fmt, color_range = info.pix_fmt, info.color_range
    if pix_fmt in _J_FORMATS:
        pix_fmt, color_range = _J_FORMATS[pix_fmt], _RANGE_JPEG
    if pix_fmt not in _OUTPUT_PIX_FMTS or pix_fmt not in supported:
        pix_fmt = "yuv420p"
    return pix_fmt, color_range if color_range in (_RANGE_MPEG, _RANGE_JPEG) else _RANGE_MPEG


class VideoWriter:
    """Encode RGB frames with given pts into a new file (`.mp4` parts keep any time base exactly).

    The file appears under `path` only after a successful `close()`; leaving the `with` block by an
    exception, or calling `abort()`, removes everything written.
    """

    def __init__(self, path: str, info: VideoInfo, cfg: VideoConfig):
        self.path = path
        self.frames = 0
        self._size = (info.height, info.width)
        self._time_base = Fraction(*info.time_base)
        self._last_pts: int | None = None
        self._pix_fmt, self._range = _output_pix_fmt(info, cfg.codec)
        self._matrix = _SWS_MATRIX.get(info.colorspace)
        self._tmp = temp_path_beside(path)
        try:
            # The muxer follows the name here: callers pick the container of parts and copies.
            ext = os.path.splitext(path)[1].lower().lstrip(".")
            self._container = av.open(self._tmp, mode="w", container_options=_container_options(ext, info.time_base))
            stream = self._container.add_stream(
                cfg.codec, rate=Fraction(*info.fps), options={"crf": str(cfg.crf), "preset": cfg.preset})
            stream.width, stream.height, stream.pix_fmt = info.width, info.height, self._pix_fmt
            stream.time_base = self._time_base
            stream.codec_context.time_base = self._time_base
            stream.codec_context.thread_count = cfg.threads
            stream.codec_context.color_range = self._range
            # 0 is "reserved" for primaries/trc and "RGB" for the matrix, never right for YUV.
            stream.codec_context.color_primaries = info.color_primaries or _UNSPECIFIED
            stream.codec_context.color_trc = info.color_trc or _UNSPECIFIED
            stream.codec_context.colorspace = info.colorspace or _UNSPECIFIED
            if info.display_matrix is not None:
                stream.set_display_matrix(info.display_matrix)
            self._stream = stream
        except (av.FFmpegError, ValueError) as exc:
            self.abort()
            raise MediaError(f"cannot open a {cfg.codec} writer for {path}: {exc}") from exc

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, rgb: np.ndarray, pts: int) -> None:
        """Encode one stored-orientation frame shown at `pts` (source time base, increasing)."""
        if rgb.shape != (*self._size, 3) or rgb.dtype != np.uint8:
            raise MediaError(f"frame {rgb.dtype} {rgb.shape} does not match the stream {self._size}")
        if self._last_pts is not None and pts <= self._last_pts:
            raise MediaError(f"pts {pts} after {self._last_pts}: timestamps must increase")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame = frame.reformat(format=self._pix_fmt, dst_colorspace=self._matrix, dst_color_range=self._range,
                               interpolation=_FROM_RGB)
        frame.pts, frame.time_base = pts, self._time_base
        try:
            self._container.mux(self._stream.encode(frame))
        except av.FFmpegError as exc:
            raise MediaError(f"encoding pts {pts} failed: {exc}") from exc
        self._last_pts = pts
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder, finish the file and move it to `path`."""
        try:
            self._container.mux(self._stream.encode(None))
            self._container.close()
            commit_file(self._tmp, self.path)
        except av.FFmpegError as exc:
            self.abort()
            raise MediaError(f"finishing {self.path} failed: {exc}") from exc
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        container = getattr(self, "_container", None)
        if container is not None:
            try:
                container.close()
            except av.FFmpegError:
                pass  # a half-written file is deleted next anyway
        remove_quietly(self._tmp)


def transcode_floor(src: str, dst: str, cfg: VideoConfig) -> int:
    """Decode and re-encode every frame with the writer's settings: the benchmark's speed floor."""
    index = scan_packets(src)
    info = probe(src, index)
    with VideoWriter(dst, info, cfg) as writer:
        for _, pts, rgb in decode(src, None, index, 0, len(index)):
            writer.write(rgb, pts)
    return writer.frames


# ---------------------------------------------------------------- finalize: concat + mux + verify


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
                   out_stream: av.stream.Stream, muxer: str) -> Iterator[av.Packet]:
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
        rotation = normalize(-_first_frame(container, main_video_stream(container)).rotation)
    return index, digests, rotation


def _verify(path: str, src_index: PacketIndex, muxed: dict[int, _StreamDigest], info: VideoInfo) -> None:
    index, digests, rotation = _read_back(path)
    if len(index) != len(src_index):
        raise MediaError(f"output has {len(index)} frames, the source {len(src_index)}")
    src_tb = Fraction(src_index.time_base_num, src_index.time_base_den)
    out_tb = Fraction(index.time_base_num, index.time_base_den)
    expected = np.asarray([_rescale(int(p), src_tb, out_tb) for p in src_index.pts], np.int64)
    if not np.array_equal(index.pts - index.pts[0], expected - expected[0]):
        raise MediaError("output frame timestamps differ from the source's")
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


def _mux(parts: list[str], offsets: list[int], src: str, tmp: str, info: VideoInfo,
         src_tb: Fraction) -> tuple[int, dict[int, _StreamDigest], int]:
    """Write the output; return its frame count, digests of the copied streams, dropped streams."""
    with open_input(src) as source, open_input(parts[0]) as first_part:
        src_video = main_video_stream(source)
        muxer = output_muxer(tmp, info)
        with av.open(tmp, mode="w", format=muxer, container_options=_container_options(muxer, info.time_base)) as out:
            out_video = _add_template(out, main_video_stream(first_part), src_video.language,
                                      src_video.disposition)
            out_video.time_base = src_tb
            # Becomes avg_frame_rate (Matroska's default duration); the template's is unset.
            out_video.codec_context.framerate = Fraction(*info.fps)
            out_video.set_display_matrix(info.display_matrix)
            pairs = {s.index: _add_template(out, s, s.language, s.disposition)
                     for s in source.streams if s.type in _COPIED_TYPES}
            muxed = {o.index: _StreamDigest(o.type) for o in pairs.values()}
            frames = 0
            video = _video_packets(parts, offsets, src_tb, out_video, muxer)
            for packet in heapq.merge(video, _copied_packets(source, pairs), key=_mux_time):
                if packet.stream_index == out_video.index:
                    frames += 1
                else:
                    muxed[packet.stream_index].add(packet)
                out.mux(packet)
        return frames, muxed, len(source.streams) - 1 - len(pairs)


def finalize(parts: list[str], src: str, dst: str, info: VideoInfo) -> FinalizeStats:
    """Join the encoded parts by stream copy, add the source's audio and subtitles, verify, rename.

    No identifying metadata is carried over: container tags (title, location/GPS, make/model,
    creation_time, com.apple.quicktime.*, ...) are dropped, stream tags except `language` too,
    and data streams (timed GPS/metadata tracks, timecode) and attachments are not copied. What
    playback needs stays: display matrix, colour description, dispositions, languages. `dst`
    is written only after re-reading the result proves frames, timestamps, copied packets and
    rotation match; otherwise nothing is left behind and MediaError is raised. Parts should be
    `.mp4` files from `VideoWriter`, in frame order.
    """
    if not parts:
        raise MediaError("no parts to finalize")
    src_index = scan_packets(src)
    src_tb = Fraction(src_index.time_base_num, src_index.time_base_den)
    tmp = temp_path_beside(dst)
    try:
        offsets = _part_offsets(parts, src_index)
        frames, muxed, dropped = _mux(parts, offsets, src, tmp, info, src_tb)
        _verify(tmp, src_index, muxed, info)
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
