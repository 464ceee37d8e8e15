"""Segments read their input from object storage in ranges (io/ranged.py), on a real 1080p mp4 with
audio in a real S3 endpoint (moto_server): the same frames as from the whole file, and only the
segment's byte range plus the container header fetched."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import replace
from pathlib import Path

import av
import boto3
import cv2
import numpy as np
import pytest
from s3server import aws_env, moto_s3_server
from test_cut_independence import HAMILTON

from anon_ray.config import AppConfig, SegmentConfig, StorageConfig
from anon_ray.io import ranged, staging
from anon_ray.io.uri import ObjectChangedError
from anon_ray.media import packets
from anon_ray.media.decode import decode
from anon_ray.run import lifecycle
from anon_ray.run.pipeline import Worker
from anon_ray.types import Asset

GOP = 10  # frames: short GOPs so a few seconds of 1080p make several segments with little warm-up


def reencode(src: Path, dst: Path, frames: int = 180, size: tuple[int, int] = (1920, 1080), gop: int = GOP,
             crf: int = 23) -> None:
    """The hamilton clip scaled to `size` with a keyframe every `gop` frames, its audio copied."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        vin, ain = inp.streams.video[0], inp.streams.audio[0]
        vout = out.add_stream("libx264", rate=vin.average_rate)
        vout.width, vout.height, vout.pix_fmt = *size, "yuv420p"
        vout.options = {"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0", "preset": "ultrafast",
                        "crf": str(crf)}
        aout = out.add_stream_from_template(ain)
        done, seconds = 0, frames / vin.average_rate
        for packet in inp.demux(vin, ain):
            if packet.dts is None:
                continue
            if packet.stream is ain:
                if packet.pts * ain.time_base < seconds:
                    packet.stream = aout
                    out.mux(packet)
                continue
            for frame in packet.decode():
                if done < frames:
                    frame = frame.reformat(*size, format="yuv420p")
                    frame.pts, frame.time_base = done, 1 / vin.average_rate
                    out.mux(vout.encode(frame))
                    done += 1
        out.mux(vout.encode(None))


def moov_size(path: Path) -> int:
    """Bytes of the top-level boxes other than mdat: the header a demuxer reads before any packet."""
    total, data = 0, path.read_bytes()
    pos = 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if size == 1:
            size = struct.unpack(">Q", data[pos + 8:pos + 16])[0]
        if kind != b"mdat":
            total += size
        pos += size
    return total


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ranged")
    clip = folder / "street_1080p.mp4"
    reencode(HAMILTON, clip)
    with aws_env(), moto_s3_server() as url:
        client = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
        client.create_bucket(Bucket="archive")
        client.upload_file(str(clip), "archive", "cams/street_1080p.mp4")
        etag = client.head_object(Bucket="archive", Key="cams/street_1080p.mp4")["ETag"].strip('"')
        storage = StorageConfig(endpoint_url=url, region="us-east-1", scratch_dir=str(folder / "scratch"))
        asset = Asset(uri="s3://archive/cams/street_1080p.mp4", relpath="street_1080p.mp4",
                      size=clip.stat().st_size, version=etag, kind="video")
        cfg = replace(AppConfig(), segment=SegmentConfig(seconds=1.5), storage=storage)
        vplan = lifecycle.plan_video(str(clip), asset.relpath, cfg, workers=1)
        yield clip, client, asset, cfg, vplan


def frame_digests(src, seg, index) -> list[str]:
    return [hashlib.sha256(rgb.tobytes()).hexdigest() for _, _, rgb in decode(src, seg.seek_pts, index,
                                                                              seg.ctx_start, seg.ctx_end)]


def test_a_segment_decodes_the_same_frames_from_its_ranges_and_fetches_only_them(stored):
    clip, client, asset, cfg, vplan = stored
    assert vplan.info.container in staging.RANGED_CONTAINERS and vplan.info.audio_streams == 1
    assert len(vplan.segments) >= 4
    header = moov_size(clip)
    ratios = []
    for seg in vplan.segments:
        with staging.segment_input(asset, vplan.info.container, (seg.byte_start, seg.byte_end), cfg.storage) as src:
            assert src.ranged is not None  # nothing cached on this "node": ranges, not the whole file
            assert frame_digests(src.source, seg, vplan.index) == frame_digests(str(clip), seg, vplan.index)
            # The detection pass and the encode pass both decode the range: the second costs nothing.
            fetched_once = src.fetched
            frame_digests(src.source, seg, vplan.index)
            assert src.fetched == fetched_once
        span = seg.byte_end - seg.byte_start
        ratios.append(src.fetched / (span + header))
        assert src.fetched <= 1.3 * span + header + 2 * ranged.BLOCK, (seg.index, src.fetched, span, header)
    assert not list((Path(cfg.storage.scratch_dir) / "ranges").iterdir())  # the sparse files are gone
    print(f"\nfetched / (range + header) per segment: {np.round(ratios, 3).tolist()}")


def long_clip(path: Path, frames: int, size: tuple[int, int] = (320, 180), gop: int = 30) -> None:
    """A minute of small moving shapes: long in frames, quick to encode."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = *size, "yuv420p"
        stream.options = {"g": str(gop), "preset": "ultrafast", "crf": "23"}
        rng = np.random.default_rng(0)
        texture = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        for i in range(frames):
            rgb = np.roll(texture, 2 * i, axis=1)
            cv2.circle(rgb, (i % size[0], size[1] // 2), 20, (255, 0, 0), -1)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode(None))


def test_planning_reads_an_mp4s_header_and_a_few_packets_in_ranges(stored, tmp_path):
    """The plan step of an MP4 in object storage reads its sample tables, the packets the demuxer
    check reads at its head and tail and the first frame, in ranges, and leaves no whole copy:
    the same plan as from the local file."""
    _, client, stored_asset, cfg, _ = stored
    clip = tmp_path / "minute.mp4"
    long_clip(clip, 1800)
    client.upload_file(str(clip), "archive", "cams/minute.mp4")
    etag = client.head_object(Bucket="archive", Key="cams/minute.mp4")["ETag"].strip('"')
    asset = replace(stored_asset, uri="s3://archive/cams/minute.mp4", relpath="minute.mp4",
                    size=clip.stat().st_size, version=etag)
    got = lifecycle.plan(asset, cfg, workers=1)
    assert not hasattr(got, "error_class"), got
    want = lifecycle.plan_video(str(clip), asset.relpath, cfg)
    assert (got.info, got.segments, got.codec, got.changes) == (want.info, want.segments, want.codec, want.changes)
    for field in ("pts", "key"):
        np.testing.assert_array_equal(getattr(got.index, field), getattr(want.index, field))
    index = packets.index_packets(str(clip))  # with the packets' positions and sizes
    # The header, the packets of the head check in file order, the tail from the last keyframe.
    head = int(index.size[np.argsort(index.pos)[:packets.CHECKED_PACKETS]].sum())
    tail = int(index.size[int(np.flatnonzero(index.key)[-1]):].sum())
    bound = moov_size(clip) + head + tail + 4 * ranged.BLOCK
    assert 0 < got.input_bytes <= bound, (got.input_bytes, moov_size(clip), head, tail)
    assert got.input_bytes < clip.stat().st_size / 3, (got.input_bytes, clip.stat().st_size)
    print(f"\nplanning read {got.input_bytes} of {clip.stat().st_size} bytes (header {moov_size(clip)}, "
          f"head check {head}, tail {tail})")
    assert not [f for f in (Path(cfg.storage.scratch_dir) / "inputs").rglob("*") if f.is_file()]  # none whole
    assert not list((Path(cfg.storage.scratch_dir) / "ranges").iterdir())


def test_a_cached_copy_is_read_instead_of_ranges(stored):
    clip, client, asset, cfg, vplan = stored
    cached = staging.local_input(asset, cfg.storage)  # what the plan step leaves on its node
    seg = vplan.segments[1]
    with staging.segment_input(asset, vplan.info.container, (seg.byte_start, seg.byte_end), cfg.storage) as src:
        assert src.source == cached and src.fetched == 0
    Path(cached).unlink()


def test_an_object_replaced_after_listing_fails_the_segment(stored):
    clip, client, asset, cfg, vplan = stored
    changed = replace(asset, uri="s3://archive/cams/changed.mp4")
    client.put_object(Bucket="archive", Key="cams/changed.mp4", Body=clip.read_bytes()[:-1000])
    seg = vplan.segments[2]
    with staging.segment_input(changed, vplan.info.container, (seg.byte_start, seg.byte_end), cfg.storage) as src:
        with pytest.raises(ObjectChangedError):
            frame_digests(src.source, seg, vplan.index)


def test_the_segment_step_reports_the_bytes_it_fetched(stored):
    clip, client, asset, cfg, vplan = stored
    fast = replace(cfg, detect=replace(cfg.detect, plate=replace(cfg.detect.plate, enabled=False)))
    seg = vplan.segments[-1]
    result = lifecycle.segment(Worker(fast), asset, seg, vplan, None)
    assert not hasattr(result, "error_class"), result
    assert 0 < result.input_bytes <= 1.3 * (seg.byte_end - seg.byte_start) + moov_size(clip) + 2 * ranged.BLOCK
