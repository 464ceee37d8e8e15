"""Malformed and unusual inputs through a whole job: processed correctly or an error row, nothing else.

Every file is generated here (nothing is downloaded): broken containers, odd codecs and pixel
formats, rotation and timing oddities, image colour models, bombs, and file-system oddities
(folders named like files, symlink loops, FIFOs, unreadable files, undecodable names). Each case
declares its outcome; the job must never raise or hang, must write one manifest row per listed
file, and must leave no partial output or temporary file behind (DESIGN.md I1).

`pytest -s tests/test_corpus.py` prints the outcome table (kind -> outcome) for the closing note;
the counts are also recorded as the `corpus_outcomes` property (junit XML).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import struct
import time
import zlib
from collections import Counter
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from conftest import mux_stereo_tone, ordinary_scheduling_after
from PIL import Image, ImageOps

from anon_ray.config import AppConfig, SegmentConfig
from anon_ray.io import inventory, manifest
from anon_ray.io.files import TMP_MARKER
from anon_ray.media import MediaError
from anon_ray.media.decode import decode
from anon_ray.media.encode import check_writable
from anon_ray.media import concat, packets
from anon_ray.media.packets import scan_packets
from anon_ray.media.sampletable import read_sample_table
from anon_ray.media.probe import probe
from anon_ray.run import job
from anon_ray.run.local import run_local

pytestmark = pytest.mark.timeout(180)

N, W, H, FPS = 32, 128, 96, 25
# TIFF tags that describe the pixels (size, samples, strips, compression), not the photo.
TIFF_STRUCTURE = {256, 257, 258, 259, 262, 273, 277, 278, 279, 284, 317, 338, 339}
PROCESSED, ERROR, SKIPPED, EXCLUDED = "processed", "error row", "skipped with a reason", "excluded"
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
# Display matrices as phones write them: clockwise display rotation -> matrix.
MATRICES = {90: (0, 65536, 0, -65536, 0, 0, 0, 0, 1 << 30),
            180: (-65536, 0, 0, 0, -65536, 0, 0, 0, 1 << 30),
            270: (0, -65536, 0, 65536, 0, 0, 0, 0, 1 << 30)}


# ------------------------------------------------------------------------------------ generators


def _frame(i: int, w: int = W, h: int = H) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 // w, y * 255 // h, np.full_like(x, 96)], axis=2).astype(np.uint8)
    rgb[:, (i * 4) % w:(i * 4) % w + 12] = 255
    return rgb


def _clip(path: Path, codec: str = "libx264", pix_fmt: str = "yuv420p", n: int = N, fmt: str | None = None,
          container_options: dict | None = None, options: dict | None = None, pts: list[int] | None = None,
          time_base: Fraction | None = None, rotation: int = 0, audio: bool = False, video_stream: bool = True,
          latin1_title: str = "", size: tuple[int, int] = (W, H), fps: int = FPS) -> None:
    with ordinary_scheduling_after(), av.open(str(path), "w", format=fmt, container_options=container_options or {},
                                              metadata_encoding="latin-1") as out:
        if latin1_title:
            out.metadata["title"] = latin1_title  # stored as Latin-1 bytes: invalid UTF-8
        v = out.add_stream(codec, rate=fps, options=options or {}) if video_stream else None
        a = out.add_stream("aac", rate=48000) if audio else None
        if v is not None:
            (v.width, v.height), v.pix_fmt = size, pix_fmt
            if time_base is not None:
                v.time_base = v.codec_context.time_base = time_base
            if rotation:
                v.set_display_matrix(MATRICES[rotation])
            for i in range(n):
                frame = av.VideoFrame.from_ndarray(_frame(i, *size), format="rgb24")
                frame.pts = i if pts is None else pts[i]
                if time_base is not None:
                    frame.time_base = time_base
                out.mux(v.encode(frame))
            out.mux(v.encode(None))
        if a is not None:
            samples = 48000 * N // FPS
            mux_stereo_tone(out, a, samples)


def _webm_with_opus(p: Path) -> None:
    with av.open(str(p), "w", format="webm") as out:
        v, a = out.add_stream("libvpx-vp9", rate=FPS), out.add_stream("libopus", rate=48000)
        v.width, v.height, v.pix_fmt = W, H, "yuv420p"
        for i in range(N):
            frame = av.VideoFrame.from_ndarray(_frame(i), format="rgb24")
            frame.pts = i
            out.mux(v.encode(frame))
        out.mux(v.encode(None))
        mux_stereo_tone(out, a, 48000 * N // FPS)


def clip(**kw) -> Callable[[Path], None]:
    return lambda p: _clip(p, **kw)


def _box(data: bytes, kind: bytes) -> tuple[int, int]:
    """(offset, size) of the first top-level-or-nested MP4 box of this type (a tiny, trusting search)."""
    at = data.index(kind) - 4
    return at, struct.unpack_from(">I", data, at)[0]


def mp4_edit(edit: Callable[[bytearray], bytes | bytearray], **kw) -> Callable[[Path], None]:
    """A clip whose bytes are then cut or patched."""
    def make(p: Path) -> None:
        _clip(p, **kw)
        p.write_bytes(bytes(edit(bytearray(p.read_bytes()))))
    return make


def _cut(frac: float) -> Callable[[bytearray], bytearray]:
    return lambda d: d[:int(len(d) * frac)]


def _cut_inside(kind: bytes) -> Callable[[bytearray], bytearray]:
    def edit(d: bytearray) -> bytearray:
        at, size = _box(d, kind)
        return d[:at + size // 2]
    return edit


def _smash_mdat(d: bytearray) -> bytearray:
    at, size = _box(d, b"mdat")
    mid = at + size // 2
    d[mid:mid + 200] = b"\xff" * 200
    return d


def _mdhd_timescale_zero(d: bytearray) -> bytearray:
    at, _ = _box(d, b"mdhd")
    version = d[at + 8]
    field = at + 12 + (16 if version == 1 else 8)  # after version/flags and creation/modification times
    d[field:field + 4] = bytes(4)
    return d


def _stts_deltas_zero(d: bytearray) -> bytearray:
    at, _ = _box(d, b"stts")
    (entries,) = struct.unpack_from(">I", d, at + 12)
    for k in range(entries):
        struct.pack_into(">I", d, at + 16 + 8 * k + 4, 0)
    return d


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _photo(w: int = W, h: int = H) -> Image.Image:
    return Image.fromarray(_frame(3)).resize((w, h))


def image(fmt: str, convert: str | None = None, size: tuple[int, int] = (W, H), **kw) -> Callable[[Path], None]:
    def make(p: Path) -> None:
        img = _photo(*size)
        p.write_bytes(_save(img.convert(convert) if convert else img, fmt, **kw))
    return make


def _png16(p: Path) -> None:
    bgr16 = (_frame(5).astype(np.uint16) * 257)[:, :, ::-1].copy()  # Pillow cannot write 16-bit RGB
    p.write_bytes(cv2.imencode(".png", bgr16)[1].tobytes())


def _animated(fmt: str) -> Callable[[Path], None]:
    frames = [Image.fromarray(_frame(i)) for i in (0, 8, 16)]
    return lambda p: p.write_bytes(_save(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100))


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _bomb(p: Path) -> None:
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 4096))
                  + _png_chunk(b"IEND", b""))


def _gps_jpeg(p: Path) -> None:
    exif = Image.Exif()
    exif[0x0110] = "SecretCam 3000"
    exif[0x8825] = {1: "N", 2: (52.0, 31.0, 12.0), 3: "E", 4: (13.0, 24.0, 36.0)}
    p.write_bytes(_save(_photo(), "JPEG", exif=exif.tobytes(), quality=90))


def _exif_rotated(p: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: shown turned 90 degrees clockwise (portrait phone photos)
    p.write_bytes(_save(_photo(), "JPEG", exif=exif.tobytes(), quality=90))


def _bytes(data: bytes) -> Callable[[Path], None]:
    return lambda p: p.write_bytes(data)


def _renamed(make: Callable[[Path], None], suffix: str) -> Callable[[Path], None]:
    """Generate under a name with `suffix` (muxers go by it), then keep the bytes under another name."""
    def write(p: Path) -> None:
        tmp = p.with_name(".gen" + suffix)
        make(tmp)
        os.replace(tmp, p)
    return write


def _symlink(target: str) -> Callable[[Path], None]:
    return lambda p: p.symlink_to(target)


def _symlink_loop(p: Path) -> None:
    other = p.with_name(p.stem + "-b" + p.suffix)
    p.symlink_to(other.name)
    other.symlink_to(p.name)


def _link_outside(folder: bool) -> Callable[[Path], None]:
    """A link to a photo (or a folder holding one) beside the input folder, not in it."""
    def make(p: Path) -> None:
        target = p.parent.parent / f"{p.parent.name}-outside"
        target.mkdir(exist_ok=True)
        image("JPEG", quality=90)(target / "secret.jpg")
        p.symlink_to(target if folder else target / "secret.jpg")
    return make


def _unreadable(p: Path) -> None:
    image("JPEG")(p)
    p.chmod(0)


# ------------------------------------------------------------------------------------ the corpus


@dataclasses.dataclass(frozen=True)
class Case:
    kind: str  # row of the outcome table
    name: str  # file name in the input folder
    make: Callable[[Path], None]
    expect: str  # PROCESSED | ERROR | SKIPPED | EXCLUDED (not listed: no row, by design)
    error: str = ""  # regex the error message must match (ERROR), or "error_class: error" (SKIPPED)
    skip: str = ""  # a reason this environment cannot build the case


FASTSTART = {"container_options": {"movflags": "+faststart"}}
# What the error row says for kind "unknown" assets; inventory.unusable_reason has the detail
# (run/lifecycle.py is asked to use it; either wording passes here).
UNUSABLE = "unsupported or unreadable input|"

CASES = [
    # ---- containers: empty, truncated, corrupt
    Case("zero-byte video", "empty.mp4", _bytes(b""), ERROR, UNUSABLE + "empty"),
    Case("zero-byte image", "empty.jpg", _bytes(b""), ERROR, UNUSABLE + "empty"),
    Case("garbage bytes named .mp4", "garbage.mp4", _bytes(np.random.default_rng(7).bytes(6000)), ERROR,
         "cannot open|Invalid data"),
    Case("truncated mp4 (faststart) at 30%: inside mdat", "cut30.mp4", mp4_edit(_cut(0.3), **FASTSTART), ERROR,
         "decod|ended|frame"),
    Case("truncated mp4 (faststart) at 70%: inside mdat", "cut70.mp4", mp4_edit(_cut(0.7), **FASTSTART), ERROR,
         "decod|ended|frame"),
    Case("truncated mp4 inside moov (faststart)", "cutmoov.mp4", mp4_edit(_cut_inside(b"moov"), **FASTSTART), ERROR,
         "cannot open|no video stream|no packets|Invalid data"),
    Case("truncated mp4 inside moov (moov at end)", "cutmoovend.mp4", mp4_edit(_cut_inside(b"moov")), ERROR,
         "cannot open|no video stream|no packets|Invalid data"),
    Case("mp4 with moov at the end (non-faststart)", "moov_end.mp4", clip(), PROCESSED),
    Case("mp4 with moov first (faststart)", "faststart.mp4", clip(**FASTSTART), PROCESSED),
    Case("corrupted packets mid-stream (mdat overwritten)", "corrupt.mp4", mp4_edit(_smash_mdat, **FASTSTART), ERROR,
         "decoding failed"),
    Case("audio only, video extension", "audio_only.mp4", clip(video_stream=False, audio=True), ERROR,
         "no video stream"),
    Case("video with an audio track", "with_audio.mp4", clip(audio=True), PROCESSED),
    Case("Latin-1 (non-UTF-8) title tag", "latin1.mkv", clip(latin1_title="Café Müller"), PROCESSED),
    # ---- codecs and containers other than H.264/MP4
    Case("mpeg4 (Part 2) in mp4", "mpeg4.mp4", clip(codec="mpeg4"), PROCESSED),
    Case("mpeg4 (Part 2) in avi", "mpeg4.avi", clip(codec="mpeg4"), PROCESSED),
    Case("mjpeg in avi (old cameras)", "mjpeg.avi", clip(codec="mjpeg", pix_fmt="yuvj420p"), PROCESSED),
    Case("h264 with B-frames in avi", "bframes.avi", clip(fmt="avi", options={"bf": "2"}), PROCESSED),
    Case("avi with a dropped-frame (empty) chunk", "gap.avi",
         clip(fmt="avi", codec="mpeg4", pts=[i + (i >= 5) for i in range(N)]), ERROR, "dropped-frame"),
    Case("h264 in mpeg-ts", "clip.ts", clip(fmt="mpegts"), PROCESSED),
    Case("hidden file", ".hidden.mp4", clip(), PROCESSED),
    # Containers read but not written: masked into Matroska, named clip.mpg.mkv and so on.
    Case("MPEG-2 in MPEG-PS (.mpg), written as .mpg.mkv", "clip.mpg", clip(fmt="mpeg", codec="mpeg2video"),
         PROCESSED),
    Case("WMV (ASF), written as .wmv.mkv", "clip.wmv", clip(fmt="asf", codec="wmv2"), PROCESSED),
    Case("FLV, written as .flv.mkv", "clip.flv", clip(fmt="flv", codec="flv", audio=True), PROCESSED),
    Case("MPEG-2 in MXF (broadcast), written as .mxf.mkv", "clip.mxf", clip(fmt="mxf", codec="mpeg2video"),
         PROCESSED),
    Case("MPEG-2 in VOB (DVD), written as .vob.mkv", "clip.vob", clip(fmt="vob", codec="mpeg2video"), PROCESSED),
    Case("MPEG-1 in MPEG-PS, written as .mpg.mkv", "mpeg1.mpg", clip(fmt="mpeg", codec="mpeg1video"), PROCESSED),
    # No container: no timestamps to keep, nothing to mux audio with.
    Case("raw MPEG-2 elementary stream (.m2v)", "clip.m2v", clip(fmt="mpeg2video", codec="mpeg2video"), SKIPPED,
         "unsupported_format: MPEG-1/2 video elementary stream"),
    Case("vp9 in webm (written as VP9 WebM)", "vp9.webm", clip(codec="libvpx-vp9"), PROCESSED),
    Case("vp9 in webm with an Opus track", "opus.webm", _webm_with_opus, PROCESSED),
    # ---- wrong extensions
    Case("JPEG named .mp4", "photo.mp4", image("JPEG", quality=90), PROCESSED),
    Case("MP4 named .jpg", "clip.jpg", _renamed(clip(), ".mp4"), PROCESSED),
    # ---- images
    Case("PNG header claiming 100k x 100k (bomb)", "bomb.png", _bomb, ERROR, "max_pixels"),
    Case("1x1 image", "tiny.png", image("PNG", size=(1, 1)), PROCESSED),
    Case("16-bit PNG", "deep.png", _png16, PROCESSED),
    Case("CMYK JPEG", "cmyk.jpg", image("JPEG", convert="CMYK", quality=90), PROCESSED),
    Case("palette PNG", "palette.png", image("PNG", convert="P"), PROCESSED),
    Case("RGBA PNG", "alpha.png", image("PNG", convert="RGBA"), PROCESSED),
    Case("JPEG with EXIF GPS and camera model", "gps.jpg", _gps_jpeg, PROCESSED),
    Case("truncated JPEG", "cut.jpg", lambda p: p.write_bytes(_save(_photo(640, 480), "JPEG")[:3000]), ERROR,
         "truncated|corrupt"),
    Case("animated GIF", "anim.gif", _animated("GIF"), SKIPPED, "unsupported_format: GIF image"),
    Case("static GIF", "still.gif", image("GIF"), SKIPPED, "unsupported_format: GIF image"),
    Case("HEIC photo", "photo.heic", _bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64)),
         SKIPPED, "unsupported_format: HEIF/HEIC image"),
    Case("JPEG named .jfif", "photo.jfif", image("JPEG", quality=90), PROCESSED),
    Case("JPEG named .jpe", "photo.jpe", image("JPEG", quality=90), PROCESSED),
    Case("JPEG under a name that is no media name", "photo.jpg_large", image("JPEG", quality=90), PROCESSED),
    Case("text sidecar", "notes.txt", _bytes(b"shot list, reel 4"), SKIPPED, "not_media: content is not"),
    Case("animated WebP", "anim.webp", _animated("WEBP"), ERROR, "animated WebP"),
    Case("animated PNG (APNG)", "anim.png", _animated("PNG"), ERROR, "animated PNG"),
    # ---- rotation, timing
    Case("rotated video 90 (display matrix)", "rot90.mp4", clip(rotation=90), PROCESSED),
    Case("rotated video 180 (display matrix)", "rot180.mp4", clip(rotation=180), PROCESSED),
    Case("rotated video 270 (display matrix)", "rot270.mp4", clip(rotation=270), PROCESSED),
    Case("variable frame rate", "vfr.mp4",
         clip(time_base=Fraction(1, 1000), pts=[40 * i + (i % 3) * 7 for i in range(N)]), PROCESSED),
    Case("variable frame rate: 100 ms frames, then 33 ms", "vfr_slow_fast.mp4",
         clip(pts=[i * 9 if i < 16 else 135 + (i - 15) * 3 for i in range(N)], time_base=Fraction(1, 90)), PROCESSED),
    Case("absurd time base 1/999999937", "timebase.mp4",
         clip(time_base=Fraction(1, 999_999_937), pts=[round(i * 999_999_937 / FPS) for i in range(N)]), PROCESSED),
    # FFmpeg reads a zero media timescale as 1/1 and its edit list then shows a single frame:
    # the output is that one frame, as every FFmpeg-based player shows the file.
    Case("0-fps metadata: mdhd timescale 0", "timescale0.mp4", mp4_edit(_mdhd_timescale_zero), PROCESSED),
    Case("0-fps metadata: every sample lasts 0 ticks", "stts0.mp4",
         mp4_edit(_stts_deltas_zero, options={"bf": "0"}), ERROR, "duplicate frame timestamps"),
    Case("negative timestamps (mp4 edit list)", "negative.mp4", clip(pts=[i - 5 for i in range(N)]), PROCESSED),
    Case("negative timestamps (Matroska, no shift)", "negative.mkv",
         clip(pts=[i - 5 for i in range(N)], container_options={"avoid_negative_ts": "disabled"}), ERROR,
         "no timestamp"),
    Case("single-frame video", "one_frame.mp4", clip(n=1), PROCESSED),
    # ---- pixel formats, scan types
    Case("10-bit 4:2:0 (yuv420p10le)", "p10.mp4", clip(pix_fmt="yuv420p10le"), PROCESSED),
    Case("4:4:4 (yuv444p)", "p444.mp4", clip(pix_fmt="yuv444p"), PROCESSED),
    Case("odd size 4:2:0 (FFV1 127x95, written as H.264 128x96)", "odd.mkv", clip(codec="ffv1", size=(W - 1, H - 1)),
         PROCESSED),
    Case("interlaced (x264 tff)", "interlaced.mp4", clip(options={"x264-params": "tff=1"}), PROCESSED),
    # The rest of a real archive's kinds (issue 26's 37): codecs, containers, rates, shapes, ranges.
    Case("hevc in mp4", "hevc.mp4", clip(codec="libx265", options={"x265-params": "log-level=error"}), PROCESSED),
    Case("10-bit full-range BT.709-tagged hevc in mov", "hevc10.mov",
         clip(codec="libx265", pix_fmt="yuv420p10le",
              options={"x265-params": "log-level=error:range=full:colorprim=bt709:transfer=bt709:colormatrix=bt709"}),
         PROCESSED),
    Case("prores 422 (10-bit) in mov", "prores.mov", clip(codec="prores_ks", pix_fmt="yuv422p10le"), PROCESSED),
    Case("av1 in mp4", "av1.mp4", clip(codec="libsvtav1", options={"svtav1-params": "lp=1"}), PROCESSED),
    Case("av1 in webm", "av1.webm", clip(codec="libsvtav1", options={"svtav1-params": "lp=1"}), PROCESSED),
    Case("h264 in mov", "h264.mov", clip(), PROCESSED),
    Case("vp9 in mkv", "vp9.mkv", clip(codec="libvpx-vp9"), PROCESSED),
    Case("full-range h264 (yuvj420p)", "fullrange.mp4", clip(pix_fmt="yuvj420p"), PROCESSED),
    Case("60 fps", "fps60.mp4", clip(fps=60, n=2 * N), PROCESSED),
    Case("long GOP (one keyframe)", "longgop.mp4", clip(options={"g": "600", "sc_threshold": "0"}), PROCESSED),
    Case("portrait (96x128)", "portrait.mp4", clip(size=(H, W)), PROCESSED),
    Case("4K (3840x2160), 6 frames", "uhd.mp4", clip(size=(3840, 2160), n=6), PROCESSED),
    Case("static WebP", "still.webp", image("WEBP", quality=90), PROCESSED),
    Case("TIFF with camera and software tags", "photo.tiff", image("TIFF", tiffinfo={271: "SecretCam", 305: "Edit 9"}),
         PROCESSED),
    Case("JPEG with EXIF orientation 6", "rotated.jpg", _exif_rotated, PROCESSED),
    Case("spaces, accents and # in the name", "Ünïcode name #1.jpg", image("JPEG", quality=90), PROCESSED),
    # ---- file-system oddities
    Case("directory named like a video", "folder.mp4", lambda p: p.mkdir(), EXCLUDED),
    Case("directory symlink to its own parent", "up.mp4", _symlink("."), EXCLUDED),
    Case("symlink loop (a -> b -> a)", "loop.jpg", _symlink_loop, ERROR, UNUSABLE + "loop"),
    Case("symlink loop, second link", "loop-b.jpg", lambda p: None, ERROR, UNUSABLE + "loop"),
    Case("link to a photo outside the input", "outside.jpg", _link_outside(False), SKIPPED,
         "link_outside_input: symbolic link to a file outside"),
    Case("link to a folder outside the input", "elsewhere", _link_outside(True), SKIPPED,
         "link_outside_input: symbolic link to a folder outside"),
    Case("dangling symlink", "dangling.jpg", _symlink("nowhere.jpg"), ERROR, UNUSABLE + "dangling"),
    Case("named pipe (FIFO) named like a photo", "pipe.jpg", lambda p: os.mkfifo(p), ERROR,
         UNUSABLE + "not a regular file"),
    Case("unreadable file (chmod 000)", "locked.jpg", _unreadable, ERROR, UNUSABLE + "Permission denied",
         skip="running as root: chmod 000 does not stop root from reading" if IS_ROOT else ""),
]


# ------------------------------------------------------------------------------------ the run


@dataclasses.dataclass
class CorpusRun:
    src: Path
    out: Path
    rows: dict[str, dict]
    summary: job.Summary | None
    crash: BaseException | None
    seconds: float


def corpus_config(src: Path, out: Path) -> AppConfig:
    cfg = AppConfig(input=str(src), output=str(out))
    # Plates are the slow detector and add nothing to what the corpus tests.
    detect = dataclasses.replace(cfg.detect, plate=dataclasses.replace(cfg.detect.plate, enabled=False))
    # Short segments: every clip is cut in three or four, so every container is seeked into.
    return dataclasses.replace(cfg, detect=detect, video=dataclasses.replace(cfg.video, preset="ultrafast"),
                               segment=SegmentConfig(seconds=0.4, overlap=3))


def run_job(src: Path, out: Path) -> CorpusRun:
    cfg = corpus_config(src, out)
    started = time.monotonic()
    try:
        summary, crash = job.run(cfg, run_local, out=io.StringIO()), None
    except Exception as exc:  # noqa: BLE001 - recorded and asserted on, as "crash"
        summary, crash = None, exc
    rows = {r["relpath"]: r for r in manifest.read_manifest(str(out), cfg.storage).to_pylist()}
    return CorpusRun(src, out, rows, summary, crash, time.monotonic() - started)


def active_cases() -> list[Case]:
    return [c for c in CASES if not c.skip]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> CorpusRun:
    src, out = tmp_path_factory.mktemp("corpus-in"), tmp_path_factory.mktemp("corpus-out")
    for case in active_cases():
        case.make(src / case.name)
    try:
        return run_job(src, out)
    finally:
        for case in active_cases():
            if (src / case.name).exists() and not (src / case.name).is_symlink():
                (src / case.name).chmod(0o755 if (src / case.name).is_dir() else 0o644)  # let tmp cleanup work


def outcome(run: CorpusRun, case: Case) -> str:
    if run.crash is not None:
        return "crash"
    row = run.rows.get(case.name)
    if row is None:
        return EXCLUDED
    return {"ok": PROCESSED, "skipped": SKIPPED}.get(row["status"], ERROR)


def _leftovers(root: Path) -> list[str]:
    found = [str(p) for p in root.rglob("*") if TMP_MARKER in p.name or ".tmp" in p.name]
    tmp_parts = root / inventory.INTERNAL_DIR / "tmp"
    return found + ([str(tmp_parts)] if tmp_parts.exists() else [])


# ------------------------------------------------------------------------------------ checks


def test_job_never_raises_and_leaves_nothing_partial(corpus):
    assert corpus.crash is None, f"job.run raised {corpus.crash!r}"
    assert not _leftovers(corpus.out)
    listed = [c for c in active_cases() if c.expect != EXCLUDED]
    assert sorted(corpus.rows) == sorted(c.name for c in listed), "one manifest row per listed file"
    assert corpus.summary.ok + corpus.summary.failed + sum(corpus.summary.not_processed.values()) == len(listed)
    assert corpus.summary.failed == sum(c.expect == ERROR for c in listed)
    assert corpus.summary.not_processed == dict(Counter(c.error.split(":")[0] for c in listed if c.expect == SKIPPED))
    assert corpus.summary.unsupported == sum(c.expect == SKIPPED and "not_media" not in c.error for c in listed)


def _index_or_error(read, path: Path):
    try:
        return read(str(path))
    except MediaError as exc:
        return type(exc)


@pytest.mark.parametrize("checked", [packets.CHECKED_PACKETS, 4])
def test_planning_index_from_sample_tables_is_the_packet_scans(corpus, monkeypatch, checked):
    """Planning reads an MP4/MOV's frame index from its sample tables (packets.index_packets): on
    every video of the corpus, broken ones included, it equals the scan of every packet (or the
    same refusal), and most MP4/MOV files take the fast path. With 4 packets checked at the head
    the demuxer is also compared from the last keyframe on (the corpus clips are short)."""
    monkeypatch.setattr(packets, "CHECKED_PACKETS", checked)
    fast = 0
    for case in active_cases():
        path = corpus.src / case.name
        if path.is_symlink() or not path.is_file() or inventory.extension(case.name) not in inventory.VIDEO_EXTS:
            continue
        scanned, indexed = _index_or_error(scan_packets, path), _index_or_error(packets.index_packets, path)
        if isinstance(scanned, type):
            assert indexed is scanned, case.name
            continue
        for field in ("pts", "key", "pos", "size", "last_duration", "time_base_num", "time_base_den"):
            assert np.array_equal(getattr(indexed, field), getattr(scanned, field)), (case.name, field)
        try:
            with open(path, "rb") as fh:
                table = read_sample_table(fh)
        except (struct.error, ValueError):
            table = None
        fast += table is not None and packets._checked(str(path), table) is not None
    assert fast >= 20, fast  # 26 of the corpus's MP4/MOV files


def _decoded_frames(path: Path) -> int:
    with av.open(str(path), metadata_errors="replace") as c:
        return sum(1 for _ in c.decode(video=0))


def _shown_seconds(path: Path) -> list[float]:
    with av.open(str(path), metadata_errors="replace") as c:
        tb = c.streams.video[0].time_base
        return [float(f.pts * tb) for f in c.decode(video=0)]


def _check_video(src: Path, dst: Path, row: dict) -> None:
    frames = _decoded_frames(src)
    assert _decoded_frames(dst) == frames == row["frames"] == len(scan_packets(str(dst)))
    # Shown in the order decoded, the first when the source's first is (FFmpeg reads H.264 in AVI
    # a slot late, MPEG-4 and MJPEG not: there only an H.264 source compares).
    shown, index = _shown_seconds(dst), scan_packets(str(src))
    assert shown == sorted(shown)
    # The last frame shows as long as the source's (a variable-rate clip's, not the average's).
    out = scan_packets(str(dst))
    if index.last_duration and out.last_duration:
        last = [i.last_duration * i.time_base_num / i.time_base_den for i in (index, out)]
        assert abs(last[0] - last[1]) <= 0.001, last
    if src.suffix != ".avi" or probe(str(src)).codec == "h264":
        assert abs(shown[0] - float(index.pts[0]) * index.time_base_num / index.time_base_den) < 0.5 / FPS
    assert row["segments"] > 1 or frames < 20, "short segments are meant to cut every clip"
    src_info, dst_info = probe(str(src)), probe(str(dst))
    assert dst_info.rotation == src_info.rotation
    # The colour description carried over where the source has one (a range of 0, primaries or
    # a transfer of 2: unspecified).
    assert not src_info.color_range or dst_info.color_range == src_info.color_range, (src_info, dst_info)
    for tag in ("color_primaries", "color_trc"):
        assert getattr(src_info, tag) in (0, 2) or getattr(dst_info, tag) == getattr(src_info, tag), (tag, dst_info)
    assert dst_info.audio_streams == src_info.audio_streams
    # H.264 takes only whole chroma samples: an odd-sized 4:2:0 source is padded, and says so.
    odd = src_info.pix_fmt.startswith("yuv420") and (src_info.width % 2 or src_info.height % 2) \
        and dst_info.codec == "h264"
    padded = [c for c in json.loads(row["output_changes"] or "[]") if "padded" in c]
    # 8-bit 4:2:0 whatever the source (pixels=playable): 10-bit and 4:4:4 say they were changed.
    assert dst_info.pix_fmt in ("yuv420p", "yuvj420p")
    changed = src_info.pix_fmt not in ("yuv420p", "yuvj420p")
    assert changed == ("pixel format" in row["output_changes"]), (src_info.pix_fmt, row["output_changes"])
    assert bool(padded) == bool(odd), row["output_changes"]
    assert (dst_info.width, dst_info.height) == (src_info.width + odd * (src_info.width % 2),
                                                 src_info.height + odd * (src_info.height % 2))
    assert dst_info.container == (src_info.container if dst.suffix == src.suffix else "matroska,webm")
    if src.suffix == ".webm":  # WebM holds no H.264: its own encoder, and its audio copied
        with av.open(str(dst)) as c:
            assert c.streams.video[0].codec_context.name == "vp9"
            with av.open(str(src)) as source:
                assert [s.codec_context.name for s in c.streams.audio] == [s.codec_context.name
                                                                           for s in source.streams.audio]


def _check_image(src: Path, dst: Path) -> None:
    raw = dst.read_bytes()
    with Image.open(dst) as out, Image.open(src) as inp:
        assert out.size == ImageOps.exif_transpose(inp).size
        # A TIFF's tags are its structure too: only those may stay.
        kept = set(out.getexif()) - (TIFF_STRUCTURE if out.format == "TIFF" else set())
        assert not kept and b"Exif" not in raw and b"SecretCam" not in raw, kept
        assert ("A" in out.getbands()) == ("A" in inp.convert("RGBA" if "transparency" in inp.info else inp.mode)
                                           .getbands())


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case_outcome(corpus, case):
    if case.skip:
        pytest.skip(case.skip)
    got = outcome(corpus, case)
    row = corpus.rows.get(case.name)
    detail = f"{row['error_class']}: {row['error']}" if row and row["error"] else ""
    assert got == case.expect, f"{case.kind}: expected {case.expect}, got {got} {detail}"
    remuxed = case.name.endswith((".mpg", ".vob", ".wmv", ".flv", ".mxf"))
    dst = corpus.out / (case.name + (".mkv" if remuxed else ""))
    if case.expect == PROCESSED:
        assert row["output_uri"] == str(dst)
        assert ("written as Matroska" in row["output_changes"]) == remuxed, row["output_changes"]
        assert row["output_sha256"] and dst.is_file()
        if row["kind"] == "video":
            _check_video(corpus.src / case.name, dst, row)
        else:
            _check_image(corpus.src / case.name, dst)
            assert "16-bit" not in row["output_changes"], row["output_changes"]
            if case.name == "deep.png":  # the only 16-bit photo: written with 16-bit samples
                assert cv2.imread(str(dst), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    elif case.expect == ERROR:
        assert not os.path.lexists(dst), "a failed asset must leave no output"
        assert row["error_class"] and row["output_uri"] == ""
        assert re.search(case.error, row["error"], re.IGNORECASE), f"unclear message: {detail}"
    elif case.expect == SKIPPED:
        assert not os.path.lexists(dst) and row["output_uri"] == ""
        assert detail.startswith(case.error), detail
    else:
        assert not os.path.lexists(dst) or dst.is_dir()


def test_outcome_table(corpus, record_property):
    table = [(c.kind, c.skip and "not built here" or outcome(corpus, c)) for c in CASES]
    width = max(len(k) for k, _ in table)
    lines = [f"{kind:<{width}}  {got}" for kind, got in table]
    counts = Counter(got for _, got in table)
    counts.setdefault("crash", 0)
    counts["hang"] = 0  # a hang fails the module's timeout before this test runs
    print(f"\nmalformed-input corpus: {len(CASES)} kinds, job took {corpus.seconds:.1f} s\n" + "\n".join(lines))
    print("totals: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    record_property("corpus_outcomes", dict(counts))
    assert counts["crash"] == 0 and len(CASES) >= 30


# ------------------------------------------------------------------------------------ names


NON_UTF8 = b"caf\xe9.jpg"


def test_non_utf8_file_name(tmp_path):
    """storage.safe_join refuses undecodable names (an UnsafePath error row); the row must still
    be written, with the name shown as valid UTF-8 (caf\\xe9.jpg), and the job must go on."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    name = os.fsdecode(NON_UTF8)
    image("JPEG", quality=90)(src / name)
    image("JPEG", quality=90)(src / "plain.jpg")
    run = run_job(src, out)
    assert run.crash is None, f"job.run raised {run.crash!r}"
    row = run.rows["caf\\xe9.jpg"]
    assert row["status"] == "failed" and row["error_class"] == "UnsafePath"
    assert run.rows["plain.jpg"]["status"] == "ok"
    assert sorted(os.listdir(os.fsencode(out))) == sorted([b"plain.jpg", os.fsencode(inventory.INTERNAL_DIR)])
    assert not _leftovers(out)


# ------------------------------------------------------------------------------------ helpers' units


def test_unusable_reasons_name_the_problem(tmp_path):
    reasons = {}
    for case in CASES:
        if case.error.startswith(UNUSABLE) and not case.skip:
            case.make(tmp_path / case.name)
            reasons[case.name] = inventory.unusable_reason(str(tmp_path / case.name))
    assert reasons == {
        "empty.mp4": "empty file (0 bytes)",
        "empty.jpg": "empty file (0 bytes)",
        "loop.jpg": "symbolic link loop",
        "loop-b.jpg": "symbolic link loop",
        "dangling.jpg": "dangling symbolic link",
        "pipe.jpg": "not a regular file: a named pipe (FIFO)",
    }
    (tmp_path / "notes.mp4").write_bytes(b"hello")
    assert inventory.local_asset(str(tmp_path / "notes.mp4"), "notes.mp4").kind == "video"  # a video name: probed
    (tmp_path / "notes.jpg").write_bytes(b"hello")
    assert inventory.unusable_reason(str(tmp_path / "notes.jpg")).startswith("content is not")


def test_formats_are_told_by_their_bytes_not_their_names():
    jpeg, mp4 = b"\xff\xd8\xff\xe0" + bytes(16), b"\x00\x00\x00\x18ftypisom" + bytes(16)
    assert inventory.sniff(jpeg, "a.mp4") == inventory.sniff(jpeg, "a.bin") == ("image", "")
    assert inventory.sniff(mp4, "a.jpg") == ("video", "")
    assert inventory.sniff(b"\x00\x00\x00\x1cftypavif" + bytes(16), "a.mp4") == ("unsupported", "AVIF image")
    assert inventory.sniff(b"\x00\x00\x01\xba" + bytes(16), "a.dat") == ("video", "MPEG program stream (MPG, VOB)")
    assert inventory.sniff(b"\x06\x0e\x2b\x34\x02\x05\x01\x01" + bytes(16), "a.mp4") == ("video", "MXF")
    assert inventory.sniff(b"OggS" + bytes(16), "a.mp4") == ("unsupported", "Ogg")
    assert inventory.sniff(b"hello", "a.mp4") == ("video", "")  # a video name: the probe judges it
    assert inventory.sniff(b"hello", "a.txt") == inventory.sniff(b"", "a.mp4") == ("unknown", "")


def test_fifo_is_never_opened_for_reading(tmp_path):
    os.mkfifo(tmp_path / "pipe.mp4")
    os.mkfifo(tmp_path / "pipe.txt")
    started = time.monotonic()
    assets = list(inventory.list_local(str(tmp_path)))
    assert [(a.kind, a.skip) for a in assets] == [("unknown", ""), ("unknown", inventory.NOT_MEDIA)]
    assert assets[1].skip_detail == "not a regular file: a named pipe (FIFO)"
    assert time.monotonic() - started < 5


def test_display_path_is_utf8_and_only_escapes_undecodable_bytes():
    assert inventory.display_path("été/photo.jpg") == "été/photo.jpg"
    shown = inventory.display_path(os.fsdecode(NON_UTF8))
    assert shown == "caf\\xe9.jpg" and shown.encode("utf-8")


@pytest.mark.parametrize("name,kw", [("late.ts", {"fmt": "mpegts"}), ("late.avi", {"codec": "mpeg4"}),
                                     ("late.mkv", {})])
def test_decode_from_every_keyframe_is_exact(tmp_path, name, kw):
    """MPEG-TS seeks land a keyframe late (or nowhere, asked for the first one); decode recovers."""
    path = tmp_path / name
    _clip(path, n=40, options={"g": "8"}, **kw)
    index = scan_packets(str(path))
    full = list(decode(str(path), None, index, 0, len(index)))
    for k in np.flatnonzero(index.key):
        got = list(decode(str(path), int(index.pts[k]), index, int(k), len(index)))
        assert [i for i, _, _ in got] == list(range(k, len(index)))
        np.testing.assert_array_equal(got[0][2], full[k][2])


def test_webm_output_is_refused_before_any_work(tmp_path):
    path = tmp_path / "vp9.webm"
    _clip(path, codec="libvpx-vp9", n=2)
    info = probe(str(path))
    with pytest.raises(MediaError, match="webm"):
        check_writable(str(path), info, "libx264")
    mkv = tmp_path / "x.mkv"
    _clip(mkv, n=2)
    check_writable(str(mkv), probe(str(mkv)), "libx264")


def test_finalize_check_decodes_avi_to_see_frames_show_in_time_order(tmp_path):
    """An H.264 AVI with B-frames: its sorted packet times match the source's, but the frames come
    out of the decoder out of time order. The check finalize runs on AVI outputs fails it; the
    packet times alone would not (the AVI outputs we write carry no B-frames)."""
    path = tmp_path / "bframes.avi"
    _clip(path, n=24, fmt="avi", options={"bf": "2"})
    index, info = scan_packets(str(path)), probe(str(path))
    concat._verify(str(path), index, {}, info, check_start=False)
    with pytest.raises(MediaError, match="time order"):
        concat._verify(str(path), index, {}, info, check_start=False, check_shown=True)
    plain = tmp_path / "plain.avi"
    _clip(plain, n=24, fmt="avi", options={"bf": "0"})
    concat._verify(str(plain), scan_packets(str(plain)), {}, probe(str(plain)), check_start=False, check_shown=True)


def test_finalize_check_compares_the_last_frames_duration(tmp_path):
    """A VFR clip's last frame must not come out lengthened to the average frame's."""
    path = tmp_path / "clip.mp4"
    _clip(path, n=12)
    index, info = scan_packets(str(path)), probe(str(path))
    assert index.last_duration
    concat._verify(str(path), index, {}, info)
    with pytest.raises(MediaError, match="last frame lasts"):
        concat._verify(str(path), dataclasses.replace(index, last_duration=index.last_duration * 3), {}, info)
