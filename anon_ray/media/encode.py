"""Part encode: masked RGB frames back into the source's codec family, same pts (PyAV).

The output keeps the source's container, pixel format family, colour description and display
matrix; frames are written in STORED orientation with the source's timestamps (I6).
"""

from __future__ import annotations

import io
import os
from fractions import Fraction

import av
import numpy as np

from anon_ray.config import PixelPolicy, VideoConfig
from anon_ray.io.files import commit_file, remove_quietly, temp_path_beside
from anon_ray.media import MediaError
from anon_ray.media.decode import decode
from anon_ray.media.packets import scan_packets
from anon_ray.media.probe import probe
from anon_ray.media.yuv import RANGE_JPEG, from_rgb
from anon_ray.types import VideoInfo

# Part files should be MP4/MOV: Matroska rounds timestamps to milliseconds and stores no dts.
_MOV_MUXERS = ("mp4", "mov", "m4v", "3gp", "3g2")
# Source demuxer -> (muxer per output extension, muxer for any other name). The output keeps the
# source's container whatever its name says (an MP4 named .jpg stays MP4), as photos keep theirs.
_MUXERS = {
    "mov,mp4,m4a,3gp,3g2,mj2": ({".mov": "mov", ".3gp": "3gp", ".3g2": "3g2"}, "mp4"),
    "matroska,webm": ({".webm": "webm"}, "matroska"),
    "avi": ({}, "avi"),
    "mpegts": ({}, "mpegts"),
    # Read, but written as Matroska (inventory.REMUX_SUFFIX names the output so).
    "mpeg": ({}, "matroska"),
    "asf": ({}, "matroska"),
    "flv": ({}, "matroska"),
    "mxf": ({}, "matroska"),
}
_REMUXED = tuple(src for src, (_, muxer) in _MUXERS.items() if muxer == "matroska" and src != "matroska,webm")
# Formats libx264 encodes from RGB without surprises; anything else falls back to yuv420p.
_OUTPUT_PIX_FMTS = ("yuv420p", "yuv422p", "yuv444p", "yuv420p10le", "yuv422p10le", "yuv444p10le")
# Deprecated full-range ("J") formats: the same layout plus color_range=JPEG.
_J_FORMATS = {"yuvj420p": "yuv420p", "yuvj422p": "yuv422p", "yuvj444p": "yuv444p"}
_RANGE_MPEG = 1  # AVCOL_RANGE_MPEG: limited range (full range: yuv.RANGE_JPEG)
_HDR_TRANSFERS = (16, 18)  # AVCOL_TRC_SMPTE2084 (PQ), AVCOL_TRC_ARIB_STD_B67 (HLG)
_UNSPECIFIED = 2  # AVCOL_PRI/TRC/SPC_UNSPECIFIED
# H.264 and HEVC encoders take only whole chroma samples: 4:2:0 needs an even width and height,
# 4:2:2 an even width (libx264 fails with "Generic error in an external library" otherwise).
# VP9 and MPEG-4 Part 2 take odd sizes as they are.
_WHOLE_CHROMA_ENCODERS = ("libx264", "libx265", "h264_", "hevc_")


def output_muxer(path: str, info: VideoInfo) -> str:
    """The muxer that writes `info`'s container under `path`; MediaError if there is none."""
    names, default = _MUXERS.get(info.container, ({}, ""))
    if not default:
        raise MediaError(f"writing {info.container or 'unknown'} containers is not supported")
    return names.get(os.path.splitext(path)[1].lower(), default)


def output_codec(path: str, info: VideoInfo, cfg: VideoConfig) -> str:
    """The encoder for `info`'s video written under `path`: WebM's own, else the configured one."""
    return cfg.webm_codec if output_muxer(path, info) == "webm" else cfg.codec


def _encoder_options(codec: str, cfg: VideoConfig, muxer: str = "", source_range: int = 0) -> dict[str, str]:
    if codec.startswith("libvpx"):
        # b=0: constant quality from crf alone, as x264's crf is.
        return {"crf": str(cfg.webm_crf), "b": "0", "deadline": "good", "cpu-used": "5", "row-mt": "1"}
    options = {"crf": str(cfg.crf), "preset": cfg.preset}
    if codec == "libx264" and source_range == _RANGE_MPEG:
        # x264 writes the range flag only beside a video format or colour description, so a
        # source tagged limited-range would come out untagged; a video format (digital component)
        # makes it write the flag. libx265 and VP9 write the range they are given.
        options["x264-params"] = "videoformat=component"
    if muxer == "avi":
        # AVI has no presentation times: with B-frames players show frames in decode order (and
        # FFmpeg's muxer delays the first one), so AVI outputs are coded without them.
        options["bf"] = "0"
    return options


def check_writable(path: str, info: VideoInfo, codec: str) -> None:
    """Refuse, before any decoding, a video whose container cannot hold `codec` (H.264 in WebM)."""
    muxer = output_muxer(path, info)
    try:
        with av.open(io.BytesIO(), mode="w", format=muxer) as out:
            out.add_stream(codec)  # no frame is written: this only asks the muxer
    except (av.FFmpegError, ValueError) as exc:
        raise MediaError(f"cannot write {codec} video into a {muxer} container: {exc}") from exc


def container_options(muxer: str, time_base: tuple[int, int]) -> dict[str, str]:
    """Options for a muxer (or an extension naming one)."""
    if muxer in _MOV_MUXERS:
        # Otherwise the MOV muxer picks its own timescale and pts get rescaled (and rounded).
        return {"video_track_timescale": str(time_base[1])}
    return {}


def _output_pix_fmt(info: VideoInfo, codec: str, policy: PixelPolicy) -> tuple[str, int]:
    """The encoder pixel format for the source's under `policy`, and the colour range to encode with."""
    supported = {f.name for f in av.Codec(codec, "w").video_formats or ()}
    pix_fmt, color_range = info.pix_fmt, info.color_range
    if pix_fmt in _J_FORMATS:
        pix_fmt, color_range = _J_FORMATS[pix_fmt], RANGE_JPEG
    if policy == PixelPolicy.playable:
        pix_fmt = "yuv420p10le" if info.color_trc in _HDR_TRANSFERS and "10" in pix_fmt else "yuv420p"
    if pix_fmt not in _OUTPUT_PIX_FMTS or pix_fmt not in supported:
        pix_fmt = "yuv420p"
    return pix_fmt, color_range if color_range in (_RANGE_MPEG, RANGE_JPEG) else _RANGE_MPEG


def coded_size(info: VideoInfo, codec: str, cfg: VideoConfig) -> tuple[int, int]:
    """(width, height) the encoder writes: the source's, one pixel larger where its chroma
    subsampling needs an even size (the frame's last column or row repeated)."""
    pix_fmt, _ = _output_pix_fmt(info, codec, cfg.pixels)
    if not codec.startswith(_WHOLE_CHROMA_ENCODERS):
        return info.width, info.height
    even_w, even_h = "420" in pix_fmt or "422" in pix_fmt, "420" in pix_fmt
    return info.width + (even_w and info.width % 2), info.height + (even_h and info.height % 2)


def output_changes(info: VideoInfo, codec: str, cfg: VideoConfig) -> tuple[str, ...]:
    """What the output will differ in from the source beyond the masks, for the manifest."""
    changes = []
    pix_fmt, _ = _output_pix_fmt(info, codec, cfg.pixels)
    if pix_fmt != _J_FORMATS.get(info.pix_fmt, info.pix_fmt):
        changes.append(f"pixel format {info.pix_fmt} written as {pix_fmt}")
    if info.container in _REMUXED:
        changes.append(f"container {info.container} written as Matroska")
    size = coded_size(info, codec, cfg)
    if size != (info.width, info.height):
        changes.append(f"size {info.width}x{info.height} padded to {size[0]}x{size[1]} (edge repeated)")
    return tuple(changes)


def ordinary_scheduling() -> None:
    """Put the calling thread back on the ordinary scheduler. SVT-AV1 (video.codec=libsvtav1), opened
    by root, switches the thread that opens it to SCHED_FIFO at the top priority for good, and
    threads and processes started from it later inherit that: an idle ONNX Runtime thread spinning
    at that priority starves the worker's other threads of their core (a whole test run hung so)."""
    if os.sched_getscheduler(0) != os.SCHED_OTHER:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


class VideoWriter:
    """Encode RGB frames with given pts into a new file (`.mp4` parts keep any time base exactly).

    The file appears under `path` only after a successful `close()`; leaving the `with` block by an
    exception, or calling `abort()`, removes everything written.
    """

    def __init__(self, path: str, info: VideoInfo, cfg: VideoConfig, codec: str = ""):
        """`codec`: the encoder (output_codec's choice); "" = cfg.codec."""
        codec = codec or cfg.codec
        self.path = path
        self.frames = 0
        self._size = (info.height, info.width)
        width, height = coded_size(info, codec, cfg)
        self._pad = ((0, height - info.height), (0, width - info.width), (0, 0))
        self._time_base = Fraction(*info.time_base)
        self._last_pts: int | None = None
        self._frame: av.VideoFrame | None = None  # written again for every frame (yuv.from_rgb's reuse)
        self._pix_fmt, self._range = _output_pix_fmt(info, codec, cfg.pixels)
        self._colorspace = info.colorspace
        self._tmp = temp_path_beside(path)
        try:
            # The muxer follows the name here: callers pick the container of parts and copies.
            ext = os.path.splitext(path)[1].lower().lstrip(".")
            self._container = av.open(self._tmp, mode="w", container_options=container_options(ext, info.time_base))
            # Parts are MP4 whatever the output: code them for the container they end up in.
            final = _MUXERS.get(info.container, ({}, ""))[1]
            stream = self._container.add_stream(codec, rate=Fraction(*info.fps),
                                                options=_encoder_options(codec, cfg, final, info.color_range))
            stream.width, stream.height, stream.pix_fmt = width, height, self._pix_fmt
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
            raise MediaError(f"cannot open a {codec} writer for {path}: {exc}") from exc

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
        if any(after for _, after in self._pad):
            rgb = np.pad(rgb, self._pad, mode="edge")
        frame = self._frame = from_rgb(rgb, self._pix_fmt, self._colorspace, self._range, self._frame)
        frame.pts, frame.time_base = pts, self._time_base
        try:
            self._container.mux(self._stream.encode(frame))
        except av.FFmpegError as exc:
            raise MediaError(f"encoding pts {pts} failed: {exc}") from exc
        finally:
            if not self.frames:  # the first frame opens the encoder
                ordinary_scheduling()
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
