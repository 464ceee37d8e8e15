"""Video I/O on real encoded clips: packet scan, probe, segment decode, part encode, finalize.

Clips are generated with PyAV: H.264 with B-frames and a short GOP, AAC audio, a text subtitle
track, a portrait-phone display matrix and identifying container tags (title, GPS location).
"""

from __future__ import annotations

import glob
import os
import struct
from fractions import Fraction

import av
import numpy as np
import pytest
from conftest import mux_stereo_tone
from skimage.metrics import peak_signal_noise_ratio

from anon_ray.config import PixelPolicy, VideoConfig
from anon_ray.io.files import TMP_MARKER
from anon_ray.media import MediaError, concat, rotation
from anon_ray.media.decode import decode
from anon_ray.media.encode import VideoWriter, output_changes, transcode_floor
from anon_ray.media.packets import scan_packets
from anon_ray.media.probe import probe

N_FRAMES, W, H, FPS, GOP = 72, 320, 240, 30, 24
# What an iPhone writes for a portrait video: stored landscape, shown turned 90 degrees clockwise.
PORTRAIT_MATRIX = (0, 65536, 0, -65536, 0, 0, 0, 0, 1 << 30)
SECRET_TITLE, SECRET_PLACE = "Holiday of Jane Doe", "+48.8584+002.2945/"
CFG = VideoConfig(preset="ultrafast")


def eval_dir() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    return os.environ.get("ANON_RAY_EVAL_DATA") or os.path.join(here, "..", "..", "shared", "data", "eval")


def _frame(i: int) -> np.ndarray:
    """A moving pattern whose content identifies the frame index."""
    y, x = np.mgrid[0:H, 0:W]
    rgb = np.stack([(x * 255 // W), (y * 255 // H), np.full_like(x, 96)], axis=2).astype(np.uint8)
    rgb[:, (i * 4) % W:(i * 4) % W + 24] = (255, 255, 255)
    rgb[(i * 3) % H:(i * 3) % H + 16, :] = (20, 200, 40)
    return rgb


def make_clip(path: str, matrix=PORTRAIT_MATRIX, audio: bool = True, subtitles: bool = True) -> None:
    mp4 = path.endswith(".mp4")
    with av.open(path, "w") as out:
        out.metadata.update({"title": SECRET_TITLE, "location": SECRET_PLACE, "comment": "serial 1234"})
        v = out.add_stream("libx264", rate=FPS, options={"crf": "18", "g": str(GOP), "keyint_min": str(GOP)})
        v.width, v.height, v.pix_fmt = W, H, "yuv420p"
        v.metadata["title"] = "camera 1"
        if matrix is not None:
            v.set_display_matrix(matrix)
        a = out.add_stream("aac", rate=48000) if audio else None
        if a is not None:
            a.metadata["language"] = "eng"
        s = out.add_mux_stream("mov_text" if mp4 else "subrip", time_base=Fraction(1, 1000)) if subtitles else None
        if s is not None:
            s.metadata["language"] = "fra"
        for i in range(N_FRAMES):
            frame = av.VideoFrame.from_ndarray(_frame(i), format="rgb24")
            frame.pts = i
            out.mux(v.encode(frame))
        out.mux(v.encode(None))
        if a is not None:
            n = 48000 * N_FRAMES // FPS
            mux_stereo_tone(out, a, n)
        if s is not None:
            for j, text in enumerate([b"Bonjour", b"Au revoir"]):
                packet = av.Packet(struct.pack(">H", len(text)) + text if mp4 else text)
                packet.pts = packet.dts = 300 + j * 1000
                packet.duration, packet.time_base, packet.stream = 600, Fraction(1, 1000), s
                out.mux(packet)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("clips")
    paths = {ext: str(folder / f"clip.{ext}") for ext in ("mp4", "mkv")}
    for ext, path in paths.items():
        make_clip(path)
    return paths


@pytest.fixture(scope="module")
def full_decode(clips) -> dict[str, list[tuple[int, int, np.ndarray]]]:
    out = {}
    for ext, path in clips.items():
        index = scan_packets(path)
        out[ext] = list(decode(path, None, index, 0, len(index)))
    return out


def _packets(path: str, kind: str) -> list[tuple[int, bytes, int]]:
    with av.open(path) as c:
        stream = [s for s in c.streams if s.type == kind][0]
        return [(p.pts, bytes(p), p.duration) for p in c.demux(stream) if p.size]


def _no_temp_files(folder: str) -> bool:
    return not [n for n in os.listdir(folder) if TMP_MARKER in n]


def _encode_parts(src: str, folder: str, cuts: list[int], drop: int | None = None,
                  last_cfg: VideoConfig = CFG) -> list[str]:
    """Encode [cuts[k], cuts[k+1]) into one part each, as the pipeline's segment workers do."""
    index = scan_packets(src)
    info = probe(src, index)
    parts = []
    for k, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
        part = os.path.join(folder, f"part{k}.mp4")
        with VideoWriter(part, info, last_cfg if b == cuts[-1] else CFG) as writer:
            for i, pts, rgb in decode(src, int(index.pts[a]), index, a, b):
                if i != drop:
                    writer.write(rgb, pts)
        parts.append(part)
    return parts


# ------------------------------------------------------------------------------------ packet scan


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_scan_packets_gives_presentation_order_and_keyframes(clips, full_decode, ext):
    index = scan_packets(clips[ext])
    assert len(index) == N_FRAMES
    assert np.all(np.diff(index.pts) > 0)
    np.testing.assert_array_equal(index.pts, [pts for _, pts, _ in full_decode[ext]])
    np.testing.assert_array_equal(np.flatnonzero(index.key), np.arange(0, N_FRAMES, GOP))
    with av.open(clips[ext]) as c:  # B-frames: decode order differs from presentation order
        order = [p.pts for p in c.demux(video=0) if p.size]
    assert order != sorted(order)


def test_scan_packets_matches_a_full_decode_on_eval_videos():
    paths = sorted(glob.glob(os.path.join(eval_dir(), "videos", "*.mp4")))
    if not paths:
        pytest.skip("evaluation videos not available")
    for path in paths:
        index = scan_packets(path)
        with av.open(path) as c:
            stream = c.streams.video[0]
            stream.thread_type = "AUTO"
            decoded = [f.pts for f in c.decode(stream)]
        np.testing.assert_array_equal(index.pts, decoded, err_msg=path)
        assert index.key[0], path


# ------------------------------------------------------------------------------------ probe


def test_pixel_policy_writes_what_players_play(clips):
    """8-bit 4:2:0 by default, named as a change; HDR keeps 10 bits; `source` keeps the format."""
    from dataclasses import replace

    info = probe(clips["mp4"])
    ten, hdr = replace(info, pix_fmt="yuv422p10le", color_trc=1), replace(info, pix_fmt="yuv420p10le", color_trc=16)
    assert output_changes(info, "libx264", VideoConfig()) == ()
    assert output_changes(ten, "libx264", VideoConfig()) == ("pixel format yuv422p10le written as yuv420p",)
    assert output_changes(hdr, "libx264", VideoConfig()) == ()  # PQ in 8 bits would band
    assert output_changes(ten, "libx264", VideoConfig(pixels=PixelPolicy.source)) == ()


def test_probe_describes_the_stream(clips):
    info = probe(clips["mp4"])
    assert (info.width, info.height, info.display_size) == (W, H, (H, W))
    assert info.rotation == 90 and info.display_matrix == PORTRAIT_MATRIX
    assert info.fps == (FPS, 1) and info.n_frames == N_FRAMES
    assert info.time_base[0] == 1 and info.start_pts == 0
    assert info.duration_s == pytest.approx(N_FRAMES / FPS)
    assert (info.codec, info.pix_fmt) == ("h264", "yuv420p")
    assert (info.audio_streams, info.subtitle_streams) == (1, 1)
    plain = os.path.join(os.path.dirname(clips["mp4"]), "plain.mp4")
    make_clip(plain, matrix=None, audio=False, subtitles=False)
    info = probe(plain)
    assert (info.rotation, info.display_matrix, info.audio_streams, info.subtitle_streams) == (0, None, 0, 0)


# ------------------------------------------------------------------------------------ rotation


def test_portrait_phone_video_turns_upright_clockwise(clips, full_decode):
    info = probe(clips["mp4"])
    stored = full_decode["mp4"][0][2]
    shown = rotation.to_display(stored, info.rotation)
    assert shown.shape == (W, H, 3)
    # FFmpeg autorotation of this matrix is transpose=clock: the stored top-left lands top-right.
    np.testing.assert_array_equal(shown, np.rot90(stored, -1))


@pytest.mark.parametrize("rot", rotation.ROTATIONS)
def test_boxes_map_exactly_between_stored_and_displayed(rot):
    rng = np.random.default_rng(rot)
    sw, sh = 40, 30
    for _ in range(20):
        x1, x2 = sorted(rng.choice(sw + 1, 2, replace=False))
        y1, y2 = sorted(rng.choice(sh + 1, 2, replace=False))
        stored = np.zeros((sh, sw), np.uint8)
        stored[y1:y2, x1:x2] = 1
        shown = rotation.to_display(stored, rot)
        ys, xs = np.nonzero(shown)
        box = np.array([[x1, y1, x2, y2]], np.float32)
        want = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)
        np.testing.assert_array_equal(rotation.boxes_to_display(box, rot, sw, sh), want)
        np.testing.assert_array_equal(rotation.boxes_to_stored(want, rot, sw, sh), box)
    assert rotation.boxes_to_stored(np.zeros((0, 4), np.float32), rot, sw, sh).shape == (0, 4)


# ------------------------------------------------------------------------------------ decode


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_full_decode_yields_every_frame_in_order(clips, full_decode, ext):
    frames = full_decode[ext]
    index = scan_packets(clips[ext])
    assert [i for i, _, _ in frames] == list(range(N_FRAMES))
    np.testing.assert_array_equal([pts for _, pts, _ in frames], index.pts)
    for i, _, rgb in frames[1:-1:9]:
        assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8 and rgb.flags.writeable
        own = peak_signal_noise_ratio(_frame(i), rgb)
        assert own > 25 and own > 3 + max(peak_signal_noise_ratio(_frame(j), rgb) for j in (i - 1, i + 1))


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_decode_from_a_mid_keyframe_matches_the_full_decode(clips, full_decode, ext):
    index = scan_packets(clips[ext])
    key = GOP  # second keyframe
    got = list(decode(clips[ext], int(index.pts[key]), index, key + 5, key + 30))
    assert [i for i, _, _ in got] == list(range(key + 5, key + 30))
    for i, pts, rgb in got:
        assert pts == full_decode[ext][i][1]
        np.testing.assert_array_equal(rgb, full_decode[ext][i][2])


def test_decode_refuses_to_skip_frames(clips):
    index = scan_packets(clips["mp4"])
    # Seeking to a keyframe after `first` cannot produce frames first..key-1.
    with pytest.raises(MediaError, match="missing"):
        list(decode(clips["mp4"], int(index.pts[2 * GOP]), index, GOP, 3 * GOP))


def test_empty_truncated_and_garbage_files_raise(clips, tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(os.urandom(5000))
    data = open(clips["mp4"], "rb").read()
    cut_mp4 = tmp_path / "cut.mp4"  # the index (moov) is written last, so a cut file has none
    cut_mp4.write_bytes(data[: len(data) // 2])
    for path in (empty, garbage, cut_mp4):
        with pytest.raises(MediaError):
            scan_packets(str(path))
        with pytest.raises(MediaError):
            probe(str(path))
    full = scan_packets(clips["mkv"])
    data = open(clips["mkv"], "rb").read()
    cut_mkv = tmp_path / "cut.mkv"  # readable up to the cut, so decoding must notice the end
    cut_mkv.write_bytes(data[: len(data) // 2])
    assert len(scan_packets(str(cut_mkv))) < N_FRAMES
    with pytest.raises(MediaError):
        list(decode(str(cut_mkv), None, full, 0, N_FRAMES))


# ------------------------------------------------------------------------------------ writer


def test_writer_leaves_nothing_on_error(clips, tmp_path):
    info = probe(clips["mp4"])
    target = tmp_path / "part.mp4"
    with pytest.raises(RuntimeError):
        with VideoWriter(str(target), info, CFG) as writer:
            writer.write(_frame(0), 0)
            raise RuntimeError("worker died")
    assert not target.exists() and _no_temp_files(str(tmp_path))
    with pytest.raises(MediaError, match="does not match"):
        with VideoWriter(str(target), info, CFG) as writer:
            writer.write(np.rot90(_frame(0)).copy(), 0)  # displayed orientation: wrong
    with pytest.raises(MediaError, match="increase"):
        with VideoWriter(str(target), info, CFG) as writer:
            writer.write(_frame(0), 512)
            writer.write(_frame(1), 512)
    assert not target.exists() and _no_temp_files(str(tmp_path))


def test_an_av1_writer_puts_its_thread_back_on_the_ordinary_scheduler(clips, tmp_path):
    # SVT-AV1 opened by root leaves the opening thread SCHED_FIFO at priority 99 (encode.ordinary_scheduling).
    info = probe(clips["mp4"])
    with VideoWriter(str(tmp_path / "av1.mp4"), info, VideoConfig(codec="libsvtav1", preset="12")) as writer:
        writer.write(_frame(0), 0)
        assert os.sched_getscheduler(0) == os.SCHED_OTHER
        writer.write(_frame(1), 512)
    assert len(scan_packets(str(tmp_path / "av1.mp4"))) == 2


def test_transcode_floor_keeps_frames_timestamps_and_rotation(clips, tmp_path):
    dst = str(tmp_path / "floor.mp4")
    assert transcode_floor(clips["mp4"], dst, CFG) == N_FRAMES
    np.testing.assert_array_equal(scan_packets(dst).pts, scan_packets(clips["mp4"]).pts)
    info = probe(dst)
    assert info.rotation == 90 and info.fps == (FPS, 1) and info.time_base == probe(clips["mp4"]).time_base


# ------------------------------------------------------------------------------------ finalize


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_finalize_keeps_streams_and_drops_identifying_metadata(clips, full_decode, tmp_path, ext):
    src = clips[ext]
    parts = _encode_parts(src, str(tmp_path), [0, GOP, 2 * GOP + GOP // 2, N_FRAMES])  # last cut mid-GOP
    dst = str(tmp_path / f"out.{ext}")
    stats = concat.finalize(parts, src, dst, probe(src))
    assert _no_temp_files(str(tmp_path))

    assert stats.frames == N_FRAMES and stats.subtitle_packets >= 2 and stats.dropped_streams == 0
    src_index, out_index = scan_packets(src), scan_packets(dst)
    np.testing.assert_array_equal(out_index.pts, src_index.pts)
    assert (out_index.time_base_num, out_index.time_base_den) == (src_index.time_base_num, src_index.time_base_den)

    src_audio, out_audio = _packets(src, "audio"), _packets(dst, "audio")
    assert stats.audio_packets == len(src_audio)
    assert out_audio == src_audio  # same bytes, same timestamps
    text = [(pts, payload) for pts, payload, duration in _packets(dst, "subtitle") if duration]
    assert text == [(pts, payload) for pts, payload, duration in _packets(src, "subtitle") if duration]

    info_src, info_out = probe(src), probe(dst)
    assert info_out.rotation == 90 and info_out.display_matrix == PORTRAIT_MATRIX
    assert info_out.fps == info_src.fps and info_out.n_frames == N_FRAMES

    with av.open(dst) as c:
        tags = {k.lower(): v for k, v in c.metadata.items()}
        assert not {"title", "location", "comment"} & set(tags)
        for stream in c.streams:
            assert "title" not in {k.lower() for k in stream.metadata}
        assert c.streams.audio[0].language == "eng" and c.streams.subtitles[0].language == "fra"
    raw = open(dst, "rb").read()
    for secret in (SECRET_TITLE, SECRET_PLACE, "serial 1234", "camera 1"):
        assert secret.encode() not in raw

    decoded = list(decode(dst, None, out_index, 0, N_FRAMES))
    assert [i for i, _, _ in decoded] == list(range(N_FRAMES))
    for (_, _, a), (_, _, b) in zip(full_decode[ext][::7], decoded[::7]):
        assert peak_signal_noise_ratio(a, b) > 35


@pytest.mark.parametrize("drop", [GOP + 3, GOP, N_FRAMES - 1])  # inside, first and last of a part
def test_finalize_refuses_parts_that_miss_a_frame(clips, tmp_path, drop):
    src = clips["mp4"]
    parts = _encode_parts(src, str(tmp_path), [0, GOP, N_FRAMES], drop=drop)
    dst = tmp_path / "out.mp4"
    with pytest.raises(MediaError, match="frames"):
        concat.finalize(parts, src, str(dst), probe(src))
    assert not dst.exists() and _no_temp_files(str(tmp_path))


def test_finalize_refuses_parts_encoded_differently(clips, tmp_path):
    src = clips["mp4"]
    parts = _encode_parts(src, str(tmp_path), [0, GOP, N_FRAMES], last_cfg=VideoConfig(preset="medium"))
    dst = tmp_path / "out.mp4"
    with pytest.raises(MediaError, match="other parameters"):
        concat.finalize(parts, src, str(dst), probe(src))
    assert not dst.exists() and _no_temp_files(str(tmp_path))


def test_finalize_that_fails_verification_leaves_no_output(clips, tmp_path, monkeypatch):
    src = clips["mp4"]
    parts = _encode_parts(src, str(tmp_path), [0, GOP, N_FRAMES])
    real = concat._part_offsets
    # Shift the second part by one tick: the mux succeeds, only the read-back check can see it.
    monkeypatch.setattr(concat, "_part_offsets", lambda *a: [o + (k == 1) for k, o in enumerate(real(*a))])
    dst = tmp_path / "out.mp4"
    with pytest.raises(MediaError, match="timestamps differ"):
        concat.finalize(parts, src, str(dst), probe(src))
    assert not dst.exists() and _no_temp_files(str(tmp_path))


def test_finalize_round_trips_a_real_clip_with_audio(tmp_path):
    src = os.path.join(eval_dir(), "videos", "short_hamilton_clip.mp4")
    if not os.path.exists(src):
        pytest.skip("evaluation videos not available")
    index = scan_packets(src)
    info = probe(src, index)
    keys = [int(k) for k in np.flatnonzero(index.key)]
    parts = _encode_parts(src, str(tmp_path), [0, *keys[1::2], len(index)])
    dst = str(tmp_path / "out.mp4")
    stats = concat.finalize(parts, src, dst, info)
    assert stats.frames == len(index) and stats.audio_packets > 0
    np.testing.assert_array_equal(scan_packets(dst).pts, index.pts)
    assert _packets(dst, "audio") == _packets(src, "audio")
    out = probe(dst)
    assert (out.fps, out.time_base, out.rotation) == (info.fps, info.time_base, info.rotation)
    assert (out.color_range, out.color_primaries, out.color_trc, out.colorspace) == \
        (info.color_range, info.color_primaries, info.color_trc, info.colorspace)
    # Colour conversion both ways uses the stream's matrix and range: no shift, only coding loss.
    src_frames = decode(src, None, index, 0, 60)
    out_frames = decode(dst, None, scan_packets(dst), 0, 60)
    for (_, _, a), (_, _, b) in zip(src_frames, out_frames):
        assert peak_signal_noise_ratio(a, b) > 35
        assert abs(float(a.mean()) - float(b.mean())) < 0.3


def test_finalize_drops_attachments(clips, tmp_path):
    src = str(tmp_path / "attached.mkv")
    with av.open(clips["mkv"]) as source, av.open(src, "w") as out:
        streams = {s.index: out.add_stream_from_template(s) for s in source.streams}
        out.add_attachment("owner.txt", "text/plain", b"Jane Doe, 12 Main Street")
        for packet in source.demux():
            if packet.size:
                packet.stream = streams[packet.stream_index]
                out.mux(packet)
    parts = _encode_parts(src, str(tmp_path), [0, GOP, N_FRAMES])
    dst = str(tmp_path / "out.mkv")
    stats = concat.finalize(parts, src, dst, probe(src))
    assert stats.dropped_streams == 1
    with av.open(dst) as c:
        assert sorted(s.type for s in c.streams) == ["audio", "subtitle", "video"]
    assert b"Jane Doe" not in open(dst, "rb").read()


def test_prores_colour_description_from_its_container_is_kept(tmp_path):
    """ProRes frames leave primaries, transfer and matrix unspecified; the MOV `colr` atom says
    them (here BT.2020 PQ): probe takes the container's, so the output keeps them, and PQ keeps
    its 10 bits."""
    src = str(tmp_path / "hdr.mov")
    with av.open(src, "w") as out:
        s = out.add_stream("prores_ks", rate=25)
        s.width, s.height, s.pix_fmt = 320, 240, "yuv422p10le"
        s.codec_context.color_primaries, s.codec_context.color_trc, s.codec_context.colorspace = 9, 16, 9
        for i in range(6):
            frame = av.VideoFrame.from_ndarray(_frame(i)[:240, :320].copy(), format="rgb24").reformat(format="yuv422p10le")
            for p in s.encode(frame):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    with av.open(src) as c:  # the premise: the frames themselves say nothing
        assert next(c.decode(video=0)).color_primaries == 2
    info = probe(src)
    assert (info.color_primaries, info.color_trc, info.colorspace) == (9, 16, 9)
    index = scan_packets(src)
    part = str(tmp_path / "part.mp4")
    with VideoWriter(part, info, VideoConfig()) as writer:
        for _, pts, rgb in decode(src, None, index, 0, len(index)):
            writer.write(rgb, pts)
    dst = str(tmp_path / "out.mov")
    concat.finalize([part], src, dst, info)
    out = probe(dst)
    assert (out.color_primaries, out.color_trc, out.colorspace, out.pix_fmt) == (9, 16, 9, "yuv420p10le")
